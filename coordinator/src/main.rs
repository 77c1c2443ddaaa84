//! `lth-coordinator`: serves the sweep and worker gRPC services over a Postgres or SQLite store.

use clap::Parser;
use lth_coordinator::artifacts::ArtifactStore;
use lth_coordinator::config::{Args, LogFormat};
use lth_coordinator::group_commit::GroupCommitOptions;
use lth_coordinator::service::ServiceOptions;
use lth_coordinator::store::{redact_url, Store, StoreOptions};
use std::process::ExitCode;

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,h2=warn,tower=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
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

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match args.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lth-coordinator: {e}");
            return ExitCode::from(2);
        }
    };
    init_logs(cfg.log_format);
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
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| cfg.listen.to_string());
    tracing::info!(db = %redact_url(&cfg.db), backend = store.backend_name(), artifacts = %cfg.artifacts, "coordinator ready");
    println!("lth-coordinator listening on {addr}");
    let opts = ServiceOptions {
        lease: cfg.lease,
        heartbeat: cfg.heartbeat,
        group_commit: GroupCommitOptions { max_batch: cfg.max_batch as usize, ..Default::default() },
        ..Default::default()
    };
    let result = lth_coordinator::server::serve(store.clone(), artifacts, opts, cfg.reap_interval, listener, shutdown_signal()).await;
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
