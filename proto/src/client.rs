//! How lthctl, the worker daemon and the tests reach a coordinator: the URL's scheme picks
//! plaintext or TLS, a bearer token rides on every call, and connection failures that come from a
//! scheme mismatch (https:// to a plaintext server, http:// to a TLS one) say so.
//!
//! Settings come from the environment so no secret shows in `ps`:
//! - `LTH_TOKEN` (the token itself) or `LTH_TOKEN_FILE` (a file holding it);
//! - `LTH_TLS_CA`: PEM file of the CA that signed the coordinator's certificate (default: the
//!   system's roots);
//! - `LTH_TLS_CLIENT_CERT` / `LTH_TLS_CLIENT_KEY`: this client's certificate and key, for a coordinator that
//!   asks workers for mutual TLS (`--tls-client-ca`).

use std::path::{Path, PathBuf};

/// The `--help` section naming the variables [`ClientOptions::from_env`] reads (a literal, so
/// binaries can `concat!` it into their `after_help`; deploy/check's flag-drift test reads it).
#[macro_export]
macro_rules! client_env_help {
    () => {
        "Environment (besides the flags' own):\n  \
         LTH_TOKEN            the token itself (LTH_TOKEN_FILE / --token-file beat it)\n  \
         LTH_TLS_CA           CA certificate (PEM) for an https:// coordinator [default: the system's roots]\n  \
         LTH_TLS_CLIENT_CERT  client certificate (PEM), for a coordinator that requires mutual TLS\n  \
         LTH_TLS_CLIENT_KEY   its private key (PEM)"
    };
}
use std::str::FromStr;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

/// What a client presents to the coordinator.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// The bearer token (never logged).
    pub token: Option<String>,
    /// CA certificate (PEM) for https:// URLs; None: the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Reads a token file: the first non-empty line that is not a `#` comment, trimmed.
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("the token file {} holds no token", path.display()))
}

impl ClientOptions {
    /// From the environment, with `token_file` (a `--token-file` flag) beating `LTH_TOKEN_FILE`
    /// and `LTH_TOKEN`.
    pub fn from_env(token_file: Option<&Path>) -> anyhow::Result<ClientOptions> {
        let token = match token_file.map(Path::to_path_buf).or_else(|| env_path("LTH_TOKEN_FILE")) {
            Some(path) => Some(read_token_file(&path)?),
            None => std::env::var("LTH_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()),
        };
        let opts = ClientOptions { token, tls_ca: env_path("LTH_TLS_CA"), tls_cert: env_path("LTH_TLS_CLIENT_CERT"), tls_key: env_path("LTH_TLS_CLIENT_KEY") };
        if opts.tls_cert.is_some() != opts.tls_key.is_some() {
            anyhow::bail!("set both LTH_TLS_CLIENT_CERT and LTH_TLS_CLIENT_KEY (a client certificate needs its key), or neither");
        }
        Ok(opts)
    }

    /// The interceptor that adds `authorization: Bearer <token>` to every call.
    pub fn interceptor(&self) -> anyhow::Result<TokenInterceptor> {
        let header = match &self.token {
            None => None,
            Some(t) => Some(
                MetadataValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| anyhow::anyhow!("the token holds characters that cannot go in a header; make a new one with `lth-coordinator token create`"))?,
            ),
        };
        Ok(TokenInterceptor { header })
    }

    /// An endpoint for `url`: `https://` means TLS (with the CA and client identity above),
    /// `http://` plaintext. Anything else is refused.
    pub fn endpoint(&self, url: &str) -> anyhow::Result<Endpoint> {
        let tls = if url.starts_with("https://") {
            true
        } else if url.starts_with("http://") {
            false
        } else {
            anyhow::bail!("coordinator URL {url:?} must start with http:// (plaintext) or https:// (TLS)");
        };
        let mut endpoint =
            Endpoint::from_shared(url.to_string()).map_err(|e| anyhow::anyhow!("invalid coordinator URL {url:?} ({e}): write it as http://HOST:PORT or https://HOST:PORT"))?;
        if tls {
            let mut cfg = ClientTlsConfig::new().assume_http2(true);
            cfg = match &self.tls_ca {
                Some(path) => cfg.ca_certificate(Certificate::from_pem(read_pem(path, "LTH_TLS_CA")?)),
                None => cfg.with_native_roots(),
            };
            if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
                cfg = cfg.identity(Identity::from_pem(read_pem(cert, "LTH_TLS_CLIENT_CERT")?, read_pem(key, "LTH_TLS_CLIENT_KEY")?));
            }
            endpoint = endpoint.tls_config(cfg).map_err(|e| anyhow::anyhow!("TLS settings for {url} are unusable: {}", error_chain(&e)))?;
        } else if self.tls_ca.is_some() || self.tls_cert.is_some() {
            anyhow::bail!("LTH_TLS_CA/LTH_TLS_CLIENT_CERT are set but the coordinator URL {url} is http:// (plaintext): use https:// for TLS");
        }
        Ok(endpoint)
    }
}

fn read_pem(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {what} file {}: {e}", path.display()))?;
    if !pem.windows(10).any(|w| w == b"-----BEGIN") {
        anyhow::bail!("{what} file {} is not PEM (no -----BEGIN line)", path.display());
    }
    Ok(pem)
}

/// Adds the bearer token to each request.
#[derive(Clone)]
pub struct TokenInterceptor {
    header: Option<MetadataValue<Ascii>>,
}

impl TokenInterceptor {
    pub fn none() -> TokenInterceptor {
        TokenInterceptor { header: None }
    }
}

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

/// "transport error: tcp connect error: Connection refused (os error 111)": tonic's own Display
/// stops at the first, least useful, level.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// A sentence explaining a failed connection or call when it looks like a plaintext/TLS mismatch.
pub fn scheme_hint(url: &str, error: &str) -> Option<String> {
    let e = error.to_ascii_lowercase();
    if url.starts_with("https://") {
        let tls_failure = ["invalidcontenttype", "corrupt message", "tls", "handshake", "certificate", "invalid peer", "unexpected eof"]
            .iter()
            .any(|k| e.contains(k));
        if tls_failure {
            return Some(format!(
                "the TLS handshake with {url} failed: if that coordinator serves plaintext, use http://; if it serves TLS, check LTH_TLS_CA (the CA that signed its certificate) and the host name in the URL"
            ));
        }
    } else if url.starts_with("http://") {
        let protocol_failure = ["h2 protocol", "frame", "connection reset", "broken pipe", "connection closed", "unexpected end", "protocol error", "not a result of an error", "http2", "connection error"]
            .iter()
            .any(|k| e.contains(k));
        if protocol_failure {
            return Some(format!(
                "{url} closed the plaintext connection: if that coordinator serves TLS (--tls-cert), use an https:// URL (and LTH_TLS_CA for its CA)"
            ));
        }
    }
    None
}
