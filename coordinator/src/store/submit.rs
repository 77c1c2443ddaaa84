//! Submitting a sweep: the grid is written in short transactions and hidden until it is complete.
//!
//! Why: SQLite has one writer. A 3M-job grid written in one transaction held the write lock for
//! about a minute, longer than a lease, and every heartbeat and completion waited for it (then
//! failed with "database is locked"), so running jobs could be lost to a colleague's big submit
//! (issue 9, failure 7). On SQLite the grid is therefore written in transactions that hold the
//! lock at most [`SQLITE_HOLD`] each, with a pause after each commit in which waiting writers take
//! the lock (they retry every millisecond: `sqlite_busy.rs`).
//!
//! The sweep is created `submitting`, and only the last, short transaction makes it `running`.
//! Until then nothing of it is claimable: the jobs that will be ready are written `blocked` and
//! set ready by that last transaction (they are few: the dense jobs and the first job of each
//! chain that is not reused), and a blocked job of a submitting sweep cannot become ready any
//! other way (its parent is in the same sweep and not claimable either; a twin's completion only
//! touches ready jobs). Pause, resume, cancel and retry refuse a submitting sweep, and the reaper
//! closes only running ones.
//!
//! The writing runs in a task of its own, so a client that goes away mid-submit does not leave a
//! half-written sweep behind; a submit that fails (a database error) deletes what it wrote. One
//! cut short by a crash stays `submitting`, claimable by no one, until the coordinator deletes it
//! when it starts ([`Store::discard_unfinished_submits`]). A second submit with the same client
//! token waits for the first to finish and answers with its sweep.
//!
//! Postgres runs the same statements in one transaction, as before: its readers and writers do
//! not wait for an uncommitted insert (the only rows it locks are its own), and one transaction
//! leaves nothing to clean up after a crash, which matters when several coordinators share the
//! database.

//! This file is the part both backends share: expanding the plan, the order of the writes and
//! what each row holds. The statements are each backend's (`postgres/submit.rs`,
//! `sqlite/submit.rs`, through [`SubmitSql`]).

use super::error::{Result, StoreError};
use super::paced::PacedTx;
use super::rules::{initial_job_state, schedule_to_db};
use super::types::SubmitOutcome;
use super::Store;
use lth_sweep::SweepSpec;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// On SQLite, the longest a submit keeps the write lock before it commits and lets others in.
/// A heartbeat or completion waits at most about this long (plus one statement) for a submit.
pub(crate) const SQLITE_HOLD: Duration = Duration::from_millis(50);

/// How long a submit waits for an earlier one with the same client token to finish writing.
const SAME_TOKEN_WAIT: Duration = Duration::from_secs(600);

/// Rows per bulk insert or IN list (well under both backends' limits on bound parameters).
pub(crate) const BIND_ROWS: usize = 1000;

/// One job row to insert. Reused jobs are created succeeded (progress 1, finished now).
#[derive(Debug, Clone)]
pub(crate) struct NewJob<'a> {
    pub sweep_id: i64,
    pub trial_id: Option<i64>,
    pub kind: &'static str,
    pub seed: i64,
    pub metric: Option<&'a str>,
    /// 0 for a dense job (the column's default).
    pub rate: f64,
    pub level: i32,
    pub parent_job_id: Option<i64>,
    pub dense_job_id: Option<i64>,
    pub state: &'static str,
    pub priority: i32,
    pub max_attempts: i32,
    pub content_hash: &'a str,
    pub reused_from: Option<i64>,
    pub control: Option<&'a str>,
}

/// What an insert of jobs returns of each.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct InsertedJob {
    pub id: i64,
    pub content_hash: String,
    pub state: String,
    pub trial_id: Option<i64>,
    pub level: i32,
    pub parent_job_id: Option<i64>,
}

/// One trial row to insert.
#[derive(Debug, Clone)]
pub(crate) struct NewTrial<'a> {
    pub sweep_id: i64,
    pub metric: &'a str,
    pub rate: f64,
    pub seed: i64,
    pub levels: i32,
    pub dense_job_id: i64,
    pub state: &'static str,
    pub schedule: Option<String>,
}

/// What an insert of trials returns of each.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct InsertedTrial {
    pub id: i64,
    pub metric: String,
    pub rate: f64,
    pub seed: i64,
    pub schedule: Option<String>,
}

/// The statements of a submit, on one backend's connection (inside a [`PacedTx`]).
/// The statements of a submit, on one backend's connection (inside a [`PacedTx`]). The futures
/// are `Send`: a submit is written in a task of its own.
pub(crate) trait SubmitSql: sqlx::Database {
    /// The sweep row, `submitting`; None when the client token is taken.
    fn insert_sweep(conn: &mut Self::Connection, spec: &SweepSpec, token: Option<&str>, owner: Option<&str>) -> impl Future<Output = Result<Option<i64>>> + Send;
    fn insert_jobs(conn: &mut Self::Connection, rows: &[NewJob<'_>]) -> impl Future<Output = Result<Vec<InsertedJob>>> + Send;
    fn insert_trials(conn: &mut Self::Connection, rows: &[NewTrial<'_>]) -> impl Future<Output = Result<Vec<InsertedTrial>>> + Send;
    /// Blocked jobs become ready (at most [`BIND_ROWS`] ids).
    fn make_ready(conn: &mut Self::Connection, ids: &[i64]) -> impl Future<Output = Result<()>> + Send;
    /// Records ticket bundles: (job id, bundle id) pairs (at most [`BIND_ROWS`]).
    fn assign_bundles(conn: &mut Self::Connection, pairs: &[(i64, i64)]) -> impl Future<Output = Result<()>> + Send;
    /// The submitting sweep becomes running (its event written, and closed at once when nothing
    /// is left to run); false when it is no longer there.
    fn open_sweep(conn: &mut Self::Connection, sweep_id: i64) -> impl Future<Output = Result<bool>> + Send;
    fn sweep_state(conn: &mut Self::Connection, sweep_id: i64) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Deletes up to 2000 level jobs of the sweep, newest first; returns how many.
    fn delete_level_jobs(conn: &mut Self::Connection, sweep_id: i64) -> impl Future<Output = Result<u64>> + Send;
    fn delete_submitting_sweep(conn: &mut Self::Connection, sweep_id: i64) -> impl Future<Output = Result<()>> + Send;
}

/// What one attempt to write a sweep did.
pub(crate) enum Written {
    Created(SubmitOutcome),
    /// A concurrent submit with the same client token created its sweep row first.
    TokenTaken,
}

/// Every content hash of a plan: dense jobs, levels, controls.
pub(crate) fn plan_hashes(plan: &lth_sweep::SweepPlan) -> Vec<&str> {
    plan.dense
        .iter()
        .map(|d| d.content_hash.as_str())
        .chain(plan.trials.iter().flat_map(|t| t.levels.iter().map(|l| l.content_hash.as_str())))
        .chain(plan.trials.iter().flat_map(|t| t.controls.iter().map(|c| c.content_hash.as_str())))
        .collect()
}

/// A plan may take a while to expand (a content hash per job): off the async workers.
pub(crate) async fn expand(spec: &SweepSpec) -> Result<Arc<lth_sweep::SweepPlan>> {
    let spec = spec.clone();
    tokio::task::spawn_blocking(move || Arc::new(spec.expand())).await.map_err(|e| match e.try_into_panic() {
        Ok(p) => std::panic::resume_unwind(p),
        Err(_) => StoreError::Db(sqlx::Error::WorkerCrashed),
    })
}

fn outcome(sweep_id: i64, created: bool, plan: &lth_sweep::SweepPlan, hashes: &[&str], reusable: &HashMap<String, i64>) -> SubmitOutcome {
    SubmitOutcome {
        sweep_id,
        created,
        trials: plan.trials.len() as u64,
        jobs: plan.total_jobs() as u64,
        jobs_reused: hashes.iter().filter(|h| reusable.contains_key(**h)).count() as u64,
        dense_jobs: plan.dense.len() as u64,
    }
}

impl Store {
    /// Succeeded jobs with these content hashes, from any sweep: hash -> the job holding the
    /// results (the oldest such job's original).
    async fn reusable_hashes(&self, hashes: &[&str]) -> Result<HashMap<String, i64>> {
        match self {
            Store::Postgres(p) => super::postgres::submit::reusable_hashes(p, hashes).await,
            Store::Sqlite(p) => super::sqlite::submit::reusable_hashes(p, hashes).await,
        }
    }

    /// Counts what a submit would create and reuse, without writing.
    pub async fn plan_sweep(&self, spec: &SweepSpec) -> Result<SubmitOutcome> {
        let plan = expand(spec).await?;
        let hashes = plan_hashes(&plan);
        let reusable = self.reusable_hashes(&hashes).await?;
        Ok(outcome(0, false, &plan, &hashes, &reusable))
    }

    /// Expands and stores a validated sweep (see the top of this file for how). A second submit
    /// with the same `client_token` returns the first sweep and creates nothing (waiting for the
    /// first to finish writing); the same token with a different spec is refused. Jobs whose
    /// content hash matches a succeeded job are created succeeded, pointing at that job's results
    /// (`reused_from`).
    pub async fn submit_sweep(&self, spec: &SweepSpec, client_token: Option<&str>) -> Result<SubmitOutcome> {
        self.submit_sweep_as(spec, client_token, None).await
    }

    /// [`Store::submit_sweep`], recording `owner` (the submitting token's name) on the sweep.
    pub async fn submit_sweep_as(&self, spec: &SweepSpec, client_token: Option<&str>, owner: Option<&str>) -> Result<SubmitOutcome> {
        let token = client_token.filter(|t| !t.is_empty()).map(str::to_string);
        loop {
            if let Some(t) = &token {
                if let Some(out) = self.submitted_with_token(t, spec).await? {
                    return Ok(out);
                }
            }
            // In a task of its own: once the sweep row is written, the rest is written even if
            // the caller goes away (a cancelled gRPC call drops its future).
            let (store, spec, token, owner) = (self.clone(), spec.clone(), token.clone(), owner.map(str::to_string));
            let written = tokio::spawn(async move { store.write_sweep(&spec, token.as_deref(), owner.as_deref()).await })
                .await
                .map_err(|e| match e.try_into_panic() {
                    Ok(p) => std::panic::resume_unwind(p),
                    Err(_) => StoreError::Db(sqlx::Error::WorkerCrashed),
                })??;
            match written {
                Written::Created(out) => return Ok(out),
                Written::TokenTaken => continue,
            }
        }
    }

    /// The sweep an earlier submit with `token` created, once it is written (None: there is
    /// none, or it was deleted after it failed).
    async fn submitted_with_token(&self, token: &str, spec: &SweepSpec) -> Result<Option<SubmitOutcome>> {
        let started = Instant::now();
        loop {
            let row = match self {
                Store::Postgres(p) => super::postgres::submit::sweep_by_token(p, token).await?,
                Store::Sqlite(p) => super::sqlite::submit::sweep_by_token(p, token).await?,
            };
            let Some((id, old, state)) = row else { return Ok(None) };
            if &old != spec {
                return Err(StoreError::AlreadyExists(format!(
                    "client token {token:?} was already used for sweep {id} with a different spec: use a new token for a new sweep"
                )));
            }
            if state != "submitting" {
                return self.existing_submit(id).await.map(Some);
            }
            if started.elapsed() > SAME_TOKEN_WAIT {
                return Err(StoreError::FailedPrecondition(format!(
                    "sweep {id} (client token {token:?}) is still being written after {} s: try again later",
                    SAME_TOKEN_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes the sweep; on an error after its row was committed, deletes what was written.
    async fn write_sweep(&self, spec: &SweepSpec, token: Option<&str>, owner: Option<&str>) -> Result<Written> {
        let plan = expand(spec).await?;
        let hashes = plan_hashes(&plan);
        let reusable = self.reusable_hashes(&hashes).await?;
        let mut sweep_id = None;
        let written = match self {
            Store::Postgres(p) => write_sweep_rows(PacedTx::new(p, None, None), spec, &plan, &reusable, token, owner, &mut sweep_id).await,
            Store::Sqlite(p) => {
                write_sweep_rows(PacedTx::new(p, Some(super::sqlite::BEGIN_WRITE), Some(SQLITE_HOLD)), spec, &plan, &reusable, token, owner, &mut sweep_id).await
            }
        };
        if written.is_err() {
            if let Some(id) = sweep_id {
                if let Err(e) = self.delete_unfinished_sweep(id).await {
                    tracing::warn!(sweep_id = id, error = %e, "a failed submit left its sweep half-written; it is deleted when the coordinator restarts");
                }
            }
        }
        match written? {
            None => Ok(Written::TokenTaken),
            Some(id) => Ok(Written::Created(outcome(id, true, &plan, &hashes, &reusable))),
        }
    }

    /// The outcome of a submit that an earlier one with the same token already made.
    async fn existing_submit(&self, id: i64) -> Result<SubmitOutcome> {
        let (jobs, reused, dense, trials) = match self {
            Store::Postgres(p) => super::postgres::submit::submitted_counts(p, id).await?,
            Store::Sqlite(p) => super::sqlite::submit::submitted_counts(p, id).await?,
        };
        Ok(SubmitOutcome { sweep_id: id, created: false, trials: trials as u64, jobs: jobs as u64, jobs_reused: reused as u64, dense_jobs: dense as u64 })
    }

    /// Deletes the sweeps a submit left `submitting` (the coordinator stopped while writing
    /// them): none of their jobs was claimable, and a retry with the same client token then
    /// writes the sweep afresh. Run when the coordinator starts, before it serves. Returns the
    /// ids deleted.
    pub async fn discard_unfinished_submits(&self) -> Result<Vec<i64>> {
        let ids = match self {
            Store::Postgres(p) => super::postgres::submit::unfinished_submits(p).await?,
            Store::Sqlite(p) => super::sqlite::submit::unfinished_submits(p).await?,
        };
        for &id in &ids {
            self.delete_unfinished_sweep(id).await?;
        }
        Ok(ids)
    }

    /// Deletes a `submitting` sweep and everything written for it, in short transactions on
    /// SQLite: level jobs newest first (a job's children are newer than it), then the sweep,
    /// whose delete cascades to its trials, dense jobs and events.
    async fn delete_unfinished_sweep(&self, sweep_id: i64) -> Result<()> {
        match self {
            Store::Postgres(p) => delete_unfinished_sweep(PacedTx::new(p, None, None), sweep_id).await,
            Store::Sqlite(p) => delete_unfinished_sweep(PacedTx::new(p, Some(super::sqlite::BEGIN_WRITE), Some(SQLITE_HOLD)), sweep_id).await,
        }
    }
}

async fn delete_unfinished_sweep<DB: SubmitSql>(mut w: PacedTx<'_, DB>, sweep_id: i64) -> Result<()> {
    if DB::sweep_state(w.conn().await?, sweep_id).await?.as_deref() != Some("submitting") {
        w.rollback().await?;
        return Ok(());
    }
    while DB::delete_level_jobs(w.conn().await?, sweep_id).await? > 0 {
        w.pace().await?;
    }
    DB::delete_submitting_sweep(w.conn().await?, sweep_id).await?;
    w.finish().await
}

/// The statements of a submit. Returns the new sweep's id (None: the token was taken by a
/// concurrent submit); sets `sweep_id_out` as soon as the sweep row exists.
async fn write_sweep_rows<DB: SubmitSql>(
    mut w: PacedTx<'_, DB>,
    spec: &SweepSpec,
    plan: &lth_sweep::SweepPlan,
    reusable: &HashMap<String, i64>,
    client_token: Option<&str>,
    owner: Option<&str>,
    sweep_id_out: &mut Option<i64>,
) -> Result<Option<i64>> {
    let Some(sweep_id) = DB::insert_sweep(w.conn().await?, spec, client_token, owner).await? else {
        w.rollback().await?;
        return Ok(None);
    };
    // Committed at once on SQLite, so that a submit with the same token waits for this one.
    w.commit_now().await?;
    *sweep_id_out = Some(sweep_id);

    let priority = spec.priority;
    let max_attempts = spec.max_attempts as i32;
    // Jobs created succeeded (reused): their children may be ready.
    let mut succeeded: HashSet<i64> = HashSet::new();
    // Jobs written blocked that the last transaction makes ready.
    let mut to_ready: Vec<i64> = Vec::new();
    // Which of a statement's returned jobs are those: blocked, and the parent (if any) done.
    let mut note = |j: &InsertedJob, succeeded: &mut HashSet<i64>| {
        if j.state == "succeeded" {
            succeeded.insert(j.id);
        } else if j.parent_job_id.is_none_or(|p| succeeded.contains(&p)) {
            to_ready.push(j.id);
        }
    };
    // Written blocked instead of ready (see the top of this file).
    let hidden = |state: &'static str| if state == "ready" { "blocked" } else { state };
    let job = |kind: &'static str, seed: i64| NewJob {
        sweep_id,
        trial_id: None,
        kind,
        seed,
        metric: None,
        rate: 0.0,
        level: 0,
        parent_job_id: None,
        dense_job_id: None,
        state: "blocked",
        priority,
        max_attempts,
        content_hash: "",
        reused_from: None,
        control: None,
    };

    // Level 0: one dense job per seed. content hash -> (job id, succeeded)
    let mut ids: HashMap<String, (i64, bool)> = HashMap::new();
    for chunk in plan.dense.chunks(BIND_ROWS) {
        let rows: Vec<NewJob> = chunk
            .iter()
            .map(|dp| {
                let reused = reusable.get(&dp.content_hash).copied();
                NewJob {
                    state: hidden(if reused.is_some() { "succeeded" } else { "ready" }),
                    content_hash: dp.content_hash.as_str(),
                    reused_from: reused,
                    ..job("dense", dp.seed as i64)
                }
            })
            .collect();
        for j in DB::insert_jobs(w.conn().await?, &rows).await? {
            note(&j, &mut succeeded);
            ids.insert(j.content_hash.clone(), (j.id, j.state == "succeeded"));
        }
        w.pace().await?;
    }

    // Trials; one whose every job is reused is done already.
    // (metric, rate, seed, schedule) -> trial id
    type TrialKey = (String, u64, i64, Option<String>);
    let trial_key = |t: &lth_sweep::TrialPlan| -> TrialKey { (t.metric.as_str().to_string(), t.rate.to_bits(), t.seed as i64, schedule_to_db(&t.schedule)) };
    let all_reused = |t: &lth_sweep::TrialPlan| {
        reusable.contains_key(&t.dense_hash)
            && t.levels.iter().all(|l| reusable.contains_key(&l.content_hash))
            && t.controls.iter().all(|c| reusable.contains_key(&c.content_hash))
    };
    let mut trial_ids: HashMap<TrialKey, i64> = HashMap::new();
    for chunk in plan.trials.chunks(BIND_ROWS) {
        let rows: Vec<NewTrial> = chunk
            .iter()
            .map(|t| NewTrial {
                sweep_id,
                metric: t.metric.as_str(),
                rate: t.rate,
                seed: t.seed as i64,
                levels: t.levels.len() as i32,
                dense_job_id: ids[&t.dense_hash].0,
                state: if all_reused(t) { "succeeded" } else { "running" },
                schedule: schedule_to_db(&t.schedule),
            })
            .collect();
        for t in DB::insert_trials(w.conn().await?, &rows).await? {
            trial_ids.insert((t.metric, t.rate.to_bits(), t.seed, t.schedule), t.id);
        }
        w.pace().await?;
    }

    // Levels, one depth at a time so that each level's parent id is known. Parents are looked up
    // within the trial: two trials of one sweep can hold identical jobs (a constant 0.2 and a
    // schedule starting at 0.2 agree on level 1), and each keeps its own.
    // (trial id, level) -> (job id, succeeded)
    let mut level_ids: HashMap<(i64, u32), (i64, bool)> = HashMap::new();
    let parent_of = |level_ids: &HashMap<(i64, u32), (i64, bool)>, t: &lth_sweep::TrialPlan, level: u32| -> (i64, bool) {
        if level == 0 {
            ids[&t.dense_hash]
        } else {
            level_ids[&(trial_ids[&trial_key(t)], level)]
        }
    };
    let max_level = plan.trials.iter().map(|t| t.levels.len()).max().unwrap_or(0);
    for depth in 0..max_level {
        let at_depth: Vec<(&lth_sweep::TrialPlan, &lth_sweep::LevelPlan)> =
            plan.trials.iter().filter_map(|t| t.levels.get(depth).map(|l| (t, l))).collect();
        for chunk in at_depth.chunks(BIND_ROWS) {
            let rows: Vec<NewJob> = chunk
                .iter()
                .map(|(t, l)| {
                    let reused = reusable.get(&l.content_hash).copied();
                    let (parent_id, parent_done) = parent_of(&level_ids, t, l.level - 1);
                    NewJob {
                        trial_id: Some(trial_ids[&trial_key(t)]),
                        metric: Some(t.metric.as_str()),
                        rate: l.rate,
                        level: l.level as i32,
                        parent_job_id: Some(parent_id),
                        dense_job_id: Some(ids[&t.dense_hash].0),
                        state: hidden(initial_job_state(reused.is_some(), parent_done)),
                        content_hash: l.content_hash.as_str(),
                        reused_from: reused,
                        ..job("level", t.seed as i64)
                    }
                })
                .collect();
            for j in DB::insert_jobs(w.conn().await?, &rows).await? {
                note(&j, &mut succeeded);
                let trial = j.trial_id.expect("a level job belongs to a trial");
                level_ids.insert((trial, j.level as u32), (j.id, j.state == "succeeded"));
            }
            w.pace().await?;
        }
    }

    // Controls: children of the level they control (whose "weights" hold the ticket's mask), at
    // that level and its rate; reused by content hash like any job.
    let controls: Vec<(&lth_sweep::TrialPlan, &lth_sweep::ControlPlan)> =
        plan.trials.iter().flat_map(|t| t.controls.iter().map(move |c| (t, c))).collect();
    for chunk in controls.chunks(BIND_ROWS) {
        let rows: Vec<NewJob> = chunk
            .iter()
            .map(|(t, c)| {
                let reused = reusable.get(&c.content_hash).copied();
                let (parent_id, parent_done) = parent_of(&level_ids, t, c.level);
                NewJob {
                    trial_id: Some(trial_ids[&trial_key(t)]),
                    metric: Some(t.metric.as_str()),
                    rate: t.levels.iter().find(|l| l.level == c.level).map(|l| l.rate).unwrap_or(t.rate),
                    level: c.level as i32,
                    parent_job_id: Some(parent_id),
                    dense_job_id: Some(ids[&t.dense_hash].0),
                    state: hidden(initial_job_state(reused.is_some(), parent_done)),
                    content_hash: c.content_hash.as_str(),
                    reused_from: reused,
                    control: Some(c.control.as_str()),
                    ..job("level", t.seed as i64)
                }
            })
            .collect();
        for j in DB::insert_jobs(w.conn().await?, &rows).await? {
            note(&j, &mut succeeded);
        }
        w.pace().await?;
    }

    // Ticket bundles (`SweepSpec::bundle_groups`: one seed's level jobs at one level across
    // metrics, or metrics and rates; reused jobs left out; at most max_bundle each), recorded
    // while nothing of the sweep is claimable. A bundle is named by its first member's id.
    let mut pairs: Vec<(i64, i64)> = Vec::new();
    for group in spec.bundle_groups(plan, |h| !reusable.contains_key(h)) {
        let members: Vec<i64> = group.iter().map(|&(t, level)| level_ids[&(trial_ids[&trial_key(&plan.trials[t])], level)].0).collect();
        let bundle_id = *members.iter().min().expect("a bundle has members");
        pairs.extend(members.into_iter().map(|id| (id, bundle_id)));
    }
    for chunk in pairs.chunks(BIND_ROWS) {
        DB::assign_bundles(w.conn().await?, chunk).await?;
        w.pace().await?;
    }

    // The last transaction, short: the ready jobs become ready and the sweep running.
    w.commit_now().await?;
    for chunk in to_ready.chunks(BIND_ROWS) {
        DB::make_ready(w.conn().await?, chunk).await?;
    }
    if !DB::open_sweep(w.conn().await?, sweep_id).await? {
        // Only a coordinator starting on this database deletes a submitting sweep.
        return Err(StoreError::FailedPrecondition(format!(
            "sweep {sweep_id} was deleted while it was being submitted (another coordinator started on this database?): submit it again"
        )));
    }
    w.finish().await?;
    Ok(Some(sweep_id))
}
