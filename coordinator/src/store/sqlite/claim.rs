//! Claims on SQLite: one claimer at a time inside one write transaction for the whole batch.

use super::{begin_write, insert_job_event};
use crate::store::error::Result;
use crate::store::types::{ArtifactFor, ArtifactRow, ClaimRequest, ClaimedJob, JobRow};
use sqlx::{FromRow, SqliteConnection, SqlitePool};

/// One outcome per request, in request order: None when its worker is not registered.
pub(crate) async fn claim_batch(pool: &SqlitePool, reqs: &[ClaimRequest]) -> Result<Vec<Option<Vec<ClaimedJob>>>> {
    let mut per_req = Vec::with_capacity(reqs.len());
    let mut tx = begin_write(pool, "claim").await?;
    for r in reqs {
        per_req.push(match claim(&mut tx, &r.worker_id, r.n, r.lease.as_secs_f64()).await? {
            None => None,
            Some(jobs) => Some(attach_artifacts(&mut tx, jobs).await?),
        });
    }
    tx.commit().await?;
    Ok(per_req)
}

/// One worker's claim inside the caller's write transaction. None: the worker is not registered.
async fn claim(conn: &mut SqliteConnection, worker_id: &str, n: u32, secs: f64) -> Result<Option<Vec<JobRow>>> {
    if sqlx::query(sql!("claim_touch_worker")).bind(worker_id).execute(&mut *conn).await?.rows_affected() == 0 {
        return Ok(None);
    }
    if n == 0 {
        return Ok(Some(Vec::new()));
    }
    let rows = sqlx::query(sql!("claim")).bind(worker_id).bind(n as i64).bind(secs).fetch_all(&mut *conn).await?;
    let mut out = rows.iter().map(JobRow::from_row).collect::<Result<Vec<_>, _>>()?;
    // Ticket bundles: the claimed leads' other ready members, for the same worker and lease.
    let mut bundles: Vec<i64> = out.iter().filter_map(|j| j.bundle_id).collect();
    if !bundles.is_empty() {
        bundles.sort_unstable();
        bundles.dedup();
        let rows = sqlx::query(sql!("claim_siblings"))
            .bind(worker_id)
            .bind(secs)
            .bind(serde_json::to_string(&bundles).expect("ids serialise"))
            .fetch_all(&mut *conn)
            .await?;
        for r in &rows {
            out.push(JobRow::from_row(r)?);
        }
    }
    out.sort_by_key(|j| j.id);
    for j in &out {
        sqlx::query(sql!("open_attempt")).bind(j.id).bind(j.attempt).bind(worker_id).execute(&mut *conn).await?;
        insert_job_event(conn, j.sweep_id, j.id, "running", j.attempt, Some(0.0), None).await?;
    }
    Ok(Some(out))
}

/// The files each claimed job downloads: θk from its dense job, the parent's weights, and a
/// checkpoint of its own from an earlier attempt; reused jobs point at the original's files.
/// (Postgres gets the same from its claim statement.) Returns the jobs in the order given.
async fn attach_artifacts(conn: &mut SqliteConnection, jobs: Vec<JobRow>) -> Result<Vec<ClaimedJob>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let mut wanted: Vec<i64> = Vec::new();
    for j in &jobs {
        wanted.push(j.id);
        wanted.extend(j.parent_job_id);
        wanted.extend(j.dense_job_id);
    }
    wanted.sort_unstable();
    wanted.dedup();
    let rows = sqlx::query(sql!("attach_artifacts")).bind(serde_json::to_string(&wanted).expect("ids serialise")).fetch_all(&mut *conn).await?;
    let arts: Vec<ArtifactFor> = rows.iter().map(ArtifactFor::from_row).collect::<Result<_, _>>()?;
    let find = |job: Option<i64>, name: &str| -> Option<ArtifactRow> {
        job.and_then(|id| arts.iter().find(|a| a.for_job == id && a.artifact.name == name).map(|a| a.artifact.clone()))
    };
    Ok(jobs
        .into_iter()
        .map(|j| ClaimedJob {
            rewind: if j.kind == "level" { find(j.dense_job_id, "rewind") } else { None },
            weights: if j.kind == "level" { find(j.parent_job_id, "weights") } else { None },
            resume_checkpoint: find(Some(j.id), "checkpoint"),
            job: j,
        })
        .collect())
}
