//! Uploaded files of jobs: recorded in batches, fenced by their leases.

use crate::store::error::{Result, StoreError};
use crate::store::pool_wait;
use crate::store::types::{ArtifactRecord, ArtifactRow};
use sqlx::{FromRow, PgPool, Row};
use std::collections::HashMap;

/// Records the uploads whose leases are current, in one statement; for each record, in order,
/// None if its lease was stale, else the uri of the file it replaced. One file twice in a batch
/// fails the statement (it cannot upsert a row twice), so each recorded file is one row.
pub(crate) async fn record_batch(pool: &PgPool, recs: &[ArtifactRecord]) -> Result<Vec<Option<Option<String>>>> {
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
    // Keyed by (job, attempt, name): a stale and a current record of one file may share a batch.
    let mut recorded: HashMap<(i64, i32, String), Option<String>> = HashMap::with_capacity(rows.len());
    for r in &rows {
        recorded.insert((r.try_get("job_id")?, r.try_get("attempt")?, r.try_get("name")?), r.try_get("replaced_uri")?);
    }
    Ok(recs.iter().map(|r| recorded.get(&(r.lease.job_id, r.lease.attempt, r.name.clone())).cloned()).collect())
}

/// The artifact `name` of `job_id`, following `reused_from` to the job that holds the file.
pub(crate) async fn find(pool: &PgPool, job_id: i64, name: &str) -> Result<ArtifactRow> {
    match sqlx::query(sql!("find_artifact")).bind(job_id).bind(name).fetch_optional(pool).await? {
        Some(r) => Ok(ArtifactRow::from_row(&r)?),
        None => Err(StoreError::NotFound(format!("job {job_id} has no artifact named {name:?}"))),
    }
}
