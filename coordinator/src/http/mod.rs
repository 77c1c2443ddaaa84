//! The coordinator's HTTP port (`--http-listen`, default 127.0.0.1:50052): everything a browser
//! or a scraper reads, beside the gRPC port that workers and lthctl use.
//!
//! # Layout
//! - this file: the shared state, the router that merges every module's routes, and `serve`.
//! - `GET /healthz`: 200 "ok" while the database answers, 503 with the error otherwise (for HTTP
//!   load balancers; containers use `lth-coordinator healthcheck`, which asks the gRPC health
//!   service).
//!
//! Modules that add routes (Prometheus metrics, the dashboard) each expose a
//! `fn routes() -> Router<Arc<HttpState>>` that [`router`] merges, so none of them edits another.
//! The same exposure rule as the gRPC port holds: a non-loopback `--http-listen` needs tokens or
//! `--insecure` (checked by the binary), and routes that show sweep data check the caller's token
//! with [`HttpState::auth`].

pub mod dashboard;
pub mod metrics;

use crate::auth::AuthPolicy;
use crate::rpc::Coordinator;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// What every HTTP handler can reach.
pub struct HttpState {
    /// The same coordinator the gRPC services use (store, batcher, artifacts).
    pub coord: Arc<Coordinator>,
    /// The same tokens and roles as the gRPC port.
    pub auth: Arc<AuthPolicy>,
}

/// Every route of the HTTP port.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new().route("/healthz", get(healthz)).merge(metrics::routes()).merge(dashboard::routes()).with_state(state)
}

async fn healthz(State(state): State<Arc<HttpState>>) -> impl IntoResponse {
    match tokio::time::timeout(Duration::from_secs(5), state.coord.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ok\n".to_string()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("database unreachable: {e}\n")),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "database unreachable: no answer within 5 s\n".to_string()),
    }
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, router: Router, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
