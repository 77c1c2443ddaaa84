//! Attempts that end without a result: failed (by the job or by the worker's machine) or handed
//! back on the worker's request.

use super::{begin_write, close_attempt, fail_descendants, finalize_sweeps, insert_job_event};
use crate::store::error::{stale, Result};
use crate::store::rules::FailRule;
use crate::store::types::{Failure, Lease};
use sqlx::{SqlitePool, Row};
use std::time::Duration;

/// Records a failed attempt (see [`crate::store::Store::fail_job_on`] for the rules).
pub(crate) async fn fail(pool: &SqlitePool, lease: Lease, error: &str, how: Failure, alive_within: Duration) -> Result<()> {
    let mut tx = begin_write(pool, "write").await?;
    let Some(row) = sqlx::query(sql!("failing_job")).bind(lease.job_id).bind(lease.attempt).fetch_optional(&mut *tx).await? else {
        return Err(stale(lease));
    };
    let worker: Option<String> = row.try_get("worker_id")?;
    let rule = FailRule { errors: row.try_get("error_count")?, max_attempts: row.try_get("max_attempts")?, excluded: row.try_get("excluded")? };
    let (counts, mut retry) = rule.apply(how);
    let mut error = error.to_string();
    if how.node_local && retry {
        let others: i64 = sqlx::query_scalar(sql!("other_workers"))
            .bind(worker.as_deref().unwrap_or_default())
            .bind(lease.job_id)
            .bind(-alive_within.as_secs_f64())
            .fetch_one(&mut *tx)
            .await?;
        if others == 0 {
            retry = false;
            error.push_str("\n(no other live, healthy worker may take the job: it failed here for good; `lthctl retry` it once a worker can run it)");
        }
    }
    let error = error.as_str();
    let state = if retry { "ready" } else { "failed" };
    sqlx::query(sql!("fail_job"))
        .bind(lease.job_id)
        .bind(lease.attempt)
        .bind(i32::from(counts))
        .bind(error)
        .bind(state)
        .execute(&mut *tx)
        .await?;
    if let (true, Some(w)) = (how.node_local, worker.as_deref()) {
        sqlx::query(sql!("exclude_worker")).bind(lease.job_id).bind(w).bind(error).execute(&mut *tx).await?;
    }
    let sweep_id: i64 = sqlx::query_scalar(sql!("job_sweep")).bind(lease.job_id).fetch_one(&mut *tx).await?;
    close_attempt(&mut tx, lease, "failed", error).await?;
    let detail = if how.node_local {
        serde_json::json!({ "error": error, "node_local": true, "worker": worker, "counted": counts })
    } else {
        serde_json::json!({ "error": error })
    };
    insert_job_event(&mut tx, sweep_id, lease.job_id, state, lease.attempt, None, Some(detail)).await?;
    if state == "failed" {
        fail_descendants(&mut tx, lease.job_id).await?;
        finalize_sweeps(&mut tx, Some(sweep_id)).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Gives a running job back on the worker's request: ready again at once, the attempt aborted.
pub(crate) async fn release(pool: &SqlitePool, lease: Lease, reason: &str) -> Result<()> {
    let error = format!("released by the worker: {reason}");
    let mut tx = begin_write(pool, "write").await?;
    let Some(row) = sqlx::query(sql!("release_job")).bind(lease.job_id).bind(lease.attempt).fetch_optional(&mut *tx).await? else {
        return Err(stale(lease));
    };
    let sweep_id: i64 = row.try_get("sweep_id")?;
    close_attempt(&mut tx, lease, "aborted", &error).await?;
    insert_job_event(&mut tx, sweep_id, lease.job_id, "ready", lease.attempt, None, Some(serde_json::json!({ "released": reason }))).await?;
    tx.commit().await?;
    Ok(())
}
