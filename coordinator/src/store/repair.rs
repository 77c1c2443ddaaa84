//! Files lost from the object store, and their repair.
//!
//! A file the store holds a row for can still vanish or rot in the object store (a lifecycle
//! rule, someone cleaning a folder, a bad disk). No retry brings it back, and before this a
//! dependent either hung "running 0%" or burned its attempts on it. So when a dependent's
//! download finds the file missing, or not matching its recorded size and sha256, the
//! coordinator calls [`Store::artifact_lost`], which in one transaction
//! - re-queues the job that made the file (the *producer*: the dependent's parent for
//!   "weights", its dense job for "rewind"): ready again with a fresh attempt, the lost file's
//!   row forgotten, `reused_from` cleared (a job reused from another sweep's job runs itself,
//!   so the repair never touches another sweep), its old results kept until the re-run's
//!   completion replaces them (other sweeps may be reusing them);
//! - re-blocks the dependents that were waiting for the file (ready children; for a lost θk, the
//!   ready jobs that rewind to it) and hands the calling dependent back the same way, counted
//!   neither as failed nor as lost;
//! - writes a `state` event on the producer whose detail names the artifact, the job that held
//!   it and what was wrong (`{"repair": …}`), and sets the producer's `last_error` to say so.
//!
//! The producer's row is locked first: of two dependents that find the loss at once, the first
//! repairs and the second finds the producer no longer succeeded (or its file replaced) and only
//! hands itself back. Children are unblocked by the re-run's completion as usual; the jobs that
//! only rewind to a re-run dense job are unblocked by the reaper ([`Store::unblock_repaired`])
//! through the `artifact_repairs` table.

use super::*;

/// What [`Store::artifact_lost`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostArtifact {
    /// This call found the loss first: `producer` runs again to make the file; the dependent
    /// waits for it.
    Repairing { producer: i64 },
    /// `producer` is already running again (another dependent found the loss first), or has
    /// made a new file since: the dependent was handed back (`dependent_state`: blocked to wait,
    /// ready to claim the new file, failed when the re-run failed for good).
    AlreadyRepaired { producer: i64, dependent_state: String },
    /// The job's own checkpoint from an earlier attempt was lost: its row is forgotten and the
    /// attempt goes on from scratch (the result is the same).
    CheckpointForgotten,
}

impl Store {
    /// The file `name` that `dependent` (a running attempt) downloads was found lost: missing
    /// from the object store, or not its recorded size or sha256 (`problem` says which, for
    /// people). `lost_uri` is the object that was read (None: the claim found no row at all).
    /// See the module documentation for what happens; a stale lease changes nothing.
    pub async fn artifact_lost(&self, dependent: Lease, name: &str, lost_uri: Option<&str>, problem: &str) -> Result<LostArtifact> {
        both!(self, |pool, d, DB| {
            let now = d.now;
            let lock = d.for_update();
            let mut tx = pool.begin_write().await?;
            let Some(dep) = sqlx::query(&format!("SELECT state, attempt, parent_job_id, dense_job_id FROM jobs WHERE id = $1{lock}"))
                .bind(dependent.job_id)
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Err(StoreError::NotFound(format!("job {} does not exist", dependent.job_id)));
            };
            let (state, attempt): (String, i32) = (dep.try_get("state")?, dep.try_get("attempt")?);
            if state != "running" || attempt != dependent.attempt {
                return Err(stale(dependent));
            }
            let producer: Option<i64> = match name {
                "weights" => dep.try_get("parent_job_id")?,
                "rewind" => dep.try_get("dense_job_id")?,
                "checkpoint" => {
                    sqlx::query("DELETE FROM artifacts WHERE job_id = $1 AND name = 'checkpoint' AND ($2 IS NULL OR uri = $2)")
                        .bind(dependent.job_id)
                        .bind(lost_uri)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    return Ok(LostArtifact::CheckpointForgotten);
                }
                other => {
                    return Err(StoreError::InvalidArgument(format!("jobs download \"rewind\", \"weights\" or \"checkpoint\", not {other:?}")))
                }
            };
            let Some(producer) = producer else {
                return Err(StoreError::InvalidArgument(format!("job {} downloads no {name:?}: it has no job that makes one", dependent.job_id)));
            };
            let x = sqlx::query(&format!("SELECT sweep_id, state, attempt, reused_from FROM jobs WHERE id = $1{lock}"))
                .bind(producer)
                .fetch_one(&mut *tx)
                .await?;
            let (x_sweep, x_state, x_attempt, reused_from): (i64, String, i32, Option<i64>) =
                (x.try_get("sweep_id")?, x.try_get("state")?, x.try_get("attempt")?, x.try_get("reused_from")?);
            let holder = reused_from.unwrap_or(producer);
            let current_uri: Option<String> = sqlx::query_scalar("SELECT uri FROM artifacts WHERE job_id = $1 AND name = $2")
                .bind(holder)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
            // Lost now: the producer still counts as done and its row still names the object that
            // was found bad (or no row is left). Anything else: someone repaired it already.
            let lost_now = x_state == "succeeded"
                && match (lost_uri, current_uri.as_deref()) {
                    (_, None) => true,
                    (Some(lost), Some(current)) => lost == current,
                    (None, Some(_)) => false,
                };
            let found_by = format!("found by job {} attempt {}", dependent.job_id, dependent.attempt);
            let producer_state = if lost_now {
                sqlx::query("DELETE FROM artifacts WHERE job_id = $1 AND name = $2").bind(holder).bind(name).execute(&mut *tx).await?;
                let held = if holder == producer { String::new() } else { format!(" (held by job {holder}, whose result it reused)") };
                let why = format!("re-running to repair a lost artifact: its {name:?}{held} {problem} ({found_by}); the jobs that need it wait for this run");
                sqlx::query(
                    "UPDATE jobs SET state = 'ready', reused_from = NULL, worker_id = NULL, lease_expires_at = NULL, progress = 0, \
                            eta_seconds = NULL, finished_at = NULL, last_error = $2 WHERE id = $1",
                )
                .bind(producer)
                .bind(&why)
                .execute(&mut *tx)
                .await?;
                sqlx::query("INSERT INTO artifact_repairs (job_id) VALUES ($1) ON CONFLICT (job_id) DO NOTHING")
                    .bind(producer)
                    .execute(&mut *tx)
                    .await?;
                let detail = serde_json::json!({ "repair": {
                    "artifact": name, "job": holder, "problem": problem,
                    "found_by": { "job": dependent.job_id, "attempt": dependent.attempt },
                }});
                sqlx::query("INSERT INTO events (sweep_id, job_id, kind, job_state, attempt, detail) VALUES ($1, $2, 'state', 'ready', $3, $4)")
                    .bind(x_sweep)
                    .bind(producer)
                    .bind(x_attempt)
                    .bind(Json(detail))
                    .execute(&mut *tx)
                    .await?;
                // The ready jobs that would download the lost file wait for the re-run. (A lost
                // θk is read by every level of the seed, not only by the dense job's children.)
                let waiting = sqlx::query(
                    "UPDATE jobs SET state = 'blocked' WHERE sweep_id = $1 AND state = 'ready' \
                       AND (parent_job_id = $2 OR ($3 AND dense_job_id = $2)) RETURNING id, attempt",
                )
                .bind(x_sweep)
                .bind(producer)
                .bind(name == "rewind")
                .fetch_all(&mut *tx)
                .await?;
                for w in &waiting {
                    sqlx::query("INSERT INTO events (sweep_id, job_id, kind, job_state, attempt, detail) VALUES ($1, $2, 'state', 'blocked', $3, $4)")
                        .bind(x_sweep)
                        .bind(w.try_get::<i64, _>("id")?)
                        .bind(w.try_get::<i32, _>("attempt")?)
                        .bind(Json(serde_json::json!({ "waits_for_repair": producer })))
                        .execute(&mut *tx)
                        .await?;
                }
                tracing::warn!(job_id = producer, artifact = name, holder, problem, found_by = dependent.job_id, "artifact lost from the object store: re-running the job that made it");
                "ready".to_string()
            } else {
                x_state
            };
            // The dependent: back to wait for the producer, or to claim its new file at once.
            let back_to = match producer_state.as_str() {
                "succeeded" => "ready",
                "failed" | "cancelled" => "failed",
                _ => "blocked",
            };
            let error = format!("input {name:?} of job {producer} was lost from the object store: {problem}; handed back");
            let not_run = format!("not run: job {producer}, which makes its {name:?} input, failed");
            sqlx::query(&format!(
                "UPDATE jobs SET state = $3, worker_id = NULL, lease_expires_at = NULL, progress = 0, eta_seconds = NULL, \
                        finished_at = CASE WHEN $3 = 'failed' THEN {now} ELSE NULL END, \
                        last_error = CASE WHEN $3 = 'failed' THEN $4 ELSE last_error END \
                  WHERE id = $1 AND attempt = $2 AND state = 'running'"
            ))
            .bind(dependent.job_id)
            .bind(dependent.attempt)
            .bind(back_to)
            .bind(&not_run)
            .execute(&mut *tx)
            .await?;
            sqlx::query(&format!("UPDATE job_attempts SET outcome = 'aborted', finished_at = {now}, error = $3 WHERE job_id = $1 AND attempt = $2"))
                .bind(dependent.job_id)
                .bind(dependent.attempt)
                .bind(&error)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO events (sweep_id, job_id, kind, job_state, attempt, detail) SELECT sweep_id, id, 'state', $2, $3, $4 FROM jobs WHERE id = $1")
                .bind(dependent.job_id)
                .bind(back_to)
                .bind(dependent.attempt)
                .bind(Json(serde_json::json!({ "artifact_lost": { "artifact": name, "job": holder, "problem": problem, "producer": producer } })))
                .execute(&mut *tx)
                .await?;
            if back_to == "failed" {
                fail_descendants!(tx, d, dependent.job_id);
                finalize_sweeps!(tx, d, Some(x_sweep));
            }
            tx.commit().await?;
            Ok(if lost_now {
                LostArtifact::Repairing { producer }
            } else {
                LostArtifact::AlreadyRepaired { producer, dependent_state: back_to.to_string() }
            })
        })
    }

    /// The reaper's part of a repair: jobs re-run for a lost file that have succeeded again
    /// unblock the jobs that rewind to them (their children were unblocked by the completion),
    /// and re-runs that ended are forgotten. Returns how many jobs became ready. Costs one read of
    /// the (nearly always empty) `artifact_repairs` table when there is nothing to do.
    pub async fn unblock_repaired(&self) -> Result<u64> {
        both!(self, |pool, d, DB| {
            let mut tx = pool.begin_write().await?;
            let ended = sqlx::query(
                "SELECT r.job_id, x.sweep_id, x.state FROM artifact_repairs r JOIN jobs x ON x.id = r.job_id \
                  WHERE x.state IN ('succeeded', 'failed', 'cancelled')",
            )
            .fetch_all(&mut *tx)
            .await?;
            let mut unblocked = 0u64;
            for r in &ended {
                let (job_id, sweep_id, state): (i64, i64, String) = (r.try_get("job_id")?, r.try_get("sweep_id")?, r.try_get("state")?);
                if state == "succeeded" {
                    let done = sqlx::query(
                        "UPDATE jobs SET state = 'ready' WHERE sweep_id = $1 AND state = 'blocked' AND dense_job_id = $2 \
                           AND EXISTS (SELECT 1 FROM jobs p WHERE p.id = jobs.parent_job_id AND p.state = 'succeeded')",
                    )
                    .bind(sweep_id)
                    .bind(job_id)
                    .execute(&mut *tx)
                    .await?;
                    unblocked += done.rows_affected();
                }
                sqlx::query("DELETE FROM artifact_repairs WHERE job_id = $1").bind(job_id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(unblocked)
        })
    }
}
