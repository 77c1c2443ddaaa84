//! The job store: sweeps, trials, jobs, leases, results and masks in Postgres or SQLite.
//!
//! This is the part that must never lose or double-run a job, so every state change is one
//! transaction with a guard in its WHERE clause, and every worker write is fenced by the lease
//! (job id, attempt). Times come from the database clock, never from a coordinator or worker.
//!
//! # Layout
//!
//! [`Store`] is a facade: each public method checks what needs no database, then dispatches to
//! the backend's function for the concern, `postgres::NAME::op` or `sqlite::NAME::op`. Each
//! backend keeps one file per concern and one SQL statement per file under
//! `coordinator/queries/{postgres,sqlite}/NAME.sql` (compiled in with `include_str!`): the
//! dialects differ in the clock (`now()` / `strftime(...)`), in locking (Postgres: `FOR NO KEY UPDATE`,
//! `SKIP LOCKED`; SQLite: every write transaction is `BEGIN IMMEDIATE`, one writer at a time),
//! and in the hot paths (Postgres runs a batch of claims or completions as one statement; SQLite
//! as a series of statements in one transaction).
//!
//! - `error.rs`: [`StoreError`], one variant per cause, each with its machine-readable reason.
//! - `types.rs`: the rows and requests (flat rows derive `sqlx::FromRow` for both backends).
//! - `rules.rs`: pure decisions both backends share (failure rule, refusals, uploads needed).
//! - `connect.rs`: the URL, the pool and the migrations.
//! - `submit.rs`: the order of a submit's writes, shared; `paced.rs` its short SQLite transactions.
//! - `repair.rs`: lost artifacts (the story, and its pure rules).
//! - `postgres/`, `sqlite/`: `sweeps` (read, pause, resume, cancel, retry), `jobs`, `workers`,
//!   `leases` (heartbeat, progress), `claim`, `complete`, `fail` (and release), `artifacts`,
//!   `inputs`, `events`, `results`, `reap`, `repair`, `submit`, `dashboard`, `scrape`,
//!   `throughput`; `postgres/vacuum`. Each backend's `mod.rs` holds the statements several
//!   operations share (`insert_sweep_event`, `insert_job_event`, `close_attempt`,
//!   `stop_running_jobs`, `fail_descendants`, `finalize_sweeps`).
//! - `pool_wait.rs` (time waited for a connection), `sqlite_busy.rs` (SQLite's busy handler),
//!   `sqlite_fns.rs` (SQL functions registered on SQLite connections).

mod connect;
mod error;
mod paced;
pub mod pool_wait;
mod postgres;
mod repair;
mod rules;
mod sqlite;
mod sqlite_busy;
mod sqlite_fns;
mod submit;
mod types;

pub use connect::{redact_url, StoreOptions};
pub use error::{Result, StoreError};
pub use lth_sweep::state::AbortReason;
pub use rules::{layers_match, uploads_needed, FailRule, MAX_EXCLUDED_WORKERS};
pub use types::{
    check_loss, stored_number, AccuracyRow, ArtifactInfo, ArtifactRecord, ArtifactRow, AttemptRow, ClaimRequest, ClaimedJob, CollapseWarning,
    Completion, EventRow, Failure, GpuRow, InputRow, JobCountRow, JobCounts, JobResult, JobRow, KeptCell, LayerResult, LayerStatsRow, Lease,
    LostArtifact, OverlapCell, PoolStats, ProgressInput, ProgressPoint, ReapReport, Recorded, LevelResult, ResultRow, RunningJob, ScrapeCounts,
    SubmitOutcome, SweepInfo, SweepListRow, Throughput, UnitStats, VacuumReport, WorkerRegistration, WorkerRow,
};

use error::{stale, unknown_worker};
use lth_sweep::SweepSpec;
use rules::Refusal;
use sqlx::{PgPool, SqlitePool};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// The job store over one database.
#[derive(Clone, Debug)]
pub enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Store {
    pub fn backend_name(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    /// One trivial statement: does the database answer? (The health probe.)
    pub async fn ping(&self) -> Result<()> {
        match self {
            Store::Postgres(p) => postgres::ping(p).await,
            Store::Sqlite(p) => sqlite::ping(p).await,
        }
    }

    pub async fn close(&self) {
        match self {
            Store::Postgres(p) => p.close().await,
            Store::Sqlite(p) => p.close().await,
        }
    }

    /// The pool's size, idle connections and limit.
    pub fn pool_stats(&self) -> PoolStats {
        match self {
            Store::Postgres(p) => PoolStats { size: p.size(), idle: p.num_idle() as u32, max: p.options().get_max_connections() },
            Store::Sqlite(p) => PoolStats { size: p.size(), idle: p.num_idle() as u32, max: p.options().get_max_connections() },
        }
    }

    // -----------------------------------------------------------------------------------------
    // Sweeps (submitting them: submit.rs)
    // -----------------------------------------------------------------------------------------

    /// The sweep's spec alone: what each claim's assignment carries, without `get_sweep`'s counts.
    pub async fn sweep_spec(&self, sweep_id: i64) -> Result<SweepSpec> {
        match self {
            Store::Postgres(p) => postgres::sweeps::spec(p, sweep_id).await,
            Store::Sqlite(p) => sqlite::sweeps::spec(p, sweep_id).await,
        }
    }

    /// The token name that submitted the sweep (None for sweeps from before owners were
    /// recorded); NotFound when there is no such sweep. The cheap check for "does it exist, and
    /// whose is it", without `get_sweep`'s counts.
    pub async fn sweep_owner(&self, sweep_id: i64) -> Result<Option<String>> {
        match self {
            Store::Postgres(p) => postgres::sweeps::owner(p, sweep_id).await,
            Store::Sqlite(p) => sqlite::sweeps::owner(p, sweep_id).await,
        }
    }

    pub async fn get_sweep(&self, sweep_id: i64) -> Result<SweepInfo> {
        match self {
            Store::Postgres(p) => postgres::sweeps::get(p, sweep_id).await,
            Store::Sqlite(p) => sqlite::sweeps::get(p, sweep_id).await,
        }
    }

    /// The newest sweeps (`limit` 0: 100; at most 10,000), as [`Store::get_sweep`] reads each.
    pub async fn list_sweeps(&self, limit: u32) -> Result<Vec<SweepInfo>> {
        let limit = if limit == 0 { 100 } else { limit.min(10_000) } as i64;
        match self {
            Store::Postgres(p) => postgres::sweeps::list(p, limit).await,
            Store::Sqlite(p) => sqlite::sweeps::list(p, limit).await,
        }
    }

    /// Stops new claims, re-queues the sweep's running jobs (their workers learn it from the next
    /// heartbeat) and keeps everything else. Pausing a paused sweep is a no-op (on SQLite it
    /// finishes a pause that was cut short). On SQLite this, resume, cancel and retry are written
    /// in short transactions, so that other sweeps' writers get the lock in between
    /// (`sqlite/sweeps.rs`).
    pub async fn pause_sweep(&self, sweep_id: i64) -> Result<()> {
        match self {
            Store::Postgres(p) => postgres::sweeps::pause(p, sweep_id).await,
            Store::Sqlite(p) => sqlite::sweeps::pause(p, sweep_id).await,
        }
    }

    /// Lets a paused sweep's jobs be claimed again.
    pub async fn resume_sweep(&self, sweep_id: i64) -> Result<()> {
        match self {
            Store::Postgres(p) => postgres::sweeps::resume(p, sweep_id).await,
            Store::Sqlite(p) => sqlite::sweeps::resume(p, sweep_id).await,
        }
    }

    /// Cancels every unfinished job of the sweep; running ones are aborted through their workers'
    /// next heartbeat. Finished results stay. Cancelling a cancelled sweep is a no-op.
    pub async fn cancel_sweep(&self, sweep_id: i64) -> Result<()> {
        match self {
            Store::Postgres(p) => postgres::sweeps::cancel(p, sweep_id).await,
            Store::Sqlite(p) => sqlite::sweeps::cancel(p, sweep_id).await,
        }
    }

    /// Re-queues the sweep's failed jobs (all, or those of one trial and its dense job) with
    /// fresh attempts: error counts start again at 0, the attempt number keeps counting (leases
    /// stay fenced). A job whose parent has succeeded is ready, the others wait for theirs. The
    /// trials of re-queued jobs and a finished sweep reopen. Returns how many jobs were re-queued.
    /// A cancelled sweep is refused; one with nothing failed is left as it is.
    pub async fn retry_sweep(&self, sweep_id: i64, trial_id: Option<i64>) -> Result<u64> {
        match self {
            Store::Postgres(p) => postgres::sweeps::retry(p, sweep_id, trial_id).await,
            Store::Sqlite(p) => sqlite::sweeps::retry(p, sweep_id, trial_id).await,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Jobs and workers
    // -----------------------------------------------------------------------------------------

    pub async fn list_jobs(&self, sweep_id: i64, state: Option<&str>) -> Result<Vec<JobRow>> {
        self.list_jobs_page(sweep_id, state, 0, i64::MAX).await
    }

    /// One page of [`Store::list_jobs`]: up to `limit` jobs with ids above `after_id`, by id.
    pub async fn list_jobs_page(&self, sweep_id: i64, state: Option<&str>, after_id: i64, limit: i64) -> Result<Vec<JobRow>> {
        match self {
            Store::Postgres(p) => postgres::jobs::list(p, sweep_id, state, after_id, limit).await,
            Store::Sqlite(p) => sqlite::jobs::list(p, sweep_id, state, after_id, limit).await,
        }
    }

    pub async fn get_job(&self, job_id: i64) -> Result<JobRow> {
        match self {
            Store::Postgres(p) => postgres::jobs::get(p, job_id).await,
            Store::Sqlite(p) => sqlite::jobs::get(p, job_id).await,
        }
    }

    /// Registers a worker id for a daemon that does not say which process it is (see
    /// [`Store::register_worker_instance`]).
    pub async fn register_worker(&self, w: &WorkerRegistration) -> Result<()> {
        self.register_worker_instance(w, "").await.map(|_| ())
    }

    /// Registers a worker id for the daemon process `instance` ('' = not said). When another
    /// process registered the id before, the jobs still leased to the id are re-queued at once
    /// (counted as lost) and returned; that process's heartbeats are refused from now on
    /// ([`StoreError::Superseded`]).
    pub async fn register_worker_instance(&self, w: &WorkerRegistration, instance: &str) -> Result<Vec<Lease>> {
        match self {
            Store::Postgres(p) => postgres::workers::register(p, w, instance).await,
            Store::Sqlite(p) => sqlite::workers::register(p, w, instance).await,
        }
    }


    /// Workers, with `alive` = seen within `alive_within`.
    pub async fn list_workers(&self, alive_within: Duration) -> Result<Vec<WorkerRow>> {
        self.list_workers_page(alive_within, true, "", i64::MAX).await
    }

    /// One page of [`Store::list_workers`]: up to `limit` workers whose ids sort after `after`;
    /// without `all`, only the alive ones (a worker not seen within `alive_within` is lost).
    pub async fn list_workers_page(&self, alive_within: Duration, all: bool, after: &str, limit: i64) -> Result<Vec<WorkerRow>> {
        match self {
            Store::Postgres(p) => postgres::workers::list(p, alive_within, all, after, limit).await,
            Store::Sqlite(p) => sqlite::workers::list(p, alive_within, all, after, limit).await,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Leases: claims, heartbeats, progress
    // -----------------------------------------------------------------------------------------

    /// Hands out up to `n` ready jobs of running sweeps (highest priority, then oldest) under a
    /// lease of `lease` from the database clock. No job is ever handed to two claimers: Postgres
    /// skips rows another claimer has locked, SQLite runs claims one at a time.
    pub async fn claim_jobs(&self, worker_id: &str, n: u32, lease: Duration) -> Result<Vec<ClaimedJob>> {
        let req = ClaimRequest { worker_id: worker_id.to_string(), n, lease };
        self.claim_jobs_batch(std::slice::from_ref(&req)).await?.pop().expect("one outcome per request")
    }

    /// Hands out ready jobs to several claimers at once: the first request gets the
    /// highest-priority jobs, and so on. Returns one outcome per request, in request order.
    ///
    /// The hot path runs in batches (claims for many workers, completions of many jobs, records of
    /// many uploads), each in one database round trip on Postgres (one transaction on SQLite): with
    /// 64 workers on a 2-core coordinator the per-statement cost (a round trip, a commit, a WAL
    /// flush) dominates, not the work in each statement. The single-job calls
    /// ([`Store::claim_jobs`], [`Store::complete_job`]) are batches of one, so the contract suite
    /// exercises exactly this code; [`crate::group_commit`] forms the batches from concurrent
    /// calls. Every item keeps its own outcome: an unknown worker, a stale lease or an invalid
    /// result fails that item only. A database error fails the whole batch (nothing of it was
    /// written); the group committer then retries its items one by one.
    pub async fn claim_jobs_batch(&self, reqs: &[ClaimRequest]) -> Result<Vec<Result<Vec<ClaimedJob>>>> {
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let per_req = match self {
            Store::Postgres(p) => postgres::claim::claim_batch(p, reqs).await?,
            Store::Sqlite(p) => sqlite::claim::claim_batch(p, reqs).await?,
        };
        Ok(per_req
            .into_iter()
            .enumerate()
            .map(|(i, jobs)| match jobs {
                None => Err(unknown_worker(&reqs[i].worker_id)),
                Some(mut jobs) => {
                    jobs.sort_by_key(|c| c.job.id);
                    Ok(jobs)
                }
            })
            .collect())
    }

    /// Extends the leases the worker still holds and says which of its jobs to abort (and why).
    pub async fn heartbeat(&self, worker_id: &str, leases: &[Lease], lease: Duration) -> Result<Vec<(Lease, AbortReason)>> {
        self.heartbeat_with_health(worker_id, "", leases, lease, None).await
    }

    /// [`Store::heartbeat`] from the daemon process `instance` ('' = not said), recording the
    /// worker's health as it reports it: `unhealthy` is why it stopped claiming, None while it is
    /// healthy. Refused with [`StoreError::Superseded`] when another process registered the
    /// worker id since `instance` did.
    pub async fn heartbeat_with_health(
        &self,
        worker_id: &str,
        instance: &str,
        leases: &[Lease],
        lease: Duration,
        unhealthy: Option<&str>,
    ) -> Result<Vec<(Lease, AbortReason)>> {
        match self {
            Store::Postgres(p) => postgres::leases::heartbeat(p, worker_id, instance, leases, lease, unhealthy).await,
            Store::Sqlite(p) => sqlite::leases::heartbeat(p, worker_id, instance, leases, lease, unhealthy).await,
        }
    }

    /// The kind ("dense", "level") of the job while `lease` is its current running attempt.
    pub async fn running_job_kind(&self, lease: Lease) -> Result<Option<String>> {
        match self {
            Store::Postgres(p) => postgres::leases::running_job_kind(p, lease).await,
            Store::Sqlite(p) => sqlite::leases::running_job_kind(p, lease).await,
        }
    }

    /// True while `lease` is the job's current running attempt.
    pub async fn lease_is_current(&self, lease: Lease) -> Result<bool> {
        match self {
            Store::Postgres(p) => postgres::leases::is_current(p, lease).await,
            Store::Sqlite(p) => sqlite::leases::is_current(p, lease).await,
        }
    }

    pub async fn report_progress(&self, lease: Lease, p: &ProgressInput) -> Result<()> {
        let fraction = if p.total_iterations > 0 { (p.iteration as f64 / p.total_iterations as f64).clamp(0.0, 1.0) } else { 0.0 };
        match self {
            Store::Postgres(pool) => postgres::leases::report_progress(pool, lease, fraction, p).await,
            Store::Sqlite(pool) => sqlite::leases::report_progress(pool, lease, fraction, p).await,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Completions and failures
    // -----------------------------------------------------------------------------------------

    /// Records the job's result and masks, marks it succeeded, unblocks its children and closes
    /// its trial (last level) and sweep (last job). Fenced: a stale lease changes nothing.
    /// Does not ask for the attempt's uploads; the gRPC service completes through
    /// [`Completion::require_uploads`], which does.
    pub async fn complete_job(&self, lease: Lease, result: &LevelResult) -> Result<()> {
        let item = Completion { lease, result: result.clone(), require_uploads: false };
        self.complete_jobs(std::slice::from_ref(&item)).await?.pop().expect("one outcome per completion")
    }

    /// Completes several jobs: records each result and its masks, marks the job succeeded,
    /// unblocks its children, closes its trial (last level) and its sweep (last open job).
    /// Returns one outcome per completion, in order; a stale lease changes nothing.
    /// Takes the completions by value or by reference (the batcher's items carry more than the
    /// completion; a result's masks are not copied to make a batch).
    pub async fn complete_jobs<C: std::borrow::Borrow<Completion> + Sync>(&self, items: &[C]) -> Result<Vec<Result<()>>> {
        let items: Vec<&Completion> = items.iter().map(|c| c.borrow()).collect();
        let mut out: Vec<Option<Result<()>>> = items.iter().map(|c| types::CheckResult::check(&c.result).err().map(Err)).collect();
        // A lease twice in one batch: the first copy competes, later copies are stale by then.
        let mut seen = HashSet::new();
        let mut todo: Vec<usize> = Vec::new();
        for (i, c) in items.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            if seen.insert(c.lease) {
                todo.push(i);
            } else {
                out[i] = Some(Err(stale(c.lease)));
            }
        }
        if !todo.is_empty() {
            // The refused leases and why; every other item in `todo` was applied, with where it
            // ran, and a level job's layers were checked against its model's (the layers its
            // dense job reported) in the same transaction.
            let mut refused: HashMap<Lease, Refusal> = match self {
                Store::Postgres(p) => postgres::complete::complete(p, &items, &todo).await?,
                Store::Sqlite(p) => sqlite::complete::complete(p, &items, &todo).await?,
            };
            for &i in &todo {
                let l = items[i].lease;
                out[i] = Some(match refused.remove(&l) {
                    None => Ok(()),
                    Some(why) => {
                        let reported: Vec<&str> = items[i].result.layers.iter().map(|l| l.name.as_str()).collect();
                        Err(why.into_error(l, &reported))
                    }
                });
            }
        }
        Ok(out.into_iter().map(|o| o.expect("every item has an outcome")).collect())
    }

    /// Records a failed attempt. A retryable failure re-queues the job while it has attempts left;
    /// otherwise the job fails, and with it its trial (every trial of the seed, for a dense job)
    /// and all its descendants.
    pub async fn fail_job(&self, lease: Lease, error: &str, retryable: bool) -> Result<()> {
        self.fail_job_on(lease, error, Failure { retryable, node_local: false }, Duration::ZERO).await
    }

    /// [`Store::fail_job`], telling a failure of the worker's machine (`node_local`: a dataset
    /// path missing there, a full disk, no CUDA, out of memory) from one of the job. A node-local
    /// failure is retried elsewhere whatever `retryable` says: the worker is added to the job's
    /// exclusions (never claimed by it again), and only the job's first node-local failure counts
    /// against its attempts (none ends it), so one bad node cannot burn them. A job that failed
    /// node-locally on [`MAX_EXCLUDED_WORKERS`] workers fails for good, and so does one that no
    /// other worker can take: none seen within `alive_within`, healthy and not excluded (a
    /// single-machine setup would otherwise wait forever for a worker that never comes).
    pub async fn fail_job_on(&self, lease: Lease, error: &str, how: Failure, alive_within: Duration) -> Result<()> {
        match self {
            Store::Postgres(p) => postgres::fail::fail(p, lease, error, how, alive_within).await,
            Store::Sqlite(p) => sqlite::fail::fail(p, lease, error, how, alive_within).await,
        }
    }

    /// Gives a running job back on the worker's request (shutdown): the job is ready again at
    /// once, the attempt is closed as `aborted` with the reason, and neither the job's error
    /// count nor its lost count grows, so a worker restart never uses up a job's attempts.
    pub async fn release_job(&self, lease: Lease, reason: &str) -> Result<()> {
        match self {
            Store::Postgres(p) => postgres::fail::release(p, lease, reason).await,
            Store::Sqlite(p) => sqlite::fail::release(p, lease, reason).await,
        }
    }

    // -----------------------------------------------------------------------------------------
    // The reaper
    // -----------------------------------------------------------------------------------------

    /// Re-queues jobs whose lease expired (counted as lost, not as failed), closes trials and
    /// sweeps with no open jobs left (a backstop for completions that raced each other),
    /// unblocks jobs whose repaired input was made again, and on SQLite finishes a pause, resume,
    /// cancel or retry whose writer stopped half-way ([`Store::finish_unfinished_sweep_ops`]).
    pub async fn reap(&self) -> Result<ReapReport> {
        self.reap_after(None, None).await
    }

    /// [`Store::reap`], closing only trials with a job that succeeded after event `since` (None:
    /// every running trial, which cost 303-621 ms a pass at 100k trials and 6-9 s at 1M). The
    /// reaper passes the watermark of two passes back ([`ReapReport::event_watermark`]), so a
    /// completion that committed after a later pass read its watermark (event ids are taken at
    /// insert and commit in any order) is still looked at.
    ///
    /// `closed_through`: the watermark the reaper's next pass will use as its `since`, recorded in
    /// this pass's transaction once this pass has covered what lies before it, so that a
    /// coordinator started later begins there ([`Store::reaper_mark`]) instead of looking at every
    /// running trial again.
    pub async fn reap_after(&self, since: Option<i64>, closed_through: Option<i64>) -> Result<ReapReport> {
        let (lost, finished_sweeps, event_watermark) = match self {
            Store::Postgres(p) => postgres::reap::reap(p, since, closed_through).await?,
            Store::Sqlite(p) => sqlite::reap::reap(p, since, closed_through).await?,
        };
        let unblocked_after_repair = self.unblock_repaired().await?;
        if let Store::Sqlite(p) = self {
            for (sweep_id, op) in sqlite::sweeps::finish_unfinished(p, sqlite::sweeps::STALE).await? {
                tracing::warn!(sweep_id, op = %op, "finished a sweep operation that stopped half-way (its coordinator died or its writes failed)");
            }
        }
        Ok(ReapReport { lost, finished_sweeps, unblocked_after_repair, event_watermark })
    }

    /// Where an earlier reaper got to: every trial whose jobs all succeeded with events up to
    /// this id is closed. None when not known (a database migrated while it held running trials,
    /// before any pass recorded a mark): the first pass then looks at every running trial.
    pub async fn reaper_mark(&self) -> Result<Option<i64>> {
        match self {
            Store::Postgres(p) => postgres::reap::mark(p).await,
            Store::Sqlite(p) => sqlite::reap::mark(p).await,
        }
    }

    /// Finishes the pauses, resumes, cancels and retries that a coordinator stopped half-way
    /// (SQLite writes them in short transactions: `sqlite/sweeps.rs`; Postgres in one, and has
    /// none). Run when the coordinator starts, before it serves; the reaper finishes those whose
    /// writer stopped while the coordinator runs. Returns the (sweep, operation) pairs finished.
    pub async fn finish_unfinished_sweep_ops(&self) -> Result<Vec<(i64, String)>> {
        match self {
            Store::Postgres(_) => Ok(Vec::new()),
            Store::Sqlite(p) => sqlite::sweeps::finish_unfinished(p, Duration::ZERO).await,
        }
    }

    /// Vacuums the jobs table when it holds many dead row versions (Postgres only).
    ///
    /// Why the coordinator does this itself: every claim leaves a dead entry at the head of the
    /// `jobs_claimable` index (a claimed job leaves the ready state), and every claim scans the
    /// index from its head, stepping over all dead entries that no vacuum has removed yet. At
    /// 2,000 claims a second that is 120,000 entries a minute, while autovacuum visits a database
    /// at most once a minute (`autovacuum_naptime`) and throttles itself; measured claim+complete
    /// throughput fell by a third within 40 s without this, and held with it (BENCHMARKS.md).
    /// The threshold grows with the table, so a big, quiet table is not vacuumed over and over.
    /// `SKIP_LOCKED`: when another coordinator (or autovacuum) is already vacuuming, skip.
    pub async fn vacuum_jobs_if_needed(&self) -> Result<Option<VacuumReport>> {
        match self {
            Store::Postgres(p) => postgres::vacuum::vacuum_jobs_if_needed(p).await,
            Store::Sqlite(_) => Ok(None),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Artifacts (lost ones: repair.rs) and uploaded inputs
    // -----------------------------------------------------------------------------------------

    /// Records an uploaded file, fenced by the lease. A later attempt's file of the same name
    /// replaces an earlier attempt's, a checkpoint the attempt's previous one.
    pub async fn record_artifact(&self, lease: Lease, name: &str, uri: &str, sha256: &str, bytes: u64) -> Result<Recorded> {
        let rec = ArtifactRecord { lease, name: name.into(), uri: uri.into(), sha256: sha256.into(), bytes };
        self.record_artifacts(std::slice::from_ref(&rec)).await?.pop().expect("one outcome per record")
    }

    /// Records several uploaded files, each fenced by its lease (a later attempt's file of the
    /// same name replaces the earlier one's; each outcome names the object it replaced, for the
    /// caller to delete). One outcome per record, in order: a stale lease records nothing. The
    /// same (job, name) twice in one batch fails the batch as a whole on Postgres (one statement
    /// cannot upsert a row twice); the group committer then records them one by one.
    pub async fn record_artifacts(&self, recs: &[ArtifactRecord]) -> Result<Vec<Result<Recorded>>> {
        if recs.is_empty() {
            return Ok(Vec::new());
        }
        // One outcome per record, in order (None: its lease was stale).
        let recorded = match self {
            Store::Postgres(p) => postgres::artifacts::record_batch(p, recs).await?,
            Store::Sqlite(p) => sqlite::artifacts::record_batch(p, recs).await?,
        };
        Ok(recs
            .iter()
            .zip(recorded)
            .map(|(r, outcome)| match outcome {
                Some(replaced) => Ok(Recorded { replaced_uri: replaced.filter(|u| *u != r.uri) }),
                None => Err(stale(r.lease)),
            })
            .collect())
    }

    /// The artifact `name` of `job_id`, following `reused_from` to the job that holds the file.
    pub async fn find_artifact(&self, job_id: i64, name: &str) -> Result<ArtifactRow> {
        match self {
            Store::Postgres(p) => postgres::artifacts::find(p, job_id, name).await,
            Store::Sqlite(p) => sqlite::artifacts::find(p, job_id, name).await,
        }
    }

    /// The file `name` that `dependent` (a running attempt) downloads was found lost: missing
    /// from the object store, or not its recorded size or sha256 (`problem` says which, for
    /// people). `lost_uri` is the object that was read (None: the claim found no row at all).
    /// See `repair.rs` for what happens; a stale lease changes nothing.
    pub async fn artifact_lost(&self, dependent: Lease, name: &str, lost_uri: Option<&str>, problem: &str) -> Result<LostArtifact> {
        match self {
            Store::Postgres(p) => postgres::repair::artifact_lost(p, dependent, name, lost_uri, problem).await,
            Store::Sqlite(p) => sqlite::repair::artifact_lost(p, dependent, name, lost_uri, problem).await,
        }
    }

    /// The reaper's part of a repair: jobs re-run for a lost file that have succeeded again
    /// unblock the jobs that rewind to them (their children were unblocked by the completion),
    /// and re-runs that ended are forgotten. Returns how many jobs became ready. Costs one read of
    /// the (nearly always empty) `artifact_repairs` table when there is nothing to do.
    async fn unblock_repaired(&self) -> Result<u64> {
        match self {
            Store::Postgres(p) => postgres::repair::unblock_repaired(p).await,
            Store::Sqlite(p) => sqlite::repair::unblock_repaired(p).await,
        }
    }

    /// Records an uploaded input. Returns false (and changes nothing) when the digest was already
    /// recorded: the same bytes uploaded twice are one input.
    pub async fn record_input(&self, input: &InputRow) -> Result<bool> {
        match self {
            Store::Postgres(p) => postgres::inputs::record(p, input).await,
            Store::Sqlite(p) => sqlite::inputs::record(p, input).await,
        }
    }

    /// The input with this digest, if uploaded.
    pub async fn find_input(&self, sha256: &str) -> Result<Option<InputRow>> {
        match self {
            Store::Postgres(p) => postgres::inputs::find(p, sha256).await,
            Store::Sqlite(p) => sqlite::inputs::find(p, sha256).await,
        }
    }

    /// Every uploaded input, newest first.
    pub async fn list_inputs(&self) -> Result<Vec<InputRow>> {
        match self {
            Store::Postgres(p) => postgres::inputs::list(p).await,
            Store::Sqlite(p) => sqlite::inputs::list(p).await,
        }
    }

    // -----------------------------------------------------------------------------------------
    // Events, results, throughput, /metrics
    // -----------------------------------------------------------------------------------------

    pub async fn events_after(&self, sweep_id: i64, after_event_id: i64, limit: i64) -> Result<Vec<EventRow>> {
        match self {
            Store::Postgres(p) => postgres::events::after(p, sweep_id, after_event_id, limit).await,
            Store::Sqlite(p) => sqlite::events::after(p, sweep_id, after_event_id, limit).await,
        }
    }

    /// The highest event id of a sweep (0 when none).
    pub async fn last_event_id(&self, sweep_id: i64) -> Result<i64> {
        match self {
            Store::Postgres(p) => postgres::events::last_id(p, sweep_id).await,
            Store::Sqlite(p) => sqlite::events::last_id(p, sweep_id).await,
        }
    }

    /// The accuracy_vs_sparsity view of one sweep, as SQL users see it, ordered by metric, rate,
    /// level: the tickets of constant-rate trials (clients aggregate controls and schedules from
    /// the per-seed rows, which carry both).
    pub async fn accuracy(&self, sweep_id: i64) -> Result<Vec<AccuracyRow>> {
        match self {
            Store::Postgres(p) => postgres::results::accuracy(p, sweep_id).await,
            Store::Sqlite(p) => sqlite::results::accuracy(p, sweep_id).await,
        }
    }

    /// One row per finished (trial, level), level 0 included for every trial, with per-layer
    /// kept/total (no mask bits).
    pub async fn results(&self, sweep_id: i64) -> Result<Vec<ResultRow>> {
        match self {
            Store::Postgres(p) => postgres::results::results(p, sweep_id).await,
            Store::Sqlite(p) => sqlite::results::results(p, sweep_id).await,
        }
    }

    /// The `measured_throughput` view (where each finished job ran, what it trained), ordered by
    /// model, batch size, precision, device: what `lthctl submit --dry-run` estimates hours from.
    pub async fn measured_throughput(&self) -> Result<Vec<Throughput>> {
        match self {
            Store::Postgres(p) => postgres::throughput::measured(p).await,
            Store::Sqlite(p) => sqlite::throughput::measured(p).await,
        }
    }

    /// What `/metrics` reads from the database at scrape time (`http/metrics.rs`): job counts by
    /// (state, unfinished sweep) in one grouped statement, and worker counts.
    pub async fn scrape_counts(&self, live_within: Duration) -> Result<ScrapeCounts> {
        match self {
            Store::Postgres(p) => postgres::scrape::counts(p, live_within).await,
            Store::Sqlite(p) => sqlite::scrape::counts(p, live_within).await,
        }
    }

    // -----------------------------------------------------------------------------------------
    // The web dashboard (`http/dashboard`): one page of rows each, aggregated in SQL through the
    // views SQL users read (docs/sql.md), so a page costs the same for 10 jobs and for 10,000.
    // -----------------------------------------------------------------------------------------

    /// A page of sweeps, newest first, optionally of one state, with their job counts and the
    /// training time of their succeeded jobs. Also returns how many sweeps match.
    pub async fn dashboard_sweeps(&self, state: Option<&str>, limit: i64, offset: i64) -> Result<(Vec<SweepListRow>, i64)> {
        match self {
            Store::Postgres(p) => postgres::dashboard::sweeps(p, state, limit, offset).await,
            Store::Sqlite(p) => sqlite::dashboard::sweeps(p, state, limit, offset).await,
        }
    }

    /// The layer_kept_fraction view of a sweep's tickets (constant rates), averaged over seeds,
    /// in network order.
    pub async fn dashboard_kept(&self, sweep_id: i64) -> Result<Vec<KeptCell>> {
        match self {
            Store::Postgres(p) => postgres::dashboard::kept(p, sweep_id).await,
            Store::Sqlite(p) => sqlite::dashboard::kept(p, sweep_id).await,
        }
    }

    /// The ticket_overlap view at one level, averaged over seeds (constant rates).
    pub async fn dashboard_overlap(&self, sweep_id: i64, level: i32) -> Result<Vec<OverlapCell>> {
        match self {
            Store::Postgres(p) => postgres::dashboard::overlap(p, sweep_id, level).await,
            Store::Sqlite(p) => sqlite::dashboard::overlap(p, sweep_id, level).await,
        }
    }

    /// Tickets with dead classes (dead_units) or collapsed layers (collapsed_layers): the first
    /// level per (metric, rate, seed), at most `limit` of each.
    pub async fn dashboard_collapse(&self, sweep_id: i64, limit: i64) -> Result<Vec<CollapseWarning>> {
        match self {
            Store::Postgres(p) => postgres::dashboard::collapse(p, sweep_id, limit).await,
            Store::Sqlite(p) => sqlite::dashboard::collapse(p, sweep_id, limit).await,
        }
    }

    /// A page of a sweep's jobs, optionally of one state, in id order, and how many match.
    pub async fn dashboard_jobs(&self, sweep_id: i64, state: Option<&str>, limit: i64, offset: i64) -> Result<(Vec<JobRow>, i64)> {
        match self {
            Store::Postgres(p) => postgres::dashboard::jobs(p, sweep_id, state, limit, offset).await,
            Store::Sqlite(p) => sqlite::dashboard::jobs(p, sweep_id, state, limit, offset).await,
        }
    }

    /// The sweep's running jobs (at most `limit`) with the images/s of their latest progress report.
    pub async fn dashboard_running(&self, sweep_id: i64, limit: i64) -> Result<Vec<RunningJob>> {
        let (jobs, _) = self.dashboard_jobs(sweep_id, Some("running"), limit, 0).await?;
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            let detail = match self {
                Store::Postgres(p) => postgres::dashboard::last_progress(p, job.id).await?,
                Store::Sqlite(p) => sqlite::dashboard::last_progress(p, job.id).await?,
            };
            let images_per_second = detail.and_then(|v| f64_of(&v, "images_per_second"));
            out.push(RunningJob { job, images_per_second });
        }
        Ok(out)
    }

    /// A job's progress reports, oldest first (at most `limit`, the latest kept).
    pub async fn dashboard_progress(&self, job_id: i64, limit: i64) -> Result<Vec<ProgressPoint>> {
        let rows = match self {
            Store::Postgres(p) => postgres::dashboard::progress(p, job_id, limit).await?,
            Store::Sqlite(p) => sqlite::dashboard::progress(p, job_id, limit).await?,
        };
        Ok(rows
            .into_iter()
            .filter_map(|(at, attempt, detail)| {
                let v = detail?;
                Some(ProgressPoint {
                    at,
                    attempt: attempt.unwrap_or(0),
                    iteration: f64_of(&v, "iteration").unwrap_or(0.0),
                    epoch: f64_of(&v, "epoch").unwrap_or(0.0),
                    train_loss: f64_of(&v, "train_loss"),
                    test_accuracy: f64_of(&v, "test_accuracy"),
                    images_per_second: f64_of(&v, "images_per_second"),
                })
            })
            .collect())
    }

    pub async fn dashboard_attempts(&self, job_id: i64) -> Result<Vec<AttemptRow>> {
        match self {
            Store::Postgres(p) => postgres::dashboard::attempts(p, job_id).await,
            Store::Sqlite(p) => sqlite::dashboard::attempts(p, job_id).await,
        }
    }

    pub async fn dashboard_artifacts(&self, job_id: i64) -> Result<Vec<ArtifactInfo>> {
        match self {
            Store::Postgres(p) => postgres::dashboard::artifacts(p, job_id).await,
            Store::Sqlite(p) => sqlite::dashboard::artifacts(p, job_id).await,
        }
    }

    /// The job's result: its own row, or that of the job it was reused from.
    pub async fn dashboard_job_result(&self, job_id: i64) -> Result<Option<JobResult>> {
        match self {
            Store::Postgres(p) => postgres::dashboard::job_result(p, job_id).await,
            Store::Sqlite(p) => sqlite::dashboard::job_result(p, job_id).await,
        }
    }

    /// Running jobs per worker: (worker_id, job id, sweep id), at most `limit`.
    pub async fn dashboard_worker_jobs(&self, limit: i64) -> Result<Vec<(String, i64, i64)>> {
        match self {
            Store::Postgres(p) => postgres::dashboard::worker_jobs(p, limit).await,
            Store::Sqlite(p) => sqlite::dashboard::worker_jobs(p, limit).await,
        }
    }
}

/// A number in a progress report's detail.
fn f64_of(v: &serde_json::Value, key: &str) -> Option<f64> {
    v.get(key).and_then(|x| x.as_f64())
}
