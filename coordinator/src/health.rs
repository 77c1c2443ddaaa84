//! Health that tells the truth: the gRPC health service (`grpc.health.v1`) reports SERVING only
//! while the database answers. A probe runs `SELECT 1` every interval (with a timeout) and flips
//! the overall status ("") and both services' between SERVING and NOT_SERVING.
//!
//! `lth-coordinator healthcheck` asks that service and exits 0 only on SERVING, so container
//! HEALTHCHECKs and Kubernetes exec probes need no extra probe binary.

use crate::rpc::{SweepSvc, WorkerSvc};
use crate::store::Store;
use lth_proto::v1 as pb;
use std::time::Duration;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

type SweepServer = pb::sweep_service_server::SweepServiceServer<SweepSvc>;
type WorkerServer = pb::worker_service_server::WorkerServiceServer<WorkerSvc>;

async fn set(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter.set_service_status(<SweepServer as tonic::server::NamedService>::NAME, status).await;
    reporter.set_service_status(<WorkerServer as tonic::server::NamedService>::NAME, status).await;
}

/// Probes the database every `every` until `stop` fires, reporting the outcome.
pub async fn run_probe(store: Store, reporter: HealthReporter, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut serving: Option<bool> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let timeout = every.max(Duration::from_secs(1)) * 2;
        let outcome = match tokio::time::timeout(timeout, store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
        };
        let ok = outcome.is_ok();
        if serving != Some(ok) {
            match &outcome {
                Ok(()) => tracing::info!("database reachable: health SERVING"),
                Err(e) => tracing::error!(error = %e, "database unreachable: health NOT_SERVING"),
            }
            set(&reporter, if ok { ServingStatus::Serving } else { ServingStatus::NotServing }).await;
            serving = Some(ok);
        }
    }
}

/// `lth-coordinator healthcheck`: Ok(true) when the coordinator at `url` reports SERVING.
pub async fn check(url: &str, opts: &lth_proto::client::ClientOptions) -> anyhow::Result<tonic_health::pb::health_check_response::ServingStatus> {
    let endpoint = opts.endpoint(url)?.connect_timeout(Duration::from_secs(3)).timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| {
        let chain = lth_proto::client::error_chain(&e);
        match lth_proto::client::scheme_hint(url, &chain) {
            Some(h) => anyhow::anyhow!("cannot reach {url}: {chain} ({h})"),
            None => anyhow::anyhow!("cannot reach {url}: {chain}"),
        }
    })?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = client
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .map_err(|s| match lth_proto::client::scheme_hint(url, s.message()) {
            Some(h) => anyhow::anyhow!("health check at {url} failed ({:?}: {}; {h})", s.code(), s.message()),
            None => anyhow::anyhow!("health check at {url} failed ({:?}): {}", s.code(), s.message()),
        })?;
    Ok(reply.into_inner().status())
}
