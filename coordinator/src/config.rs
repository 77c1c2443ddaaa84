//! Coordinator configuration: command-line flags, `LTH_*` environment variables, and an optional
//! TOML file, in that order of precedence (a flag beats the environment, which beats the file).
//!
//! The flag names are the ones agreed for the whole project (`lth-coordinator --help` lists
//! them), so scripts, Dockerfiles and Kubernetes manifests can rely on them.

use clap::Parser;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug, Clone, Default)]
#[command(name = "lth-coordinator", version, about = "lth coordinator: schedules Lottery-Ticket sweeps onto worker daemons")]
#[command(args_conflicts_with_subcommands = true)]
#[command(after_help = "Environment (besides the flags' own):\n  \
    LTH_AUTH_TOKENS      accepted tokens as in --auth-file (`ROLE NAME sha256:HEX`, newline or `;` between); both may be given\n  \
    LTH_TOKEN            `healthcheck` and lthctl: the token itself (LTH_TOKEN_FILE beats it)\n  \
    LTH_COORDINATOR      `healthcheck` and lthctl: the coordinator's URL (https:// for TLS)\n  \
    LTH_TLS_CA           `healthcheck`: CA certificate (PEM) of an https:// coordinator\n  \
    LTH_TLS_CLIENT_CERT  `healthcheck`: client certificate (PEM) for mutual TLS\n  \
    LTH_TLS_CLIENT_KEY   its private key (PEM)")]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML file with any of the settings below (keys as the flags, with underscores).
    #[arg(long, env = "LTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to serve gRPC on [default: 127.0.0.1:50051].
    #[arg(long, env = "LTH_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// sqlite://PATH (embedded, one machine) or postgres://USER@HOST:PORT/DB [default: sqlite://lth.db].
    #[arg(long, env = "LTH_DB")]
    pub db: Option<String>,
    /// Artifact store: a local directory or s3://bucket/prefix [default: ./lth-artifacts].
    #[arg(long, env = "LTH_ARTIFACTS")]
    pub artifacts: Option<String>,
    /// A job's lease lasts this long unless a heartbeat extends it [default: 30].
    #[arg(long, env = "LTH_LEASE_SECONDS")]
    pub lease_seconds: Option<u32>,
    /// How often workers are told to heartbeat [default: 5].
    #[arg(long, env = "LTH_HEARTBEAT_SECONDS")]
    pub heartbeat_seconds: Option<u32>,
    /// How often expired leases are re-queued [default: 2].
    #[arg(long, env = "LTH_REAP_INTERVAL_SECONDS")]
    pub reap_interval_seconds: Option<u32>,
    /// Log format: pretty or json [default: pretty].
    #[arg(long, env = "LTH_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Database connections in the pool [default: 16].
    #[arg(long, env = "LTH_DB_MAX_CONNECTIONS")]
    pub db_max_connections: Option<u32>,
    /// The most concurrent ClaimJobs calls (or CompleteJob calls, or upload records) written in one
    /// database round trip; 1 turns group commit off [default: 64].
    #[arg(long, env = "LTH_MAX_BATCH")]
    pub max_batch: Option<u32>,
    /// File of accepted tokens, one `ROLE NAME sha256:HEX` a line (hashes only; see `token create`).
    /// The same lines may come in the LTH_AUTH_TOKENS variable instead. Without tokens every caller
    /// is admin, and only a loopback --listen is allowed unless --insecure.
    #[arg(long, env = "LTH_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "LTH_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "LTH_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS for workers: WorkerService calls must present a client certificate signed by
    /// this CA (PEM). Needs --tls-cert.
    #[arg(long, env = "LTH_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Allow a non-loopback --listen without tokens: anyone who reaches the port is admin.
    #[arg(long, env = "LTH_INSECURE")]
    pub insecure: bool,
    /// Address of the HTTP port (health, metrics, dashboard), or `off` [default: 127.0.0.1:50052].
    /// It follows the same rule as --listen: beyond loopback only with tokens or --insecure.
    #[arg(long, env = "LTH_HTTP_LISTEN", value_parser = parse_http_listen)]
    pub http_listen: Option<HttpListen>,
    /// The most jobs one sweep may expand to; a bigger submit is refused [default: 100000].
    #[arg(long, env = "LTH_MAX_JOBS_PER_SWEEP")]
    pub max_jobs_per_sweep: Option<u64>,
    /// The largest artifact (weights, checkpoint) a worker may upload, in MiB [default: 4096].
    #[arg(long, env = "LTH_MAX_ARTIFACT_MIB")]
    pub max_artifact_mib: Option<u64>,
    /// The largest model or dataset `lthctl` may upload (UploadInput), in bytes; larger ones are
    /// refused with RESOURCE_EXHAUSTED / LIMIT_EXCEEDED [default: 8589934592, 8 GiB].
    #[arg(long, env = "LTH_MAX_INPUT_BYTES")]
    pub max_input_bytes: Option<u64>,
}

/// `--http-listen`: an address, or `off` for no HTTP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum HttpListen {
    Off,
    On(SocketAddr),
}

impl TryFrom<String> for HttpListen {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_http_listen(&s)
    }
}

fn parse_http_listen(s: &str) -> Result<HttpListen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(HttpListen::Off);
    }
    s.parse::<SocketAddr>()
        .map(HttpListen::On)
        .map_err(|e| format!("{s:?} is neither an address like 127.0.0.1:50052 nor `off`: {e}"))
}

/// Subcommands beside serving.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Manage tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Ask a coordinator's health service; exit 0 when SERVING, 1 otherwise (for HEALTHCHECK and probes).
    Healthcheck {
        /// The coordinator to ask (https:// for TLS; LTH_TLS_CA names its CA).
        #[arg(long, env = "LTH_COORDINATOR", default_value = "http://127.0.0.1:50051")]
        coordinator: String,
    },
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum TokenCommand {
    /// Print a new random token and the line to add to the auth file (which keeps only its hash).
    Create {
        /// The token's role.
        #[arg(long)]
        role: crate::auth::Role,
        /// A name for the token (recorded as a sweep's owner and in the audit log) [default: the role].
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(clap::ValueEnum, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

/// The optional TOML file: the same settings as the flags.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    db: Option<String>,
    artifacts: Option<String>,
    lease_seconds: Option<u32>,
    heartbeat_seconds: Option<u32>,
    reap_interval_seconds: Option<u32>,
    log_format: Option<LogFormat>,
    db_max_connections: Option<u32>,
    max_batch: Option<u32>,
    auth_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    insecure: Option<bool>,
    http_listen: Option<HttpListen>,
    max_jobs_per_sweep: Option<u64>,
    max_artifact_mib: Option<u64>,
    max_input_bytes: Option<u64>,
}

/// The resolved settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub db: String,
    pub artifacts: String,
    pub lease: Duration,
    pub heartbeat: Duration,
    pub reap_interval: Duration,
    pub log_format: LogFormat,
    pub db_max_connections: u32,
    pub max_batch: u32,
    pub auth_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub insecure: bool,
    /// None: no HTTP port.
    pub http_listen: Option<SocketAddr>,
    pub max_jobs_per_sweep: u64,
    pub max_artifact_bytes: u64,
    pub max_input_bytes: u64,
}

/// Secure by default: without tokens, refuse to listen where others can reach, unless told.
pub fn check_exposure(listen: SocketAddr, tokens: usize, insecure: bool) -> anyhow::Result<()> {
    if tokens == 0 && !insecure && !listen.ip().is_loopback() {
        anyhow::bail!(
            "refusing to listen on {listen} without tokens: anyone who reaches that address could submit, cancel and forge results. \
             Give tokens (--auth-file or LTH_AUTH_TOKENS; `lth-coordinator token create --role admin` makes one), \
             listen on loopback (127.0.0.1), or pass --insecure to accept that"
        );
    }
    Ok(())
}

impl Args {
    /// Merges flags/environment over the file over the defaults, and checks the result.
    pub fn resolve(&self) -> anyhow::Result<Config> {
        let file = match &self.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {} is invalid: {e}", path.display()))?
            }
        };
        let cfg = Config {
            listen: self.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:50051".parse().unwrap()),
            db: self.db.clone().or(file.db).unwrap_or_else(|| "sqlite://lth.db".into()),
            artifacts: self.artifacts.clone().or(file.artifacts).unwrap_or_else(|| "./lth-artifacts".into()),
            lease: Duration::from_secs(self.lease_seconds.or(file.lease_seconds).unwrap_or(30) as u64),
            heartbeat: Duration::from_secs(self.heartbeat_seconds.or(file.heartbeat_seconds).unwrap_or(5) as u64),
            reap_interval: Duration::from_secs(self.reap_interval_seconds.or(file.reap_interval_seconds).unwrap_or(2) as u64),
            log_format: self.log_format.or(file.log_format).unwrap_or_default(),
            db_max_connections: self.db_max_connections.or(file.db_max_connections).unwrap_or(16),
            max_batch: self.max_batch.or(file.max_batch).unwrap_or(64),
            auth_file: self.auth_file.clone().or(file.auth_file),
            tls_cert: self.tls_cert.clone().or(file.tls_cert),
            tls_key: self.tls_key.clone().or(file.tls_key),
            tls_client_ca: self.tls_client_ca.clone().or(file.tls_client_ca),
            insecure: self.insecure || file.insecure.unwrap_or(false),
            http_listen: match self.http_listen.or(file.http_listen) {
                None => Some("127.0.0.1:50052".parse().unwrap()),
                Some(HttpListen::On(a)) => Some(a),
                Some(HttpListen::Off) => None,
            },
            max_jobs_per_sweep: self.max_jobs_per_sweep.or(file.max_jobs_per_sweep).unwrap_or(100_000),
            max_artifact_bytes: self.max_artifact_mib.or(file.max_artifact_mib).unwrap_or(4096).saturating_mul(1 << 20),
            max_input_bytes: self.max_input_bytes.or(file.max_input_bytes).unwrap_or(crate::rpc::DEFAULT_MAX_INPUT_BYTES),
        };
        if cfg.max_jobs_per_sweep == 0 || cfg.max_artifact_bytes == 0 {
            anyhow::bail!("--max-jobs-per-sweep and --max-artifact-mib must be at least 1");
        }
        if cfg.tls_cert.is_some() != cfg.tls_key.is_some() {
            anyhow::bail!("--tls-cert and --tls-key go together: give both (certificate chain and its key, PEM) or neither");
        }
        if cfg.tls_client_ca.is_some() && cfg.tls_cert.is_none() {
            anyhow::bail!("--tls-client-ca (mutual TLS) needs TLS: give --tls-cert and --tls-key too");
        }
        if cfg.lease.is_zero() || cfg.heartbeat.is_zero() || cfg.reap_interval.is_zero() {
            anyhow::bail!("--lease-seconds, --heartbeat-seconds and --reap-interval-seconds must be at least 1");
        }
        if cfg.heartbeat >= cfg.lease {
            anyhow::bail!(
                "--heartbeat-seconds ({}) must be shorter than --lease-seconds ({}), or every lease expires between heartbeats",
                cfg.heartbeat.as_secs(),
                cfg.lease.as_secs()
            );
        }
        if cfg.db_max_connections == 0 {
            anyhow::bail!("--db-max-connections must be at least 1");
        }
        if cfg.max_batch == 0 {
            anyhow::bail!("--max-batch must be at least 1 (1 turns group commit off)");
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "db = \"postgres://x@h/db\"\nlease_seconds = 60\nlog_format = \"json\"\n").unwrap();
        let args = Args { config: Some(path.clone()), lease_seconds: Some(20), ..Default::default() };
        let c = args.resolve().unwrap();
        assert_eq!(c.db, "postgres://x@h/db");
        assert_eq!(c.lease, Duration::from_secs(20));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(c.http_listen, Some("127.0.0.1:50052".parse().unwrap()));
        assert_eq!(Args { http_listen: Some(HttpListen::Off), ..Default::default() }.resolve().unwrap().http_listen, None);
        assert!(parse_http_listen("nowhere").unwrap_err().contains("`off`"));

        std::fs::write(&path, "leese_seconds = 60\n").unwrap();
        let err = Args { config: Some(path), ..Default::default() }.resolve().unwrap_err().to_string();
        assert!(err.contains("leese_seconds"), "{err}");

        let err = Args { heartbeat_seconds: Some(30), ..Default::default() }.resolve().unwrap_err().to_string();
        assert!(err.contains("must be shorter"), "{err}");

        assert_eq!(Args::default().resolve().unwrap().max_batch, 64);
        let err = Args { max_batch: Some(0), ..Default::default() }.resolve().unwrap_err().to_string();
        assert!(err.contains("--max-batch"), "{err}");
        let err = Args { tls_cert: Some("c.pem".into()), ..Default::default() }.resolve().unwrap_err().to_string();
        assert!(err.contains("--tls-key"), "{err}");
    }

    #[test]
    fn non_loopback_needs_tokens_or_insecure() {
        let any: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let err = check_exposure(any, 0, false).unwrap_err().to_string();
        assert!(err.contains("refusing to listen on 0.0.0.0:50051 without tokens") && err.contains("--insecure"), "{err}");
        check_exposure(any, 1, false).unwrap();
        check_exposure(any, 0, true).unwrap();
        check_exposure("127.0.0.1:1".parse().unwrap(), 0, false).unwrap();
        check_exposure("[::1]:1".parse().unwrap(), 0, false).unwrap();
    }
}
