//! Assembles the gRPC server (both services, health, reflection), the HTTP port, the health probe
//! and the reaper (`reaper.rs`), and runs them until a shutdown signal. Used by the binary and by
//! the integration tests, which serve on an ephemeral port.

use crate::artifacts::ArtifactStore;
use crate::auth::{AuthLayer, AuthPolicy};
use crate::reaper::run_reaper;
use crate::rpc::{Coordinator, ServiceOptions, SweepSvc, WorkerSvc};
use crate::store::Store;
use lth_proto::v1 as pb;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Large enough for a completion carrying VGG-16's masks (15M weights = 1.9 MB of bits).
const MAX_MESSAGE: usize = 64 << 20;

/// Who may call, over which transport, and how health is probed.
pub struct Security {
    pub auth: AuthPolicy,
    /// Some: serve TLS (rustls) with this certificate (and client CA for mutual TLS).
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// How often the health service probes the database.
    pub health_probe: Duration,
    /// Some: also serve the HTTP port (health, metrics, dashboard) on this listener, with the
    /// same tokens. Its exposure is checked by the caller, as the gRPC listener's is.
    pub http: Option<TcpListener>,
}

impl Default for Security {
    /// No tokens, plaintext: what the tests and the loopback demo use.
    fn default() -> Self {
        Security { auth: AuthPolicy::open(), tls: None, health_probe: Duration::from_secs(2), http: None }
    }
}

/// Serves both services on `listener` until `shutdown` completes, then drains in-flight calls.
/// No tokens, plaintext: [`serve_with`] sets those.
pub async fn serve(
    store: Store,
    artifacts: ArtifactStore,
    opts: ServiceOptions,
    reap_interval: Duration,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(store, artifacts, opts, reap_interval, listener, Security::default(), shutdown).await
}

/// [`serve`] with tokens, TLS and the health probe interval from `security`.
pub async fn serve_with(
    store: Store,
    artifacts: ArtifactStore,
    opts: ServiceOptions,
    reap_interval: Duration,
    listener: TcpListener,
    security: Security,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Before the services exist, so that their first calls are counted.
    if let Some(handle) = crate::http::metrics::install() {
        crate::http::metrics::spawn_upkeep(handle);
    }
    // A submit cut short by a crash left its sweep half-written (and claimable by no one).
    let discarded = store.discard_unfinished_submits().await?;
    if !discarded.is_empty() {
        tracing::warn!(sweeps = ?discarded, "deleted sweeps whose submit did not finish (the coordinator stopped while writing them); submit them again");
    }
    // A pause, resume, cancel or retry cut short by a crash (SQLite writes them in chunks).
    let finished = store.finish_unfinished_sweep_ops().await?;
    if !finished.is_empty() {
        tracing::warn!(ops = ?finished, "finished sweep operations that the coordinator stopped half-way");
    }
    let coord: Arc<Coordinator> = Coordinator::new(store.clone(), artifacts, opts);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<pb::sweep_service_server::SweepServiceServer<SweepSvc>>().await;
    health_reporter.set_serving::<pb::worker_service_server::WorkerServiceServer<WorkerSvc>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reaper = tokio::spawn(run_reaper(store.clone(), reap_interval, stop_rx.clone()));
    let probe = tokio::spawn(crate::health::run_probe(store.clone(), health_reporter, security.health_probe, stop_rx));

    let sweep = pb::sweep_service_server::SweepServiceServer::new(SweepSvc(coord.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let worker = pb::worker_service_server::WorkerServiceServer::new(WorkerSvc(coord.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    // serve_with_incoming ignores the builder's TCP settings, so set them on the accepted
    // sockets. Without TCP_NODELAY a small reply can sit behind Nagle's algorithm and the
    // client's delayed ACK for 40 ms: ClaimJobs p50 was 140 ms over gRPC (BENCHMARKS.md).
    // Keepalive notices workers whose machine vanished without closing the connection.
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    let auth = Arc::new(security.auth);
    let http = security.http.map(|listener| {
        let state = Arc::new(crate::http::HttpState { coord: coord.clone(), auth: auth.clone() });
        let mut stop = stop_tx.subscribe();
        tokio::spawn(crate::http::serve(listener, crate::http::router(state), async move {
            let _ = stop.changed().await;
        }))
    });
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = security.tls {
        builder = builder.tls_config(tls)?;
    }
    let result = builder
        .layer(AuthLayer(auth))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(sweep)
        .add_service(worker)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    let _ = stop_tx.send(true);
    let _ = reaper.await;
    let _ = probe.await;
    if let Some(mut http) = http {
        // Long-lived responses (event streams) would hold a graceful shutdown open forever.
        if tokio::time::timeout(Duration::from_secs(2), &mut http).await.is_err() {
            http.abort();
        }
    }
    result?;
    Ok(())
}
