//! Who may call what: bearer tokens with a role each, checked by a tower layer in front of both
//! gRPC services (as qdrant does), before any handler runs.
//!
//! Roles: `viewer` (read-only SweepService calls), `submitter` (a viewer that may also submit, and
//! pause/cancel/resume its own sweeps), `worker` (the WorkerService only), `admin` (everything).
//! The health service is open (probes carry no token).
//!
//! The coordinator keeps only each token's sha256, read from an auth file (`--auth-file`,
//! `LTH_AUTH_FILE`) or the `LTH_AUTH_TOKENS` variable, one token a line:
//!
//! ```text
//! # role  name   sha256 of the token
//! worker  gpu-pool  sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! ```
//!
//! `lth-coordinator token create --role R --name N` makes a token and prints that line. A call's
//! token is hashed and compared with every stored hash in constant time (`subtle`), so neither the
//! match nor its position leaks through timing. Without any token configured every caller is the
//! admin "anonymous" (and `--listen` is then loopback-only unless `--insecure`).
//!
//! The handlers find the caller as an [`Identity`] in the request's extensions: they record it as
//! a sweep's owner, check ownership, and name it in the audit log.

use sha2::{Digest, Sha256};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use subtle::ConstantTimeEq;
use lth_proto::v1::ErrorReason;
use tonic::body::Body;
use tonic::{Code, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Role {
    Viewer,
    Submitter,
    Worker,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Submitter => "submitter",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "viewer" => Role::Viewer,
            "submitter" => Role::Submitter,
            "worker" => Role::Worker,
            "admin" => Role::Admin,
            _ => return None,
        })
    }
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Anyone, without a token (health checks).
    Open,
    /// Read-only SweepService calls and reflection: viewer, submitter or admin.
    View,
    /// Submit, cancel, pause, resume: submitter (own sweeps) or admin.
    Submit,
    /// The WorkerService: worker or admin.
    Work,
    /// Anything not listed: admin only.
    Admin,
}

impl Need {
    /// The roles that satisfy this need, comma-separated: the `needed_roles` metadata of refusals.
    pub fn role_list(self) -> &'static str {
        match self {
            Need::Open => "",
            Need::View => "viewer,submitter,admin",
            Need::Submit => "submitter,admin",
            Need::Work => "worker,admin",
            Need::Admin => "admin",
        }
    }

    /// The roles that satisfy this need, for error messages.
    pub fn roles(self) -> &'static str {
        match self {
            Need::Open => "none",
            Need::View => "viewer, submitter or admin",
            Need::Submit => "submitter or admin",
            Need::Work => "worker or admin",
            Need::Admin => "admin",
        }
    }
}

/// The need of a gRPC method, by its path (`/package.Service/Method`).
pub fn need_of(path: &str) -> Need {
    if path.starts_with("/grpc.health.v1.Health/") {
        return Need::Open;
    }
    if path.starts_with("/grpc.reflection.") {
        return Need::View;
    }
    if path.starts_with("/lth.v1.WorkerService/") {
        return Need::Work;
    }
    match path.strip_prefix("/lth.v1.SweepService/") {
        Some("SubmitSweep" | "CancelSweep" | "PauseSweep" | "ResumeSweep" | "RetrySweep" | "UploadInput") => Need::Submit,
        Some("GetSweep" | "ListSweeps" | "ListJobs" | "ListWorkers" | "WatchSweep" | "GetResults" | "GetThroughput" | "StreamMasks" | "ListInputs") => Need::View,
        _ => Need::Admin,
    }
}

pub fn allows(role: Role, need: Need) -> bool {
    match (role, need) {
        (_, Need::Open) | (Role::Admin, _) => true,
        (Role::Viewer, Need::View) => true,
        (Role::Submitter, Need::View | Need::Submit) => true,
        (Role::Worker, Need::Work) => true,
        _ => false,
    }
}

/// The caller of a request, as the auth layer established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: Role,
}

impl Identity {
    /// The caller when no tokens are configured.
    pub fn anonymous() -> Identity {
        Identity { name: "anonymous".into(), role: Role::Admin }
    }
}

/// The caller of `req` (anonymous if the layer did not run, as in handler unit tests).
pub fn caller<T>(req: &tonic::Request<T>) -> Identity {
    req.extensions().get::<Identity>().cloned().unwrap_or_else(Identity::anonymous)
}

struct Entry {
    hash: [u8; 32],
    identity: Identity,
}

/// The configured tokens (hashes only).
#[derive(Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<(&str, &str)> = self.entries.iter().map(|e| (e.identity.name.as_str(), e.identity.role.as_str())).collect();
        f.debug_struct("Tokens").field("names", &names).finish()
    }
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Parses the auth file format (see the module docs): entries separated by newlines or `;`.
    /// `origin` names the source in errors ("line N" counts entries).
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Tokens> {
        let mut entries: Vec<Entry> = Vec::new();
        // `;` separates entries too, so that one-line values (a compose .env file, a Kubernetes
        // Secret read as a variable) can carry several.
        for (i, line) in text.split(['\n', ';']).enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = || format!("{origin} line {}", i + 1);
            let parts: Vec<&str> = line.split_whitespace().collect();
            let [role, name, hash] = parts[..] else {
                anyhow::bail!("{}: expected `ROLE NAME sha256:HEX` (three fields), got {} fields", at(), parts.len());
            };
            let role = Role::parse(role).ok_or_else(|| anyhow::anyhow!("{}: unknown role {role:?}: use viewer, submitter, worker or admin", at()))?;
            let hex_digest = hash.strip_prefix("sha256:").ok_or_else(|| {
                anyhow::anyhow!("{}: the third field must be sha256:HEX (the token's hash, as `lth-coordinator token create` prints it), never the token itself", at())
            })?;
            let bytes = hex::decode(hex_digest).ok().filter(|b| b.len() == 32).ok_or_else(|| anyhow::anyhow!("{}: sha256:HEX must have 64 hex digits", at()))?;
            let mut h = [0u8; 32];
            h.copy_from_slice(&bytes);
            if entries.iter().any(|e| e.hash == h) {
                anyhow::bail!("{}: the same token is listed twice", at());
            }
            entries.push(Entry { hash: h, identity: Identity { name: name.to_string(), role } });
        }
        Ok(Tokens { entries })
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Tokens> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read the auth file {}: {e}", path.display()))?;
        Tokens::parse(&text, &path.display().to_string())
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The identity of `token`, comparing its hash with every entry in constant time.
    pub fn lookup(&self, token: &str) -> Option<Identity> {
        let h = hash_token(token);
        let mut found: Option<&Entry> = None;
        for e in &self.entries {
            // No early exit: every entry is compared whatever matched before.
            let eq: bool = e.hash.ct_eq(&h).into();
            if eq {
                found = Some(e);
            }
        }
        found.map(|e| e.identity.clone())
    }
}

/// A fresh random token (`lth_` + 64 hex digits, 256 bits).
pub fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("lth_{}", hex::encode(bytes))
}

/// The auth-file line for a token.
pub fn auth_line(role: Role, name: &str, token: &str) -> String {
    format!("{} {} sha256:{}", role.as_str(), name, hex::encode(hash_token(token)))
}

/// How the layer decides.
pub struct AuthPolicy {
    /// None: no tokens configured, every caller is the anonymous admin.
    pub tokens: Option<Tokens>,
    /// Mutual TLS for workers: WorkerService calls must come with a verified client certificate.
    pub require_worker_cert: bool,
}

impl AuthPolicy {
    pub fn open() -> AuthPolicy {
        AuthPolicy { tokens: None, require_worker_cert: false }
    }

    /// The caller's identity for a call to `path`, or the refusal.
    pub fn check(&self, path: &str, authorization: Option<&[u8]>, has_client_cert: bool) -> Result<Option<Identity>, Status> {
        self.check_need(need_of(path), path, authorization, has_client_cert)
    }

    /// [`check`](Self::check) for a call that needs `need`; `path` names it in messages (the HTTP
    /// port's routes use this with their own needs).
    pub fn check_need(&self, need: Need, path: &str, authorization: Option<&[u8]>, has_client_cert: bool) -> Result<Option<Identity>, Status> {
        if need == Need::Open {
            return Ok(None);
        }
        let refuse = |code: Code, reason: ErrorReason, message: String, who: Option<&Identity>| {
            let mut meta = vec![("needed_roles", need.role_list()), ("method", path)];
            if let Some(who) = who {
                meta.push(("role", who.role.as_str()));
                meta.push(("token", who.name.as_str()));
            }
            lth_proto::errors::error_status_with(code, reason, message, &meta)
        };
        if need == Need::Work && self.require_worker_cert && !has_client_cert {
            return Err(refuse(Code::Unauthenticated, ErrorReason::ClientCertRequired, format!(
                "{path} needs a client certificate: this coordinator requires mutual TLS for worker calls (--tls-client-ca); set LTH_TLS_CLIENT_CERT and LTH_TLS_CLIENT_KEY"
            ), None));
        }
        let Some(tokens) = &self.tokens else {
            return Ok(Some(Identity::anonymous()));
        };
        let Some(header) = authorization else {
            return Err(refuse(Code::Unauthenticated, ErrorReason::MissingToken, format!(
                "{path} needs a token with role {}: none was sent (set LTH_TOKEN or LTH_TOKEN_FILE)",
                need.roles()
            ), None));
        };
        let token = std::str::from_utf8(header).ok().and_then(|h| h.strip_prefix("Bearer ")).map(str::trim);
        let Some(identity) = token.and_then(|t| tokens.lookup(t)) else {
            return Err(refuse(Code::Unauthenticated, ErrorReason::UnknownToken, format!(
                "{path} needs a token with role {}: the token sent is not one this coordinator knows",
                need.roles()
            ), None));
        };
        if !allows(identity.role, need) {
            return Err(refuse(Code::PermissionDenied, ErrorReason::RoleRefused, format!(
                "{path} needs role {}; the token {:?} has role {}",
                need.roles(),
                identity.name,
                identity.role.as_str()
            ), Some(&identity)));
        }
        Ok(Some(identity))
    }
}

/// The tower layer over the whole server.
#[derive(Clone)]
pub struct AuthLayer(pub Arc<AuthPolicy>);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService { inner, policy: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    policy: Arc<AuthPolicy>,
}

fn has_client_cert(req: &http::Request<Body>) -> bool {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    req.extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.peer_certs())
        .is_some_and(|c| !c.is_empty())
}

impl<S> tower::Service<http::Request<Body>> for AuthService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let decision = self.policy.check(
            req.uri().path(),
            req.headers().get(http::header::AUTHORIZATION).map(|v| v.as_bytes()),
            has_client_cert(&req),
        );
        match decision {
            Ok(identity) => {
                if let Some(identity) = identity {
                    req.extensions_mut().insert(identity);
                }
                // The clone that was polled ready serves this call; the fresh clone waits for the next.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(req))
            }
            Err(status) => {
                tracing::warn!(method = req.uri().path(), code = ?status.code(), reason = status.message(), "call refused");
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_looks_up_by_hash() {
        let t = new_token();
        let text = format!("# comment\n\n{}\n{}\n", auth_line(Role::Worker, "pool", &t), auth_line(Role::Viewer, "v", "other"));
        let tokens = Tokens::parse(&text, "f").unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens.lookup(&t), Some(Identity { name: "pool".into(), role: Role::Worker }));
        assert_eq!(tokens.lookup("other").unwrap().role, Role::Viewer);
        assert_eq!(tokens.lookup("nope"), None);
        assert!(!text.contains(&t), "the file holds only hashes");

        let err = Tokens::parse(&format!("worker pool {t}\n"), "f").unwrap_err().to_string();
        assert!(err.contains("f line 1") && err.contains("never the token itself"), "{err}");
        let one_line = format!("{};{}", auth_line(Role::Worker, "pool", &t), auth_line(Role::Admin, "me", "other"));
        let tokens = Tokens::parse(&one_line, "LTH_AUTH_TOKENS").unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens.lookup("other").unwrap().role, Role::Admin);
        let err = Tokens::parse("boss x sha256:00\n", "f").unwrap_err().to_string();
        assert!(err.contains("unknown role"), "{err}");
    }

    #[test]
    fn roles_cover_exactly_their_calls() {
        use Need::*;
        assert_eq!(need_of("/lth.v1.WorkerService/CompleteJob"), Work);
        assert_eq!(need_of("/lth.v1.SweepService/CancelSweep"), Submit);
        assert_eq!(need_of("/lth.v1.SweepService/RetrySweep"), Submit);
        assert_eq!(need_of("/lth.v1.SweepService/ListSweeps"), View);
        assert_eq!(need_of("/lth.v1.SweepService/SomethingNew"), Admin);
        assert_eq!(need_of("/grpc.health.v1.Health/Check"), Open);
        assert!(allows(Role::Worker, Work) && !allows(Role::Worker, View) && !allows(Role::Worker, Submit));
        assert!(allows(Role::Viewer, View) && !allows(Role::Viewer, Submit) && !allows(Role::Viewer, Work));
        assert!(allows(Role::Submitter, Submit) && allows(Role::Submitter, View) && !allows(Role::Submitter, Work));
        assert!(allows(Role::Admin, Work) && allows(Role::Admin, Admin));
    }
}
