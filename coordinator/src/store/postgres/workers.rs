//! Registering and listing workers.

use crate::store::error::Result;
use crate::store::types::{WorkerRecord, WorkerRegistration, WorkerRow};
use sqlx::types::Json;
use sqlx::{FromRow, PgPool};
use std::time::Duration;

pub(crate) async fn register(pool: &PgPool, w: &WorkerRegistration) -> Result<()> {
    sqlx::query(sql!("register_worker"))
        .bind(&w.worker_id)
        .bind(&w.host)
        .bind(Json(&w.gpus))
        .bind(w.cpus as i32)
        .bind(w.slots as i32)
        .bind(&w.libtorch_version)
        .bind(&w.cuda_version)
        .execute(pool)
        .await?;
    Ok(())
}

/// Up to `limit` workers whose ids sort after `after`; without `all`, only those seen within
/// `alive_within`.
pub(crate) async fn list(pool: &PgPool, alive_within: Duration, all: bool, after: &str, limit: i64) -> Result<Vec<WorkerRow>> {
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
