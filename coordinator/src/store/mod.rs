//! The job store: sweeps, trials, jobs, leases, results and masks in Postgres or SQLite.
//!
//! This is the part that must never lose or double-run a job, so every state change is one
//! transaction with a guard in its WHERE clause, and every worker write is fenced by the lease
//! (job id, attempt). Times come from the database clock, never from a coordinator or worker.
//!
//! One type, two backends: most statements are the same text on both (`$N` placeholders work on
//! SQLite too); the [`Dialect`] supplies the clock expressions, and the claim differs in how rows
//! are locked (Postgres: `FOR UPDATE SKIP LOCKED`; SQLite: a `BEGIN IMMEDIATE` single-writer
//! transaction). The `both!` macro compiles each operation once per backend.

pub mod pool_wait;
mod sqlite_busy;
mod sqlite_fns;
mod throughput;
pub use throughput::Throughput;

use chrono::{DateTime, Utc};
use lth_sweep::state::{abort_reason, JobState, SweepOp, SweepState, Verdict};
use lth_sweep::{ImportanceMetric, SweepSpec};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::types::Json;
use sqlx::{PgPool, QueryBuilder, Row, SqlitePool};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

/// Why a store operation did not happen. Each maps onto one gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    /// The object is in a state that forbids the operation (pausing a finished sweep, …).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The worker is not registered (never was, or the store was reset): register again.
    #[error("{0}")]
    UnknownWorker(String),
    /// The caller's lease (job, attempt) is no longer the job's current running attempt.
    #[error("{0}")]
    StaleLease(String),
    /// A completion came before the uploads the job's children need.
    #[error("{0}")]
    MissingUploads(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// A completion's result is not valid (a loss that is not a number without `diverged`, an
    /// accuracy out of range, a layer the model does not have, …): retrying it cannot help.
    #[error("{0}")]
    InvalidResult(String),
    #[error("cannot open the database: {0}")]
    Connect(String),
    #[error("database migration failed: {0}")]
    Migrate(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl StoreError {
    /// The machine-readable cause sent to clients with this error.
    pub fn reason(&self) -> lth_proto::v1::ErrorReason {
        use lth_proto::v1::ErrorReason as R;
        match self {
            StoreError::NotFound(_) => R::NotFound,
            StoreError::FailedPrecondition(_) => R::Refused,
            StoreError::AlreadyExists(_) => R::AlreadyExists,
            StoreError::InvalidArgument(_) => R::InvalidArgument,
            StoreError::InvalidResult(_) => R::InvalidResult,
            StoreError::UnknownWorker(_) => R::UnknownWorker,
            StoreError::StaleLease(_) => R::StaleLease,
            StoreError::MissingUploads(_) => R::MissingUploads,
            StoreError::Connect(_) | StoreError::Migrate(_) | StoreError::Db(_) => R::StoreUnavailable,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A worker's claim on one job: valid while the job runs with this attempt number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    pub job_id: i64,
    pub attempt: i32,
}

impl std::fmt::Display for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job {} attempt {}", self.job_id, self.attempt)
    }
}

fn stale(lease: Lease) -> StoreError {
    StoreError::StaleLease(format!(
        "lease {lease} is not current (the lease was lost, the job was re-queued, or the sweep was paused or cancelled): stop this attempt and claim again"
    ))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitOutcome {
    pub sweep_id: i64,
    pub created: bool,
    pub trials: u64,
    pub jobs: u64,
    pub jobs_reused: u64,
    pub dense_jobs: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobCounts {
    pub blocked: u64,
    pub ready: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

#[derive(Debug, Clone)]
pub struct SweepInfo {
    pub id: i64,
    pub name: String,
    pub state: String,
    pub spec: SweepSpec,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub trials: u64,
    /// The token name that submitted it (None for sweeps from before owners were recorded).
    pub owner: Option<String>,
    pub jobs: JobCounts,
    /// (metric, level jobs, level jobs succeeded)
    pub metrics: Vec<(String, u64, u64)>,
    /// Tickets (trial × level) with a dead output class (the dead_units view).
    pub tickets_with_dead_classes: u64,
    /// Results (trial × level, controls included) whose training diverged.
    pub diverged: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobRow {
    pub id: i64,
    pub sweep_id: i64,
    pub trial_id: Option<i64>,
    pub kind: String,
    pub seed: i64,
    pub metric: Option<String>,
    pub rate: f64,
    pub level: i32,
    pub parent_job_id: Option<i64>,
    pub dense_job_id: Option<i64>,
    pub state: String,
    pub attempt: i32,
    pub worker_id: Option<String>,
    pub error_count: i32,
    pub lost_count: i32,
    pub last_error: Option<String>,
    pub content_hash: String,
    pub reused_from: Option<i64>,
    pub progress: f64,
    pub eta_seconds: Option<f64>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// NULL for a ticket (dense or level job); "reinit" or "random_mask" for a control of the
    /// level it is a child of.
    pub control: Option<String>,
}

const JOB_COLUMNS: &str = "id, sweep_id, trial_id, kind, seed, metric, rate, level, parent_job_id, dense_job_id, \
     state, attempt, worker_id, error_count, lost_count, last_error, content_hash, reused_from, progress, \
     eta_seconds, lease_expires_at, control";

macro_rules! job_from_row {
    ($r:expr) => {{
        let r = &$r;
        JobRow {
            id: r.try_get("id")?,
            sweep_id: r.try_get("sweep_id")?,
            trial_id: r.try_get("trial_id")?,
            kind: r.try_get("kind")?,
            seed: r.try_get("seed")?,
            metric: r.try_get("metric")?,
            rate: r.try_get("rate")?,
            level: r.try_get("level")?,
            parent_job_id: r.try_get("parent_job_id")?,
            dense_job_id: r.try_get("dense_job_id")?,
            state: r.try_get("state")?,
            attempt: r.try_get("attempt")?,
            worker_id: r.try_get("worker_id")?,
            error_count: r.try_get("error_count")?,
            lost_count: r.try_get("lost_count")?,
            last_error: r.try_get("last_error")?,
            content_hash: r.try_get("content_hash")?,
            reused_from: r.try_get("reused_from")?,
            progress: r.try_get("progress")?,
            eta_seconds: r.try_get("eta_seconds")?,
            lease_expires_at: r.try_get("lease_expires_at")?,
            control: r.try_get("control")?,
        }
    }};
}

/// A file in the object store that belongs to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRow {
    pub job_id: i64,
    pub name: String,
    pub attempt: i32,
    pub uri: String,
    pub sha256: String,
    pub bytes: i64,
}

/// An input uploaded through the coordinator (a model or a dataset), by its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRow {
    pub sha256: String,
    /// `torchscript`, `image_folder` or `safetensors`.
    pub kind: String,
    pub name: String,
    pub bytes: i64,
    pub uri: String,
    pub owner: Option<String>,
    /// Set by the database.
    pub created_at: Option<DateTime<Utc>>,
}

macro_rules! input_from_row {
    ($r:expr) => {{
        let r = &$r;
        InputRow {
            sha256: r.try_get("sha256")?,
            kind: r.try_get("kind")?,
            name: r.try_get("name")?,
            bytes: r.try_get("bytes")?,
            uri: r.try_get("uri")?,
            owner: r.try_get("owner")?,
            created_at: Some(r.try_get("created_at")?),
        }
    }};
}

/// A job just claimed, with the artifacts it needs.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub job: JobRow,
    /// θk from the seed's dense job (level >= 1).
    pub rewind: Option<ArtifactRow>,
    /// The parent's trained weights and mask (level >= 1).
    pub weights: Option<ArtifactRow>,
    /// A checkpoint an earlier attempt of this job uploaded.
    pub resume_checkpoint: Option<ArtifactRow>,
}

// Result types: the domain's `lth_sweep::result`, under the store's names until the store
// renames them (the engine emits a LevelResult, CompleteJob carries it, the store records it).
pub use lth_sweep::result::{check_loss, layers_match, stored_number, LayerResult as LayerInput, LevelResult as ResultInput, UnitStats};

/// The domain's validation ([`ResultInput::validate`]) as a store refusal,
/// [`StoreError::InvalidResult`], on both backends.
pub trait CheckResult {
    fn check(&self) -> Result<()>;
}

impl CheckResult for ResultInput {
    fn check(&self) -> Result<()> {
        self.validate().map_err(|e| StoreError::InvalidResult(e.to_string()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProgressInput {
    pub iteration: u64,
    pub total_iterations: u64,
    pub epoch: f64,
    pub train_loss: f64,
    pub test_accuracy: Option<f64>,
    pub images_per_second: f64,
}

pub use lth_sweep::state::AbortReason;

/// How an attempt failed, as its worker judged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Failure {
    /// Another attempt may succeed (false: a bad spec or bad data).
    pub retryable: bool,
    /// The worker's machine is at fault, not the job (see [`Store::fail_job_on`]).
    pub node_local: bool,
}

/// Distinct workers a job may fail on node-locally before it fails for good.
pub const MAX_EXCLUDED_WORKERS: i64 = 16;

/// A failing job's counts, and the rule for what its failure does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailRule {
    pub errors: i32,
    pub max_attempts: i32,
    /// Workers already excluded from the job (earlier node-local failures).
    pub excluded: i64,
}

impl FailRule {
    /// (whether this failure counts against the job's attempts, whether the job is retried).
    pub fn apply(&self, how: Failure) -> (bool, bool) {
        if how.node_local {
            // Counted once (so later failures of the job itself have one attempt less), but never
            // the end of the job: it goes to another machine, until MAX_EXCLUDED_WORKERS have
            // failed it this way (then the cause is hardly those machines).
            (self.excluded == 0, self.excluded + 1 < MAX_EXCLUDED_WORKERS)
        } else {
            (true, how.retryable && self.errors + 1 < self.max_attempts)
        }
    }
}


#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GpuRow {
    pub index: u32,
    pub name: String,
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRegistration {
    pub worker_id: String,
    pub host: String,
    pub gpus: Vec<GpuRow>,
    pub cpus: u32,
    pub slots: u32,
    pub libtorch_version: String,
    pub cuda_version: String,
}

#[derive(Debug, Clone)]
pub struct WorkerRow {
    pub reg: WorkerRegistration,
    pub running_jobs: u64,
    pub last_seen: DateTime<Utc>,
    pub alive: bool,
    /// Why the worker stopped claiming, as its last heartbeat said; None while healthy.
    pub unhealthy: Option<String>,
}

/// One row of the events table, with the job's static fields when it is a job event.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    /// The job as it was at the event (state, attempt, progress from the event; the rest current).
    pub job: Option<JobRow>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LayerStatsRow {
    pub layer: String,
    pub kept: i64,
    pub total: i64,
    pub collapsed: bool,
    pub weight_norm: f64,
    /// None for rows of workers that did not report dead units.
    pub units: Option<UnitStats>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    pub metric: String,
    pub rate: f64,
    pub seed: i64,
    pub level: i32,
    pub job_id: i64,
    pub result_job_id: i64,
    pub sparsity: f64,
    pub test_accuracy: f64,
    pub test_loss: f64,
    pub train_loss: f64,
    pub epochs: f64,
    pub wall_seconds: f64,
    pub iterations: i64,
    pub layers: Vec<LayerStatsRow>,
    /// None for the ticket, else the control ("reinit", "random_mask") of this (trial, level).
    pub control: Option<String>,
    /// The trial's per-level rates when it runs a schedule (`rate` is then the first).
    pub schedule: Option<Vec<f64>>,
    /// Training diverged (its non-finite losses read as +Infinity).
    pub diverged: bool,
}

/// One row of the accuracy_vs_sparsity view.
#[derive(Debug, Clone, PartialEq)]
pub struct AccuracyRow {
    pub metric: String,
    pub rate: f64,
    pub level: i32,
    pub sparsity: f64,
    pub mean_accuracy: f64,
    /// NULL in the view for a single seed.
    pub std_accuracy: Option<f64>,
    pub min_accuracy: f64,
    pub max_accuracy: f64,
    pub seeds: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReapReport {
    pub lost: Vec<Lease>,
    pub finished_sweeps: Vec<i64>,
    /// Jobs made ready again after the lost file they rewind to was made again (`repair.rs`).
    pub unblocked_after_repair: u64,
}

/// A vacuum of the jobs table that [`Store::vacuum_jobs_if_needed`] ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VacuumReport {
    /// Dead row versions Postgres counted before the vacuum.
    pub dead_rows: i64,
    pub took: Duration,
}

/// The SQL that differs between the backends: the database clock.
struct Dialect {
    now: &'static str,
    sqlite: bool,
}

const PG: Dialect = Dialect { now: "now()", sqlite: false };
const SQLITE: Dialect = Dialect { now: "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')", sqlite: true };

impl Dialect {
    /// The database's now plus `param` seconds (a bound f64).
    fn now_plus(&self, param: &str) -> String {
        if self.sqlite {
            format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('%+.3f seconds', {param}))")
        } else {
            format!("(now() + make_interval(secs => {param}))")
        }
    }
    /// Seconds from `col` until now.
    fn seconds_since(&self, col: &str) -> String {
        if self.sqlite {
            format!("((julianday('now') - julianday({col})) * 86400.0)")
        } else {
            format!("EXTRACT(EPOCH FROM (now() - {col}))::double precision")
        }
    }
    /// Row lock for a read that precedes a write in the same transaction (SQLite's write
    /// transaction already excludes other writers).
    fn for_update(&self) -> &'static str {
        if self.sqlite {
            ""
        } else {
            " FOR UPDATE"
        }
    }
}

/// Opens a write transaction: on SQLite `BEGIN IMMEDIATE` takes the write lock up front, so two
/// writers never deadlock upgrading read locks. The wait for the connection is recorded in
/// `lth_db_pool_wait_seconds` ([`pool_wait`]) under `op` (`begin_write`: "write").
trait BeginWrite {
    type Db: sqlx::Database;
    fn begin_write_for(&self, op: &'static str) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>> + Send;
    fn begin_write(&self) -> impl std::future::Future<Output = Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>> + Send {
        self.begin_write_for("write")
    }
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write_for(&self, op: &'static str) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        pool_wait::begin(self, op, None).await
    }
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write_for(&self, op: &'static str) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        pool_wait::begin(self, op, Some("BEGIN IMMEDIATE")).await
    }
}

/// Runs `$body` once per backend with `$pool` bound to that backend's pool, `$d` to its dialect and
/// `$db` to its `sqlx::Database` type.
macro_rules! both {
    ($self:expr, |$pool:ident, $d:ident, $db:ident| $body:block) => {
        match $self {
            Store::Postgres($pool) => {
                #[allow(dead_code)]
                type $db = sqlx::Postgres;
                #[allow(unused_variables)]
                let $d = &PG;
                $body
            }
            Store::Sqlite($pool) => {
                #[allow(dead_code)]
                type $db = sqlx::Sqlite;
                #[allow(unused_variables)]
                let $d = &SQLITE;
                $body
            }
        }
    };
}

/// Connection settings beyond the URL.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_connections: u32,
    /// Postgres: plan every prepared statement once per connection (`plan_cache_mode =
    /// force_generic_plan`) instead of letting Postgres re-plan it for each call's parameters.
    /// The batched claim is a dozen-part statement whose planning costs more than its execution
    /// (2-3 ms against 0.7 ms), and Postgres keeps choosing custom plans for it; the store's other
    /// statements are keyed lookups for which the generic plan is the custom plan.
    pub generic_plans: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { max_connections: 16, generic_plans: true }
    }
}

/// The job store over one database.
#[derive(Clone, Debug)]
pub enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Hides a password in a database URL before it goes into an error message or a log.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    url.to_string()
}

const BIND_ROWS: usize = 1000;

/// Dead row versions in `jobs` before the coordinator vacuums it (plus 2% of the live rows).
const VACUUM_MIN_DEAD: i64 = 20_000;

impl Store {
    /// Connects and applies the embedded migrations. `url` is `postgres://...` or `sqlite://PATH`
    /// (`sqlite://lth.db` creates the file when missing).
    pub async fn connect(url: &str, opts: &StoreOptions) -> Result<Store> {
        let shown = redact_url(url);
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let conn = PgConnectOptions::from_str(url).map_err(|e| {
                StoreError::Connect(format!(
                    "{shown} is not a valid Postgres URL ({e}); write postgres://USER[:PASSWORD]@HOST:PORT/DATABASE"
                ))
            })?;
            // JIT compiles a statement whose estimated cost is high, and a generic plan's
            // estimates (thousands of rows for a claim batch of 17) often are: Postgres then
            // compiled ~100 functions with inlining for every claim, about 1 s each
            // (BENCHMARKS.md). The coordinator only runs short statements; JIT never pays.
            let conn = conn.options([("jit", "off")]);
            let conn = if opts.generic_plans { conn.options([("plan_cache_mode", "force_generic_plan")]) } else { conn };
            let pool = PgPoolOptions::new()
                .max_connections(opts.max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(conn)
                .await
                .map_err(|e| {
                    StoreError::Connect(format!(
                        "cannot connect to Postgres at {shown}: {e}. Check that the server is running, the database exists and the user may log in"
                    ))
                })?;
            sqlx::migrate!("../migrations/postgres").run(&pool).await.map_err(|e| {
                StoreError::Migrate(format!(
                    "{e} (database {shown}). The schema was left as it was; if this database belongs to another program use a fresh one, or fix the failing migration and restart"
                ))
            })?;
            Ok(Store::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let conn = SqliteConnectOptions::from_str(url)
                .map_err(|e| {
                    StoreError::Connect(format!("{shown} is not a valid SQLite URL ({e}); write sqlite://PATH, e.g. sqlite://lth.db"))
                })?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(sqlite_busy::BUSY_TIMEOUT);
            // Migrations run on a connection of their own with foreign keys off: rebuilding a
            // table (SQLite's way to change a constraint) drops the old one, which with foreign
            // keys on would cascade-delete its children. The keys are checked once migrated.
            {
                use sqlx::ConnectOptions;
                let mut mc = conn.clone().foreign_keys(false).connect().await.map_err(|e| {
                    StoreError::Connect(format!(
                        "cannot open SQLite database {shown}: {e}. Check that the directory exists and is writable"
                    ))
                })?;
                sqlite_fns::register(&mut mc).await?;
                sqlx::migrate!("../migrations/sqlite").run(&mut mc).await.map_err(|e| {
                    StoreError::Migrate(format!(
                        "{e} (database {shown}). The schema was left as it was; move this file away to start fresh, or fix the failing migration"
                    ))
                })?;
                let broken = sqlx::query("PRAGMA foreign_key_check").fetch_all(&mut mc).await?;
                if !broken.is_empty() {
                    return Err(StoreError::Migrate(format!(
                        "database {shown}: {} rows violate foreign keys after migrating (PRAGMA foreign_key_check lists them)",
                        broken.len()
                    )));
                }
                use sqlx::Connection;
                mc.close().await?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(opts.max_connections.min(8))
                .after_connect(|conn, _meta| {
                    Box::pin(async move {
                        sqlite_fns::register(conn).await?;
                        sqlite_busy::install(conn).await
                    })
                })
                .connect_with(conn)
                .await
                .map_err(|e| {
                    StoreError::Connect(format!(
                        "cannot open SQLite database {shown}: {e}. Check that the directory exists and is writable"
                    ))
                })?;
            Ok(Store::Sqlite(pool))
        } else {
            Err(StoreError::Connect(format!(
                "unsupported database URL {shown}: use sqlite://PATH (embedded, one machine) or postgres://USER@HOST:PORT/DATABASE"
            )))
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    /// One trivial statement: does the database answer? (The health probe.)
    pub async fn ping(&self) -> Result<()> {
        both!(self, |pool, d, DB| {
            sqlx::query("SELECT 1").execute(pool).await?;
            Ok(())
        })
    }

    pub async fn close(&self) {
        both!(self, |pool, d, DB| { pool.close().await })
    }

    // -----------------------------------------------------------------------------------------
    // Sweeps (planning and submitting them: submit.rs)
    // -----------------------------------------------------------------------------------------

    /// The sweep's spec alone: what each claim's assignment carries, without `get_sweep`'s counts.
    pub async fn sweep_spec(&self, sweep_id: i64) -> Result<SweepSpec> {
        both!(self, |pool, d, DB| {
            let Some(r) = sqlx::query("SELECT spec FROM sweeps WHERE id = $1").bind(sweep_id).fetch_optional(pool).await? else {
                return Err(StoreError::NotFound(format!("sweep {sweep_id} does not exist: `lthctl ls` lists the sweeps")));
            };
            let Json(spec): Json<SweepSpec> = r.try_get("spec")?;
            Ok(spec)
        })
    }

    pub async fn get_sweep(&self, sweep_id: i64) -> Result<SweepInfo> {
        both!(self, |pool, d, DB| {
            let Some(r) = sqlx::query("SELECT id, name, state, spec, created_at, finished_at, owner, (SELECT count(*) FROM trials WHERE sweep_id = sweeps.id) AS trials FROM sweeps WHERE id = $1")
                .bind(sweep_id)
                .fetch_optional(pool)
                .await?
            else {
                return Err(StoreError::NotFound(format!("sweep {sweep_id} does not exist: `lthctl ls` lists the sweeps")));
            };
            let Json(spec): Json<SweepSpec> = r.try_get("spec")?;
            let mut counts = JobCounts::default();
            for c in sqlx::query("SELECT state, count(*) AS n FROM jobs WHERE sweep_id = $1 GROUP BY state")
                .bind(sweep_id)
                .fetch_all(pool)
                .await?
            {
                let n = c.try_get::<i64, _>("n")? as u64;
                match c.try_get::<String, _>("state")?.as_str() {
                    "blocked" => counts.blocked = n,
                    "ready" => counts.ready = n,
                    "running" => counts.running = n,
                    "succeeded" => counts.succeeded = n,
                    "failed" => counts.failed = n,
                    _ => counts.cancelled = n,
                }
            }
            let mut metrics = Vec::new();
            for m in sqlx::query(
                "SELECT metric, count(*) AS n, CAST(COALESCE(sum(CASE WHEN state = 'succeeded' THEN 1 ELSE 0 END), 0) AS BIGINT) AS done \
                   FROM jobs WHERE sweep_id = $1 AND kind = 'level' GROUP BY metric ORDER BY metric",
            )
            .bind(sweep_id)
            .fetch_all(pool)
            .await?
            {
                metrics.push((m.try_get("metric")?, m.try_get::<i64, _>("n")? as u64, m.try_get::<i64, _>("done")? as u64));
            }
            let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM (SELECT DISTINCT trial_id, level FROM dead_units WHERE sweep_id = $1 AND dead_classes > 0) t")
                .bind(sweep_id)
                .fetch_one(pool)
                .await?;
            let diverged: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM trial_levels tl JOIN level_results lr ON lr.job_id = tl.result_job_id WHERE tl.sweep_id = $1 AND lr.diverged",
            )
            .bind(sweep_id)
            .fetch_one(pool)
            .await?;
            Ok(SweepInfo {
                id: r.try_get("id")?,
                name: r.try_get("name")?,
                state: r.try_get("state")?,
                spec,
                created_at: r.try_get("created_at")?,
                finished_at: r.try_get("finished_at")?,
                trials: r.try_get::<i64, _>("trials")? as u64,
                owner: r.try_get("owner")?,
                jobs: counts,
                metrics,
                tickets_with_dead_classes: dead as u64,
                diverged: diverged as u64,
            })
        })
    }

    pub async fn list_sweeps(&self, limit: u32) -> Result<Vec<SweepInfo>> {
        let limit = if limit == 0 { 100 } else { limit.min(10_000) } as i64;
        let ids: Vec<i64> = both!(self, |pool, d, DB| {
            sqlx::query_scalar("SELECT id FROM sweeps ORDER BY id DESC LIMIT $1").bind(limit).fetch_all(pool).await?
        });
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.get_sweep(id).await?);
        }
        Ok(out)
    }

    /// Stops new claims, re-queues the sweep's running jobs (their workers learn it from the next
    /// heartbeat) and keeps everything else. Pausing a paused sweep is a no-op.
    pub async fn pause_sweep(&self, sweep_id: i64) -> Result<()> {
        both!(self, |pool, d, DB| {
            let mut tx = pool.begin_write().await?;
            if !proceed(sweep_state!(tx, d, sweep_id), SweepOp::Pause, sweep_id)? {
                return Ok(());
            }
            sqlx::query("UPDATE sweeps SET state = 'paused' WHERE id = $1").bind(sweep_id).execute(&mut *tx).await?;
            sqlx::query("UPDATE jobs SET paused = true WHERE sweep_id = $1 AND state IN ('blocked', 'ready', 'running')")
                .bind(sweep_id)
                .execute(&mut *tx)
                .await?;
            stop_running_jobs!(tx, d, sweep_id, "ready", "sweep paused");
            sqlx::query("INSERT INTO events (sweep_id, kind) VALUES ($1, 'sweep')").bind(sweep_id).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Lets a paused sweep's jobs be claimed again.
    pub async fn resume_sweep(&self, sweep_id: i64) -> Result<()> {
        both!(self, |pool, d, DB| {
            let mut tx = pool.begin_write().await?;
            if !proceed(sweep_state!(tx, d, sweep_id), SweepOp::Resume, sweep_id)? {
                return Ok(());
            }
            sqlx::query("UPDATE sweeps SET state = 'running' WHERE id = $1").bind(sweep_id).execute(&mut *tx).await?;
            sqlx::query("UPDATE jobs SET paused = false WHERE sweep_id = $1 AND paused").bind(sweep_id).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO events (sweep_id, kind) VALUES ($1, 'sweep')").bind(sweep_id).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Cancels every unfinished job of the sweep; running ones are aborted through their workers'
    /// next heartbeat. Finished results stay. Cancelling a cancelled sweep is a no-op.
    pub async fn cancel_sweep(&self, sweep_id: i64) -> Result<()> {
        both!(self, |pool, d, DB| {
            let mut tx = pool.begin_write().await?;
            if !proceed(sweep_state!(tx, d, sweep_id), SweepOp::Cancel, sweep_id)? {
                return Ok(());
            }
            let now = d.now;
            sqlx::query(&format!("UPDATE sweeps SET state = 'cancelled', finished_at = {now} WHERE id = $1"))
                .bind(sweep_id)
                .execute(&mut *tx)
                .await?;
            stop_running_jobs!(tx, d, sweep_id, "cancelled", "sweep cancelled");
            sqlx::query(&format!(
                "UPDATE jobs SET state = 'cancelled', finished_at = {now} WHERE sweep_id = $1 AND state IN ('blocked', 'ready')"
            ))
            .bind(sweep_id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE trials SET state = 'cancelled' WHERE sweep_id = $1 AND state = 'running'")
                .bind(sweep_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO events (sweep_id, kind) VALUES ($1, 'sweep')").bind(sweep_id).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Re-queues the sweep's failed jobs (all, or those of one trial and its dense job) with
    /// fresh attempts: error counts start again at 0, the attempt number keeps counting (leases
    /// stay fenced). A job whose parent has succeeded is ready, the others wait for theirs. The
    /// trials of re-queued jobs and a finished sweep reopen. Returns how many jobs were re-queued.
    /// A cancelled sweep is refused; one with nothing failed is left as it is.
    pub async fn retry_sweep(&self, sweep_id: i64, trial_id: Option<i64>) -> Result<u64> {
        both!(self, |pool, d, DB| {
            let mut tx = pool.begin_write().await?;
            let state = sweep_state!(tx, d, sweep_id);
            proceed(state, SweepOp::Retry, sweep_id)?;
            if let Some(t) = trial_id {
                let found: Option<i64> = sqlx::query_scalar("SELECT id FROM trials WHERE id = $1 AND sweep_id = $2")
                    .bind(t)
                    .bind(sweep_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if found.is_none() {
                    return Err(StoreError::NotFound(format!(
                        "sweep {sweep_id} has no trial {t}: `lthctl status {sweep_id}` names the trials of failed jobs"
                    )));
                }
            }
            // A parent that is failed now is itself re-queued (or stays failed): never 'succeeded'
            // within this statement, so the CASE reads the same on both backends.
            let rows = sqlx::query(
                "UPDATE jobs SET state = CASE WHEN parent_job_id IS NULL                                  OR EXISTS (SELECT 1 FROM jobs p WHERE p.id = jobs.parent_job_id AND p.state = 'succeeded')                                  THEN 'ready' ELSE 'blocked' END,                         error_count = 0, last_error = NULL, finished_at = NULL, worker_id = NULL, lease_expires_at = NULL,                         progress = 0, eta_seconds = NULL, paused = $3                   WHERE sweep_id = $1 AND state = 'failed'                     AND ($2 IS NULL OR trial_id = $2 OR id = (SELECT t.dense_job_id FROM trials t WHERE t.id = $2))                  RETURNING id, state, attempt",
            )
            .bind(sweep_id)
            .bind(trial_id)
            .bind(state == SweepState::Paused)
            .fetch_all(&mut *tx)
            .await?;
            if rows.is_empty() {
                tx.rollback().await?;
                return Ok(0);
            }
            for r in &rows {
                let (id, st, attempt): (i64, String, i32) = (r.try_get("id")?, r.try_get("state")?, r.try_get("attempt")?);
                // A fresh start: the workers it failed on may run it again.
                sqlx::query("DELETE FROM job_exclusions WHERE job_id = $1").bind(id).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO events (sweep_id, job_id, kind, job_state, attempt, detail) VALUES ($1, $2, 'state', $3, $4, $5)")
                    .bind(sweep_id)
                    .bind(id)
                    .bind(&st)
                    .bind(attempt)
                    .bind(Json(serde_json::json!({ "retried": true })))
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "UPDATE trials SET state = 'running' WHERE sweep_id = $1 AND state = 'failed'                    AND EXISTS (SELECT 1 FROM jobs j WHERE j.trial_id = trials.id AND j.state IN ('blocked', 'ready'))",
            )
            .bind(sweep_id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE sweeps SET state = 'running', finished_at = NULL WHERE id = $1 AND state IN ('failed', 'succeeded')")
                .bind(sweep_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO events (sweep_id, kind, detail) VALUES ($1, 'sweep', $2)")
                .bind(sweep_id)
                .bind(Json(serde_json::json!({ "retried_jobs": rows.len() })))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(rows.len() as u64)
        })
    }

    pub async fn list_jobs(&self, sweep_id: i64, state: Option<&str>) -> Result<Vec<JobRow>> {
        self.list_jobs_page(sweep_id, state, 0, i64::MAX).await
    }

    /// One page of [`Store::list_jobs`]: up to `limit` jobs with ids above `after_id`, by id.
    pub async fn list_jobs_page(&self, sweep_id: i64, state: Option<&str>, after_id: i64, limit: i64) -> Result<Vec<JobRow>> {
        both!(self, |pool, d, DB| {
            let rows = sqlx::query(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE sweep_id = $1 AND ($2 IS NULL OR state = $2) AND id > $3 ORDER BY id LIMIT $4"
            ))
            .bind(sweep_id)
            .bind(state)
            .bind(after_id)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push(job_from_row!(r));
            }
            Ok(out)
        })
    }

    pub async fn get_job(&self, job_id: i64) -> Result<JobRow> {
        both!(self, |pool, d, DB| {
            let Some(r) = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1")).bind(job_id).fetch_optional(pool).await?
            else {
                return Err(StoreError::NotFound(format!("job {job_id} does not exist")));
            };
            Ok(job_from_row!(r))
        })
    }

    // -----------------------------------------------------------------------------------------
    // Workers
    // -----------------------------------------------------------------------------------------

    pub async fn register_worker(&self, w: &WorkerRegistration) -> Result<()> {
        both!(self, |pool, d, DB| {
            let now = d.now;
            sqlx::query(&format!(
                "INSERT INTO workers (worker_id, host, gpus, cpus, slots, libtorch_version, cuda_version) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (worker_id) DO UPDATE SET host = excluded.host, gpus = excluded.gpus, cpus = excluded.cpus, \
                   slots = excluded.slots, libtorch_version = excluded.libtorch_version, cuda_version = excluded.cuda_version, \
                   last_seen = {now}"
            ))
            .bind(&w.worker_id)
            .bind(&w.host)
            .bind(Json(&w.gpus))
            .bind(w.cpus as i32)
            .bind(w.slots as i32)
            .bind(&w.libtorch_version)
            .bind(&w.cuda_version)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Workers, with `alive` = seen within `alive_within`.
    pub async fn list_workers(&self, alive_within: Duration) -> Result<Vec<WorkerRow>> {
        self.list_workers_page(alive_within, true, "", i64::MAX).await
    }

    /// One page of [`Store::list_workers`]: up to `limit` workers whose ids sort after `after`;
    /// without `all`, only the alive ones (a worker not seen within `alive_within` is lost).
    pub async fn list_workers_page(&self, alive_within: Duration, all: bool, after: &str, limit: i64) -> Result<Vec<WorkerRow>> {
        both!(self, |pool, d, DB| {
            let cutoff = d.now_plus("$1");
            let rows = sqlx::query(&format!(
                "SELECT w.worker_id, w.host, w.gpus, w.cpus, w.slots, w.libtorch_version, w.cuda_version, w.last_seen, w.unhealthy, \
                        (SELECT count(*) FROM jobs j WHERE j.state = 'running' AND j.worker_id = w.worker_id) AS running, \
                        CASE WHEN w.last_seen >= {cutoff} THEN 1 ELSE 0 END AS alive \
                   FROM workers w WHERE w.worker_id > $2 AND ($4 OR w.last_seen >= {cutoff}) ORDER BY w.worker_id LIMIT $3"
            ))
            .bind(-alive_within.as_secs_f64())
            .bind(after)
            .bind(limit)
            .bind(all)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::new();
            for r in rows {
                let Json(gpus): Json<Vec<GpuRow>> = r.try_get("gpus")?;
                out.push(WorkerRow {
                    reg: WorkerRegistration {
                        worker_id: r.try_get("worker_id")?,
                        host: r.try_get("host")?,
                        gpus,
                        cpus: r.try_get::<i32, _>("cpus")? as u32,
                        slots: r.try_get::<i32, _>("slots")? as u32,
                        libtorch_version: r.try_get("libtorch_version")?,
                        cuda_version: r.try_get("cuda_version")?,
                    },
                    running_jobs: r.try_get::<i64, _>("running")? as u64,
                    last_seen: r.try_get("last_seen")?,
                    alive: r.try_get::<i32, _>("alive")? == 1,
                    unhealthy: r.try_get("unhealthy")?,
                });
            }
            Ok(out)
        })
    }

    // -----------------------------------------------------------------------------------------
    // Leases
    // -----------------------------------------------------------------------------------------

    /// Hands out up to `n` ready jobs of running sweeps (highest priority, then oldest) under a
    /// lease of `lease` from the database clock. No job is ever handed to two claimers: Postgres
    /// skips rows another claimer has locked, SQLite runs claims one at a time.
    pub async fn claim_jobs(&self, worker_id: &str, n: u32, lease: Duration) -> Result<Vec<ClaimedJob>> {
        let req = ClaimRequest { worker_id: worker_id.to_string(), n, lease };
        self.claim_jobs_batch(std::slice::from_ref(&req)).await?.pop().expect("one outcome per request")
    }

    /// Extends the leases the worker still holds and says which of its jobs to abort (and why).
    pub async fn heartbeat(&self, worker_id: &str, leases: &[Lease], lease: Duration) -> Result<Vec<(Lease, AbortReason)>> {
        self.heartbeat_with_health(worker_id, leases, lease, None).await
    }

    /// [`Store::heartbeat`], recording the worker's health as it reports it: `unhealthy` is why
    /// it stopped claiming, None while it is healthy.
    pub async fn heartbeat_with_health(&self, worker_id: &str, leases: &[Lease], lease: Duration, unhealthy: Option<&str>) -> Result<Vec<(Lease, AbortReason)>> {
        let secs = lease.as_secs_f64();
        both!(self, |pool, d, DB| {
            let now = d.now;
            let until = d.now_plus("$4");
            let mut tx = pool.begin_write_for("heartbeat").await?;
            let seen = sqlx::query(&format!("UPDATE workers SET last_seen = {now}, unhealthy = $2 WHERE worker_id = $1"))
                .bind(worker_id)
                .bind(unhealthy)
                .execute(&mut *tx)
                .await?;
            if seen.rows_affected() == 0 {
                return Err(unknown_worker(worker_id));
            }
            let mut aborts = Vec::new();
            for l in leases {
                let extended = sqlx::query(&format!(
                    "UPDATE jobs SET lease_expires_at = {until} \
                      WHERE id = $1 AND attempt = $2 AND state = 'running' AND worker_id = $3"
                ))
                .bind(l.job_id)
                .bind(l.attempt)
                .bind(worker_id)
                .bind(secs)
                .execute(&mut *tx)
                .await?;
                if extended.rows_affected() == 1 {
                    continue;
                }
                let why = sqlx::query("SELECT j.state AS job_state, s.state AS sweep_state FROM jobs j JOIN sweeps s ON s.id = j.sweep_id WHERE j.id = $1")
                    .bind(l.job_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let reason = match why {
                    Some(r) => abort_reason(r.try_get("job_state")?, r.try_get("sweep_state")?),
                    None => AbortReason::LeaseLost,
                };
                aborts.push((*l, reason));
            }
            tx.commit().await?;
            Ok(aborts)
        })
    }

    /// The kind ("dense", "level") of the job while `lease` is its current running attempt.
    pub async fn running_job_kind(&self, lease: Lease) -> Result<Option<String>> {
        both!(self, |pool, d, DB| {
            Ok(sqlx::query_scalar("SELECT kind FROM jobs WHERE id = $1 AND attempt = $2 AND state = 'running'")
                .bind(lease.job_id)
                .bind(lease.attempt)
                .fetch_optional(pool)
                .await?)
        })
    }

    /// True while `lease` is the job's current running attempt.
    pub async fn lease_is_current(&self, lease: Lease) -> Result<bool> {
        both!(self, |pool, d, DB| {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE id = $1 AND attempt = $2 AND state = 'running'")
                .bind(lease.job_id)
                .bind(lease.attempt)
                .fetch_one(pool)
                .await?;
            Ok(n == 1)
        })
    }

    pub async fn report_progress(&self, lease: Lease, p: &ProgressInput) -> Result<()> {
        let fraction = if p.total_iterations > 0 { (p.iteration as f64 / p.total_iterations as f64).clamp(0.0, 1.0) } else { 0.0 };
        let detail = serde_json::json!({
            "iteration": p.iteration, "total_iterations": p.total_iterations, "epoch": p.epoch,
            "train_loss": p.train_loss, "test_accuracy": p.test_accuracy, "images_per_second": p.images_per_second,
        });
        both!(self, |pool, d, DB| {
            let elapsed = d.seconds_since("started_at");
            let mut tx = pool.begin_write().await?;
            let row = sqlx::query(&format!(
                "UPDATE jobs SET progress = $3, \
                        eta_seconds = CASE WHEN $3 > 0 THEN {elapsed} * (1.0 - $3) / $3 ELSE NULL END \
                  WHERE id = $1 AND attempt = $2 AND state = 'running' RETURNING sweep_id"
            ))
            .bind(lease.job_id)
            .bind(lease.attempt)
            .bind(fraction)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { return Err(stale(lease)) };
            let sweep_id: i64 = row.try_get("sweep_id")?;
            sqlx::query(
                "INSERT INTO events (sweep_id, job_id, kind, job_state, attempt, progress, detail) VALUES ($1, $2, 'progress', 'running', $3, $4, $5)",
            )
            .bind(sweep_id)
            .bind(lease.job_id)
            .bind(lease.attempt)
            .bind(fraction)
            .bind(Json(&detail))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Records the job's result and masks, marks it succeeded, unblocks its children and closes
    /// its trial (last level) and sweep (last job). Fenced: a stale lease changes nothing.
    /// Does not ask for the attempt's uploads; the gRPC service completes through
    /// [`Completion::require_uploads`], which does.
    pub async fn complete_job(&self, lease: Lease, result: &ResultInput) -> Result<()> {
        let item = Completion { lease, result: result.clone(), require_uploads: false };
        self.complete_jobs(std::slice::from_ref(&item)).await?.pop().expect("one outcome per completion")
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
        both!(self, |pool, d, DB| {
            let now = d.now;
            let lock = d.for_update();
            let mut tx = pool.begin_write().await?;
            let Some(row) = sqlx::query(&format!(
                "SELECT worker_id, error_count, max_attempts, (SELECT count(*) FROM job_exclusions x WHERE x.job_id = jobs.id) AS excluded \
                   FROM jobs WHERE id = $1 AND attempt = $2 AND state = 'running'{lock}"
            ))
            .bind(lease.job_id)
            .bind(lease.attempt)
            .fetch_optional(&mut *tx)
            .await?
            else {
                return Err(stale(lease));
            };
            let worker: Option<String> = row.try_get("worker_id")?;
            let (errors, max_attempts, excluded): (i32, i32, i64) = (row.try_get("error_count")?, row.try_get("max_attempts")?, row.try_get("excluded")?);
            let rule = FailRule { errors, max_attempts, excluded };
            let (counts, mut retry) = rule.apply(how);
            let mut error = error.to_string();
            if how.node_local && retry {
                let cutoff = d.now_plus("$3");
                let others: i64 = sqlx::query_scalar(&format!(
                    "SELECT count(*) FROM workers w WHERE w.worker_id <> $1 AND w.last_seen >= {cutoff} AND w.unhealthy IS NULL \
                       AND NOT EXISTS (SELECT 1 FROM job_exclusions x WHERE x.job_id = $2 AND x.worker_id = w.worker_id)"
                ))
                .bind(worker.as_deref().unwrap_or_default())
                .bind(lease.job_id)
                .bind(-alive_within.as_secs_f64())
                .fetch_one(&mut *tx)
                .await?;
                if others == 0 {
                    retry = false;
                    error.push_str("\n(no other live, healthy worker may take the job: it failed here for good; `lthctl retry` it once a worker can run it)");
                }
            }
            let error = error.as_str();
            let state = if retry { "ready" } else { "failed" };
            sqlx::query(&format!(
                "UPDATE jobs SET error_count = error_count + $3, last_error = $4, worker_id = NULL, lease_expires_at = NULL, \
                        state = $5, finished_at = CASE WHEN $5 = 'failed' THEN {now} ELSE NULL END \
                  WHERE id = $1 AND attempt = $2"
            ))
            .bind(lease.job_id)
            .bind(lease.attempt)
            .bind(i32::from(counts))
            .bind(error)
            .bind(state)
            .execute(&mut *tx)
            .await?;
            if let (true, Some(w)) = (how.node_local, worker.as_deref()) {
                sqlx::query("INSERT INTO job_exclusions (job_id, worker_id, error) VALUES ($1, $2, $3) ON CONFLICT (job_id, worker_id) DO NOTHING")
                    .bind(lease.job_id)
                    .bind(w)
                    .bind(error)
                    .execute(&mut *tx)
                    .await?;
            }
            let sweep_id: i64 = sqlx::query_scalar("SELECT sweep_id FROM jobs WHERE id = $1").bind(lease.job_id).fetch_one(&mut *tx).await?;
            sqlx::query(&format!(
                "UPDATE job_attempts SET outcome = 'failed', finished_at = {now}, error = $3 WHERE job_id = $1 AND attempt = $2"
            ))
            .bind(lease.job_id)
            .bind(lease.attempt)
            .bind(error)
            .execute(&mut *tx)
            .await?;
            let detail = if how.node_local {
                serde_json::json!({ "error": error, "node_local": true, "worker": worker, "counted": counts })
            } else {
                serde_json::json!({ "error": error })
            };
            sqlx::query("INSERT INTO events (sweep_id, job_id, kind, job_state, attempt, detail) VALUES ($1, $2, 'state', $3, $4, $5)")
                .bind(sweep_id)
                .bind(lease.job_id)
                .bind(state)
                .bind(lease.attempt)
                .bind(Json(detail))
                .execute(&mut *tx)
                .await?;
            if state == "failed" {
                fail_descendants!(tx, d, lease.job_id);
                finalize_sweeps!(tx, d, Some(sweep_id));
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Gives a running job back on the worker's request (shutdown): the job is ready again at
    /// once, the attempt is closed as `aborted` with the reason, and neither the job's error
    /// count nor its lost count grows, so a worker restart never uses up a job's attempts.
    pub async fn release_job(&self, lease: Lease, reason: &str) -> Result<()> {
        let error = format!("released by the worker: {reason}");
        both!(self, |pool, d, DB| {
            let now = d.now;
            let mut tx = pool.begin_write().await?;
            let row = sqlx::query(
                "UPDATE jobs SET state = 'ready', worker_id = NULL, lease_expires_at = NULL \
                  WHERE id = $1 AND attempt = $2 AND state = 'running' RETURNING sweep_id",
            )
            .bind(lease.job_id)
            .bind(lease.attempt)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { return Err(stale(lease)) };
            let sweep_id: i64 = row.try_get("sweep_id")?;
            sqlx::query(&format!(
                "UPDATE job_attempts SET outcome = 'aborted', finished_at = {now}, error = $3 WHERE job_id = $1 AND attempt = $2"
            ))
            .bind(lease.job_id)
            .bind(lease.attempt)
            .bind(&error)
            .execute(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO events (sweep_id, job_id, kind, job_state, attempt, detail) VALUES ($1, $2, 'state', 'ready', $3, $4)")
                .bind(sweep_id)
                .bind(lease.job_id)
                .bind(lease.attempt)
                .bind(Json(serde_json::json!({ "released": reason })))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Re-queues jobs whose lease expired (counted as lost, not as failed) and closes sweeps with
    /// no open jobs left (a backstop for completions that raced each other).
    pub async fn reap(&self) -> Result<ReapReport> {
        both!(self, |pool, d, DB| {
            let now = d.now;
            let mut tx = pool.begin_write().await?;
            let rows = sqlx::query(&format!(
                "UPDATE jobs SET state = 'ready', lost_count = lost_count + 1, worker_id = NULL, lease_expires_at = NULL \
                  WHERE state = 'running' AND lease_expires_at < {now} RETURNING id, attempt, sweep_id"
            ))
            .fetch_all(&mut *tx)
            .await?;
            let mut lost = Vec::with_capacity(rows.len());
            for r in &rows {
                let l = Lease { job_id: r.try_get("id")?, attempt: r.try_get("attempt")? };
                let sweep_id: i64 = r.try_get("sweep_id")?;
                sqlx::query(&format!(
                    "UPDATE job_attempts SET outcome = 'lost', finished_at = {now}, error = 'lease expired' WHERE job_id = $1 AND attempt = $2"
                ))
                .bind(l.job_id)
                .bind(l.attempt)
                .execute(&mut *tx)
                .await?;
                sqlx::query("INSERT INTO events (sweep_id, job_id, kind, job_state, attempt) VALUES ($1, $2, 'state', 'ready', $3)")
                    .bind(sweep_id)
                    .bind(l.job_id)
                    .bind(l.attempt)
                    .execute(&mut *tx)
                    .await?;
                lost.push(l);
            }
            // A trial closes when its last open job completes. Two completion batches that finish
            // a trial's last two jobs concurrently (a control beside a later level) each see the
            // other's job still running; close such trials here.
            sqlx::query(
                "UPDATE trials SET state = 'succeeded' WHERE state = 'running' \
                   AND EXISTS (SELECT 1 FROM jobs j WHERE j.trial_id = trials.id) \
                   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.trial_id = trials.id AND j.state <> 'succeeded') \
                   AND EXISTS (SELECT 1 FROM jobs j WHERE j.id = trials.dense_job_id AND j.state = 'succeeded')",
            )
            .execute(&mut *tx)
            .await?;
            let finished_sweeps = finalize_sweeps!(tx, d, None::<i64>);
            tx.commit().await?;
            let unblocked_after_repair = self.unblock_repaired().await?;
            Ok(ReapReport { lost, finished_sweeps, unblocked_after_repair })
        })
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
        let Store::Postgres(pool) = self else { return Ok(None) };
        let row = sqlx::query("SELECT n_dead_tup, n_live_tup FROM pg_stat_user_tables WHERE relid = 'jobs'::regclass")
            .fetch_optional(pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let (dead, live): (i64, i64) = (row.try_get("n_dead_tup")?, row.try_get("n_live_tup")?);
        if dead < VACUUM_MIN_DEAD + live / 50 {
            return Ok(None);
        }
        let t = std::time::Instant::now();
        sqlx::query("VACUUM (SKIP_LOCKED) jobs").execute(pool).await?;
        Ok(Some(VacuumReport { dead_rows: dead, took: t.elapsed() }))
    }

    // -----------------------------------------------------------------------------------------
    // Artifacts
    // -----------------------------------------------------------------------------------------

    /// Records an uploaded file, fenced by the lease. A later attempt's file of the same name
    /// replaces an earlier attempt's.
    pub async fn record_artifact(&self, lease: Lease, name: &str, uri: &str, sha256: &str, bytes: u64) -> Result<()> {
        let rec = ArtifactRecord { lease, name: name.into(), uri: uri.into(), sha256: sha256.into(), bytes };
        self.record_artifacts(std::slice::from_ref(&rec)).await?.pop().expect("one outcome per record")
    }

    /// The artifact `name` of `job_id`, following `reused_from` to the job that holds the file.
    pub async fn find_artifact(&self, job_id: i64, name: &str) -> Result<ArtifactRow> {
        both!(self, |pool, d, DB| {
            let row = sqlx::query(
                "SELECT a.job_id, a.name, a.attempt, a.uri, a.sha256, a.bytes FROM jobs x \
                   JOIN artifacts a ON a.job_id = COALESCE(x.reused_from, x.id) WHERE x.id = $1 AND a.name = $2",
            )
            .bind(job_id)
            .bind(name)
            .fetch_optional(pool)
            .await?;
            match row {
                Some(r) => Ok(artifact_from_row!(r)),
                None => Err(StoreError::NotFound(format!("job {job_id} has no artifact named {name:?}"))),
            }
        })
    }

    // -----------------------------------------------------------------------------------------
    // Uploaded inputs (models, datasets), content-addressed
    // -----------------------------------------------------------------------------------------

    /// Records an uploaded input. Returns false (and changes nothing) when the digest was already
    /// recorded: the same bytes uploaded twice are one input.
    pub async fn record_input(&self, input: &InputRow) -> Result<bool> {
        both!(self, |pool, d, DB| {
            let done = sqlx::query(
                "INSERT INTO inputs (sha256, kind, name, bytes, uri, owner) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sha256) DO NOTHING",
            )
            .bind(&input.sha256)
            .bind(&input.kind)
            .bind(&input.name)
            .bind(input.bytes)
            .bind(&input.uri)
            .bind(&input.owner)
            .execute(pool)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// The input with this digest, if uploaded.
    pub async fn find_input(&self, sha256: &str) -> Result<Option<InputRow>> {
        both!(self, |pool, d, DB| {
            let row = sqlx::query("SELECT sha256, kind, name, bytes, uri, owner, created_at FROM inputs WHERE sha256 = $1")
                .bind(sha256)
                .fetch_optional(pool)
                .await?;
            Ok(match row {
                Some(r) => Some(input_from_row!(r)),
                None => None,
            })
        })
    }

    /// Every uploaded input, newest first.
    pub async fn list_inputs(&self) -> Result<Vec<InputRow>> {
        both!(self, |pool, d, DB| {
            let rows = sqlx::query("SELECT sha256, kind, name, bytes, uri, owner, created_at FROM inputs ORDER BY created_at DESC, sha256")
                .fetch_all(pool)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push(input_from_row!(r));
            }
            Ok(out)
        })
    }

    // -----------------------------------------------------------------------------------------
    // Events and results
    // -----------------------------------------------------------------------------------------

    pub async fn events_after(&self, sweep_id: i64, after_event_id: i64, limit: i64) -> Result<Vec<EventRow>> {
        both!(self, |pool, d, DB| {
            let rows = sqlx::query(
                "SELECT e.id AS event_id, e.at, e.kind AS event_kind, e.job_state, e.attempt AS event_attempt, e.progress AS event_progress, \
                        j.id, j.sweep_id, j.trial_id, j.kind, j.seed, j.metric, j.rate, j.level, j.parent_job_id, j.dense_job_id, \
                        j.state, j.attempt, j.worker_id, j.error_count, j.lost_count, j.last_error, j.content_hash, j.reused_from, \
                        j.progress, j.eta_seconds, j.lease_expires_at, j.control \
                   FROM events e LEFT JOIN jobs j ON j.id = e.job_id \
                  WHERE e.sweep_id = $1 AND e.id > $2 ORDER BY e.id LIMIT $3",
            )
            .bind(sweep_id)
            .bind(after_event_id)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let job_id: Option<i64> = r.try_get("id")?;
                let job = match job_id {
                    None => None,
                    Some(_) => {
                        let mut j = job_from_row!(r);
                        if let Some(s) = r.try_get::<Option<String>, _>("job_state")? {
                            j.state = s;
                        }
                        if let Some(a) = r.try_get::<Option<i32>, _>("event_attempt")? {
                            j.attempt = a;
                        }
                        if let Some(p) = r.try_get::<Option<f64>, _>("event_progress")? {
                            j.progress = p;
                        }
                        Some(j)
                    }
                };
                out.push(EventRow { id: r.try_get("event_id")?, at: r.try_get("at")?, kind: r.try_get("event_kind")?, job });
            }
            Ok(out)
        })
    }

    /// The highest event id of a sweep (0 when none).
    pub async fn last_event_id(&self, sweep_id: i64) -> Result<i64> {
        both!(self, |pool, d, DB| {
            let v: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM events WHERE sweep_id = $1").bind(sweep_id).fetch_one(pool).await?;
            Ok(v.unwrap_or(0))
        })
    }

    /// The accuracy_vs_sparsity view of one sweep, as SQL users see it, ordered by metric, rate,
    /// level: the tickets of constant-rate trials (clients aggregate controls and schedules from
    /// the per-seed rows, which carry both).
    pub async fn accuracy(&self, sweep_id: i64) -> Result<Vec<AccuracyRow>> {
        both!(self, |pool, d, DB| {
            let rows = sqlx::query(
                "SELECT metric, rate, level, sparsity, mean_accuracy, std_accuracy, min_accuracy, max_accuracy, seeds \
                   FROM accuracy_vs_sparsity WHERE sweep_id = $1 AND control IS NULL AND schedule IS NULL ORDER BY metric, rate, level",
            )
            .bind(sweep_id)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push(AccuracyRow {
                    metric: r.try_get("metric")?,
                    rate: r.try_get("rate")?,
                    level: r.try_get("level")?,
                    sparsity: r.try_get("sparsity")?,
                    mean_accuracy: r.try_get("mean_accuracy")?,
                    std_accuracy: r.try_get("std_accuracy")?,
                    min_accuracy: r.try_get("min_accuracy")?,
                    max_accuracy: r.try_get("max_accuracy")?,
                    seeds: r.try_get("seeds")?,
                });
            }
            Ok(out)
        })
    }

    /// One row per finished (trial, level), level 0 included for every trial, with per-layer
    /// kept/total (no mask bits).
    pub async fn results(&self, sweep_id: i64) -> Result<Vec<ResultRow>> {
        both!(self, |pool, d, DB| {
            let rows = sqlx::query(
                "SELECT metric, rate, seed, level, job_id, result_job_id, sparsity, test_accuracy, test_loss, train_loss, \
                        epochs, wall_seconds, iterations, control, schedule, \
                        (SELECT lr.diverged FROM level_results lr WHERE lr.job_id = trial_results.result_job_id) AS diverged \
                   FROM trial_results WHERE sweep_id = $1 ORDER BY metric, rate, schedule, seed, level, control",
            )
            .bind(sweep_id)
            .fetch_all(pool)
            .await?;
            let layer_rows = sqlx::query(
                "SELECT m.job_id, m.layer, m.kept, m.total, m.collapsed, m.weight_norm, \
                        m.outputs, m.dead_outputs, m.inputs, m.dead_inputs, m.output_layer FROM masks m \
                  WHERE m.job_id IN (SELECT result_job_id FROM trial_levels WHERE sweep_id = $1) ORDER BY m.job_id, m.ordinal",
            )
            .bind(sweep_id)
            .fetch_all(pool)
            .await?;
            let mut layers: HashMap<i64, Vec<LayerStatsRow>> = HashMap::new();
            for r in layer_rows {
                layers.entry(r.try_get("job_id")?).or_default().push(LayerStatsRow {
                    layer: r.try_get("layer")?,
                    kept: r.try_get("kept")?,
                    total: r.try_get("total")?,
                    collapsed: r.try_get("collapsed")?,
                    weight_norm: r.try_get("weight_norm")?,
                    units: match r.try_get::<Option<i64>, _>("outputs")? {
                        None => None,
                        Some(outputs) => Some(UnitStats {
                            outputs: outputs as u64,
                            dead_outputs: r.try_get::<Option<i64>, _>("dead_outputs")?.unwrap_or(0) as u64,
                            inputs: r.try_get::<Option<i64>, _>("inputs")?.unwrap_or(0) as u64,
                            dead_inputs: r.try_get::<Option<i64>, _>("dead_inputs")?.unwrap_or(0) as u64,
                            output_layer: r.try_get::<Option<bool>, _>("output_layer")?.unwrap_or(false),
                        }),
                    },
                });
            }
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let result_job_id: i64 = r.try_get("result_job_id")?;
                out.push(ResultRow {
                    metric: r.try_get("metric")?,
                    rate: r.try_get("rate")?,
                    seed: r.try_get("seed")?,
                    level: r.try_get("level")?,
                    job_id: r.try_get("job_id")?,
                    result_job_id,
                    sparsity: r.try_get("sparsity")?,
                    test_accuracy: r.try_get("test_accuracy")?,
                    test_loss: r.try_get("test_loss")?,
                    train_loss: r.try_get("train_loss")?,
                    epochs: r.try_get("epochs")?,
                    wall_seconds: r.try_get("wall_seconds")?,
                    iterations: r.try_get("iterations")?,
                    layers: layers.get(&result_job_id).cloned().unwrap_or_default(),
                    control: r.try_get("control")?,
                    schedule: schedule_from_db(r.try_get("schedule")?)?,
                    diverged: r.try_get::<Option<bool>, _>("diverged")?.unwrap_or(false),
                });
            }
            Ok(out)
        })
    }
}

/// A trial's `schedule` column (a JSON array of rates) as numbers.
fn schedule_from_db(text: Option<String>) -> Result<Option<Vec<f64>>> {
    text.map(|t| serde_json::from_str::<Vec<f64>>(&t).map_err(|e| StoreError::Db(sqlx::Error::Decode(format!("trials.schedule {t:?}: {e}").into()))))
        .transpose()
}

/// A trial's schedule as stored in `trials.schedule`; None for a constant rate.
fn schedule_to_db(schedule: &Option<Vec<f64>>) -> Option<String> {
    schedule.as_ref().map(|v| serde_json::to_string(v).expect("rates serialise"))
}

/// Applies the state table (`SweepState::allows`): Ok(true) to go on, Ok(false) when the sweep is
/// already where `op` would take it, the refusal otherwise.
fn proceed(state: SweepState, op: SweepOp, sweep_id: i64) -> Result<bool> {
    match state.allows(op, sweep_id) {
        Verdict::Proceed => Ok(true),
        Verdict::AlreadyDone => Ok(false),
        Verdict::Refused(why) => Err(StoreError::FailedPrecondition(why)),
    }
}

/// The state a job is created in (`JobState::initial`), as stored.
fn initial_job_state(reused: bool, parent_done: bool) -> &'static str {
    JobState::initial(reused, parent_done).as_str()
}

fn unknown_worker(worker_id: &str) -> StoreError {
    StoreError::UnknownWorker(format!("worker {worker_id:?} is not registered: call RegisterWorker first"))
}

/// `NULL` for every job column, typed for Postgres, for the claim query's sentinel row.
const NULL_JOB_COLUMNS_PG: &str = "NULL::bigint, NULL::bigint, NULL::bigint, NULL::text, NULL::bigint, NULL::text, NULL::double precision, \
     NULL::integer, NULL::bigint, NULL::bigint, NULL::text, NULL::integer, NULL::text, NULL::integer, NULL::integer, NULL::text, \
     NULL::text, NULL::bigint, NULL::double precision, NULL::double precision, NULL::timestamptz, NULL::text";

/// The sweep's state, locking the row on Postgres; NotFound when it does not exist.
macro_rules! sweep_state {
    ($tx:ident, $d:ident, $sweep_id:expr) => {{
        let lock = $d.for_update();
        let s: Option<SweepState> = sqlx::query_scalar(&format!("SELECT state FROM sweeps WHERE id = $1{lock}"))
            .bind($sweep_id)
            .fetch_optional(&mut *$tx)
            .await?;
        match s {
            Some(s) => s,
            None => return Err(StoreError::NotFound(format!("sweep {} does not exist: `lthctl ls` lists the sweeps", $sweep_id))),
        }
    }};
}
use sweep_state;

/// Ends the running attempts of a sweep's jobs (paused: back to ready; cancelled: cancelled). The
/// workers are told on their next heartbeat; their later writes are stale.
macro_rules! stop_running_jobs {
    ($tx:ident, $d:ident, $sweep_id:expr, $new_state:literal, $why:literal) => {{
        let now = $d.now;
        let rows = sqlx::query(&format!(
            "UPDATE jobs SET state = '{}', worker_id = NULL, lease_expires_at = NULL{} \
              WHERE sweep_id = $1 AND state = 'running' RETURNING id, attempt",
            $new_state,
            if $new_state == "cancelled" { format!(", finished_at = {now}") } else { String::new() }
        ))
        .bind($sweep_id)
        .fetch_all(&mut *$tx)
        .await?;
        for r in &rows {
            let id: i64 = r.try_get("id")?;
            let attempt: i32 = r.try_get("attempt")?;
            sqlx::query(&format!(
                "UPDATE job_attempts SET outcome = 'aborted', finished_at = {now}, error = '{}' WHERE job_id = $1 AND attempt = $2",
                $why
            ))
            .bind(id)
            .bind(attempt)
            .execute(&mut *$tx)
            .await?;
            sqlx::query("INSERT INTO events (sweep_id, job_id, kind, job_state, attempt) VALUES ($1, $2, 'state', $3, $4)")
                .bind($sweep_id)
                .bind(id)
                .bind($new_state)
                .bind(attempt)
                .execute(&mut *$tx)
                .await?;
        }
    }};
}
use stop_running_jobs;

/// Fails every job downstream of `$job_id` that has not run, and the trials they (and it) belong to.
macro_rules! fail_descendants {
    ($tx:ident, $d:ident, $job_id:expr) => {{
        let now = $d.now;
        const DESCENDANTS: &str = "WITH RECURSIVE d(id) AS (SELECT id FROM jobs WHERE parent_job_id = $1 \
             UNION ALL SELECT j.id FROM jobs j JOIN d ON j.parent_job_id = d.id) ";
        sqlx::query(&format!(
            "{DESCENDANTS} UPDATE trials SET state = 'failed' WHERE state = 'running' AND id IN \
             (SELECT trial_id FROM jobs WHERE id = $1 AND trial_id IS NOT NULL \
              UNION SELECT trial_id FROM jobs WHERE id IN (SELECT id FROM d) AND trial_id IS NOT NULL)"
        ))
        .bind($job_id)
        .execute(&mut *$tx)
        .await?;
        sqlx::query(&format!(
            "{DESCENDANTS} UPDATE jobs SET state = 'failed', finished_at = {now}, last_error = 'not run: an earlier job of its chain (job ' || $2 || ') failed' \
              WHERE id IN (SELECT id FROM d) AND state IN ('blocked', 'ready')"
        ))
        .bind($job_id)
        .bind($job_id.to_string())
        .execute(&mut *$tx)
        .await?;
    }};
}
use fail_descendants;

/// A condition on `sweeps`: the sweep has no open job left, apart from jobs that `skip` (a
/// further condition on `j`, or empty) leaves out. It looks for the open job with the highest id:
/// jobs are claimed in id order, so that one stays open the longest, and a backward scan of
/// `jobs_open_by_sweep` finds it at once, instead of first stepping over the index entries of
/// every job finished since the last vacuum (which a plain NOT EXISTS, or a seq scan, would).
fn no_open_job_left(skip: &str) -> String {
    format!(
        "NOT EXISTS (SELECT j.id FROM jobs j WHERE j.sweep_id = sweeps.id AND j.state IN ('blocked', 'ready', 'running'){skip} \
         ORDER BY j.id DESC LIMIT 1)"
    )
}

/// A closing sweep's state: failed when one of its trials failed, else succeeded.
const FINAL_SWEEP_STATE: &str =
    "CASE WHEN EXISTS (SELECT 1 FROM trials t WHERE t.sweep_id = sweeps.id AND t.state = 'failed') THEN 'failed' ELSE 'succeeded' END";

/// Closes running sweeps (all, or one) that have no open job left: failed when a trial failed,
/// else succeeded. Evaluates to the ids of the sweeps it closed.
macro_rules! finalize_sweeps {
    ($tx:ident, $d:ident, $sweep_id:expr) => {{
        let now = $d.now;
        let only: Option<i64> = $sweep_id;
        let rows = sqlx::query(&format!(
            "UPDATE sweeps SET finished_at = {now}, state = {FINAL_SWEEP_STATE} \
              WHERE state = 'running' AND ($1 IS NULL OR id = $1) AND {no_open} \
             RETURNING id",
            no_open = no_open_job_left("")
        ))
        .bind(only)
        .fetch_all(&mut *$tx)
        .await?;
        let mut ids: Vec<i64> = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: i64 = r.try_get("id")?;
            sqlx::query("INSERT INTO events (sweep_id, kind) VALUES ($1, 'sweep')").bind(id).execute(&mut *$tx).await?;
            ids.push(id);
        }
        ids
    }};
}
use finalize_sweeps;

macro_rules! artifact_from_row {
    ($r:expr) => {{
        let r = &$r;
        ArtifactRow {
            job_id: r.try_get("job_id")?,
            name: r.try_get("name")?,
            attempt: r.try_get("attempt")?,
            uri: r.try_get("uri")?,
            sha256: r.try_get("sha256")?,
            bytes: r.try_get("bytes")?,
        }
    }};
}
use artifact_from_row;

/// The metric of a result row as the protocol's enum.
pub fn metric_from_db(s: &str) -> Option<ImportanceMetric> {
    ImportanceMetric::parse(s).ok()
}

mod batch;
mod repair;
pub use repair::LostArtifact;
mod scrape;
mod submit;
pub use scrape::{JobCountRow, PoolStats, ScrapeCounts};
pub use batch::{uploads_needed, ArtifactRecord, ClaimRequest, Completion};

mod dashboard;
pub use dashboard::{ArtifactInfo, AttemptRow, CollapseWarning, JobResult, KeptCell, OverlapCell, ProgressPoint, RunningJob, SweepListRow};

#[cfg(test)]
mod fail_rules {
    use super::*;

    #[test]
    fn node_local_failures_count_once_and_move_the_job_elsewhere() {
        let rule = |errors, excluded| FailRule { errors, max_attempts: 3, excluded };
        let local = Failure { retryable: false, node_local: true };
        let job = Failure { retryable: true, node_local: false };
        assert_eq!(rule(0, 0).apply(local), (true, true), "the first counts, and the job is retried although not retryable");
        assert_eq!(rule(1, 1).apply(local), (false, true), "later ones do not count");
        assert_eq!(rule(2, 5).apply(local), (false, true), "nor end the job, whatever its attempts");
        assert_eq!(rule(1, MAX_EXCLUDED_WORKERS - 1).apply(local), (false, false), "until too many machines failed it");
        assert_eq!(rule(1, 1).apply(job), (true, true));
        assert_eq!(rule(2, 1).apply(job), (true, false), "the job's own failures use up its attempts as before");
        assert_eq!(rule(0, 0).apply(Failure { retryable: false, node_local: false }), (true, false));
    }
}
