//! Files lost from the object store, and their repair (see [`crate::store::repair`] for the
//! whole story).

use super::{begin_write, close_attempt, fail_descendants, finalize_sweeps, insert_job_event};
use crate::store::error::{stale, Result, StoreError};
use crate::store::repair::{back_to, lost_now, repair_reason, Producer};
use crate::store::types::{Lease, LostArtifact};
use sqlx::types::Json;
use sqlx::{PgPool, Row};

pub(crate) async fn artifact_lost(pool: &PgPool, dependent: Lease, name: &str, lost_uri: Option<&str>, problem: &str) -> Result<LostArtifact> {
    let mut tx = begin_write(pool, "write").await?;
    let Some(dep) = sqlx::query(sql!("lock_dependent")).bind(dependent.job_id).fetch_optional(&mut *tx).await? else {
        return Err(StoreError::NotFound(format!("job {} does not exist", dependent.job_id)));
    };
    let (state, attempt): (String, i32) = (dep.try_get("state")?, dep.try_get("attempt")?);
    if state != "running" || attempt != dependent.attempt {
        return Err(stale(dependent));
    }
    let producer: Option<i64> = match Producer::of(name)? {
        Producer::Parent => dep.try_get("parent_job_id")?,
        Producer::DenseJob => dep.try_get("dense_job_id")?,
        Producer::Itself => {
            sqlx::query(sql!("forget_checkpoint")).bind(dependent.job_id).bind(lost_uri).execute(&mut *tx).await?;
            tx.commit().await?;
            return Ok(LostArtifact::CheckpointForgotten);
        }
    };
    let Some(producer) = producer else {
        return Err(StoreError::InvalidArgument(format!("job {} downloads no {name:?}: it has no job that makes one", dependent.job_id)));
    };
    let x = sqlx::query(sql!("lock_producer")).bind(producer).fetch_one(&mut *tx).await?;
    let (x_sweep, x_state, x_attempt, reused_from): (i64, String, i32, Option<i64>) =
        (x.try_get("sweep_id")?, x.try_get("state")?, x.try_get("attempt")?, x.try_get("reused_from")?);
    let holder = reused_from.unwrap_or(producer);
    let current_uri: Option<String> = sqlx::query_scalar(sql!("artifact_uri")).bind(holder).bind(name).fetch_optional(&mut *tx).await?;
    let lost_now = lost_now(&x_state, lost_uri, current_uri.as_deref());
    let producer_state = if lost_now {
        sqlx::query(sql!("delete_artifact")).bind(holder).bind(name).execute(&mut *tx).await?;
        let why = repair_reason(name, producer, holder, problem, dependent);
        sqlx::query(sql!("requeue_producer")).bind(producer).bind(&why).execute(&mut *tx).await?;
        sqlx::query(sql!("insert_repair")).bind(producer).execute(&mut *tx).await?;
        let detail = serde_json::json!({ "repair": {
            "artifact": name, "job": holder, "problem": problem,
            "found_by": { "job": dependent.job_id, "attempt": dependent.attempt },
        }});
        insert_job_event(&mut tx, x_sweep, producer, "ready", x_attempt, None, Some(detail)).await?;
        let waiting = sqlx::query(sql!("block_waiting")).bind(x_sweep).bind(producer).bind(name == "rewind").fetch_all(&mut *tx).await?;
        for w in &waiting {
            let detail = serde_json::json!({ "waits_for_repair": producer });
            insert_job_event(&mut tx, x_sweep, w.try_get("id")?, "blocked", w.try_get("attempt")?, None, Some(detail)).await?;
        }
        tracing::warn!(job_id = producer, artifact = name, holder, problem, found_by = dependent.job_id, "artifact lost from the object store: re-running the job that made it");
        "ready".to_string()
    } else {
        x_state
    };
    let back_to = back_to(&producer_state);
    let error = format!("input {name:?} of job {producer} was lost from the object store: {problem}; handed back");
    let not_run = format!("not run: job {producer}, which makes its {name:?} input, failed");
    sqlx::query(sql!("hand_back")).bind(dependent.job_id).bind(dependent.attempt).bind(back_to).bind(&not_run).execute(&mut *tx).await?;
    close_attempt(&mut tx, dependent, "aborted", &error).await?;
    sqlx::query(sql!("insert_job_event_of"))
        .bind(dependent.job_id)
        .bind(back_to)
        .bind(dependent.attempt)
        .bind(Json(serde_json::json!({ "artifact_lost": { "artifact": name, "job": holder, "problem": problem, "producer": producer } })))
        .execute(&mut *tx)
        .await?;
    if back_to == "failed" {
        fail_descendants(&mut tx, dependent.job_id).await?;
        finalize_sweeps(&mut tx, Some(x_sweep)).await?;
    }
    tx.commit().await?;
    Ok(if lost_now { LostArtifact::Repairing { producer } } else { LostArtifact::AlreadyRepaired { producer, dependent_state: back_to.to_string() } })
}

/// The reaper's part of a repair; returns how many jobs became ready.
pub(crate) async fn unblock_repaired(pool: &PgPool) -> Result<u64> {
    let mut tx = begin_write(pool, "write").await?;
    let ended = sqlx::query(sql!("ended_repairs")).fetch_all(&mut *tx).await?;
    let mut unblocked = 0u64;
    for r in &ended {
        let (job_id, sweep_id, state): (i64, i64, String) = (r.try_get("job_id")?, r.try_get("sweep_id")?, r.try_get("state")?);
        if state == "succeeded" {
            unblocked += sqlx::query(sql!("unblock_rewinders")).bind(sweep_id).bind(job_id).execute(&mut *tx).await?.rows_affected();
        }
        sqlx::query(sql!("delete_repair")).bind(job_id).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(unblocked)
}
