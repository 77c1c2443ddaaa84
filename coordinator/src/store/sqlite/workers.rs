//! Registering and listing workers.

use super::{begin_write, record_lost};
use crate::store::error::Result;
use crate::store::rules::replaces_process;
use crate::store::types::{Lease, WorkerRecord, WorkerRegistration, WorkerRow};
use sqlx::types::Json;
use sqlx::{FromRow, SqlitePool};
use std::time::Duration;

/// Registers (or registers again) a worker id for the daemon process `instance` ('' = not
/// said). When another process registered the id before, the jobs still leased to the id are
/// re-queued in the same transaction, counted as lost: the process they were leased to is gone
/// (restarted) or superseded by this one (a second daemon under the same id; its heartbeats are
/// refused from now on). Returns those jobs' leases.
pub(crate) async fn register(pool: &SqlitePool, w: &WorkerRegistration, instance: &str) -> Result<Vec<Lease>> {
    let mut tx = begin_write(pool, "write").await?;
    let previous: Option<Option<String>> = sqlx::query_scalar(sql!("worker_instance")).bind(&w.worker_id).fetch_optional(&mut *tx).await?;
    sqlx::query(sql!("register_worker"))
        .bind(&w.worker_id)
        .bind(&w.host)
        .bind(Json(&w.gpus))
        .bind(w.cpus as i32)
        .bind(w.slots as i32)
        .bind(&w.libtorch_version)
        .bind(&w.cuda_version)
        .bind(instance)
        .execute(&mut *tx)
        .await?;
    let mut requeued = Vec::new();
    if replaces_process(previous.flatten().as_deref(), instance) {
        let rows = sqlx::query(sql!("requeue_worker_jobs")).bind(&w.worker_id).fetch_all(&mut *tx).await?;
        let why = "its worker's daemon registered again as a new process (restarted, or superseded by another daemon under the same worker id)";
        requeued = record_lost(&mut tx, &rows, why).await?;
    }
    tx.commit().await?;
    Ok(requeued)
}

/// Up to `limit` workers whose ids sort after `after`; without `all`, only those seen within
/// `alive_within`.
pub(crate) async fn list(pool: &SqlitePool, alive_within: Duration, all: bool, after: &str, limit: i64) -> Result<Vec<WorkerRow>> {
    let rows = sqlx::query(sql!("list_workers"))
        .bind(-alive_within.as_secs_f64())
        .bind(after)
        .bind(limit)
        .bind(all)
        .fetch_all(pool)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(WorkerRecord::from_row(r)?.into());
    }
    Ok(out)
}
