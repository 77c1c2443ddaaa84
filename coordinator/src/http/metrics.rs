//! `GET /metrics`: the coordinator's Prometheus metrics (text exposition format).
//!
//! Two kinds of series:
//! - **Recorded** as things happen, through the `metrics` facade into one process-wide
//!   `metrics-exporter-prometheus` recorder ([`install`]): counters of claims, completions,
//!   failures, releases, lost leases, database errors and artifact bytes; histograms of ClaimJobs
//!   and CompleteJob latency, of group-commit batch sizes and durations, and of the store's waits
//!   for a pooled database connection (`lth_db_pool_wait_seconds{op}`, `store/pool_wait.rs`).
//! - **Computed at scrape time** from the database, so they are right across restarts and across
//!   several coordinators on one Postgres: jobs by state (all sweeps), jobs by state of each
//!   unfinished sweep (one grouped statement for both), live workers, whether the database
//!   answered, and the connection pool's size.
//!
//! Names follow Prometheus conventions: `lth_` prefix, `_total` for counters, base units
//! (`_seconds`, `_bytes`). The Grafana dashboard in deploy/grafana/ uses them and
//! deploy/check/grafana_check.py checks that every name it queries appears in these sources.
//!
//! Access: without tokens `/metrics` is open (like every call then). With tokens it needs a bearer
//! token of a role that may view sweeps (viewer, submitter or admin, as GetSweep does): a
//! worker-only token gets 403, no or an unknown token 401. Prometheus sends it with
//! `authorization: { credentials_file: ... }` in the scrape config.

use super::HttpState;
use crate::auth::Need;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::fmt::Write;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Latency buckets (seconds) for every `_seconds` histogram: 0.5 ms to 30 s.
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Calls per group-commit batch (max_batch is 64 by default).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Waits for a pooled database connection: 10 µs (an idle connection at hand) to the pool's 10 s
/// acquire timeout.
const POOL_WAIT_BUCKETS: &[f64] = &[0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The recorded series' names (the scrape-time ones are written in [`scrape_section`]).
pub mod names {
    pub const JOBS_CLAIMED: &str = "lth_jobs_claimed_total";
    pub const JOBS_CLAIMED_WITH_COMPLETION: &str = "lth_jobs_claimed_with_completion_total";
    pub const JOBS_COMPLETED: &str = "lth_jobs_completed_total";
    pub const JOB_FAILURES: &str = "lth_job_failures_total";
    pub const JOBS_RELEASED: &str = "lth_jobs_released_total";
    pub const LEASES_LOST: &str = "lth_leases_lost_total";
    pub const CLAIM_SECONDS: &str = "lth_claim_duration_seconds";
    pub const COMPLETE_SECONDS: &str = "lth_complete_duration_seconds";
    pub const BATCH_SIZE: &str = "lth_group_commit_batch_size";
    pub const BATCH_SECONDS: &str = "lth_group_commit_batch_duration_seconds";
    pub const BATCH_RETRIED_ALONE: &str = "lth_group_commit_retried_alone_total";
    pub const DB_ERRORS: &str = "lth_db_errors_total";
    pub const ARTIFACT_BYTES: &str = "lth_artifact_bytes_total";
    /// Recorded by the store (`store/pool_wait.rs`).
    pub const DB_POOL_WAIT_SECONDS: &str = crate::store::pool_wait::POOL_WAIT_SECONDS;
    pub const ARTIFACTS_LOST: &str = "lth_artifacts_lost_total";
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once (later calls return the same handle). None when another
/// recorder was installed first (then only the scrape-time series are served).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(names::BATCH_SIZE.into()), BATCH_BUCKETS))
                // A Full matcher wins over the `_seconds` suffix (the exporter tries Full first).
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(names::DB_POOL_WAIT_SECONDS.into()), POOL_WAIT_BUCKETS));
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    return None;
                }
            };
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe();
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "another metrics recorder is installed: /metrics serves only the database-derived series");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(names::JOBS_CLAIMED, "Jobs handed to workers (by ClaimJobs, or in a CompleteJob reply).");
    describe_counter!(names::JOBS_CLAIMED_WITH_COMPLETION, "Jobs handed to workers in a CompleteJob reply (claim_next); also counted in lth_jobs_claimed_total.");
    describe_counter!(names::JOBS_COMPLETED, "Jobs completed (CompleteJob accepted).");
    describe_counter!(names::JOB_FAILURES, "Job attempts reported failed by workers (FailJob), by whether they are retried.");
    describe_counter!(names::JOBS_RELEASED, "Jobs handed back by shutting-down workers (ReleaseJob).");
    describe_counter!(names::LEASES_LOST, "Leases that expired and were re-queued by the reaper (worker lost).");
    describe_histogram!(names::CLAIM_SECONDS, Unit::Seconds, "ClaimJobs call latency, queueing in group commit included.");
    describe_histogram!(names::COMPLETE_SECONDS, Unit::Seconds, "CompleteJob call latency, queueing in group commit included.");
    describe_histogram!(names::BATCH_SIZE, "Calls written per group-commit database round trip, by kind (claim, complete, record).");
    describe_histogram!(names::BATCH_SECONDS, Unit::Seconds, "Duration of one group-commit batch statement, by kind.");
    describe_counter!(names::BATCH_RETRIED_ALONE, "Calls retried one by one after their batch failed as a whole.");
    describe_counter!(names::DB_ERRORS, "Database errors answered to callers or hit by the reaper, by kind (pool_timed_out, connection, database, other).");
    describe_histogram!(
        names::DB_POOL_WAIT_SECONDS,
        Unit::Seconds,
        "Time the store waited for a pooled database connection, by operation (claim, complete, record, heartbeat, write)."
    );
    describe_counter!(names::ARTIFACT_BYTES, Unit::Bytes, "Artifact bytes uploaded by workers (direction=in) and downloaded (direction=out).");
    describe_counter!(names::ARTIFACTS_LOST, "Downloads that found a recorded file missing from the object store or not matching its size and sha256 (by artifact name); each hands its job back and repairs the file.");
}

/// Drains histogram samples into their buckets every few seconds, as the exporter needs when it
/// runs without its own HTTP listener. Stops with the process.
pub fn spawn_upkeep(handle: &'static PrometheusHandle) {
    static STARTED: OnceLock<()> = OnceLock::new();
    if STARTED.set(()).is_ok() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        });
    }
}

/// The kind label of a database error.
pub fn db_error_kind(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::PoolTimedOut => "pool_timed_out",
        sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed => "connection",
        sqlx::Error::Database(_) => "database",
        _ => "other",
    }
}

/// Counts one database error.
pub fn count_db_error(kind: &'static str) {
    metrics::counter!(names::DB_ERRORS, "kind" => kind).increment(1);
}

/// The routes this module adds to the HTTP port.
pub fn routes() -> Router<Arc<HttpState>> {
    Router::new().route("/metrics", get(metrics_page))
}

async fn metrics_page(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    if let Err(status) = state.auth.check_need(Need::View, "GET /metrics", authorization, false) {
        let code = if status.code() == tonic::Code::PermissionDenied { StatusCode::FORBIDDEN } else { StatusCode::UNAUTHORIZED };
        let mut resp = (code, format!("{}\n", status.message())).into_response();
        if code == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        return resp;
    }
    let mut body = install().map(|h| h.render()).unwrap_or_default();
    scrape_section(&state, &mut body).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// Escapes a label value for the text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The series computed from the database at scrape time.
async fn scrape_section(state: &HttpState, out: &mut String) {
    let store = &state.coord.store;
    let pool = store.pool_stats();
    let _ = writeln!(out, "# HELP lth_db_pool_connections Connections in the coordinator's database pool, by state.");
    let _ = writeln!(out, "# TYPE lth_db_pool_connections gauge");
    let _ = writeln!(out, "lth_db_pool_connections{{state=\"idle\"}} {}", pool.idle);
    let _ = writeln!(out, "lth_db_pool_connections{{state=\"in_use\"}} {}", pool.size.saturating_sub(pool.idle));
    let _ = writeln!(out, "# HELP lth_db_pool_max_connections The pool's limit (--db-max-connections).");
    let _ = writeln!(out, "# TYPE lth_db_pool_max_connections gauge");
    let _ = writeln!(out, "lth_db_pool_max_connections {}", pool.max);

    let live_within = state.coord.opts.heartbeat * 3;
    let counts = tokio::time::timeout(Duration::from_secs(5), store.scrape_counts(live_within)).await;
    let counts = match counts {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: database query failed");
            None
        }
        Err(_) => None,
    };
    let _ = writeln!(out, "# HELP lth_database_up Whether the database answered this scrape's queries (1) or not (0).");
    let _ = writeln!(out, "# TYPE lth_database_up gauge");
    let _ = writeln!(out, "lth_database_up {}", counts.is_some() as u8);
    let Some(c) = counts else { return };

    const STATES: [&str; 6] = ["blocked", "ready", "running", "succeeded", "failed", "cancelled"];
    let _ = writeln!(out, "# HELP lth_jobs Jobs in the store by state (all sweeps).");
    let _ = writeln!(out, "# TYPE lth_jobs gauge");
    for s in STATES {
        let n: i64 = c.jobs.iter().filter(|r| r.state == s).map(|r| r.count).sum();
        let _ = writeln!(out, "lth_jobs{{state=\"{s}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP lth_sweep_jobs Jobs of each unfinished (running or paused) sweep by state.");
    let _ = writeln!(out, "# TYPE lth_sweep_jobs gauge");
    for r in c.jobs.iter().filter(|r| r.sweep_id.is_some()) {
        let _ = writeln!(
            out,
            "lth_sweep_jobs{{sweep_id=\"{}\",sweep=\"{}\",state=\"{}\"}} {}",
            r.sweep_id.unwrap_or(0),
            label(r.sweep_name.as_deref().unwrap_or("")),
            label(&r.state),
            r.count
        );
    }
    let _ = writeln!(out, "# HELP lth_workers_live Workers that heartbeat within the last three heartbeat intervals.");
    let _ = writeln!(out, "# TYPE lth_workers_live gauge");
    let _ = writeln!(out, "lth_workers_live {}", c.workers_live);
    let _ = writeln!(out, "# HELP lth_workers_registered Workers the store knows (live or not).");
    let _ = writeln!(out, "# TYPE lth_workers_registered gauge");
    let _ = writeln!(out, "lth_workers_registered {}", c.workers_registered);
}
