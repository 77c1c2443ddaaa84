//! The hot path in batches: claims for many workers, completions of many jobs, and the records of
//! many uploaded files, each in one database round trip on Postgres (one transaction on SQLite).
//!
//! Why: with 64 workers on a 2-core coordinator the per-statement cost (a round trip, a commit, a
//! WAL flush) dominates, not the work in each statement. One claim statement for 30 waiting
//! workers costs about what one claim for one worker costs. The single-job calls
//! ([`Store::claim_jobs`], [`Store::complete_job`]) are batches of one, so the contract suite
//! exercises exactly this code; [`crate::group_commit`] forms the batches from concurrent calls.
//!
//! Every item keeps its own outcome: an unknown worker, a stale lease or an invalid result fails
//! that item only. A database error fails the whole batch (nothing of it was written); the group
//! committer then retries its items one by one, so one poisonous item cannot sink the others.

use lth_sweep::state::JobKind;
use super::*;
use sqlx::SqliteConnection;

/// One worker's request for up to `n` jobs under a lease of `lease`.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub worker_id: String,
    pub n: u32,
    pub lease: Duration,
}

/// One job's completion.
#[derive(Debug, Clone)]
pub struct Completion {
    pub lease: Lease,
    pub result: ResultInput,
    /// Refuse the completion unless this attempt uploaded the files its dependents download
    /// ([`uploads_needed`]). The gRPC service always sets it: a job marked succeeded without
    /// its weights would strand every child. Checked in the same statement that completes, so
    /// the check costs no extra round trip.
    pub require_uploads: bool,
}

/// A verified upload to record: the file is in the object store; the record makes it an input of
/// later jobs, if the lease is still current.
#[derive(Debug, Clone)]
pub struct ArtifactRecord {
    pub lease: Lease,
    pub name: String,
    pub uri: String,
    pub sha256: String,
    pub bytes: u64,
}

/// The artifacts an attempt of a `kind` job must upload before it may complete: a dense job's
/// children rewind to θk and start from its weights; a level job's children start from its
/// weights and mask.
pub fn uploads_needed(kind: &str) -> &'static [&'static str] {
    kind.parse::<JobKind>().map(JobKind::uploads_needed).unwrap_or(&[])
}

/// Why a completion changed nothing.
#[derive(Debug)]
enum Refusal {
    NoSuchJob,
    /// The lease is not the job's current running attempt.
    Stale { state: String, attempt: i32 },
    /// The attempt did not upload these artifacts.
    MissingUploads(Vec<String>),
}

impl Refusal {
    fn into_error(self, lease: Lease) -> StoreError {
        match self {
            Refusal::NoSuchJob => StoreError::NotFound(format!("job {} does not exist: check the lease the claim returned", lease.job_id)),
            // The row changed between the statement's snapshot and its update (a concurrent
            // expiry or cancel): nothing more specific to say.
            Refusal::Stale { state, attempt } if state == "running" && attempt == lease.attempt => stale(lease),
            Refusal::Stale { state, attempt } => StoreError::StaleLease(format!(
                "lease {lease} is not current (job is {state} at attempt {attempt}): stop this attempt, its result was not recorded"
            )),
            Refusal::MissingUploads(names) => StoreError::MissingUploads(format!(
                "job {} completed without uploading {names:?} in attempt {}: upload them with UploadArtifact, then complete",
                lease.job_id, lease.attempt
            )),
        }
    }
}

impl Store {
    /// Hands out ready jobs to several claimers at once: the first request gets the
    /// highest-priority jobs, and so on. Returns one outcome per request, in request order.
    pub async fn claim_jobs_batch(&self, reqs: &[ClaimRequest]) -> Result<Vec<Result<Vec<ClaimedJob>>>> {
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        // Per request: None = the worker is not registered; Some(jobs) otherwise.
        let mut per_req: Vec<Option<Vec<ClaimedJob>>> = vec![Some(Vec::new()); reqs.len()];
        match self {
            Store::Postgres(pool) => {
                let workers: Vec<&str> = reqs.iter().map(|r| r.worker_id.as_str()).collect();
                let ns: Vec<i32> = reqs.iter().map(|r| r.n.min(i32::MAX as u32) as i32).collect();
                let secs: Vec<f64> = reqs.iter().map(|r| r.lease.as_secs_f64()).collect();
                let claimed_cols: String = JOB_COLUMNS.split(", ").map(|c| format!("c.{c}")).collect::<Vec<_>>().join(", ");
                let art_cols = |p: &str| ARTIFACT_FIELDS.iter().map(|f| format!("{p}.{f} AS {p}_{f}")).collect::<Vec<_>>().join(", ");
                let (rw, wt, ck) = (art_cols("rw"), art_cols("wt"), art_cols("ck"));
                // Per claimed job, keyed lookups. `LIMIT 1` (there is at most one such file)
                // keeps Postgres from flattening the lateral subquery into a join, which its
                // generic plan, expecting thousands of claimed rows, runs as hash joins over
                // every job and artifact: 55 ms a claim with 5k artifacts, growing with them.
                let file_of = |job: &str, name: &str| {
                    format!(
                        "SELECT a.* FROM jobs x JOIN artifacts a ON a.job_id = COALESCE(x.reused_from, x.id) AND a.name = '{name}' WHERE x.id = {job} LIMIT 1"
                    )
                };
                let null_arts = ["NULL::bigint, NULL::text, NULL::integer, NULL::text, NULL::text, NULL::bigint"; 3].join(", ");
                // Slots are numbered in request order, picked jobs in priority order, and slot k
                // gets the k-th job. SKIP LOCKED makes concurrent batches (this coordinator's or
                // another's) take disjoint jobs. The files each job downloads (as in
                // `sqlite_attach_artifacts`) come back in the same round trip.
                let rows = sqlx::query(&format!(
                    "WITH req AS (SELECT * FROM unnest($1::text[], $2::int[], $3::float8[]) WITH ORDINALITY AS r(worker_id, n, lease_secs, ord)), \
                     seen AS (UPDATE workers SET last_seen = now() WHERE worker_id = ANY($1::text[]) RETURNING worker_id), \
                     slots AS (SELECT r.ord, r.worker_id, r.lease_secs, row_number() OVER (ORDER BY r.ord, g.i) AS slot \
                                 FROM req r JOIN seen s ON s.worker_id = r.worker_id CROSS JOIN LATERAL generate_series(1, r.n) AS g(i)), \
                     picked AS (SELECT id, priority FROM jobs WHERE state = 'ready' AND NOT paused AND {no_twin_running} AND {not_excluded} \
                                 ORDER BY priority DESC, id LIMIT (SELECT count(*) FROM slots) FOR UPDATE SKIP LOCKED), \
                     assigned AS (SELECT p.id, s.ord, s.worker_id, s.lease_secs \
                                    FROM (SELECT id, row_number() OVER (ORDER BY priority DESC, id) AS slot FROM picked) p \
                                    JOIN slots s ON s.slot = p.slot), \
                     claimed AS (UPDATE jobs j SET state = 'running', attempt = j.attempt + 1, worker_id = a.worker_id, \
                                        lease_expires_at = now() + make_interval(secs => a.lease_secs), started_at = now(), \
                                        progress = 0, eta_seconds = NULL \
                                   FROM assigned a WHERE j.id = a.id RETURNING j.*, a.ord AS claim_ord), \
                     hist AS (INSERT INTO job_attempts (job_id, attempt, worker_id, outcome) \
                              SELECT id, attempt, worker_id, 'running' FROM claimed), \
                     ev AS (INSERT INTO events (sweep_id, job_id, kind, job_state, attempt, progress) \
                              SELECT sweep_id, id, 'state', 'running', attempt, 0 FROM claimed) \
                     SELECT c.claim_ord, true AS known, {claimed_cols}, {rw}, {wt}, {ck} FROM claimed c \
                       LEFT JOIN LATERAL ({rewind_of}) rw ON c.kind = 'level' \
                       LEFT JOIN LATERAL ({weights_of}) wt ON c.kind = 'level' \
                       LEFT JOIN LATERAL ({checkpoint_of}) ck ON true \
                     UNION ALL \
                     SELECT r.ord, false, {NULL_JOB_COLUMNS_PG}, {null_arts} FROM req r WHERE NOT EXISTS (SELECT 1 FROM seen s WHERE s.worker_id = r.worker_id)",
                    rewind_of = file_of("c.dense_job_id", "rewind"),
                    weights_of = file_of("c.parent_job_id", "weights"),
                    checkpoint_of = file_of("c.id", "checkpoint"),
                    no_twin_running = NO_TWIN_RUNNING,
                    not_excluded = not_excluded("ANY($1::text[])"),
                ))
                .bind(&workers)
                .bind(&ns)
                .bind(&secs)
                .fetch_all(&mut *pool_wait::acquire(pool, "claim").await?)
                .await?;
                for r in &rows {
                    let ord: i64 = r.try_get("claim_ord")?;
                    let i = (ord - 1) as usize;
                    if !r.try_get::<bool, _>("known")? {
                        per_req[i] = None;
                    } else if let Some(v) = per_req[i].as_mut() {
                        v.push(ClaimedJob {
                            job: job_from_row!(r),
                            rewind: prefixed_artifact(r, "rw")?,
                            weights: prefixed_artifact(r, "wt")?,
                            resume_checkpoint: prefixed_artifact(r, "ck")?,
                        });
                    }
                }
            }
            Store::Sqlite(pool) => {
                let mut tx = pool.begin_write_for("claim").await?;
                for (i, r) in reqs.iter().enumerate() {
                    per_req[i] = match sqlite_claim(&mut *tx, &r.worker_id, r.n, r.lease.as_secs_f64()).await? {
                        None => None,
                        Some(jobs) => Some(sqlite_attach_artifacts(&mut *tx, jobs).await?),
                    };
                }
                tx.commit().await?;
            }
        }
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

    /// Records several uploaded files, each fenced by its lease (a later attempt's file of the
    /// same name replaces the earlier one's). One outcome per record, in order: a stale lease
    /// records nothing. The same (job, name) twice in one batch fails the batch as a whole (one
    /// statement cannot upsert a row twice); the group committer then records them one by one.
    pub async fn record_artifacts(&self, recs: &[ArtifactRecord]) -> Result<Vec<Result<()>>> {
        if recs.is_empty() {
            return Ok(Vec::new());
        }
        // Keyed by (job, attempt, name): a stale and a current record of one file may share a batch.
        let recorded: std::collections::HashSet<(i64, i32, String)> = match self {
            Store::Postgres(pool) => {
                let job_ids: Vec<i64> = recs.iter().map(|r| r.lease.job_id).collect();
                let attempts: Vec<i32> = recs.iter().map(|r| r.lease.attempt).collect();
                let names: Vec<&str> = recs.iter().map(|r| r.name.as_str()).collect();
                let uris: Vec<&str> = recs.iter().map(|r| r.uri.as_str()).collect();
                let digests: Vec<&str> = recs.iter().map(|r| r.sha256.as_str()).collect();
                let bytes: Vec<i64> = recs.iter().map(|r| r.bytes as i64).collect();
                // The lease check locks the job row, so an expiry or completion waits for it.
                let rows = sqlx::query(
                    "WITH input AS (SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::text[], $6::bigint[]) \
                                      AS i(job_id, attempt, name, uri, sha256, bytes)), \
                     cur AS (SELECT i.* FROM input i JOIN LATERAL (SELECT id FROM jobs j WHERE j.id = i.job_id AND j.attempt = i.attempt \
                                     AND j.state = 'running' FOR UPDATE) j ON true) \
                     INSERT INTO artifacts (job_id, name, attempt, uri, sha256, bytes) \
                     SELECT job_id, name, attempt, uri, sha256, bytes FROM cur \
                     ON CONFLICT (job_id, name) DO UPDATE SET attempt = excluded.attempt, uri = excluded.uri, \
                       sha256 = excluded.sha256, bytes = excluded.bytes, created_at = now() \
                     RETURNING job_id, attempt, name",
                )
                .bind(&job_ids)
                .bind(&attempts)
                .bind(&names)
                .bind(&uris)
                .bind(&digests)
                .bind(&bytes)
                .fetch_all(&mut *pool_wait::acquire(pool, "record").await?)
                .await?;
                let mut out = std::collections::HashSet::with_capacity(rows.len());
                for r in &rows {
                    out.insert((r.try_get("job_id")?, r.try_get("attempt")?, r.try_get("name")?));
                }
                out
            }
            Store::Sqlite(pool) => {
                let now = SQLITE.now;
                let mut tx = pool.begin_write_for("record").await?;
                let mut out = std::collections::HashSet::new();
                for r in recs {
                    // `WHERE true` tells SQLite's parser the ON CONFLICT belongs to the upsert.
                    let done = sqlx::query(&format!(
                        "INSERT INTO artifacts (job_id, name, attempt, uri, sha256, bytes) \
                         SELECT id, $2, $3, $4, $5, $6 FROM jobs WHERE id = $1 AND attempt = $3 AND state = 'running' AND true \
                         ON CONFLICT (job_id, name) DO UPDATE SET attempt = excluded.attempt, uri = excluded.uri, \
                           sha256 = excluded.sha256, bytes = excluded.bytes, created_at = {now}"
                    ))
                    .bind(r.lease.job_id)
                    .bind(&r.name)
                    .bind(r.lease.attempt)
                    .bind(&r.uri)
                    .bind(&r.sha256)
                    .bind(r.bytes as i64)
                    .execute(&mut *tx)
                    .await?;
                    if done.rows_affected() > 0 {
                        out.insert((r.lease.job_id, r.lease.attempt, r.name.clone()));
                    }
                }
                tx.commit().await?;
                out
            }
        };
        Ok(recs
            .iter()
            .map(|r| if recorded.contains(&(r.lease.job_id, r.lease.attempt, r.name.clone())) { Ok(()) } else { Err(stale(r.lease)) })
            .collect())
    }

    /// The prunable layers of each level job's model, as its dense job (finished, since it is an
    /// ancestor) reported them. Dense jobs, and jobs whose dense job reported none, are left out.
    async fn model_layers(&self, job_ids: &[i64]) -> Result<HashMap<i64, Vec<String>>> {
        let mut out: HashMap<i64, Vec<String>> = HashMap::new();
        both!(self, |pool, d, DB| {
            for chunk in job_ids.chunks(BIND_ROWS) {
                let mut qb = QueryBuilder::<DB>::new(
                    "SELECT x.id AS for_job, m.layer FROM jobs x \
                       JOIN jobs r ON r.id = x.dense_job_id \
                       JOIN masks m ON m.job_id = COALESCE(r.reused_from, r.id) \
                      WHERE x.kind = 'level' AND x.id IN (",
                );
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                qb.push(") ORDER BY x.id, m.ordinal");
                for r in qb.build().fetch_all(pool).await? {
                    out.entry(r.try_get("for_job")?).or_default().push(r.try_get("layer")?);
                }
            }
        });
        Ok(out)
    }

    /// Completes several jobs: records each result and its masks, marks the job succeeded,
    /// unblocks its children, closes its trial (last level) and its sweep (last open job).
    /// Returns one outcome per completion, in order; a stale lease changes nothing.
    pub async fn complete_jobs(&self, items: &[Completion]) -> Result<Vec<Result<()>>> {
        let mut out: Vec<Option<Result<()>>> = items.iter().map(|c| c.result.check().err().map(Err)).collect();
        // A lease twice in one batch: the first copy competes, later copies are stale by then.
        let mut seen = std::collections::HashSet::new();
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
            // Layer names the model does not have: the model is known by the layers the job's
            // dense job reported.
            let ids: Vec<i64> = todo.iter().map(|&i| items[i].lease.job_id).collect();
            let model_layers = self.model_layers(&ids).await?;
            todo.retain(|&i| {
                let Some(known) = model_layers.get(&items[i].lease.job_id) else { return true };
                let reported: Vec<&str> = items[i].result.layers.iter().map(|l| l.name.as_str()).collect();
                match layers_match(&reported, known) {
                    Ok(()) => true,
                    Err(m) => {
                        out[i] = Some(Err(StoreError::InvalidResult(format!("invalid result of job {}: {m}", items[i].lease.job_id))));
                        false
                    }
                }
            });
        }
        if !todo.is_empty() {
            // The refused leases and why; every other item in `todo` was applied.
            let mut refused: std::collections::HashMap<Lease, Refusal> = match self {
                Store::Postgres(pool) => pg_complete(pool, items, &todo).await?,
                Store::Sqlite(pool) => {
                    let mut tx = pool.begin_write_for("complete").await?;
                    let mut refused = std::collections::HashMap::new();
                    let mut sweeps = Vec::new();
                    for &i in &todo {
                        match sqlite_complete(&mut *tx, &items[i]).await? {
                            Ok(sweep_id) => sweeps.push(sweep_id),
                            Err(why) => {
                                refused.insert(items[i].lease, why);
                            }
                        }
                    }
                    sweeps.sort_unstable();
                    sweeps.dedup();
                    let d = &SQLITE;
                    for s in sweeps {
                        let conn: &mut SqliteConnection = &mut *tx;
                        finalize_sweeps!(conn, d, Some(s));
                    }
                    tx.commit().await?;
                    refused
                }
            };
            let mut devices: Vec<(i64, &str)> = Vec::new();
            for &i in &todo {
                let l = items[i].lease;
                out[i] = Some(match refused.remove(&l) {
                    None => {
                        let device = items[i].result.device.as_str();
                        if !device.is_empty() {
                            devices.push((l.job_id, device));
                        }
                        Ok(())
                    }
                    Some(why) => Err(why.into_error(l)),
                });
            }
            // After the completions committed, and never failing them: a job without a device
            // row only goes unmeasured.
            if let Err(e) = self.record_devices(&devices).await {
                tracing::warn!(error = %e, jobs = devices.len(), "could not record where finished jobs ran; their throughput goes unmeasured");
            }
        }
        Ok(out.into_iter().map(|o| o.expect("every item has an outcome")).collect())
    }
}

/// The files each job claimed on SQLite downloads: θk from its dense job, the parent's weights,
/// and a checkpoint of its own from an earlier attempt; reused jobs point at the original's
/// files. Postgres gets the same from its claim statement. Returns the jobs in the order given.
async fn sqlite_attach_artifacts(conn: &mut SqliteConnection, jobs: Vec<JobRow>) -> Result<Vec<ClaimedJob>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let mut wanted: Vec<i64> = Vec::new();
    for j in &jobs {
        wanted.push(j.id);
        wanted.extend(j.parent_job_id);
        wanted.extend(j.dense_job_id);
    }
    wanted.sort_unstable();
    wanted.dedup();
    let mut qb = QueryBuilder::<sqlx::Sqlite>::new(
        "SELECT x.id AS for_job, a.job_id, a.name, a.attempt, a.uri, a.sha256, a.bytes \
           FROM jobs x JOIN artifacts a ON a.job_id = COALESCE(x.reused_from, x.id) \
          WHERE a.name IN ('rewind', 'weights', 'checkpoint') AND x.id IN (",
    );
    let mut sep = qb.separated(", ");
    for id in &wanted {
        sep.push_bind(*id);
    }
    qb.push(")");
    let mut arts: Vec<(i64, ArtifactRow)> = Vec::new();
    for r in qb.build().fetch_all(&mut *conn).await? {
        arts.push((r.try_get("for_job")?, artifact_from_row!(r)));
    }
    let find = |job: Option<i64>, name: &str| job.and_then(|id| arts.iter().find(|(f, a)| *f == id && a.name == name).map(|(_, a)| a.clone()));
    Ok(jobs
        .into_iter()
        .map(|j| ClaimedJob {
            rewind: if j.kind == "level" { find(j.dense_job_id, "rewind") } else { None },
            weights: if j.kind == "level" { find(j.parent_job_id, "weights") } else { None },
            resume_checkpoint: find(Some(j.id), "checkpoint"),
            job: j,
        })
        .collect())
}

/// A condition on a ready `jobs` row: no twin (a job with the same content hash: another
/// sweep's, or another trial's, copy of the same work) is running, or is ready with a lower id
/// (so one claim batch never picks two twins). Such a job waits; when its twin succeeds, the
/// completion marks it succeeded, reused from the twin; if the twin fails, it is claimed as usual.
const NO_TWIN_RUNNING: &str = "NOT EXISTS (SELECT 1 FROM jobs twin WHERE twin.content_hash = jobs.content_hash \
     AND (twin.state = 'running' OR (twin.state = 'ready' AND twin.id < jobs.id AND NOT twin.paused)))";

/// A condition on a ready `jobs` row: none of the claiming workers (`workers`: `$1` on SQLite, one
/// worker; `ANY($1::text[])` on Postgres, the batch's workers) is excluded from it, having failed
/// it for a reason of its own machine (`job_exclusions`, see [`Store::fail_job_on`]). Only jobs
/// with a counted failure can have exclusions, so the common case costs no lookup. On Postgres a
/// job excluded for one worker of a batch waits for a later batch: exclusions are rare and a
/// worker that keeps failing stops claiming, so precision per slot is not worth a costlier claim.
fn not_excluded(workers: &str) -> String {
    format!("(jobs.error_count = 0 OR NOT EXISTS (SELECT 1 FROM job_exclusions x WHERE x.job_id = jobs.id AND x.worker_id = {workers}))")
}

/// A job's result and masks are written once, except when the job runs again to repair a file
/// lost from the object store (`repair.rs`): then the new run's numbers replace the old ones,
/// which stayed readable meanwhile (other sweeps may be reusing this job's result).
const RESULT_UPSERT: &str = "sparsity = excluded.sparsity, test_accuracy = excluded.test_accuracy, test_loss = excluded.test_loss, \
     train_loss = excluded.train_loss, epochs = excluded.epochs, wall_seconds = excluded.wall_seconds, iterations = excluded.iterations, \
     diverged = excluded.diverged";
const MASK_UPSERT: &str = "ordinal = excluded.ordinal, kept = excluded.kept, total = excluded.total, bits = excluded.bits, \
     collapsed = excluded.collapsed, weight_norm = excluded.weight_norm, outputs = excluded.outputs, dead_outputs = excluded.dead_outputs, \
     inputs = excluded.inputs, dead_inputs = excluded.dead_inputs, output_layer = excluded.output_layer";

/// Mask rows per SQLite INSERT: 13 parameters each, well under SQLite's 32,766-parameter limit.
const MASK_ROWS_PER_INSERT: usize = 500;

/// The columns of an artifact row, in the order `artifact_from_row!` and the claim's NULL
/// placeholders use.
const ARTIFACT_FIELDS: [&str; 6] = ["job_id", "name", "attempt", "uri", "sha256", "bytes"];

/// The artifact in columns `{prefix}_job_id` .. `{prefix}_bytes`, if the outer join found one.
fn prefixed_artifact(r: &sqlx::postgres::PgRow, prefix: &str) -> Result<Option<ArtifactRow>> {
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

/// SQLite claim inside the caller's write transaction. None: the worker is not registered.
async fn sqlite_claim(conn: &mut SqliteConnection, worker_id: &str, n: u32, secs: f64) -> Result<Option<Vec<JobRow>>> {
    let d = &SQLITE;
    let now = d.now;
    let until = d.now_plus("$3");
    let not_excluded = not_excluded("$1");
    let seen = sqlx::query(&format!("UPDATE workers SET last_seen = {now} WHERE worker_id = $1"))
        .bind(worker_id)
        .execute(&mut *conn)
        .await?;
    if seen.rows_affected() == 0 {
        return Ok(None);
    }
    if n == 0 {
        return Ok(Some(Vec::new()));
    }
    let rows = sqlx::query(&format!(
        "UPDATE jobs SET state = 'running', attempt = attempt + 1, worker_id = $1, lease_expires_at = {until}, \
                started_at = {now}, progress = 0, eta_seconds = NULL \
          WHERE id IN (SELECT id FROM jobs WHERE state = 'ready' AND NOT paused AND {NO_TWIN_RUNNING} AND {not_excluded} ORDER BY priority DESC, id LIMIT $2) \
         RETURNING {JOB_COLUMNS}"
    ))
    .bind(worker_id)
    .bind(n as i64)
    .bind(secs)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(job_from_row!(r));
    }
    out.sort_by_key(|j| j.id);
    for j in &out {
        sqlx::query("INSERT INTO job_attempts (job_id, attempt, worker_id, outcome) VALUES ($1, $2, $3, 'running')")
            .bind(j.id)
            .bind(j.attempt)
            .bind(worker_id)
            .execute(&mut *conn)
            .await?;
        sqlx::query("INSERT INTO events (sweep_id, job_id, kind, job_state, attempt, progress) VALUES ($1, $2, 'state', 'running', $3, 0)")
            .bind(j.sweep_id)
            .bind(j.id)
            .bind(j.attempt)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Some(out))
}

/// SQLite completion inside the caller's write transaction (which holds the database's write
/// lock, so nothing changes between the checks and the writes). Returns the job's sweep, or why
/// nothing was written.
async fn sqlite_complete(conn: &mut SqliteConnection, item: &Completion) -> Result<std::result::Result<i64, Refusal>> {
    let (lease, result) = (item.lease, &item.result);
    let now = SQLITE.now;
    let Some(job) = sqlx::query("SELECT state, attempt, kind FROM jobs WHERE id = $1").bind(lease.job_id).fetch_optional(&mut *conn).await?
    else {
        return Ok(Err(Refusal::NoSuchJob));
    };
    let (state, attempt, kind): (String, i32, String) = (job.try_get("state")?, job.try_get("attempt")?, job.try_get("kind")?);
    if state != "running" || attempt != lease.attempt {
        return Ok(Err(Refusal::Stale { state, attempt }));
    }
    if item.require_uploads {
        let uploaded: Vec<String> = sqlx::query_scalar("SELECT name FROM artifacts WHERE job_id = $1 AND attempt = $2")
            .bind(lease.job_id)
            .bind(lease.attempt)
            .fetch_all(&mut *conn)
            .await?;
        let missing: Vec<String> = uploads_needed(&kind).iter().filter(|n| !uploaded.iter().any(|u| u == *n)).map(|n| n.to_string()).collect();
        if !missing.is_empty() {
            return Ok(Err(Refusal::MissingUploads(missing)));
        }
    }
    let row = sqlx::query(&format!(
        "UPDATE jobs SET state = 'succeeded', progress = 1, eta_seconds = 0, finished_at = {now}, lease_expires_at = NULL \
          WHERE id = $1 AND attempt = $2 AND state = 'running' \
         RETURNING sweep_id, trial_id"
    ))
    .bind(lease.job_id)
    .bind(lease.attempt)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(Err(Refusal::Stale { state, attempt })) };
    let sweep_id: i64 = row.try_get("sweep_id")?;
    let trial_id: Option<i64> = row.try_get("trial_id")?;
    sqlx::query(&format!("UPDATE job_attempts SET outcome = 'succeeded', finished_at = {now} WHERE job_id = $1 AND attempt = $2"))
        .bind(lease.job_id)
        .bind(lease.attempt)
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!(
        "INSERT INTO level_results (job_id, sparsity, test_accuracy, test_loss, train_loss, epochs, wall_seconds, iterations, diverged) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (job_id) DO UPDATE SET {RESULT_UPSERT}",
    ))
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
    for (ci, chunk) in result.layers.chunks(MASK_ROWS_PER_INSERT).enumerate() {
        let mut qb = QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO masks (job_id, layer, ordinal, kept, total, bits, collapsed, weight_norm, outputs, dead_outputs, inputs, dead_inputs, output_layer) ",
        );
        qb.push_values(chunk.iter().enumerate(), |mut b, (i, l)| {
            b.push_bind(lease.job_id)
                .push_bind(l.name.clone())
                .push_bind((ci * MASK_ROWS_PER_INSERT + i) as i32)
                .push_bind(l.kept as i64)
                .push_bind(l.total as i64)
                .push_bind(l.bits.clone())
                .push_bind(l.collapsed)
                .push_bind(stored_number(l.weight_norm))
                .push_bind(l.units.map(|u| u.outputs as i64))
                .push_bind(l.units.map(|u| u.dead_outputs as i64))
                .push_bind(l.units.map(|u| u.inputs as i64))
                .push_bind(l.units.map(|u| u.dead_inputs as i64))
                .push_bind(l.units.map(|u| u.output_layer));
        });
        qb.push(format!(" ON CONFLICT (job_id, layer) DO UPDATE SET {MASK_UPSERT}"));
        qb.build().execute(&mut *conn).await?;
    }
    sqlx::query("UPDATE jobs SET state = 'ready' WHERE parent_job_id = $1 AND state = 'blocked'")
        .bind(lease.job_id)
        .execute(&mut *conn)
        .await?;
    // Twins that waited for this job (same content hash, ready): done too, reused from it.
    let twins = sqlx::query(&format!(
        "UPDATE jobs SET state = 'succeeded', reused_from = $1, progress = 1, eta_seconds = 0, finished_at = {now} \
          WHERE content_hash = (SELECT content_hash FROM jobs WHERE id = $1) AND state = 'ready' AND id <> $1 \
         RETURNING id, sweep_id, attempt"
    ))
    .bind(lease.job_id)
    .fetch_all(&mut *conn)
    .await?;
    for t in &twins {
        let (id, twin_sweep, attempt): (i64, i64, i32) = (t.try_get("id")?, t.try_get("sweep_id")?, t.try_get("attempt")?);
        sqlx::query("UPDATE jobs SET state = 'ready' WHERE parent_job_id = $1 AND state = 'blocked'").bind(id).execute(&mut *conn).await?;
        sqlx::query("INSERT INTO events (sweep_id, job_id, kind, job_state, attempt, progress, detail) VALUES ($1, $2, 'state', 'succeeded', $3, 1, $4)")
            .bind(twin_sweep)
            .bind(id)
            .bind(attempt)
            .bind(Json(serde_json::json!({ "reused_from": lease.job_id })))
            .execute(&mut *conn)
            .await?;
    }
    if let Some(trial_id) = trial_id {
        // The trial closes with its last open job: its last level, or a control still running
        // after it. (This job is already succeeded in this transaction.)
        sqlx::query(
            "UPDATE trials SET state = 'succeeded' WHERE id = $1 AND state = 'running' \
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.trial_id = $1 AND j.state <> 'succeeded')",
        )
        .bind(trial_id)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query("INSERT INTO events (sweep_id, job_id, kind, job_state, attempt, progress) VALUES ($1, $2, 'state', 'succeeded', $3, 1)")
        .bind(sweep_id)
        .bind(lease.job_id)
        .bind(lease.attempt)
        .execute(&mut *conn)
        .await?;
    Ok(Ok(sweep_id))
}

/// Postgres completion of `items[todo]` in one statement (one implicit transaction). Returns
/// the leases that were refused and why; the others are now succeeded.
///
/// `chk` reads each job's state and, where required, the uploads it lacks, from the
/// statement's snapshot; `done` then updates only current, complete ones, re-checking the lease
/// under the row lock, so a concurrent expiry still wins.
///
/// The sweep is closed in the same statement when no open job remains besides the ones this
/// statement completes. All parts of one statement see the same snapshot, so two batches that
/// finish a sweep's last two jobs concurrently each see the other's job still running; the
/// reaper closes such a sweep on its next pass. The parts of a statement run in no fixed order;
/// the sweep's closing event reads `ev` so that it is numbered after the jobs' events, because
/// WatchSweep ends its stream on it.
async fn pg_complete(pool: &PgPool, items: &[Completion], todo: &[usize]) -> Result<std::collections::HashMap<Lease, Refusal>> {
    let n = todo.len();
    let (mut job_ids, mut attempts, mut require, mut diverged) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut sparsity, mut acc, mut test_loss, mut train_loss, mut epochs, mut wall, mut iters) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let layers: usize = todo.iter().map(|&i| items[i].result.layers.len()).sum();
    let (mut u_out, mut u_dead_out, mut u_in, mut u_dead_in, mut u_final): (Vec<Option<i64>>, Vec<Option<i64>>, Vec<Option<i64>>, Vec<Option<i64>>, Vec<Option<bool>>) =
        (Vec::with_capacity(layers), Vec::with_capacity(layers), Vec::with_capacity(layers), Vec::with_capacity(layers), Vec::with_capacity(layers));
    let (mut m_job, mut m_layer, mut m_ord, mut m_kept, mut m_total, mut m_bits, mut m_collapsed, mut m_norm) = (
        Vec::with_capacity(layers),
        Vec::with_capacity(layers),
        Vec::with_capacity(layers),
        Vec::with_capacity(layers),
        Vec::with_capacity(layers),
        Vec::with_capacity(layers),
        Vec::with_capacity(layers),
        Vec::with_capacity(layers),
    );
    for &i in todo {
        let (l, r) = (items[i].lease, &items[i].result);
        job_ids.push(l.job_id);
        attempts.push(l.attempt);
        require.push(items[i].require_uploads);
        diverged.push(r.diverged);
        sparsity.push(r.sparsity);
        acc.push(r.test_accuracy);
        test_loss.push(stored_number(r.test_loss));
        train_loss.push(stored_number(r.train_loss));
        epochs.push(r.epochs);
        wall.push(r.wall_seconds);
        iters.push(r.iterations as i64);
        for (k, layer) in r.layers.iter().enumerate() {
            m_job.push(l.job_id);
            m_layer.push(layer.name.as_str());
            m_ord.push(k as i32);
            m_kept.push(layer.kept as i64);
            m_total.push(layer.total as i64);
            m_bits.push(layer.bits.as_slice());
            m_collapsed.push(layer.collapsed);
            m_norm.push(stored_number(layer.weight_norm));
            u_out.push(layer.units.map(|u| u.outputs as i64));
            u_dead_out.push(layer.units.map(|u| u.dead_outputs as i64));
            u_in.push(layer.units.map(|u| u.inputs as i64));
            u_dead_in.push(layer.units.map(|u| u.dead_inputs as i64));
            u_final.push(layer.units.map(|u| u.output_layer));
        }
    }
    let rows = sqlx::query(&format!(
        "WITH input AS (SELECT * FROM unnest($1::bigint[], $2::int[], $3::float8[], $4::float8[], $5::float8[], $6::float8[], $7::float8[], $8::float8[], $9::bigint[], $18::bool[], $26::bool[]) \
                          AS i(job_id, attempt, sparsity, test_accuracy, test_loss, train_loss, epochs, wall_seconds, iterations, require_uploads, diverged)), \
         chk AS (SELECT i.job_id, i.attempt, j.state, j.attempt AS current_attempt, \
                        CASE WHEN i.require_uploads AND j.id IS NOT NULL THEN \
                          ARRAY(SELECT need FROM unnest(CASE WHEN j.kind = 'dense' THEN $19::text[] ELSE $20::text[] END) AS need \
                                 WHERE NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.job_id = i.job_id AND a.attempt = i.attempt AND a.name = need)) \
                        ELSE '{{}}'::text[] END AS missing \
                   FROM input i LEFT JOIN jobs j ON j.id = i.job_id), \
         done AS (UPDATE jobs j SET state = 'succeeded', progress = 1, eta_seconds = 0, finished_at = now(), lease_expires_at = NULL \
                    FROM chk WHERE j.id = chk.job_id AND j.attempt = chk.attempt AND j.state = 'running' AND cardinality(chk.missing) = 0 \
                  RETURNING j.id, j.attempt, j.sweep_id, j.trial_id, j.level), \
         att AS (UPDATE job_attempts a SET outcome = 'succeeded', finished_at = now() \
                   FROM done WHERE a.job_id = done.id AND a.attempt = done.attempt), \
         res AS (INSERT INTO level_results (job_id, sparsity, test_accuracy, test_loss, train_loss, epochs, wall_seconds, iterations, diverged) \
                 SELECT i.job_id, i.sparsity, i.test_accuracy, i.test_loss, i.train_loss, i.epochs, i.wall_seconds, i.iterations, i.diverged \
                   FROM input i JOIN done ON done.id = i.job_id \
                 ON CONFLICT (job_id) DO UPDATE SET {RESULT_UPSERT}), \
         msk AS (INSERT INTO masks (job_id, layer, ordinal, kept, total, bits, collapsed, weight_norm, outputs, dead_outputs, inputs, dead_inputs, output_layer) \
                 SELECT m.job_id, m.layer, m.ordinal, m.kept, m.total, \
                        substring(('x' || encode(m.bits, 'hex'))::bit varying from 1 for m.total::int), m.collapsed, m.weight_norm, \
                        m.outputs, m.dead_outputs, m.inputs, m.dead_inputs, m.output_layer \
                   FROM unnest($10::bigint[], $11::text[], $12::int[], $13::bigint[], $14::bigint[], $15::bytea[], $16::bool[], $17::float8[], \
                               $21::bigint[], $22::bigint[], $23::bigint[], $24::bigint[], $25::bool[]) \
                        AS m(job_id, layer, ordinal, kept, total, bits, collapsed, weight_norm, outputs, dead_outputs, inputs, dead_inputs, output_layer) \
                   JOIN done ON done.id = m.job_id \
                 ON CONFLICT (job_id, layer) DO UPDATE SET {MASK_UPSERT}), \
         twins AS (UPDATE jobs t SET state = 'succeeded', reused_from = done.id, progress = 1, eta_seconds = 0, finished_at = now() \
                     FROM done JOIN jobs dj ON dj.id = done.id \
                    WHERE t.content_hash = dj.content_hash AND t.state = 'ready' AND t.id <> done.id \
                   RETURNING t.id, t.sweep_id, t.attempt, done.id AS src), \
         unblocked AS (UPDATE jobs c SET state = 'ready' FROM (SELECT id FROM done UNION ALL SELECT id FROM twins) p \
                        WHERE c.parent_job_id = p.id AND c.state = 'blocked'), \
         twin_ev AS (INSERT INTO events (sweep_id, job_id, kind, job_state, attempt, progress, detail) \
                     SELECT sweep_id, id, 'state', 'succeeded', attempt, 1, jsonb_build_object('reused_from', src) FROM twins), \
         trial AS (UPDATE trials t SET state = 'succeeded' FROM done \
                    WHERE t.id = done.trial_id AND t.state = 'running' \
                      AND NOT EXISTS (SELECT 1 FROM jobs o WHERE o.trial_id = t.id AND o.state <> 'succeeded' \
                                        AND NOT EXISTS (SELECT 1 FROM done d2 WHERE d2.id = o.id))), \
         ev AS (INSERT INTO events (sweep_id, job_id, kind, job_state, attempt, progress) \
                SELECT sweep_id, id, 'state', 'succeeded', attempt, 1 FROM done RETURNING id), \
         fin AS (UPDATE sweeps SET finished_at = now(), state = {FINAL_SWEEP_STATE} \
                  WHERE sweeps.id IN (SELECT sweep_id FROM done) AND sweeps.state = 'running' AND {no_open} \
                 RETURNING sweeps.id), \
         fin_ev AS (INSERT INTO events (sweep_id, kind) SELECT id, 'sweep' FROM fin WHERE (SELECT count(*) FROM ev) >= 0) \
         SELECT chk.job_id, chk.attempt, chk.state, chk.current_attempt, chk.missing FROM chk \
          WHERE NOT EXISTS (SELECT 1 FROM done WHERE done.id = chk.job_id AND done.attempt = chk.attempt)",
        // The jobs this statement completes still look running to it.
        no_open = no_open_job_left(" AND NOT EXISTS (SELECT 1 FROM done WHERE done.id = j.id)")
    ))
    .bind(&job_ids)
    .bind(&attempts)
    .bind(&sparsity)
    .bind(&acc)
    .bind(&test_loss)
    .bind(&train_loss)
    .bind(&epochs)
    .bind(&wall)
    .bind(&iters)
    .bind(&m_job)
    .bind(&m_layer)
    .bind(&m_ord)
    .bind(&m_kept)
    .bind(&m_total)
    .bind(&m_bits)
    .bind(&m_collapsed)
    .bind(&m_norm)
    .bind(&require)
    .bind(uploads_needed("dense"))
    .bind(uploads_needed("level"))
    .bind(&u_out)
    .bind(&u_dead_out)
    .bind(&u_in)
    .bind(&u_dead_in)
    .bind(&u_final)
    .bind(&diverged)
    .fetch_all(&mut *pool_wait::acquire(pool, "complete").await?)
    .await?;
    let mut refused = std::collections::HashMap::with_capacity(rows.len());
    for r in &rows {
        let lease = Lease { job_id: r.try_get("job_id")?, attempt: r.try_get("attempt")? };
        let why = match r.try_get::<Option<String>, _>("state")? {
            None => Refusal::NoSuchJob,
            Some(state) => {
                let missing: Vec<String> = r.try_get("missing")?;
                let attempt: i32 = r.try_get("current_attempt")?;
                if state == "running" && attempt == lease.attempt && !missing.is_empty() {
                    Refusal::MissingUploads(missing)
                } else {
                    Refusal::Stale { state, attempt }
                }
            }
        };
        refused.insert(lease, why);
    }
    Ok(refused)
}
