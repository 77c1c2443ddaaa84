//! Reading sweeps, and the operations people run on them: pause, resume, cancel, retry.

use super::{begin_write, insert_job_event, insert_sweep_event, stop_running_jobs, sweep_state_for_update};
use crate::store::error::{no_such_sweep, Result, StoreError};
use crate::store::rules::proceed;
use crate::store::types::{SweepInfo, SweepMetricRecord, SweepRecord};
use lth_sweep::state::{SweepOp, SweepState};
use lth_sweep::SweepSpec;
use sqlx::types::Json;
use sqlx::{FromRow, PgPool, Row};
use std::collections::HashMap;

pub(crate) async fn spec(pool: &PgPool, sweep_id: i64) -> Result<SweepSpec> {
    let spec: Option<Json<SweepSpec>> = sqlx::query_scalar(sql!("sweep_spec")).bind(sweep_id).fetch_optional(pool).await?;
    spec.map(|Json(s)| s).ok_or_else(|| no_such_sweep(sweep_id))
}

pub(crate) async fn owner(pool: &PgPool, sweep_id: i64) -> Result<Option<String>> {
    let owner: Option<Option<String>> = sqlx::query_scalar(sql!("sweep_owner")).bind(sweep_id).fetch_optional(pool).await?;
    owner.ok_or_else(|| no_such_sweep(sweep_id))
}

pub(crate) async fn get(pool: &PgPool, sweep_id: i64) -> Result<SweepInfo> {
    let Some(row) = sqlx::query(sql!("get_sweep")).bind(sweep_id).fetch_optional(pool).await? else {
        return Err(no_such_sweep(sweep_id));
    };
    let rec = SweepRecord::from_row(&row)?;
    let mut metrics = Vec::new();
    for r in sqlx::query(sql!("sweep_metrics")).bind(sweep_id).fetch_all(pool).await? {
        metrics.push(SweepMetricRecord::from_row(&r)?.entry());
    }
    Ok(rec.into_info(metrics))
}

/// The newest `limit` sweeps: two statements, whatever the number of sweeps.
pub(crate) async fn list(pool: &PgPool, limit: i64) -> Result<Vec<SweepInfo>> {
    let mut metrics: HashMap<i64, Vec<(String, u64, u64)>> = HashMap::new();
    for r in sqlx::query(sql!("list_sweep_metrics")).bind(limit).fetch_all(pool).await? {
        let m = SweepMetricRecord::from_row(&r)?;
        metrics.entry(m.sweep_id).or_default().push(m.entry());
    }
    let mut out = Vec::new();
    for r in sqlx::query(sql!("list_sweeps")).bind(limit).fetch_all(pool).await? {
        let rec = SweepRecord::from_row(&r)?;
        let id: i64 = r.try_get("id")?;
        out.push(rec.into_info(metrics.remove(&id).unwrap_or_default()));
    }
    Ok(out)
}

pub(crate) async fn pause(pool: &PgPool, sweep_id: i64) -> Result<()> {
    let mut tx = begin_write(pool, "write").await?;
    if !proceed(sweep_state_for_update(&mut tx, sweep_id).await?, SweepOp::Pause, sweep_id)? {
        return Ok(());
    }
    sqlx::query(sql!("pause_sweep")).bind(sweep_id).execute(&mut *tx).await?;
    sqlx::query(sql!("pause_jobs")).bind(sweep_id).execute(&mut *tx).await?;
    stop_running_jobs(&mut tx, sweep_id, "ready", "sweep paused").await?;
    insert_sweep_event(&mut tx, sweep_id, None).await?;
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn resume(pool: &PgPool, sweep_id: i64) -> Result<()> {
    let mut tx = begin_write(pool, "write").await?;
    if !proceed(sweep_state_for_update(&mut tx, sweep_id).await?, SweepOp::Resume, sweep_id)? {
        return Ok(());
    }
    sqlx::query(sql!("resume_sweep")).bind(sweep_id).execute(&mut *tx).await?;
    sqlx::query(sql!("resume_jobs")).bind(sweep_id).execute(&mut *tx).await?;
    insert_sweep_event(&mut tx, sweep_id, None).await?;
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn cancel(pool: &PgPool, sweep_id: i64) -> Result<()> {
    let mut tx = begin_write(pool, "write").await?;
    if !proceed(sweep_state_for_update(&mut tx, sweep_id).await?, SweepOp::Cancel, sweep_id)? {
        return Ok(());
    }
    sqlx::query(sql!("cancel_sweep")).bind(sweep_id).execute(&mut *tx).await?;
    stop_running_jobs(&mut tx, sweep_id, "cancelled", "sweep cancelled").await?;
    sqlx::query(sql!("cancel_jobs")).bind(sweep_id).execute(&mut *tx).await?;
    sqlx::query(sql!("cancel_trials")).bind(sweep_id).execute(&mut *tx).await?;
    insert_sweep_event(&mut tx, sweep_id, None).await?;
    tx.commit().await?;
    Ok(())
}

pub(crate) async fn retry(pool: &PgPool, sweep_id: i64, trial_id: Option<i64>) -> Result<u64> {
    let mut tx = begin_write(pool, "write").await?;
    let state = sweep_state_for_update(&mut tx, sweep_id).await?;
    proceed(state, SweepOp::Retry, sweep_id)?;
    if let Some(t) = trial_id {
        let found: Option<i64> = sqlx::query_scalar(sql!("trial_of_sweep")).bind(t).bind(sweep_id).fetch_optional(&mut *tx).await?;
        if found.is_none() {
            return Err(StoreError::NotFound(format!(
                "sweep {sweep_id} has no trial {t}: `lthctl status {sweep_id}` names the trials of failed jobs"
            )));
        }
    }
    let rows = sqlx::query(sql!("retry_jobs"))
        .bind(sweep_id)
        .bind(trial_id)
        .bind(state == SweepState::Paused)
        .fetch_all(&mut *tx)
        .await?;
    if rows.is_empty() {
        tx.rollback().await?;
        return Ok(0);
    }
    for r in &rows {
        let (id, st, attempt): (i64, String, i32) = (r.try_get("id")?, r.try_get("state")?, r.try_get("attempt")?);
        // A fresh start: the workers it failed on may run it again.
        sqlx::query(sql!("delete_exclusions")).bind(id).execute(&mut *tx).await?;
        insert_job_event(&mut tx, sweep_id, id, &st, attempt, None, Some(serde_json::json!({ "retried": true }))).await?;
    }
    sqlx::query(sql!("reopen_trials")).bind(sweep_id).execute(&mut *tx).await?;
    sqlx::query(sql!("reopen_sweep")).bind(sweep_id).execute(&mut *tx).await?;
    insert_sweep_event(&mut tx, sweep_id, Some(serde_json::json!({ "retried_jobs": rows.len() }))).await?;
    tx.commit().await?;
    Ok(rows.len() as u64)
}
