//! Claims for many workers in one statement (`claim.sql`), with the files each job downloads; a
//! second (`claim_siblings.sql`) for the other members of the ticket bundles whose leads it took.

use crate::store::error::Result;
use crate::store::pool_wait;
use crate::store::types::{ArtifactRow, ClaimRequest, ClaimedJob, JobRow};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgPool, Row};

/// One outcome per request, in request order: None when its worker is not registered.
///
/// Two statements when the claim took ticket bundles' leads (`claim.sql`, then
/// `claim_siblings.sql` for their other ready members, each committed on its own), one otherwise.
/// If the second fails, the leads' claims stand and are returned: their members are claimed
/// later, alone or with whoever is ready then.
pub(crate) async fn claim_batch(pool: &PgPool, reqs: &[ClaimRequest]) -> Result<Vec<Option<Vec<ClaimedJob>>>> {
    let mut per_req: Vec<Option<Vec<ClaimedJob>>> = vec![Some(Vec::new()); reqs.len()];
    let workers: Vec<&str> = reqs.iter().map(|r| r.worker_id.as_str()).collect();
    let ns: Vec<i32> = reqs.iter().map(|r| r.n.min(i32::MAX as u32) as i32).collect();
    let secs: Vec<f64> = reqs.iter().map(|r| r.lease.as_secs_f64()).collect();
    let mut conn = pool_wait::acquire(pool, "claim").await?;
    let rows = sqlx::query(sql!("claim")).bind(&workers).bind(&ns).bind(&secs).fetch_all(&mut *conn).await?;
    // Bundle leads: (job id, claim_ord, worker, lease seconds).
    let mut leads: (Vec<i64>, Vec<i64>, Vec<&str>, Vec<f64>) = Default::default();
    for r in &rows {
        let ord: i64 = r.try_get("claim_ord")?;
        let i = (ord - 1) as usize;
        if !r.try_get::<bool, _>("known")? {
            per_req[i] = None;
        } else if let Some(v) = per_req[i].as_mut() {
            let c = claimed(r)?;
            if c.job.bundle_id.is_some() {
                leads.0.push(c.job.id);
                leads.1.push(ord);
                leads.2.push(workers[i]);
                leads.3.push(secs[i]);
            }
            v.push(c);
        }
    }
    if leads.0.is_empty() {
        return Ok(per_req);
    }
    let siblings = sqlx::query(sql!("claim_siblings")).bind(&leads.0).bind(&leads.1).bind(&leads.2).bind(&leads.3).fetch_all(&mut *conn).await;
    match siblings {
        Ok(rows) => {
            for r in &rows {
                let i = (r.try_get::<i64, _>("claim_ord")? - 1) as usize;
                if let Some(v) = per_req[i].as_mut() {
                    v.push(claimed(r)?);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, leads = ?leads.0, "claiming the bundles' other members failed; the leads run, the others are claimed later"),
    }
    Ok(per_req)
}

fn claimed(r: &PgRow) -> Result<ClaimedJob> {
    Ok(ClaimedJob {
        job: JobRow::from_row(r)?,
        rewind: prefixed_artifact(r, "rw")?,
        weights: prefixed_artifact(r, "wt")?,
        resume_checkpoint: prefixed_artifact(r, "ck")?,
    })
}

/// The artifact in columns `{prefix}_job_id` .. `{prefix}_bytes`, if the outer join found one.
fn prefixed_artifact(r: &PgRow, prefix: &str) -> Result<Option<ArtifactRow>> {
    let col = |f: &str| format!("{prefix}_{f}");
    let Some(job_id) = r.try_get::<Option<i64>, _>(col("job_id").as_str())? else { return Ok(None) };
    Ok(Some(ArtifactRow {
        job_id,
        name: r.try_get(col("name").as_str())?,
        attempt: r.try_get(col("attempt").as_str())?,
        uri: r.try_get(col("uri").as_str())?,
        sha256: r.try_get(col("sha256").as_str())?,
        bytes: r.try_get(col("bytes").as_str())?,
    }))
}
