//! The rows and requests the store reads and writes, shared by both backends.
//!
//! Row structs that are one flat row derive `sqlx::FromRow` (generic over the backend), so each
//! backend's files decode them with `T::from_row` and the column lists live in the `.sql` files.

use super::error::{Result, StoreError};
use chrono::{DateTime, Utc};
use lth_sweep::SweepSpec;
use std::time::Duration;

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

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
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
    /// The ticket bundle this job trains in (the id of its first member, formed at submit from
    /// `SweepSpec::bundle_groups`); None when it runs alone.
    pub bundle_id: Option<i64>,
}

/// A file in the object store that belongs to a job.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ArtifactRow {
    pub job_id: i64,
    pub name: String,
    pub attempt: i32,
    pub uri: String,
    pub sha256: String,
    pub bytes: i64,
}

/// An input uploaded through the coordinator (a model or a dataset), by its content.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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

// Result types: the domain's own `lth_sweep::result` (the engine emits a LevelResult, CompleteJob
// carries it, the store records it).
pub use lth_sweep::result::{check_loss, stored_number, LayerResult, LevelResult, UnitStats};

/// The domain's validation ([`LevelResult::validate`]) as a store refusal,
/// [`StoreError::InvalidResult`](super::StoreError::InvalidResult), on both backends.
pub trait CheckResult {
    fn check(&self) -> Result<()>;
}

impl CheckResult for LevelResult {
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
// end of the result types

/// How an attempt failed, as its worker judged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Failure {
    /// Another attempt may succeed (false: a bad spec or bad data).
    pub retryable: bool,
    /// The worker's machine is at fault, not the job (see [`Store::fail_job_on`]).
    pub node_local: bool,
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
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
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
    /// The newest event id when the pass began: later passes look only at trials with a job that
    /// succeeded after it (see [`super::Store::reap_after`]).
    pub event_watermark: i64,
}

/// A vacuum or analyze of the jobs table that [`Store::vacuum_jobs_if_needed`] ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VacuumReport {
    /// Dead row versions Postgres counted before the vacuum.
    pub dead_rows: i64,
    /// Whether the table was vacuumed (enough dead rows).
    pub vacuumed: bool,
    /// Whether its statistics were renewed (enough rows changed since the last analyze). Either
    /// can happen without the other: page pruning removes dead HOT versions without a vacuum, so
    /// the dead count can stay low while the changed count grows.
    pub analyzed: bool,
    pub took: Duration,
}

// Batched hot path (claim, complete, record uploads)

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
    pub result: LevelResult,
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

/// What recording an upload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// The object of the file this record replaced (the attempt's previous checkpoint, or an
    /// earlier attempt's file of the same name). No row names it any more: the caller deletes it.
    /// Every upload has its own object (`ArtifactStore::key_for`), so this is never the new file.
    pub replaced_uri: Option<String>,
}

// Lost artifacts

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

// /metrics

/// One group of [`ScrapeCounts::jobs`]: jobs in `state`, of the unfinished sweep `sweep_id`
/// (None: the jobs of all finished sweeps together).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct JobCountRow {
    pub state: String,
    pub sweep_id: Option<i64>,
    pub sweep_name: Option<String>,
    pub count: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrapeCounts {
    pub jobs: Vec<JobCountRow>,
    pub workers_live: i64,
    pub workers_registered: i64,
}

/// The connection pool right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

// Dashboard pages

/// One row of the Sweeps page.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SweepListRow {
    pub id: i64,
    pub name: String,
    pub state: String,
    pub owner: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub jobs: i64,
    pub succeeded: i64,
    pub running: i64,
    pub failed: i64,
    /// Training wall-clock seconds of the sweep's succeeded jobs (level_results.wall_seconds).
    pub compute_seconds: f64,
    /// Mean wall seconds of a succeeded job (None before the first).
    pub mean_job_seconds: Option<f64>,
}

/// A layer's mean kept fraction over seeds at one (metric, rate, level): the heatmap's cell.
#[derive(Debug, Clone, PartialEq)]
pub struct KeptCell {
    pub metric: String,
    pub rate: f64,
    pub level: i32,
    pub layer: String,
    pub ordinal: i32,
    pub kept_fraction: f64,
    pub collapsed: bool,
}

/// Mean Jaccard of two metrics' tickets over seeds at one (rate, level).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OverlapCell {
    pub rate: f64,
    pub metric_a: String,
    pub metric_b: String,
    pub jaccard: f64,
    pub seeds: i64,
}

/// A (metric, rate, seed) whose tickets lose classes or layers, from which level on.
#[derive(Debug, Clone, PartialEq)]
pub struct CollapseWarning {
    pub metric: String,
    pub rate: f64,
    pub seed: i64,
    pub first_level: i32,
    /// "dead classes: N" or "layer L collapsed".
    pub what: String,
}

/// A running job with the last throughput its worker reported.
#[derive(Debug, Clone)]
pub struct RunningJob {
    pub job: JobRow,
    pub images_per_second: Option<f64>,
}

/// One progress report of a job (the events table's detail).
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressPoint {
    pub at: DateTime<Utc>,
    pub attempt: i32,
    pub iteration: f64,
    pub epoch: f64,
    pub train_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    pub images_per_second: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AttemptRow {
    pub attempt: i32,
    pub worker_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ArtifactInfo {
    pub name: String,
    pub attempt: i32,
    pub uri: String,
    pub sha256: String,
    pub bytes: i64,
    pub created_at: DateTime<Utc>,
}

/// A job's result row, when it has one (its own, or the job it was reused from).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct JobResult {
    pub sparsity: f64,
    pub test_accuracy: f64,
    pub test_loss: f64,
    pub train_loss: f64,
    pub epochs: f64,
    pub wall_seconds: f64,
}

// Measured throughput

/// One row of the `measured_throughput` view.
#[derive(Debug, Clone, PartialEq)]
pub struct Throughput {
    pub model: String,
    pub batch_size: u32,
    pub precision: String,
    pub device: String,
    pub jobs: u64,
    pub images: u64,
    pub seconds: f64,
    pub images_per_second: f64,
}


// Flat rows as the statements return them, for the structs above that are not one flat row.

/// A sweep's row with its counts (`get_sweep.sql`, `list_sweeps.sql`); the metrics come apart.
#[derive(sqlx::FromRow)]
pub(crate) struct SweepRecord {
    id: i64,
    name: String,
    state: String,
    spec: sqlx::types::Json<SweepSpec>,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    owner: Option<String>,
    trials: i64,
    blocked: i64,
    ready: i64,
    running: i64,
    succeeded: i64,
    failed: i64,
    cancelled: i64,
    dead: i64,
    diverged: i64,
}

impl SweepRecord {
    pub(crate) fn into_info(self, metrics: Vec<(String, u64, u64)>) -> SweepInfo {
        SweepInfo {
            id: self.id,
            name: self.name,
            state: self.state,
            spec: self.spec.0,
            created_at: self.created_at,
            finished_at: self.finished_at,
            trials: self.trials as u64,
            owner: self.owner,
            jobs: JobCounts {
                blocked: self.blocked as u64,
                ready: self.ready as u64,
                running: self.running as u64,
                succeeded: self.succeeded as u64,
                failed: self.failed as u64,
                cancelled: self.cancelled as u64,
            },
            metrics,
            tickets_with_dead_classes: self.dead as u64,
            diverged: self.diverged as u64,
        }
    }
}

/// One (sweep, metric) of `sweep_metrics.sql` / `list_sweep_metrics.sql`.
#[derive(sqlx::FromRow)]
pub(crate) struct SweepMetricRecord {
    pub sweep_id: i64,
    pub metric: String,
    pub n: i64,
    pub done: i64,
}

impl SweepMetricRecord {
    pub(crate) fn entry(self) -> (String, u64, u64) {
        (self.metric, self.n as u64, self.done as u64)
    }
}

/// A worker's row (`list_workers.sql`).
#[derive(sqlx::FromRow)]
pub(crate) struct WorkerRecord {
    worker_id: String,
    host: String,
    gpus: sqlx::types::Json<Vec<GpuRow>>,
    cpus: i32,
    slots: i32,
    libtorch_version: String,
    cuda_version: String,
    last_seen: DateTime<Utc>,
    unhealthy: Option<String>,
    running: i64,
    alive: i32,
}

impl From<WorkerRecord> for WorkerRow {
    fn from(w: WorkerRecord) -> WorkerRow {
        WorkerRow {
            reg: WorkerRegistration {
                worker_id: w.worker_id,
                host: w.host,
                gpus: w.gpus.0,
                cpus: w.cpus as u32,
                slots: w.slots as u32,
                libtorch_version: w.libtorch_version,
                cuda_version: w.cuda_version,
            },
            running_jobs: w.running as u64,
            last_seen: w.last_seen,
            alive: w.alive == 1,
            unhealthy: w.unhealthy,
        }
    }
}

/// The event's own columns in `events_after.sql`; `id` (the job's) is NULL for a sweep event.
#[derive(sqlx::FromRow)]
pub(crate) struct EventRecord {
    event_id: i64,
    at: DateTime<Utc>,
    event_kind: String,
    job_state: Option<String>,
    event_attempt: Option<i32>,
    event_progress: Option<f64>,
    pub id: Option<i64>,
}

impl EventRecord {
    /// The event, with `job` (decoded from the same row when `id` is set) as it was at the event.
    pub(crate) fn into_event(self, job: Option<JobRow>) -> EventRow {
        let job = job.map(|mut j| {
            if let Some(s) = self.job_state {
                j.state = s;
            }
            if let Some(a) = self.event_attempt {
                j.attempt = a;
            }
            if let Some(p) = self.event_progress {
                j.progress = p;
            }
            j
        });
        EventRow { id: self.event_id, at: self.at, kind: self.event_kind, job }
    }
}

/// One row of `results.sql` (the trial_results view); the layers come apart.
#[derive(sqlx::FromRow)]
pub(crate) struct ResultRecord {
    metric: String,
    rate: f64,
    seed: i64,
    level: i32,
    job_id: i64,
    pub result_job_id: i64,
    sparsity: f64,
    test_accuracy: f64,
    test_loss: f64,
    train_loss: f64,
    epochs: f64,
    wall_seconds: f64,
    iterations: i64,
    control: Option<String>,
    schedule: Option<String>,
    diverged: Option<bool>,
}

impl ResultRecord {
    pub(crate) fn into_row(self, layers: Vec<LayerStatsRow>) -> Result<ResultRow> {
        Ok(ResultRow {
            metric: self.metric,
            rate: self.rate,
            seed: self.seed,
            level: self.level,
            job_id: self.job_id,
            result_job_id: self.result_job_id,
            sparsity: self.sparsity,
            test_accuracy: self.test_accuracy,
            test_loss: self.test_loss,
            train_loss: self.train_loss,
            epochs: self.epochs,
            wall_seconds: self.wall_seconds,
            iterations: self.iterations,
            layers,
            control: self.control,
            schedule: super::rules::schedule_from_db(self.schedule)?,
            diverged: self.diverged.unwrap_or(false),
        })
    }
}

/// One mask row of `result_layers.sql`, without its bits.
#[derive(sqlx::FromRow)]
pub(crate) struct LayerRecord {
    pub job_id: i64,
    layer: String,
    kept: i64,
    total: i64,
    collapsed: bool,
    weight_norm: f64,
    outputs: Option<i64>,
    dead_outputs: Option<i64>,
    inputs: Option<i64>,
    dead_inputs: Option<i64>,
    output_layer: Option<bool>,
}

impl From<LayerRecord> for LayerStatsRow {
    fn from(m: LayerRecord) -> LayerStatsRow {
        LayerStatsRow {
            layer: m.layer,
            kept: m.kept,
            total: m.total,
            collapsed: m.collapsed,
            weight_norm: m.weight_norm,
            units: m.outputs.map(|outputs| UnitStats {
                outputs: outputs as u64,
                dead_outputs: m.dead_outputs.unwrap_or(0) as u64,
                inputs: m.inputs.unwrap_or(0) as u64,
                dead_inputs: m.dead_inputs.unwrap_or(0) as u64,
                output_layer: m.output_layer.unwrap_or(false),
            }),
        }
    }
}

/// A claimed job's files (`attach_artifacts.sql` on SQLite): `for_job` is the job whose file it
/// is (following `reused_from`).
#[derive(sqlx::FromRow)]
pub(crate) struct ArtifactFor {
    pub for_job: i64,
    #[sqlx(flatten)]
    pub artifact: ArtifactRow,
}

/// One row of `measured_throughput.sql`.
#[derive(sqlx::FromRow)]
pub(crate) struct ThroughputRecord {
    model: String,
    batch_size: i64,
    precision: String,
    device: String,
    jobs: i64,
    images: i64,
    seconds: f64,
    images_per_second: f64,
}

impl From<ThroughputRecord> for Throughput {
    fn from(t: ThroughputRecord) -> Throughput {
        Throughput {
            model: t.model,
            batch_size: t.batch_size.clamp(0, i64::from(u32::MAX)) as u32,
            precision: t.precision,
            device: t.device,
            jobs: t.jobs.max(0) as u64,
            images: t.images.max(0) as u64,
            seconds: t.seconds,
            images_per_second: t.images_per_second,
        }
    }
}
