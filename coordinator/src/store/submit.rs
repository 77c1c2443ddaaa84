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

use super::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

/// On SQLite, the longest a submit keeps the write lock before it commits and lets others in.
/// A heartbeat or completion waits at most about this long (plus one statement) for a submit.
const SQLITE_HOLD: Duration = Duration::from_millis(50);

/// The pause after each of those commits: waiting writers retry every millisecond.
const SQLITE_PAUSE: Duration = Duration::from_millis(3);

/// How long a submit waits for an earlier one with the same client token to finish writing.
const SAME_TOKEN_WAIT: Duration = Duration::from_secs(600);

/// A write made of many statements: on SQLite a series of transactions, each committed once it
/// has held the lock for `hold`; on Postgres (`hold` None) one transaction.
struct PacedTx<'p, P: BeginWrite> {
    pool: &'p P,
    tx: Option<sqlx::Transaction<'static, P::Db>>,
    opened: Instant,
    hold: Option<Duration>,
}

impl<'p, P: BeginWrite> PacedTx<'p, P> {
    fn new(pool: &'p P, hold: Option<Duration>) -> Self {
        PacedTx { pool, tx: None, opened: Instant::now(), hold }
    }

    /// The open transaction's connection, opening one if none is.
    async fn conn(&mut self) -> Result<&mut <P::Db as sqlx::Database>::Connection> {
        if self.tx.is_none() {
            self.tx = Some(self.pool.begin_write().await?);
            self.opened = Instant::now();
        }
        Ok(&mut **self.tx.as_mut().expect("opened above"))
    }

    /// Between statements: on SQLite, commits once the transaction has held the lock long
    /// enough, and pauses so that others get it.
    async fn pace(&mut self) -> Result<()> {
        if let Some(hold) = self.hold {
            if self.tx.is_some() && self.opened.elapsed() >= hold {
                self.commit_now().await?;
            }
        }
        Ok(())
    }

    /// On SQLite, commits what is written so far (so the next transaction starts with the lock
    /// fresh); on Postgres nothing: everything commits at [`PacedTx::finish`].
    async fn commit_now(&mut self) -> Result<()> {
        if self.hold.is_some() {
            if let Some(tx) = self.tx.take() {
                tx.commit().await?;
                tokio::time::sleep(SQLITE_PAUSE).await;
            }
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<()> {
        if let Some(tx) = self.tx.take() {
            tx.commit().await?;
        }
        Ok(())
    }

    async fn rollback(mut self) -> Result<()> {
        if let Some(tx) = self.tx.take() {
            tx.rollback().await?;
        }
        Ok(())
    }
}

/// What one attempt to write a sweep did.
enum Written {
    Created(SubmitOutcome),
    /// A concurrent submit with the same client token created its sweep row first.
    TokenTaken,
}

/// Every content hash of a plan: dense jobs, levels, controls.
fn plan_hashes(plan: &lth_sweep::SweepPlan) -> Vec<&str> {
    plan.dense
        .iter()
        .map(|d| d.content_hash.as_str())
        .chain(plan.trials.iter().flat_map(|t| t.levels.iter().map(|l| l.content_hash.as_str())))
        .chain(plan.trials.iter().flat_map(|t| t.controls.iter().map(|c| c.content_hash.as_str())))
        .collect()
}

/// A plan may take a while to expand (a content hash per job): off the async workers.
async fn expand(spec: &SweepSpec) -> Result<Arc<lth_sweep::SweepPlan>> {
    let spec = spec.clone();
    tokio::task::spawn_blocking(move || Arc::new(spec.expand())).await.map_err(|e| match e.try_into_panic() {
        Ok(p) => std::panic::resume_unwind(p),
        Err(_) => StoreError::Db(sqlx::Error::WorkerCrashed),
    })
}

impl Store {
    /// Succeeded jobs with these content hashes, from any sweep: hash -> the job holding the
    /// results (the oldest such job's original).
    async fn reusable_hashes(&self, hashes: &[&str]) -> Result<HashMap<String, i64>> {
        let mut found: HashMap<String, i64> = HashMap::new();
        both!(self, |pool, d, DB| {
            let mut conn = pool.acquire().await?;
            for chunk in hashes.chunks(BIND_ROWS) {
                let mut qb = QueryBuilder::<DB>::new(
                    "SELECT content_hash, COALESCE(reused_from, id) AS src FROM jobs WHERE state = 'succeeded' AND content_hash IN (",
                );
                let mut sep = qb.separated(", ");
                for h in chunk {
                    sep.push_bind(h.to_string());
                }
                qb.push(") ORDER BY id");
                for r in qb.build().fetch_all(&mut *conn).await? {
                    let h: String = r.try_get("content_hash")?;
                    let src: i64 = r.try_get("src")?;
                    found.entry(h).or_insert(src);
                }
            }
        });
        Ok(found)
    }

    /// Counts what a submit would create and reuse, without writing.
    pub async fn plan_sweep(&self, spec: &SweepSpec) -> Result<SubmitOutcome> {
        let plan = expand(spec).await?;
        let hashes = plan_hashes(&plan);
        let reusable = self.reusable_hashes(&hashes).await?;
        Ok(SubmitOutcome {
            sweep_id: 0,
            created: false,
            trials: plan.trials.len() as u64,
            jobs: plan.total_jobs() as u64,
            jobs_reused: hashes.iter().filter(|h| reusable.contains_key(**h)).count() as u64,
            dense_jobs: plan.dense.len() as u64,
        })
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
            let row = both!(self, |pool, d, DB| {
                match sqlx::query("SELECT id, spec, state FROM sweeps WHERE client_token = $1").bind(token).fetch_optional(pool).await? {
                    None => None,
                    Some(r) => {
                        let Json(old): Json<SweepSpec> = r.try_get("spec")?;
                        Some((r.try_get::<i64, _>("id")?, old, r.try_get::<String, _>("state")?))
                    }
                }
            });
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
        let written = self.write_sweep_rows(spec, &plan, &reusable, token, owner, &mut sweep_id).await;
        if written.is_err() {
            if let Some(id) = sweep_id {
                if let Err(e) = self.delete_unfinished_sweep(id).await {
                    tracing::warn!(sweep_id = id, error = %e, "a failed submit left its sweep half-written; it is deleted when the coordinator restarts");
                }
            }
        }
        let created = match written? {
            None => return Ok(Written::TokenTaken),
            Some(id) => id,
        };
        Ok(Written::Created(SubmitOutcome {
            sweep_id: created,
            created: true,
            trials: plan.trials.len() as u64,
            jobs: plan.total_jobs() as u64,
            jobs_reused: hashes.iter().filter(|h| reusable.contains_key(**h)).count() as u64,
            dense_jobs: plan.dense.len() as u64,
        }))
    }

    /// The statements of a submit. Returns the new sweep's id (None: the token was taken by a
    /// concurrent submit); sets `sweep_id` as soon as the sweep row exists.
    async fn write_sweep_rows(
        &self,
        spec: &SweepSpec,
        plan: &lth_sweep::SweepPlan,
        reusable: &HashMap<String, i64>,
        client_token: Option<&str>,
        owner: Option<&str>,
        sweep_id_out: &mut Option<i64>,
    ) -> Result<Option<i64>> {
        both!(self, |pool, d, DB| {
            let mut w = PacedTx::new(pool, if d.sqlite { Some(SQLITE_HOLD) } else { None });
            let inserted = sqlx::query(
                "INSERT INTO sweeps (client_token, name, spec, state, priority, max_attempts, owner) \
                 VALUES ($1, $2, $3, 'submitting', $4, $5, $6) ON CONFLICT (client_token) DO NOTHING RETURNING id",
            )
            .bind(client_token)
            .bind(&spec.name)
            .bind(Json(spec))
            .bind(spec.priority)
            .bind(spec.max_attempts as i32)
            .bind(owner)
            .fetch_optional(w.conn().await?)
            .await?;
            let Some(row) = inserted else {
                w.rollback().await?;
                return Ok(None);
            };
            let sweep_id: i64 = row.try_get("id")?;
            // Committed at once on SQLite, so that a submit with the same token waits for this one.
            w.commit_now().await?;
            *sweep_id_out = Some(sweep_id);

            let now = d.now;
            let priority = spec.priority;
            let max_attempts = spec.max_attempts as i32;
            // Jobs created succeeded (reused): their children may be ready.
            let mut succeeded: HashSet<i64> = HashSet::new();
            // Jobs written blocked that the last transaction makes ready.
            let mut to_ready: Vec<i64> = Vec::new();
            // Which of a statement's returned jobs are those: blocked, and the parent (if any) done.
            let mut note = |id: i64, state: &str, parent: Option<i64>, succeeded: &mut HashSet<i64>| {
                if state == "succeeded" {
                    succeeded.insert(id);
                } else if parent.is_none_or(|p| succeeded.contains(&p)) {
                    to_ready.push(id);
                }
            };
            // Written blocked instead of ready (see the top of this file).
            let hidden = |state: &'static str| if state == "ready" { "blocked" } else { state };

            // Level 0: one dense job per seed. content hash -> (job id, succeeded)
            let mut ids: HashMap<String, (i64, bool)> = HashMap::new();
            for chunk in plan.dense.chunks(BIND_ROWS) {
                let mut qb = QueryBuilder::<DB>::new(
                    "INSERT INTO jobs (sweep_id, kind, seed, level, state, priority, max_attempts, content_hash, reused_from, progress, finished_at) ",
                );
                qb.push_values(chunk, |mut b, dp| {
                    let reused = reusable.get(&dp.content_hash).copied();
                    b.push_bind(sweep_id)
                        .push_bind("dense")
                        .push_bind(dp.seed as i64)
                        .push_bind(0i32)
                        .push_bind(hidden(if reused.is_some() { "succeeded" } else { "ready" }))
                        .push_bind(priority)
                        .push_bind(max_attempts)
                        .push_bind(dp.content_hash.clone())
                        .push_bind(reused)
                        .push_bind(if reused.is_some() { 1.0f64 } else { 0.0 })
                        .push(if reused.is_some() { now } else { "NULL" });
                });
                qb.push(" RETURNING id, content_hash, state");
                for r in qb.build().fetch_all(w.conn().await?).await? {
                    let (id, st): (i64, String) = (r.try_get("id")?, r.try_get("state")?);
                    note(id, &st, None, &mut succeeded);
                    ids.insert(r.try_get("content_hash")?, (id, st == "succeeded"));
                }
                w.pace().await?;
            }

            // Trials; one whose every job is reused is done already.
            // (metric, rate, seed, schedule) -> trial id
            type TrialKey = (String, u64, i64, Option<String>);
            let trial_key = |t: &lth_sweep::TrialPlan| -> TrialKey {
                (t.metric.as_str().to_string(), t.rate.to_bits(), t.seed as i64, schedule_to_db(&t.schedule))
            };
            let all_reused = |t: &lth_sweep::TrialPlan| {
                reusable.contains_key(&t.dense_hash)
                    && t.levels.iter().all(|l| reusable.contains_key(&l.content_hash))
                    && t.controls.iter().all(|c| reusable.contains_key(&c.content_hash))
            };
            let mut trial_ids: HashMap<TrialKey, i64> = HashMap::new();
            for chunk in plan.trials.chunks(BIND_ROWS) {
                let mut qb = QueryBuilder::<DB>::new(
                    "INSERT INTO trials (sweep_id, metric, rate, seed, levels, dense_job_id, state, schedule) ",
                );
                qb.push_values(chunk, |mut b, t| {
                    b.push_bind(sweep_id)
                        .push_bind(t.metric.as_str())
                        .push_bind(t.rate)
                        .push_bind(t.seed as i64)
                        .push_bind(t.levels.len() as i32)
                        .push_bind(ids[&t.dense_hash].0)
                        .push_bind(if all_reused(t) { "succeeded" } else { "running" })
                        .push_bind(schedule_to_db(&t.schedule));
                });
                qb.push(" RETURNING id, metric, rate, seed, schedule");
                for r in qb.build().fetch_all(w.conn().await?).await? {
                    let rate: f64 = r.try_get("rate")?;
                    trial_ids.insert((r.try_get("metric")?, rate.to_bits(), r.try_get("seed")?, r.try_get("schedule")?), r.try_get("id")?);
                }
                w.pace().await?;
            }

            // Levels, one depth at a time so that each level's parent id is known. Parents are
            // looked up within the trial: two trials of one sweep can hold identical jobs (a
            // constant 0.2 and a schedule starting at 0.2 agree on level 1), and each keeps its own.
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
                let rows: Vec<(&lth_sweep::TrialPlan, &lth_sweep::LevelPlan)> =
                    plan.trials.iter().filter_map(|t| t.levels.get(depth).map(|l| (t, l))).collect();
                for chunk in rows.chunks(BIND_ROWS) {
                    let mut qb = QueryBuilder::<DB>::new(
                        "INSERT INTO jobs (sweep_id, trial_id, kind, seed, metric, rate, level, parent_job_id, dense_job_id, \
                         state, priority, max_attempts, content_hash, reused_from, progress, finished_at) ",
                    );
                    qb.push_values(chunk, |mut b, (t, l)| {
                        let reused = reusable.get(&l.content_hash).copied();
                        let (parent_id, parent_done) = parent_of(&level_ids, t, l.level - 1);
                        b.push_bind(sweep_id)
                            .push_bind(trial_ids[&trial_key(t)])
                            .push_bind("level")
                            .push_bind(t.seed as i64)
                            .push_bind(t.metric.as_str())
                            .push_bind(l.rate)
                            .push_bind(l.level as i32)
                            .push_bind(parent_id)
                            .push_bind(ids[&t.dense_hash].0)
                            .push_bind(hidden(initial_job_state(reused.is_some(), parent_done)))
                            .push_bind(priority)
                            .push_bind(max_attempts)
                            .push_bind(l.content_hash.clone())
                            .push_bind(reused)
                            .push_bind(if reused.is_some() { 1.0f64 } else { 0.0 })
                            .push(if reused.is_some() { now } else { "NULL" });
                    });
                    qb.push(" RETURNING id, trial_id, level, state, parent_job_id");
                    for r in qb.build().fetch_all(w.conn().await?).await? {
                        let (id, st): (i64, String) = (r.try_get("id")?, r.try_get("state")?);
                        note(id, &st, r.try_get("parent_job_id")?, &mut succeeded);
                        let level: i32 = r.try_get("level")?;
                        level_ids.insert((r.try_get("trial_id")?, level as u32), (id, st == "succeeded"));
                    }
                    w.pace().await?;
                }
            }

            // Controls: children of the level they control (whose "weights" hold the ticket's
            // mask), at that level and its rate; reused by content hash like any job.
            let controls: Vec<(&lth_sweep::TrialPlan, &lth_sweep::ControlPlan)> =
                plan.trials.iter().flat_map(|t| t.controls.iter().map(move |c| (t, c))).collect();
            for chunk in controls.chunks(BIND_ROWS) {
                let mut qb = QueryBuilder::<DB>::new(
                    "INSERT INTO jobs (sweep_id, trial_id, kind, seed, metric, rate, level, parent_job_id, dense_job_id, \
                     state, priority, max_attempts, content_hash, reused_from, control, progress, finished_at) ",
                );
                qb.push_values(chunk, |mut b, (t, c)| {
                    let reused = reusable.get(&c.content_hash).copied();
                    let (parent_id, parent_done) = parent_of(&level_ids, t, c.level);
                    let rate = t.levels.iter().find(|l| l.level == c.level).map(|l| l.rate).unwrap_or(t.rate);
                    b.push_bind(sweep_id)
                        .push_bind(trial_ids[&trial_key(t)])
                        .push_bind("level")
                        .push_bind(t.seed as i64)
                        .push_bind(t.metric.as_str())
                        .push_bind(rate)
                        .push_bind(c.level as i32)
                        .push_bind(parent_id)
                        .push_bind(ids[&t.dense_hash].0)
                        .push_bind(hidden(initial_job_state(reused.is_some(), parent_done)))
                        .push_bind(priority)
                        .push_bind(max_attempts)
                        .push_bind(c.content_hash.clone())
                        .push_bind(reused)
                        .push_bind(c.control.as_str())
                        .push_bind(if reused.is_some() { 1.0f64 } else { 0.0 })
                        .push(if reused.is_some() { now } else { "NULL" });
                });
                qb.push(" RETURNING id, state, parent_job_id");
                for r in qb.build().fetch_all(w.conn().await?).await? {
                    let (id, st): (i64, String) = (r.try_get("id")?, r.try_get("state")?);
                    note(id, &st, r.try_get("parent_job_id")?, &mut succeeded);
                }
                w.pace().await?;
            }

            // The last transaction, short: the ready jobs become ready and the sweep running.
            w.commit_now().await?;
            let conn = w.conn().await?;
            for chunk in to_ready.chunks(BIND_ROWS) {
                let mut qb = QueryBuilder::<DB>::new("UPDATE jobs SET state = 'ready' WHERE state = 'blocked' AND id IN (");
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(")");
                qb.build().execute(&mut *conn).await?;
            }
            let flipped = sqlx::query("UPDATE sweeps SET state = 'running' WHERE id = $1 AND state = 'submitting'")
                .bind(sweep_id)
                .execute(&mut *conn)
                .await?;
            if flipped.rows_affected() != 1 {
                // Only a coordinator starting on this database deletes a submitting sweep.
                return Err(StoreError::FailedPrecondition(format!(
                    "sweep {sweep_id} was deleted while it was being submitted (another coordinator started on this database?): submit it again"
                )));
            }
            sqlx::query("INSERT INTO events (sweep_id, kind) VALUES ($1, 'sweep')").bind(sweep_id).execute(&mut *conn).await?;
            finalize_sweeps!(conn, d, Some(sweep_id));
            w.finish().await?;
            Ok(Some(sweep_id))
        })
    }

    /// The outcome of a submit that an earlier one with the same token already made.
    async fn existing_submit(&self, id: i64) -> Result<SubmitOutcome> {
        let (jobs, reused, dense, trials) = both!(self, |pool, d, DB| {
            let r = sqlx::query(
                "SELECT count(*) AS jobs, \
                        CAST(COALESCE(sum(CASE WHEN reused_from IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) AS reused, \
                        CAST(COALESCE(sum(CASE WHEN kind = 'dense' THEN 1 ELSE 0 END), 0) AS BIGINT) AS dense, \
                        (SELECT count(*) FROM trials WHERE sweep_id = $1) AS trials \
                   FROM jobs WHERE sweep_id = $1",
            )
            .bind(id)
            .fetch_one(pool)
            .await?;
            (r.try_get::<i64, _>("jobs")?, r.try_get::<i64, _>("reused")?, r.try_get::<i64, _>("dense")?, r.try_get::<i64, _>("trials")?)
        });
        Ok(SubmitOutcome {
            sweep_id: id,
            created: false,
            trials: trials as u64,
            jobs: jobs as u64,
            jobs_reused: reused as u64,
            dense_jobs: dense as u64,
        })
    }

    /// Deletes the sweeps a submit left `submitting` (the coordinator stopped while writing
    /// them): none of their jobs was claimable, and a retry with the same client token then
    /// writes the sweep afresh. Run when the coordinator starts, before it serves. Returns the
    /// ids deleted.
    pub async fn discard_unfinished_submits(&self) -> Result<Vec<i64>> {
        let ids: Vec<i64> = both!(self, |pool, d, DB| {
            sqlx::query_scalar("SELECT id FROM sweeps WHERE state = 'submitting' ORDER BY id").fetch_all(pool).await?
        });
        for &id in &ids {
            self.delete_unfinished_sweep(id).await?;
        }
        Ok(ids)
    }

    /// Deletes a `submitting` sweep and everything written for it, in short transactions on
    /// SQLite: level jobs newest first (a job's children are newer than it), then the sweep,
    /// whose delete cascades to its trials, dense jobs and events.
    async fn delete_unfinished_sweep(&self, sweep_id: i64) -> Result<()> {
        both!(self, |pool, d, DB| {
            let mut w = PacedTx::new(pool, if d.sqlite { Some(SQLITE_HOLD) } else { None });
            let state: Option<String> =
                sqlx::query_scalar("SELECT state FROM sweeps WHERE id = $1").bind(sweep_id).fetch_optional(w.conn().await?).await?;
            if state.as_deref() != Some("submitting") {
                w.rollback().await?;
                return Ok(());
            }
            loop {
                let gone = sqlx::query(
                    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE sweep_id = $1 AND kind = 'level' ORDER BY id DESC LIMIT 2000)",
                )
                .bind(sweep_id)
                .execute(w.conn().await?)
                .await?;
                if gone.rows_affected() == 0 {
                    break;
                }
                w.pace().await?;
            }
            sqlx::query("DELETE FROM sweeps WHERE id = $1 AND state = 'submitting'").bind(sweep_id).execute(w.conn().await?).await?;
            w.finish().await?;
            Ok(())
        })
    }
}
