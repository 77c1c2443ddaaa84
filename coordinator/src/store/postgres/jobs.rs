//! Reading jobs.

use crate::store::error::{Result, StoreError};
use crate::store::types::JobRow;
use sqlx::{FromRow, PgPool};

/// Up to `limit` jobs of the sweep (of `state`, or all) with ids above `after_id`, by id.
pub(crate) async fn list(pool: &PgPool, sweep_id: i64, state: Option<&str>, after_id: i64, limit: i64) -> Result<Vec<JobRow>> {
    let rows = sqlx::query(sql!("list_jobs")).bind(sweep_id).bind(state).bind(after_id).bind(limit).fetch_all(pool).await?;
    Ok(rows.iter().map(JobRow::from_row).collect::<Result<_, _>>()?)
}

pub(crate) async fn get(pool: &PgPool, job_id: i64) -> Result<JobRow> {
    match sqlx::query(sql!("get_job")).bind(job_id).fetch_optional(pool).await? {
        Some(r) => Ok(JobRow::from_row(&r)?),
        None => Err(StoreError::NotFound(format!("job {job_id} does not exist"))),
    }
}
