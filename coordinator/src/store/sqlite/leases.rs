//! What a worker does while it holds leases: heartbeats, progress, and the lease checks of the
//! upload path.

use super::begin_write;
use crate::store::error::{stale, superseded, unknown_worker, Result};
use crate::store::types::{Lease, ProgressInput};
use lth_sweep::state::{abort_reason, AbortReason};
use sqlx::types::Json;
use sqlx::{SqlitePool, Row};
use std::time::Duration;

/// Extends the leases the worker still holds (recording its health) and says which of its jobs to
/// abort, and why. Refused with [`superseded`] when `instance` is not the process that registered
/// the worker id last.
pub(crate) async fn heartbeat(
    pool: &SqlitePool,
    worker_id: &str,
    instance: &str,
    leases: &[Lease],
    lease: Duration,
    unhealthy: Option<&str>,
) -> Result<Vec<(Lease, AbortReason)>> {
    let secs = lease.as_secs_f64();
    let mut tx = begin_write(pool, "heartbeat").await?;
    let seen = sqlx::query(sql!("touch_worker")).bind(worker_id).bind(unhealthy).bind(instance).execute(&mut *tx).await?;
    if seen.rows_affected() == 0 {
        let registered: Option<Option<String>> = sqlx::query_scalar(sql!("worker_instance")).bind(worker_id).fetch_optional(&mut *tx).await?;
        return Err(match registered {
            Some(_) => superseded(worker_id),
            None => unknown_worker(worker_id),
        });
    }
    let mut aborts = Vec::new();
    for l in leases {
        let extended = sqlx::query(sql!("extend_lease")).bind(l.job_id).bind(l.attempt).bind(worker_id).bind(secs).execute(&mut *tx).await?;
        if extended.rows_affected() == 1 {
            continue;
        }
        let reason = match sqlx::query(sql!("abort_reason")).bind(l.job_id).fetch_optional(&mut *tx).await? {
            Some(r) => abort_reason(r.try_get("job_state")?, r.try_get("sweep_state")?),
            None => AbortReason::LeaseLost,
        };
        aborts.push((*l, reason));
    }
    tx.commit().await?;
    Ok(aborts)
}

pub(crate) async fn running_job_kind(pool: &SqlitePool, lease: Lease) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(sql!("running_job_kind")).bind(lease.job_id).bind(lease.attempt).fetch_optional(pool).await?)
}

pub(crate) async fn is_current(pool: &SqlitePool, lease: Lease) -> Result<bool> {
    let n: i64 = sqlx::query_scalar(sql!("lease_is_current")).bind(lease.job_id).bind(lease.attempt).fetch_one(pool).await?;
    Ok(n == 1)
}

/// Records a progress report (`fraction` of the job done) and its event.
pub(crate) async fn report_progress(pool: &SqlitePool, lease: Lease, fraction: f64, p: &ProgressInput) -> Result<()> {
    let detail = serde_json::json!({
        "iteration": p.iteration, "total_iterations": p.total_iterations, "epoch": p.epoch,
        "train_loss": p.train_loss, "test_accuracy": p.test_accuracy, "images_per_second": p.images_per_second,
    });
    let mut tx = begin_write(pool, "write").await?;
    let row = sqlx::query(sql!("report_progress")).bind(lease.job_id).bind(lease.attempt).bind(fraction).fetch_optional(&mut *tx).await?;
    let Some(row) = row else { return Err(stale(lease)) };
    let sweep_id: i64 = row.try_get("sweep_id")?;
    sqlx::query(sql!("insert_progress_event"))
        .bind(sweep_id)
        .bind(lease.job_id)
        .bind(lease.attempt)
        .bind(fraction)
        .bind(Json(&detail))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
