//! Reading sweeps, and the operations people run on them: pause, resume, cancel, retry.
//!
//! Those four write every job of a sweep (retry: every failed one, which after a failed dense job
//! is nearly all of them). In one transaction that held SQLite's one write lock for as long as
//! the writing took, and every heartbeat and completion of every other sweep waited for it: a
//! cancel of 288k jobs held it 1.2-2.9 s, a bigger grid longer than a lease. So each runs like a
//! submit (`store/submit.rs`, `paced.rs`):
//!
//! 1. A first short transaction decides (`sweep_state_for_update` and `rules::proceed`, as on
//!    Postgres), changes the sweep's state and its running jobs (a few per worker), writes the
//!    sweep event (watchers see the new state at once) and records the operation as unfinished
//!    (`unfinished_sweep_ops`).
//! 2. The jobs (and a cancel's trials) in chunks of [`CHUNK_IDS`] ids, in transactions that hold
//!    the lock at most `SQLITE_HOLD` each, with a pause after each. Every chunk first reads the
//!    sweep's state and stops the operation when it is no longer the operation's (a later pause,
//!    resume or cancel took over; it covers the same jobs, and the state decides as before).
//! 3. A last short transaction for what happened behind the chunks; the operation is done.
//!
//! Between the chunks of a cancel or a pause, a claim can take a ready job the chunks have not
//! reached (a claim reads the job's state, not the sweep's). That is harmless, and left so rather
//! than making every claim read the sweep: the last transaction stops the jobs running then as the
//! first stopped those running before (each attempt closed as aborted, counted against nothing;
//! the worker is told on its next heartbeat), and a job that even completed meanwhile keeps its
//! result, like one that completed just before the cancel. The children such a completion
//! unblocks lie above the chunks' position (a child's id is above its parent's), so a later chunk
//! or the last transaction reaches them. A job below the position is cancelled or paused already
//! and is claimed by no one.
//!
//! An operation cut short (the coordinator killed, its database calls failing) keeps its row in
//! `unfinished_sweep_ops`. Running the command again finishes it, the reaper finishes it once
//! nobody touched the row for [`STALE`], and a coordinator finishes them all when it starts
//! ([`finish_unfinished`]). A half-cancelled sweep ends with every job cancelled, a half-paused
//! one fully paused, a half-resumed one fully resumed. A half-retried one gets its last
//! transaction (the trials of the jobs re-queued so far, and the sweep, reopen) and keeps the
//! failed jobs its chunks did not reach, as failed: a second `lthctl retry` re-queues them (doing
//! so unasked could re-run jobs that failed again since).

use super::{begin_write, insert_job_event, insert_sweep_event, stop_running_jobs, sweep_state_for_update, BEGIN_WRITE};
use crate::store::error::{no_such_sweep, Result, StoreError};
use crate::store::paced::PacedTx;
use crate::store::rules::proceed;
use crate::store::sqlite_busy::BUSY_TIMEOUT;
use crate::store::submit::SQLITE_HOLD;
use crate::store::types::{SweepInfo, SweepMetricRecord, SweepRecord};
use lth_sweep::state::{SweepOp, SweepState};
use lth_sweep::SweepSpec;
use sqlx::types::Json;
use sqlx::{FromRow, SqliteConnection, SqlitePool, Row};
use std::collections::HashMap;
use std::time::Duration;

/// Ids (of jobs, or of a cancel's trials) per chunk: each chunk's statement reads at most this
/// many rows, by primary key, whatever the sweep's size (a few ms).
pub(crate) const CHUNK_IDS: i64 = 1000;

/// An unfinished operation whose row nobody touched for this long is finished by the reaper:
/// twice the longest one statement waits for the lock (`sqlite_busy.rs`), so never one that is
/// still being written.
pub(crate) const STALE: Duration = Duration::from_secs(BUSY_TIMEOUT.as_secs() * 2);

pub(crate) async fn spec(pool: &SqlitePool, sweep_id: i64) -> Result<SweepSpec> {
    let spec: Option<Json<SweepSpec>> = sqlx::query_scalar(sql!("sweep_spec")).bind(sweep_id).fetch_optional(pool).await?;
    spec.map(|Json(s)| s).ok_or_else(|| no_such_sweep(sweep_id))
}

pub(crate) async fn owner(pool: &SqlitePool, sweep_id: i64) -> Result<Option<String>> {
    let owner: Option<Option<String>> = sqlx::query_scalar(sql!("sweep_owner")).bind(sweep_id).fetch_optional(pool).await?;
    owner.ok_or_else(|| no_such_sweep(sweep_id))
}

pub(crate) async fn get(pool: &SqlitePool, sweep_id: i64) -> Result<SweepInfo> {
    let Some(row) = sqlx::query(sql!("get_sweep")).bind(sweep_id).fetch_optional(pool).await? else {
        return Err(no_such_sweep(sweep_id));
    };
    let rec = SweepRecord::from_row(&row)?;
    let mut metrics = Vec::new();
    for r in sqlx::query(sql!("sweep_metrics")).bind(sweep_id).fetch_all(pool).await? {
        metrics.push(SweepMetricRecord::from_row(&r)?.entry());
    }
    Ok(rec.into_info(metrics))
}

/// The newest `limit` sweeps: two statements, whatever the number of sweeps.
pub(crate) async fn list(pool: &SqlitePool, limit: i64) -> Result<Vec<SweepInfo>> {
    let mut metrics: HashMap<i64, Vec<(String, u64, u64)>> = HashMap::new();
    for r in sqlx::query(sql!("list_sweep_metrics")).bind(limit).fetch_all(pool).await? {
        let m = SweepMetricRecord::from_row(&r)?;
        metrics.entry(m.sweep_id).or_default().push(m.entry());
    }
    let mut out = Vec::new();
    for r in sqlx::query(sql!("list_sweeps")).bind(limit).fetch_all(pool).await? {
        let rec = SweepRecord::from_row(&r)?;
        let id: i64 = r.try_get("id")?;
        out.push(rec.into_info(metrics.remove(&id).unwrap_or_default()));
    }
    Ok(out)
}

/// A paced operation, as `unfinished_sweep_ops.op` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Pause,
    Resume,
    Cancel,
    Retry,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::Cancel => "cancel",
            Op::Retry => "retry",
        }
    }

    fn parse(name: &str) -> Option<Op> {
        [Op::Pause, Op::Resume, Op::Cancel, Op::Retry].into_iter().find(|op| op.name() == name)
    }

    /// Whether the operation goes on with the sweep `state` (it put the sweep there; a retry
    /// goes on unless the sweep was cancelled meanwhile).
    fn goes_on(self, state: SweepState) -> bool {
        match self {
            Op::Pause => state == SweepState::Paused,
            Op::Resume => state == SweepState::Running,
            Op::Cancel => state == SweepState::Cancelled,
            Op::Retry => matches!(state, SweepState::Running | SweepState::Paused | SweepState::Failed | SweepState::Succeeded),
        }
    }
}

pub(crate) async fn pause(pool: &SqlitePool, sweep_id: i64) -> Result<()> {
    let mut tx = begin_write(pool, "write").await?;
    if proceed(sweep_state_for_update(&mut tx, sweep_id).await?, SweepOp::Pause, sweep_id)? {
        sqlx::query(sql!("pause_sweep")).bind(sweep_id).execute(&mut *tx).await?;
        begin_op(&mut tx, sweep_id, Op::Pause).await?;
        sqlx::query(sql!("pause_running_jobs")).bind(sweep_id).execute(&mut *tx).await?;
        stop_running_jobs(&mut tx, sweep_id, "ready", "sweep paused").await?;
        insert_sweep_event(&mut tx, sweep_id, None).await?;
    } else if !unfinished(&mut tx, sweep_id, Op::Pause).await? {
        return Ok(());
    }
    tx.commit().await?;
    detached(pool, sweep_id, Op::Pause, Run::Whole(None)).await.map(drop)
}

pub(crate) async fn resume(pool: &SqlitePool, sweep_id: i64) -> Result<()> {
    let mut tx = begin_write(pool, "write").await?;
    if proceed(sweep_state_for_update(&mut tx, sweep_id).await?, SweepOp::Resume, sweep_id)? {
        sqlx::query(sql!("resume_sweep")).bind(sweep_id).execute(&mut *tx).await?;
        begin_op(&mut tx, sweep_id, Op::Resume).await?;
        insert_sweep_event(&mut tx, sweep_id, None).await?;
    } else if !unfinished(&mut tx, sweep_id, Op::Resume).await? {
        return Ok(());
    }
    tx.commit().await?;
    detached(pool, sweep_id, Op::Resume, Run::Whole(None)).await.map(drop)
}

pub(crate) async fn cancel(pool: &SqlitePool, sweep_id: i64) -> Result<()> {
    let mut tx = begin_write(pool, "write").await?;
    if proceed(sweep_state_for_update(&mut tx, sweep_id).await?, SweepOp::Cancel, sweep_id)? {
        sqlx::query(sql!("cancel_sweep")).bind(sweep_id).execute(&mut *tx).await?;
        begin_op(&mut tx, sweep_id, Op::Cancel).await?;
        stop_running_jobs(&mut tx, sweep_id, "cancelled", "sweep cancelled").await?;
        insert_sweep_event(&mut tx, sweep_id, None).await?;
    } else if !unfinished(&mut tx, sweep_id, Op::Cancel).await? {
        return Ok(());
    }
    tx.commit().await?;
    detached(pool, sweep_id, Op::Cancel, Run::Whole(None)).await.map(drop)
}

pub(crate) async fn retry(pool: &SqlitePool, sweep_id: i64, trial_id: Option<i64>) -> Result<u64> {
    let mut tx = begin_write(pool, "write").await?;
    let state = sweep_state_for_update(&mut tx, sweep_id).await?;
    proceed(state, SweepOp::Retry, sweep_id)?;
    if let Some(t) = trial_id {
        let found: Option<i64> = sqlx::query_scalar(sql!("trial_of_sweep")).bind(t).bind(sweep_id).fetch_optional(&mut *tx).await?;
        if found.is_none() {
            return Err(StoreError::NotFound(format!(
                "sweep {sweep_id} has no trial {t}: `lthctl status {sweep_id}` names the trials of failed jobs"
            )));
        }
    }
    begin_op(&mut tx, sweep_id, Op::Retry).await?;
    tx.commit().await?;
    detached(pool, sweep_id, Op::Retry, Run::Whole(trial_id)).await
}

/// Finishes the operations that were cut short, those whose row nobody touched for `older_than`
/// (see the top of this file): the reaper's part ([`STALE`]), and a starting coordinator's (all).
/// Returns the (sweep, operation) pairs finished.
pub(crate) async fn finish_unfinished(pool: &SqlitePool, older_than: Duration) -> Result<Vec<(i64, String)>> {
    let rows = sqlx::query(sql!("stale_sweep_ops")).bind(older_than.as_secs_f64()).fetch_all(pool).await?;
    let mut done = Vec::with_capacity(rows.len());
    for r in &rows {
        let (sweep_id, name): (i64, String) = (r.try_get("sweep_id")?, r.try_get("op")?);
        // The table's CHECK admits only the four names.
        let op = Op::parse(&name).expect("unfinished_sweep_ops.op is one of the four");
        detached(pool, sweep_id, op, Run::Remainder).await?;
        done.push((sweep_id, name));
    }
    Ok(done)
}

/// What [`finish`] runs.
#[derive(Clone, Copy)]
enum Run {
    /// The chunks and the last transaction (a retry's of these trials: None, all).
    Whole(Option<i64>),
    /// What is left of an operation cut short: the same, but a retry gets its last transaction
    /// alone (see the top of this file).
    Remainder,
}

/// [`finish`] in a task of its own, so that it runs to its end when the caller goes away (a
/// cancelled gRPC call drops its future, as with a submit).
async fn detached(pool: &SqlitePool, sweep_id: i64, op: Op, run: Run) -> Result<u64> {
    let pool = pool.clone();
    tokio::spawn(async move { finish(&pool, sweep_id, op, run).await }).await.map_err(|e| match e.try_into_panic() {
        Ok(p) => std::panic::resume_unwind(p),
        Err(_) => StoreError::Db(sqlx::Error::WorkerCrashed),
    })?
}

/// Steps 2 and 3 of `op` (the top of this file) on sweep `sweep_id`, step 1 committed. Returns how
/// many jobs a retry re-queued.
async fn finish(pool: &SqlitePool, sweep_id: i64, op: Op, run: Run) -> Result<u64> {
    let mut w = PacedTx::new(pool, Some(BEGIN_WRITE), Some(SQLITE_HOLD));
    let mut retried = 0u64;
    let chunks = match (op, run) {
        (Op::Retry, Run::Remainder) => false,
        _ => true,
    };
    if chunks {
        let (lo, hi) = id_range(w.conn().await?, sql!("sweep_job_ids"), sweep_id).await?;
        let mut from = lo;
        while from <= hi {
            let conn = w.conn().await?;
            let state = sweep_state_for_update(conn, sweep_id).await?;
            if !op.goes_on(state) {
                return superseded(w, sweep_id, op).await.map(|()| retried);
            }
            let to = from + CHUNK_IDS;
            match op {
                Op::Cancel => {
                    sqlx::query(sql!("cancel_jobs_range")).bind(sweep_id).bind(from).bind(to).execute(&mut *conn).await?;
                }
                Op::Pause => {
                    sqlx::query(sql!("pause_jobs_range")).bind(sweep_id).bind(from).bind(to).execute(&mut *conn).await?;
                }
                Op::Resume => {
                    sqlx::query(sql!("resume_jobs_range")).bind(sweep_id).bind(from).bind(to).execute(&mut *conn).await?;
                }
                Op::Retry => {
                    let trial_id = match run {
                        Run::Whole(t) => t,
                        Run::Remainder => None,
                    };
                    retried += retry_chunk(conn, sweep_id, trial_id, state == SweepState::Paused, from, to).await?;
                }
            }
            touch(conn, sweep_id, op).await?;
            from = to;
            w.pace().await?;
        }
    }
    if op == Op::Cancel {
        // The trials (a cancel is final: nothing changes the sweep's state any more).
        let (lo, hi) = id_range(w.conn().await?, sql!("sweep_trial_ids"), sweep_id).await?;
        let mut from = lo;
        while from <= hi {
            let conn = w.conn().await?;
            sqlx::query(sql!("cancel_trials_range")).bind(sweep_id).bind(from).bind(from + CHUNK_IDS).execute(&mut *conn).await?;
            touch(conn, sweep_id, op).await?;
            from += CHUNK_IDS;
            w.pace().await?;
        }
    }

    // The last transaction, short: what happened behind the chunks.
    w.commit_now().await?;
    let conn = w.conn().await?;
    if !op.goes_on(sweep_state_for_update(conn, sweep_id).await?) {
        return superseded(w, sweep_id, op).await.map(|()| retried);
    }
    match op {
        Op::Cancel => {
            // Jobs claimed between the chunks, and children of jobs that completed meanwhile.
            stop_running_jobs(conn, sweep_id, "cancelled", "sweep cancelled").await?;
            sqlx::query(sql!("cancel_open_jobs")).bind(sweep_id).execute(&mut *conn).await?;
            // The sweep's job counts changed since the first transaction's event.
            insert_sweep_event(conn, sweep_id, None).await?;
        }
        Op::Pause => {
            // Jobs claimed between the chunks: re-queued paused.
            sqlx::query(sql!("pause_running_jobs")).bind(sweep_id).execute(&mut *conn).await?;
            stop_running_jobs(conn, sweep_id, "ready", "sweep paused").await?;
        }
        Op::Resume => {}
        Op::Retry => {
            // A retry cut short reopens what its chunks re-queued, if they re-queued anything.
            let reopen = match run {
                Run::Whole(_) => retried > 0,
                Run::Remainder => sqlx::query_scalar::<_, bool>(sql!("sweep_has_open_jobs")).bind(sweep_id).fetch_one(&mut *conn).await?,
            };
            if reopen {
                sqlx::query(sql!("reopen_trials")).bind(sweep_id).execute(&mut *conn).await?;
                sqlx::query(sql!("reopen_sweep")).bind(sweep_id).execute(&mut *conn).await?;
                let detail = match run {
                    Run::Whole(_) => serde_json::json!({ "retried_jobs": retried }),
                    Run::Remainder => serde_json::json!({ "retry_finished": true }),
                };
                insert_sweep_event(conn, sweep_id, Some(detail)).await?;
            }
        }
    }
    sqlx::query(sql!("end_sweep_op")).bind(sweep_id).bind(op.name()).execute(&mut *conn).await?;
    w.finish().await?;
    Ok(retried)
}

/// One chunk of a retry: its failed jobs with ids in [from, to) re-queued, each with its event and
/// without its exclusions (a fresh start: the workers it failed on may run it again).
async fn retry_chunk(conn: &mut SqliteConnection, sweep_id: i64, trial_id: Option<i64>, paused: bool, from: i64, to: i64) -> Result<u64> {
    let rows = sqlx::query(sql!("retry_jobs")).bind(sweep_id).bind(trial_id).bind(paused).bind(from).bind(to).fetch_all(&mut *conn).await?;
    for r in &rows {
        let (id, st, attempt): (i64, String, i32) = (r.try_get("id")?, r.try_get("state")?, r.try_get("attempt")?);
        sqlx::query(sql!("delete_exclusions")).bind(id).execute(&mut *conn).await?;
        insert_job_event(conn, sweep_id, id, &st, attempt, None, Some(serde_json::json!({ "retried": true }))).await?;
    }
    Ok(rows.len() as u64)
}

/// The sweep left the state `op` put it in: a later operation took over (and covers the same
/// jobs). `op` is forgotten.
async fn superseded(mut w: PacedTx<'_, sqlx::Sqlite>, sweep_id: i64, op: Op) -> Result<()> {
    sqlx::query(sql!("end_sweep_op")).bind(sweep_id).bind(op.name()).execute(w.conn().await?).await?;
    w.finish().await
}

/// (lowest, highest) id that `query` (`sweep_job_ids`, `sweep_trial_ids`) finds; (1, 0) for none.
async fn id_range(conn: &mut SqliteConnection, query: &'static str, sweep_id: i64) -> Result<(i64, i64)> {
    let r = sqlx::query(query).bind(sweep_id).fetch_one(conn).await?;
    let (lo, hi): (Option<i64>, Option<i64>) = (r.try_get("lo")?, r.try_get("hi")?);
    Ok((lo.unwrap_or(1), hi.unwrap_or(0)))
}

async fn begin_op(conn: &mut SqliteConnection, sweep_id: i64, op: Op) -> Result<()> {
    sqlx::query(sql!("begin_sweep_op")).bind(sweep_id).bind(op.name()).execute(conn).await?;
    Ok(())
}

async fn touch(conn: &mut SqliteConnection, sweep_id: i64, op: Op) -> Result<()> {
    sqlx::query(sql!("touch_sweep_op")).bind(sweep_id).bind(op.name()).execute(conn).await?;
    Ok(())
}

/// Whether `op` on the sweep began and did not finish.
async fn unfinished(conn: &mut SqliteConnection, sweep_id: i64, op: Op) -> Result<bool> {
    let n: i64 = sqlx::query_scalar(sql!("sweep_op_unfinished")).bind(sweep_id).bind(op.name()).fetch_one(conn).await?;
    Ok(n > 0)
}
