//! `lth-coordinator`: serves the sweep and worker gRPC services over a Postgres or SQLite store.

use clap::Parser;
use lth_coordinator::artifacts::ArtifactStore;
use lth_coordinator::auth::{AuthPolicy, Tokens};
use lth_coordinator::config::{check_exposure, Args, Command, Config, LogFormat, TokenCommand};
use lth_coordinator::group_commit::GroupCommitOptions;
use lth_coordinator::rpc::ServiceOptions;
use lth_coordinator::store::{redact_url, Store, StoreOptions};
use std::process::ExitCode;

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,h2=warn,tower=warn"));
    use std::io::IsTerminal;
    // Colour only when a person reads the terminal; files and log collectors get plain text.
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received: finishing in-flight calls");
}

/// The accepted tokens: the auth file, then the LTH_AUTH_TOKENS variable (both if both are set).
fn load_tokens(cfg: &Config) -> anyhow::Result<Tokens> {
    let mut text = String::new();
    if let Some(path) = &cfg.auth_file {
        let t = Tokens::from_file(path)?;
        if t.is_empty() {
            anyhow::bail!("the auth file {} lists no tokens: add lines from `lth-coordinator token create`, or drop --auth-file", path.display());
        }
        text.push_str(&std::fs::read_to_string(path)?);
        text.push('\n');
    }
    if let Ok(env) = std::env::var("LTH_AUTH_TOKENS") {
        Tokens::parse(&env, "LTH_AUTH_TOKENS")?;
        text.push_str(&env);
    }
    Tokens::parse(&text, "the auth file and LTH_AUTH_TOKENS")
}

fn tls_config(cfg: &Config) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) else { return Ok(None) };
    let read = |p: &std::path::Path, what: &str| std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {what} {}: {e}", p.display()));
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(read(cert, "--tls-cert")?, read(key, "--tls-key")?));
    if let Some(ca) = &cfg.tls_client_ca {
        // Optional at the TLS level so that lthctl connects without a certificate; the auth layer
        // then refuses WorkerService calls that came without one.
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca, "--tls-client-ca")?)).client_auth_optional(true);
    }
    Ok(Some(tls))
}

async fn run_command(cmd: Command) -> ExitCode {
    match cmd {
        Command::Token(TokenCommand::Create { role, name }) => {
            let name = name.unwrap_or_else(|| role.as_str().to_string());
            if name.is_empty() || name.chars().any(|c| c.is_whitespace()) {
                eprintln!("lth-coordinator: --name must be one word (no spaces)");
                return ExitCode::from(2);
            }
            let token = lth_coordinator::auth::new_token();
            println!("token: {token}");
            println!("auth-file line: {}", lth_coordinator::auth::auth_line(role, &name, &token));
            eprintln!("Give the token to its user (LTH_TOKEN or LTH_TOKEN_FILE); add the line to the coordinator's --auth-file (or LTH_AUTH_TOKENS) and restart it. The token is not stored anywhere.");
            ExitCode::SUCCESS
        }
        Command::Healthcheck { coordinator } => {
            let opts = match lth_proto::client::ClientOptions::from_env(None) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("lth-coordinator healthcheck: {e}");
                    return ExitCode::from(2);
                }
            };
            match lth_coordinator::health::check(&coordinator, &opts).await {
                Ok(status) => {
                    println!("{}", status.as_str_name());
                    if status == tonic_health::pb::health_check_response::ServingStatus::Serving {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("lth-coordinator healthcheck: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(cmd) = args.command.clone() {
        return run_command(cmd).await;
    }
    let cfg = match args.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lth-coordinator: {e}");
            return ExitCode::from(2);
        }
    };
    init_logs(cfg.log_format);
    let security = match (load_tokens(&cfg), tls_config(&cfg)) {
        (Ok(tokens), Ok(tls)) => {
            for addr in std::iter::once(cfg.listen).chain(cfg.http_listen) {
                if let Err(e) = check_exposure(addr, tokens.len(), cfg.insecure) {
                    eprintln!("lth-coordinator: {e}");
                    return ExitCode::from(2);
                }
            }
            if tokens.is_empty() && !cfg.listen.ip().is_loopback() {
                tracing::warn!(listen = %cfg.listen, "--insecure: no tokens, anyone who reaches this address is admin");
            }
            let require_worker_cert = cfg.tls_client_ca.is_some();
            let auth = AuthPolicy { tokens: if tokens.is_empty() { None } else { Some(tokens) }, require_worker_cert };
            lth_coordinator::server::Security { auth, tls, ..Default::default() }
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("lth-coordinator: {e}");
            return ExitCode::from(2);
        }
    };
    let store = match Store::connect(&cfg.db, &StoreOptions { max_connections: cfg.db_max_connections, ..Default::default() }).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lth-coordinator: {e}");
            return ExitCode::from(2);
        }
    };
    let artifacts = match ArtifactStore::open(&cfg.artifacts) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("lth-coordinator: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lth-coordinator: cannot listen on {}: {e} (is another coordinator running? pick another --listen)", cfg.listen);
            return ExitCode::from(2);
        }
    };
    let mut security = security;
    if let Some(http_addr) = cfg.http_listen {
        match tokio::net::TcpListener::bind(http_addr).await {
            Ok(l) => security.http = Some(l),
            Err(e) => {
                eprintln!("lth-coordinator: cannot serve HTTP on {http_addr}: {e} (pick another --http-listen, or `--http-listen off`)");
                return ExitCode::from(2);
            }
        }
    }
    let http_addr = security.http.as_ref().and_then(|l| l.local_addr().ok());
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| cfg.listen.to_string());
    let tokens = security.auth.tokens.as_ref().map(|t| t.len()).unwrap_or(0);
    let tls = if security.tls.is_none() { "off" } else if cfg.tls_client_ca.is_some() { "mutual" } else { "on" };
    tracing::info!(db = %redact_url(&cfg.db), backend = store.backend_name(), artifacts = %cfg.artifacts, tokens, tls, "coordinator ready");
    tracing::info!(addr = %addr, "listening on {addr}");
    // The readiness line on stdout, for scripts and tests (the logs are on stderr).
    if let Some(h) = http_addr {
        tracing::info!(addr = %h, "HTTP (health, metrics, dashboard) on http://{h}/");
        println!("lth-coordinator http on {h}");
    }
    println!("lth-coordinator listening on {addr}");
    let opts = ServiceOptions {
        lease: cfg.lease,
        heartbeat: cfg.heartbeat,
        group_commit: GroupCommitOptions { max_batch: cfg.max_batch as usize, ..Default::default() },
        max_jobs_per_sweep: cfg.max_jobs_per_sweep,
        max_artifact_bytes: cfg.max_artifact_bytes,
        max_input_bytes: cfg.max_input_bytes,
        ..Default::default()
    };
    let result = lth_coordinator::server::serve_with(store.clone(), artifacts, opts, cfg.reap_interval, listener, security, shutdown_signal()).await;
    store.close().await;
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lth-coordinator: server error: {e}");
            ExitCode::FAILURE
        }
    }
}
