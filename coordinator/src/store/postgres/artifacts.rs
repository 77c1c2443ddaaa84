//! Uploaded files of jobs: recorded in batches, fenced by their leases.

use crate::store::error::{Result, StoreError};
use crate::store::pool_wait;
use crate::store::types::{ArtifactRecord, ArtifactRow};
use sqlx::{FromRow, PgPool, Row};
use std::collections::HashMap;

/// Records the uploads whose leases are current, in one statement; returns the (job, attempt,
/// name) of each one recorded, with the uri of the file it replaced.
pub(crate) async fn record_batch(pool: &PgPool, recs: &[ArtifactRecord]) -> Result<HashMap<(i64, i32, String), Option<String>>> {
    let job_ids: Vec<i64> = recs.iter().map(|r| r.lease.job_id).collect();
    let attempts: Vec<i32> = recs.iter().map(|r| r.lease.attempt).collect();
    let names: Vec<&str> = recs.iter().map(|r| r.name.as_str()).collect();
    let uris: Vec<&str> = recs.iter().map(|r| r.uri.as_str()).collect();
    let digests: Vec<&str> = recs.iter().map(|r| r.sha256.as_str()).collect();
    let bytes: Vec<i64> = recs.iter().map(|r| r.bytes as i64).collect();
    let rows = sqlx::query(sql!("record_artifacts"))
        .bind(&job_ids)
        .bind(&attempts)
        .bind(&names)
        .bind(&uris)
        .bind(&digests)
        .bind(&bytes)
        .fetch_all(&mut *pool_wait::acquire(pool, "record").await?)
        .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in &rows {
        out.insert((r.try_get("job_id")?, r.try_get("attempt")?, r.try_get("name")?), r.try_get("replaced_uri")?);
    }
    Ok(out)
}

/// The artifact `name` of `job_id`, following `reused_from` to the job that holds the file.
pub(crate) async fn find(pool: &PgPool, job_id: i64, name: &str) -> Result<ArtifactRow> {
    match sqlx::query(sql!("find_artifact")).bind(job_id).bind(name).fetch_optional(pool).await? {
        Some(r) => Ok(ArtifactRow::from_row(&r)?),
        None => Err(StoreError::NotFound(format!("job {job_id} has no artifact named {name:?}"))),
    }
}
