//! The store on Postgres: one file per concern, one SQL statement per file under
//! `coordinator/queries/postgres/` (loaded with [`sql!`]).
//!
//! Rows are locked where a read precedes a write in the same transaction (`FOR NO KEY UPDATE`,
//! never `FOR UPDATE`: no statement changes a key, and `FOR UPDATE` would also block the
//! `KEY SHARE` locks that inserts referencing the row take for their foreign keys, which is how
//! a cancel and a claim once deadlocked), and the
//! hot paths (claim, complete, record uploads) run a whole batch as one statement
//! (`claim.sql`, `complete.sql`, `record_artifacts.sql`). The statements shared by several
//! operations are the helpers below.

/// The text of `coordinator/queries/postgres/NAME.sql`, compiled into the binary.
macro_rules! sql {
    ($name:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/queries/postgres/", $name, ".sql"))
    };
}

pub(super) mod artifacts;
pub(super) mod claim;
pub(super) mod complete;
pub(super) mod dashboard;
pub(super) mod events;
pub(super) mod fail;
pub(super) mod inputs;
pub(super) mod jobs;
pub(super) mod leases;
pub(super) mod reap;
pub(super) mod repair;
pub(super) mod results;
pub(super) mod scrape;
pub(super) mod submit;
pub(super) mod sweeps;
pub(super) mod throughput;
pub(super) mod vacuum;
pub(super) mod workers;

use super::error::{no_such_sweep, Result};
use super::pool_wait;
use super::types::Lease;
use lth_sweep::state::SweepState;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Postgres, Row};

pub(super) type Tx = sqlx::Transaction<'static, Postgres>;

/// A write transaction; the wait for its connection is recorded under `op`
/// (`lth_db_pool_wait_seconds`).
pub(super) async fn begin_write(pool: &PgPool, op: &'static str) -> Result<Tx> {
    Ok(pool_wait::begin(pool, op, None).await?)
}

/// One trivial statement: does the database answer?
pub(super) async fn ping(pool: &PgPool) -> Result<()> {
    sqlx::query(sql!("ping")).execute(pool).await?;
    Ok(())
}

/// A sweep-level event (WatchSweep sends a fresh summary on each).
pub(super) async fn insert_sweep_event(conn: &mut PgConnection, sweep_id: i64, detail: Option<serde_json::Value>) -> Result<()> {
    sqlx::query(sql!("insert_sweep_event")).bind(sweep_id).bind(detail.map(Json)).execute(conn).await?;
    Ok(())
}

/// A job's state event: its new `state` at `attempt`, with its progress and a detail when known.
pub(super) async fn insert_job_event(
    conn: &mut PgConnection,
    sweep_id: i64,
    job_id: i64,
    state: &str,
    attempt: i32,
    progress: Option<f64>,
    detail: Option<serde_json::Value>,
) -> Result<()> {
    sqlx::query(sql!("insert_job_event"))
        .bind(sweep_id)
        .bind(job_id)
        .bind(state)
        .bind(attempt)
        .bind(progress)
        .bind(detail.map(Json))
        .execute(conn)
        .await?;
    Ok(())
}

/// Ends the attempt `lease` with `outcome` ("failed", "aborted", "lost") and why.
pub(super) async fn close_attempt(conn: &mut PgConnection, lease: Lease, outcome: &str, error: &str) -> Result<()> {
    sqlx::query(sql!("close_attempt")).bind(lease.job_id).bind(lease.attempt).bind(outcome).bind(error).execute(conn).await?;
    Ok(())
}

/// For jobs just re-queued as lost (`rows`: `id, attempt, sweep_id` RETURNING rows of
/// `reap_expired` or `requeue_worker_jobs`): closes each attempt as lost with `why` and writes the
/// job's ready event. Returns their leases.
pub(super) async fn record_lost(conn: &mut PgConnection, rows: &[sqlx::postgres::PgRow], why: &str) -> Result<Vec<Lease>> {
    let mut lost = Vec::with_capacity(rows.len());
    for r in rows {
        let l = Lease { job_id: r.try_get("id")?, attempt: r.try_get("attempt")? };
        let sweep_id: i64 = r.try_get("sweep_id")?;
        close_attempt(conn, l, "lost", why).await?;
        insert_job_event(conn, sweep_id, l.job_id, "ready", l.attempt, None, None).await?;
        lost.push(l);
    }
    Ok(lost)
}

/// The sweep's state, its row locked until the transaction ends; NotFound when it does not exist.
pub(super) async fn sweep_state_for_update(conn: &mut PgConnection, sweep_id: i64) -> Result<SweepState> {
    let s: Option<SweepState> = sqlx::query_scalar(sql!("sweep_state_for_update")).bind(sweep_id).fetch_optional(conn).await?;
    s.ok_or_else(|| no_such_sweep(sweep_id))
}

/// Ends the running attempts of a sweep's jobs (`new_state` "ready" when paused, "cancelled"),
/// closing each attempt as aborted with `why`. The workers are told on their next heartbeat;
/// their later writes are stale.
pub(super) async fn stop_running_jobs(conn: &mut PgConnection, sweep_id: i64, new_state: &str, why: &str) -> Result<()> {
    let rows = sqlx::query(sql!("stop_running_jobs")).bind(sweep_id).bind(new_state).fetch_all(&mut *conn).await?;
    for r in &rows {
        let lease = Lease { job_id: r.try_get("id")?, attempt: r.try_get("attempt")? };
        close_attempt(conn, lease, "aborted", why).await?;
        insert_job_event(conn, sweep_id, lease.job_id, new_state, lease.attempt, None, None).await?;
    }
    Ok(())
}

/// Fails every job downstream of `job_id` that has not run, and the trials they (and it) belong to.
pub(super) async fn fail_descendants(conn: &mut PgConnection, job_id: i64) -> Result<()> {
    sqlx::query(sql!("fail_descendant_trials")).bind(job_id).execute(&mut *conn).await?;
    sqlx::query(sql!("fail_descendant_jobs")).bind(job_id).bind(job_id.to_string()).execute(&mut *conn).await?;
    Ok(())
}

/// Closes running sweeps (all, or `only`) that have no open job left, each with its event.
/// Returns the ids of the sweeps it closed.
pub(super) async fn finalize_sweeps(conn: &mut PgConnection, only: Option<i64>) -> Result<Vec<i64>> {
    let ids: Vec<i64> = sqlx::query_scalar(sql!("finalize_sweeps")).bind(only).fetch_all(&mut *conn).await?;
    for &id in &ids {
        insert_sweep_event(conn, id, None).await?;
    }
    Ok(ids)
}
