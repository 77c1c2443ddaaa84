//! Completions on SQLite: one job after another inside one write transaction for the batch
//! (which holds the database's write lock, so nothing changes between the checks and the
//! writes).

use super::{begin_write, finalize_sweeps, insert_job_event};
use crate::store::error::Result;
use crate::store::rules::{uploads_needed, Refusal};
use crate::store::submit::BIND_ROWS;
use crate::store::types::{stored_number, Completion, Lease};
use sqlx::{Row, SqliteConnection, SqlitePool};
use std::collections::HashMap;

/// The prunable layers of each level job's model, as its dense job (finished, since it is an
/// ancestor) reported them. Dense jobs, and jobs whose dense job reported none, are left out.
pub(crate) async fn model_layers(pool: &SqlitePool, job_ids: &[i64]) -> Result<HashMap<i64, Vec<String>>> {
    let mut out: HashMap<i64, Vec<String>> = HashMap::new();
    for chunk in job_ids.chunks(BIND_ROWS) {
        let ids = serde_json::to_string(chunk).expect("ids serialise");
        for r in sqlx::query(sql!("model_layers")).bind(ids).fetch_all(pool).await? {
            out.entry(r.try_get("for_job")?).or_default().push(r.try_get("layer")?);
        }
    }
    Ok(out)
}

/// Completes `items[todo]` and closes the sweeps they finish. Returns the leases that were
/// refused and why; the others are now succeeded.
pub(crate) async fn complete(pool: &SqlitePool, items: &[Completion], todo: &[usize]) -> Result<HashMap<Lease, Refusal>> {
    let mut tx = begin_write(pool, "complete").await?;
    let mut refused = HashMap::new();
    let mut sweeps = Vec::new();
    for &i in todo {
        match complete_one(&mut tx, &items[i]).await? {
            Ok(sweep_id) => sweeps.push(sweep_id),
            Err(why) => {
                refused.insert(items[i].lease, why);
            }
        }
    }
    sweeps.sort_unstable();
    sweeps.dedup();
    for s in sweeps {
        finalize_sweeps(&mut tx, Some(s)).await?;
    }
    tx.commit().await?;
    Ok(refused)
}

/// One completion inside the caller's write transaction. Returns the job's sweep, or why nothing
/// was written.
async fn complete_one(conn: &mut SqliteConnection, item: &Completion) -> Result<std::result::Result<i64, Refusal>> {
    let (lease, result) = (item.lease, &item.result);
    let Some(job) = sqlx::query(sql!("complete_check")).bind(lease.job_id).fetch_optional(&mut *conn).await? else {
        return Ok(Err(Refusal::NoSuchJob));
    };
    let (state, attempt, kind): (String, i32, String) = (job.try_get("state")?, job.try_get("attempt")?, job.try_get("kind")?);
    if state != "running" || attempt != lease.attempt {
        return Ok(Err(Refusal::Stale { state, attempt }));
    }
    if item.require_uploads {
        let uploaded: Vec<String> = sqlx::query_scalar(sql!("attempt_uploads")).bind(lease.job_id).bind(lease.attempt).fetch_all(&mut *conn).await?;
        let missing: Vec<String> = uploads_needed(&kind).iter().filter(|n| !uploaded.iter().any(|u| u == *n)).map(|n| n.to_string()).collect();
        if !missing.is_empty() {
            return Ok(Err(Refusal::MissingUploads(missing)));
        }
    }
    let Some(row) = sqlx::query(sql!("complete_job")).bind(lease.job_id).bind(lease.attempt).fetch_optional(&mut *conn).await? else {
        return Ok(Err(Refusal::Stale { state, attempt }));
    };
    let sweep_id: i64 = row.try_get("sweep_id")?;
    let trial_id: Option<i64> = row.try_get("trial_id")?;
    sqlx::query(sql!("complete_attempt")).bind(lease.job_id).bind(lease.attempt).execute(&mut *conn).await?;
    sqlx::query(sql!("insert_result"))
        .bind(lease.job_id)
        .bind(result.sparsity)
        .bind(result.test_accuracy)
        .bind(stored_number(result.test_loss))
        .bind(stored_number(result.train_loss))
        .bind(result.epochs)
        .bind(result.wall_seconds)
        .bind(result.iterations as i64)
        .bind(result.diverged)
        .execute(&mut *conn)
        .await?;
    for (i, l) in result.layers.iter().enumerate() {
        sqlx::query(sql!("insert_mask"))
            .bind(lease.job_id)
            .bind(&l.name)
            .bind(i as i32)
            .bind(l.kept as i64)
            .bind(l.total as i64)
            .bind(&l.bits)
            .bind(l.collapsed)
            .bind(stored_number(l.weight_norm))
            .bind(l.units.map(|u| u.outputs as i64))
            .bind(l.units.map(|u| u.dead_outputs as i64))
            .bind(l.units.map(|u| u.inputs as i64))
            .bind(l.units.map(|u| u.dead_inputs as i64))
            .bind(l.units.map(|u| u.output_layer))
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(sql!("unblock_children")).bind(lease.job_id).execute(&mut *conn).await?;
    // Twins that waited for this job (same content hash, ready): done too, reused from it.
    let twins = sqlx::query(sql!("complete_twins")).bind(lease.job_id).fetch_all(&mut *conn).await?;
    for t in &twins {
        let (id, twin_sweep, attempt): (i64, i64, i32) = (t.try_get("id")?, t.try_get("sweep_id")?, t.try_get("attempt")?);
        sqlx::query(sql!("unblock_children")).bind(id).execute(&mut *conn).await?;
        insert_job_event(conn, twin_sweep, id, "succeeded", attempt, Some(1.0), Some(serde_json::json!({ "reused_from": lease.job_id }))).await?;
    }
    if let Some(trial_id) = trial_id {
        // (This job is already succeeded in this transaction.)
        sqlx::query(sql!("close_trial")).bind(trial_id).execute(&mut *conn).await?;
    }
    insert_job_event(conn, sweep_id, lease.job_id, "succeeded", lease.attempt, Some(1.0), None).await?;
    Ok(Ok(sweep_id))
}
