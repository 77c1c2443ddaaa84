//! Uploaded files of jobs: recorded in batches (one write transaction), fenced by their leases.

use super::begin_write;
use crate::store::error::{Result, StoreError};
use crate::store::types::{ArtifactRecord, ArtifactRow};
use sqlx::{FromRow, SqlitePool};
use std::collections::HashMap;

/// Records the uploads whose leases are current; returns the (job, attempt, name) of each one
/// recorded, with the uri of the file it replaced.
pub(crate) async fn record_batch(pool: &SqlitePool, recs: &[ArtifactRecord]) -> Result<HashMap<(i64, i32, String), Option<String>>> {
    let mut tx = begin_write(pool, "record").await?;
    let mut out = HashMap::new();
    for r in recs {
        // Read in the write transaction, so no other record of this file comes between.
        let replaced: Option<String> =
            sqlx::query_scalar(sql!("artifact_uri")).bind(r.lease.job_id).bind(&r.name).fetch_optional(&mut *tx).await?;
        let done = sqlx::query(sql!("record_artifact"))
            .bind(r.lease.job_id)
            .bind(&r.name)
            .bind(r.lease.attempt)
            .bind(&r.uri)
            .bind(&r.sha256)
            .bind(r.bytes as i64)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() > 0 {
            out.insert((r.lease.job_id, r.lease.attempt, r.name.clone()), replaced);
        }
    }
    tx.commit().await?;
    Ok(out)
}

/// The artifact `name` of `job_id`, following `reused_from` to the job that holds the file.
pub(crate) async fn find(pool: &SqlitePool, job_id: i64, name: &str) -> Result<ArtifactRow> {
    match sqlx::query(sql!("find_artifact")).bind(job_id).bind(name).fetch_optional(pool).await? {
        Some(r) => Ok(ArtifactRow::from_row(&r)?),
        None => Err(StoreError::NotFound(format!("job {job_id} has no artifact named {name:?}"))),
    }
}
