//! Uploaded files of jobs: recorded in batches (one write transaction), fenced by their leases.

use super::begin_write;
use crate::store::error::{Result, StoreError};
use crate::store::types::{ArtifactRecord, ArtifactRow};
use sqlx::{FromRow, SqlitePool};

/// Records the uploads whose leases are current, in order; for each record, None if its lease
/// was stale, else the uri of the file it replaced. Positional, not keyed by file: one file twice
/// in a batch replaces two files (the one before the batch, then the first of the two).
pub(crate) async fn record_batch(pool: &SqlitePool, recs: &[ArtifactRecord]) -> Result<Vec<Option<Option<String>>>> {
    let mut tx = begin_write(pool, "record").await?;
    let mut out = Vec::with_capacity(recs.len());
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
        out.push((done.rows_affected() > 0).then_some(replaced));
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
