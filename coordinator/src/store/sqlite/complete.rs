//! Completions on SQLite: one job after another inside one write transaction for the batch
//! (which holds the database's write lock, so nothing changes between the checks and the
//! writes).

use super::{begin_write, finalize_sweeps, insert_job_event};
use crate::store::error::Result;
use crate::store::rules::{layers_match, uploads_needed, Refusal};
use crate::store::types::{stored_number, Completion, Lease};
use sqlx::{Row, SqliteConnection, SqlitePool};
use std::collections::HashMap;

/// The prunable layers of a level job's model, as its dense job (finished, since it is an
/// ancestor) reported them, in network order. Empty for a dense job, or when the dense job
/// reported none.
async fn model_layers(conn: &mut SqliteConnection, job_id: i64) -> Result<Vec<String>> {
    let rows = sqlx::query(sql!("model_layers")).bind(job_id).fetch_all(&mut *conn).await?;
    rows.iter().map(|r| Ok(r.try_get("layer")?)).collect()
}

/// Completes `items[todo]` and closes the sweeps they finish. Returns the leases that were
/// refused and why; the others are now succeeded.
pub(crate) async fn complete(pool: &SqlitePool, items: &[&Completion], todo: &[usize]) -> Result<HashMap<Lease, Refusal>> {
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
    // Layer names the model does not have (the model is known by the layers the job's dense job
    // reported): checked here, under the write lock, as Postgres checks them in its statement.
    let model = model_layers(conn, lease.job_id).await?;
    if !model.is_empty() {
        let reported: Vec<&str> = result.layers.iter().map(|l| l.name.as_str()).collect();
        if layers_match(&reported, &model).is_err() {
            return Ok(Err(Refusal::WrongLayers(model)));
        }
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
    // Where it ran, in the completion's transaction (a missing row only means "not measured").
    if !result.device.is_empty() {
        sqlx::query(sql!("record_device")).bind(lease.job_id).bind(&result.device).execute(&mut *conn).await?;
    }
    Ok(Ok(sweep_id))
}
