//! The reaper: the store's periodic upkeep, one pass every `--reap-interval-seconds`.
//!
//! Each pass ([`Store::reap`]) re-queues jobs whose lease expired (their worker died or lost
//! contact; counted as lost, apart from failures), closes trials and sweeps that two concurrent
//! completion batches each left open, and makes ready the jobs that rewind to a dense job a
//! repair ran again; then, on Postgres, it vacuums `jobs` when dead rows pile up (they slow every
//! claim's index scan, and autovacuum comes at most once a minute). A failed pass is logged and
//! retried on the next tick: every step is idempotent, and several coordinators on one database
//! may reap concurrently.

use crate::store::{Store, StoreError};
use std::time::Duration;

/// Re-queues expired leases, closes finished sweeps and vacuums the jobs table when it needs it,
/// every `every`, until `stop` fires.
pub async fn run_reaper(store: Store, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Event watermarks of the last two passes: a pass closes trials with a job that succeeded
    // after the older one. They start at the mark an earlier reaper recorded (the first passes
    // look at every running trial only where none is known); each pass records the one its
    // successor will start from.
    let mark = match store.reaper_mark().await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the reaper's mark; the first passes look at every running trial");
            None
        }
    };
    let (mut older, mut newer): (Option<i64>, Option<i64>) = (mark, mark);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match store.reap_after(older, newer).await {
            Ok(r) => {
                older = newer;
                newer = Some(r.event_watermark);
                metrics::counter!(crate::http::metrics::names::LEASES_LOST).increment(r.lost.len() as u64);
                for l in &r.lost {
                    tracing::warn!(job_id = l.job_id, attempt = l.attempt, "lease expired: job re-queued (worker lost)");
                }
                for s in &r.finished_sweeps {
                    tracing::info!(sweep_id = s, "sweep finished");
                }
            }
            Err(e) => {
                if let StoreError::Db(db) = &e {
                    crate::http::metrics::count_db_error(crate::http::metrics::db_error_kind(db));
                }
                tracing::error!(error = %e, "reaper pass failed; retrying next interval")
            }
        }
        match store.vacuum_jobs_if_needed().await {
            Ok(Some(v)) => tracing::debug!(dead_rows = v.dead_rows, vacuumed = v.vacuumed, analyzed = v.analyzed, took_ms = v.took.as_millis() as u64, "vacuumed or analyzed the jobs table"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "vacuum of the jobs table failed; autovacuum still runs"),
        }
    }
}
