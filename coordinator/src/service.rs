//! The gRPC services: `SweepService` for people and lthctl, `WorkerService` for worker daemons.
//!
//! This layer translates between the wire types and the store, and owns the rules that need more
//! than the database: which artifacts a completion must have uploaded, streaming uploads through
//! the object store, and turning the events table into a live WatchSweep stream.

use crate::artifacts::ArtifactStore;
use crate::download::{on_lost, stream_object, ChunkStream, Expected, OnLost};
use crate::auth::{caller, Identity, Role};
use crate::group_commit::{GroupCommit, GroupCommitOptions};
use crate::store::{
    AbortReason, ArtifactRecord, ArtifactRow, Completion, ClaimedJob, GpuRow, InputRow, JobRow, LayerInput, Lease, LostArtifact, ProgressInput, ResultInput, Store, StoreError,
    SweepInfo, UnitStats, WorkerRegistration,
};
use futures::{Stream, StreamExt};
use lth_proto::v1 as pb;
use lth_sweep::{ImportanceMetric, SweepSpec};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Settings the services need at run time.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    pub lease: Duration,
    pub heartbeat: Duration,
    /// How often WatchSweep polls the events table.
    pub watch_poll: Duration,
    /// How ClaimJobs and CompleteJob calls are batched into database round trips.
    pub group_commit: GroupCommitOptions,
    /// The most jobs one sweep may expand to (`--max-jobs-per-sweep`).
    pub max_jobs_per_sweep: u64,
    /// The largest artifact a worker may upload (`--max-artifact-mib`).
    pub max_artifact_bytes: u64,
    /// The largest input (model, dataset) UploadInput accepts, in bytes.
    pub max_input_bytes: u64,
}

/// UploadInput's default limit: 8 GiB.
pub const DEFAULT_MAX_INPUT_BYTES: u64 = 8 << 30;

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            watch_poll: Duration::from_millis(500),
            group_commit: GroupCommitOptions::default(),
            max_jobs_per_sweep: 100_000,
            max_artifact_bytes: 4 << 30,
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
        }
    }
}

/// Shared state of both services.
pub struct Coordinator {
    pub store: Store,
    /// The store's claim and completion, batched across concurrent calls.
    pub queue: GroupCommit,
    pub artifacts: ArtifactStore,
    pub opts: ServiceOptions,
    /// Sweep specs never change once stored; assignments carry them, so keep them at hand. One
    /// cell per sweep, so the claims that race in after a restart read the spec once, not once
    /// each.
    specs: Mutex<HashMap<i64, Arc<tokio::sync::OnceCell<pb::SweepSpec>>>>,
}

impl Coordinator {
    /// Needs a tokio runtime: it starts the group-commit batchers.
    pub fn new(store: Store, artifacts: ArtifactStore, opts: ServiceOptions) -> Arc<Coordinator> {
        let queue = GroupCommit::start(store.clone(), opts.group_commit);
        Arc::new(Coordinator { store, queue, artifacts, opts, specs: Mutex::new(HashMap::new()) })
    }

    /// A file `dependent` needs was found lost (`what` names it for people): repairs it through
    /// the store (`store/repair.rs`) and answers the dependent ARTIFACT_LOST, its job handed back.
    /// FAILED_PRECONDITION, so that a worker that does not know the reason drops the attempt as
    /// it would for a lost lease, which is what it now is.
    pub async fn artifact_lost(&self, dependent: Lease, what: &str, name: &str, uri: Option<&str>, problem: &str) -> Status {
        match self.store.artifact_lost(dependent, name, uri, problem).await {
            Ok(outcome) => {
                metrics::counter!(crate::http::metrics::names::ARTIFACTS_LOST, "artifact" => name.to_string()).increment(1);
                let done = match outcome {
                    LostArtifact::Repairing { producer } => format!("job {producer}, which made it, runs again; this job waits for it"),
                    LostArtifact::AlreadyRepaired { producer, dependent_state } => {
                        format!("job {producer}, which made it, is being (or was) run again; this job is {dependent_state} again")
                    }
                    LostArtifact::CheckpointForgotten => "the checkpoint is forgotten; start the attempt from scratch".to_string(),
                };
                tracing::warn!(job_id = dependent.job_id, attempt = dependent.attempt, artifact = %what, problem = %problem, "lost artifact: {done}");
                lth_proto::errors::error_status(
                    tonic::Code::FailedPrecondition,
                    pb::ErrorReason::ArtifactLost,
                    format!("{what} {problem}; {done}: drop job {} attempt {} (not counted as failed)", dependent.job_id, dependent.attempt),
                )
            }
            Err(e) => status(e),
        }
    }

    async fn spec_of(&self, sweep_id: i64) -> Result<pb::SweepSpec, Status> {
        let cell = self.specs.lock().unwrap().entry(sweep_id).or_default().clone();
        let spec = cell
            .get_or_try_init(|| async { self.store.sweep_spec(sweep_id).await.map(|s| pb::SweepSpec::from(&s)).map_err(status) })
            .await?;
        Ok(spec.clone())
    }
}

use crate::http::metrics::names as M;

/// The `outcome` label of a latency histogram: ok, refused (the caller's lease, worker or request)
/// or error (the database).
fn outcome<T>(r: &Result<T, StoreError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(StoreError::Connect(_) | StoreError::Migrate(_) | StoreError::Db(_)) => "error",
        Err(_) => "refused",
    }
}

/// The gRPC status for a store error.
/// Every status carries the error's reason code (an ErrorInfo in the details, see
/// `lth_proto::errors`); the message is for people.
pub fn status(e: StoreError) -> Status {
    use tonic::Code;
    let reason = e.reason();
    let code = match &e {
        StoreError::NotFound(_) => Code::NotFound,
        StoreError::FailedPrecondition(_) | StoreError::UnknownWorker(_) | StoreError::StaleLease(_) | StoreError::MissingUploads(_) => {
            Code::FailedPrecondition
        }
        StoreError::AlreadyExists(_) => Code::AlreadyExists,
        StoreError::InvalidArgument(_) | StoreError::InvalidResult(_) => Code::InvalidArgument,
        StoreError::Connect(_) | StoreError::Migrate(_) | StoreError::Db(_) => {
            tracing::error!(error = %e, "store error");
            crate::http::metrics::count_db_error(match &e {
                StoreError::Db(db) => crate::http::metrics::db_error_kind(db),
                _ => "connection",
            });
            Code::Unavailable
        }
    };
    lth_proto::errors::error_status(code, reason, e.to_string())
}

fn ts(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

fn job_state(s: &str) -> pb::JobState {
    match s {
        "blocked" => pb::JobState::Blocked,
        "ready" => pb::JobState::Ready,
        "running" => pb::JobState::Running,
        "succeeded" => pb::JobState::Succeeded,
        "failed" => pb::JobState::Failed,
        "cancelled" => pb::JobState::Cancelled,
        _ => pb::JobState::Unspecified,
    }
}

fn job_state_name(s: pb::JobState) -> Option<&'static str> {
    match s {
        pb::JobState::Unspecified => None,
        pb::JobState::Blocked => Some("blocked"),
        pb::JobState::Ready => Some("ready"),
        pb::JobState::Running => Some("running"),
        pb::JobState::Succeeded => Some("succeeded"),
        pb::JobState::Failed => Some("failed"),
        pb::JobState::Cancelled => Some("cancelled"),
    }
}

fn sweep_state(s: &str) -> pb::SweepState {
    match s {
        "running" => pb::SweepState::Running,
        "paused" => pb::SweepState::Paused,
        "cancelled" => pb::SweepState::Cancelled,
        "succeeded" => pb::SweepState::Succeeded,
        "failed" => pb::SweepState::Failed,
        "submitting" => pb::SweepState::Submitting,
        _ => pb::SweepState::Unspecified,
    }
}

fn metric_i32(m: Option<&str>) -> i32 {
    m.and_then(|m| ImportanceMetric::parse(m).ok()).map(|m| m.to_proto_i32()).unwrap_or(0)
}

/// A job's `control` column as the protocol's enum (UNSPECIFIED for a ticket).
fn control_i32(c: Option<&str>) -> i32 {
    match c.map(lth_sweep::Control::parse) {
        Some(Ok(lth_sweep::Control::Reinit)) => pb::Control::Reinit as i32,
        Some(Ok(lth_sweep::Control::RandomMask)) => pb::Control::RandomMask as i32,
        _ => pb::Control::Unspecified as i32,
    }
}

fn job_kind(k: &str) -> i32 {
    (if k == "dense" { pb::JobKind::Dense } else { pb::JobKind::Level }) as i32
}

pub fn job_info(j: &JobRow) -> pb::JobInfo {
    pb::JobInfo {
        job_id: j.id,
        kind: job_kind(&j.kind),
        state: job_state(&j.state) as i32,
        attempt: j.attempt as u32,
        level: j.level as u32,
        seed: j.seed as u64,
        metric: metric_i32(j.metric.as_deref()),
        rate: j.rate,
        worker_id: j.worker_id.clone().unwrap_or_default(),
        progress: j.progress,
        eta_seconds: j.eta_seconds.unwrap_or(0.0),
        error: j.last_error.clone().unwrap_or_default(),
        lost_count: j.lost_count as u32,
        error_count: j.error_count as u32,
        parent_job_id: j.parent_job_id.unwrap_or(0),
        content_hash: j.content_hash.clone(),
        control: control_i32(j.control.as_deref()),
        trial_id: j.trial_id.unwrap_or(0),
    }
}

fn summary(s: &SweepInfo) -> pb::SweepSummary {
    pb::SweepSummary {
        sweep_id: s.id,
        name: s.name.clone(),
        state: sweep_state(&s.state) as i32,
        spec: Some(pb::SweepSpec::from(&s.spec)),
        jobs: Some(pb::JobCounts {
            blocked: s.jobs.blocked,
            ready: s.jobs.ready,
            running: s.jobs.running,
            succeeded: s.jobs.succeeded,
            failed: s.jobs.failed,
            cancelled: s.jobs.cancelled,
        }),
        metrics: s
            .metrics
            .iter()
            .map(|(m, total, done)| pb::MetricProgress { metric: metric_i32(Some(m)), jobs_total: *total, jobs_succeeded: *done })
            .collect(),
        created_at: Some(ts(s.created_at)),
        finished_at: s.finished_at.map(ts),
        trials: s.trials,
        tickets_with_dead_classes: s.tickets_with_dead_classes,
        owner: s.owner.clone().unwrap_or_default(),
        diverged: s.diverged,
    }
}

/// A CompleteJob result as the store records it.
impl From<pb::LevelResult> for ResultInput {
    fn from(r: pb::LevelResult) -> ResultInput {
        ResultInput {
            sparsity: r.sparsity,
            test_accuracy: r.test_accuracy,
            test_loss: r.test_loss,
            train_loss: r.train_loss,
            epochs: r.epochs,
            wall_seconds: r.wall_seconds,
            iterations: r.iterations,
            diverged: r.diverged,
            layers: r
                .layers
                .into_iter()
                .map(|l| LayerInput {
                    units: (l.outputs > 0).then_some(UnitStats {
                        outputs: l.outputs,
                        dead_outputs: l.dead_outputs,
                        inputs: l.inputs,
                        dead_inputs: l.dead_inputs,
                        output_layer: l.output_layer,
                    }),
                    name: l.layer,
                    kept: l.kept,
                    total: l.total,
                    bits: l.mask_bits,
                    collapsed: l.collapsed,
                    weight_norm: l.weight_norm,
                })
                .collect(),
            device: r.device,
        }
    }
}

/// The inverse, for clients that build results as the store sees them (the benchmark).
impl From<ResultInput> for pb::LevelResult {
    fn from(r: ResultInput) -> pb::LevelResult {
        pb::LevelResult {
            sparsity: r.sparsity,
            test_accuracy: r.test_accuracy,
            test_loss: r.test_loss,
            train_loss: r.train_loss,
            epochs: r.epochs,
            wall_seconds: r.wall_seconds,
            iterations: r.iterations,
            diverged: r.diverged,
            layers: r
                .layers
                .into_iter()
                .map(|l| {
                    let u = l.units.unwrap_or_default();
                    pb::LayerStats {
                        layer: l.name,
                        kept: l.kept,
                        total: l.total,
                        mask_bits: l.bits,
                        collapsed: l.collapsed,
                        weight_norm: l.weight_norm,
                        outputs: u.outputs,
                        dead_outputs: u.dead_outputs,
                        inputs: u.inputs,
                        dead_inputs: u.dead_inputs,
                        output_layer: u.output_layer,
                    }
                })
                .collect(),
            device: r.device,
        }
    }
}

fn artifact_ref(a: &ArtifactRow) -> pb::ArtifactRef {
    pb::ArtifactRef { job_id: a.job_id, name: a.name.clone(), sha256: a.sha256.clone(), bytes: a.bytes as u64 }
}

fn lease_of(l: Option<pb::JobLease>) -> Result<Lease, Status> {
    let l = l.ok_or_else(|| lth_proto::errors::invalid_argument("lease is missing: send the (job_id, attempt) from the assignment"))?;
    Ok(Lease { job_id: l.job_id, attempt: l.attempt as i32 })
}

/// The audit log: one line per state-changing call, naming who did what to which sweep or job.
/// Target `lth::audit`, so it can be routed or filtered on its own (`RUST_LOG=lth::audit=info`).
fn audit(who: &Identity, action: &str, sweep_id: Option<i64>, job_id: Option<i64>) {
    tracing::info!(target: "lth::audit", who = %who.name, role = who.role.as_str(), action, sweep_id, job_id, "audit");
}

/// LIMIT_EXCEEDED: the request is over a configured limit; retrying it unchanged cannot help.
fn limit_exceeded(message: String) -> Status {
    lth_proto::errors::error_status(tonic::Code::InvalidArgument, pb::ErrorReason::LimitExceeded, message)
}

/// Rows per ListJobs / ListWorkers page: 0 asks for the default.
const DEFAULT_PAGE: u32 = 1_000;
const MAX_PAGE: u32 = 10_000;
/// A page ends before its encoding passes this, well under gRPC's 4 MiB default message limit
/// (a failed job's error text holds the end of its log, up to a few KiB).
const MAX_PAGE_BYTES: usize = 2 << 20;

fn page_size(asked: u32) -> u32 {
    if asked == 0 {
        DEFAULT_PAGE
    } else {
        asked.min(MAX_PAGE)
    }
}

/// The rule for a page: at most `size` items (the store fetched one more, to know whether
/// another page follows) and at most [`MAX_PAGE_BYTES`] encoded. Returns the page and whether
/// more follow.
fn page<T: prost::Message>(mut items: Vec<T>, size: u32) -> (Vec<T>, bool) {
    let mut more = items.len() > size as usize;
    items.truncate(size as usize);
    let mut bytes = 0usize;
    for (i, item) in items.iter().enumerate() {
        bytes += item.encoded_len() + 8;
        if bytes > MAX_PAGE_BYTES && i > 0 {
            items.truncate(i);
            more = true;
            break;
        }
    }
    (items, more)
}

/// The worker-id rule: what a daemon may call itself (it names the worker in every listing, log
/// line and lease).
pub fn check_worker_id(id: &str) -> Result<(), String> {
    if id.trim().is_empty() {
        return Err("worker_id is empty: use a stable id such as host name plus GPU set".into());
    }
    let n = id.chars().count();
    if n > MAX_WORKER_ID_CHARS {
        return Err(format!("worker_id has {n} characters; at most {MAX_WORKER_ID_CHARS} are allowed (host name plus GPU set fits)"));
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(format!("worker_id contains the control character {c:?}: use printable characters only"));
    }
    if id.trim() != id {
        return Err("worker_id starts or ends with white space".into());
    }
    Ok(())
}

pub const MAX_WORKER_ID_CHARS: usize = 128;

/// The artifacts a job of `kind` may upload: what its children download (`uploads_needed`),
/// and the checkpoint it resumes from.
pub fn allowed_uploads(kind: &str) -> &'static [&'static str] {
    kind.parse::<lth_sweep::state::JobKind>().map(lth_sweep::state::JobKind::uploads_allowed).unwrap_or(&[])
}

fn sweep_terminal(state: &str) -> bool {
    state.parse::<lth_sweep::state::SweepState>().is_ok_and(|s| s.is_finished())
}

// ---------------------------------------------------------------------------------------------
// SweepService
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
pub struct SweepSvc(pub Arc<Coordinator>);

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::SweepEvent, Status>> + Send>>;

impl SweepSvc {
    /// A submitter may change only the sweeps it submitted; an admin any.
    async fn check_owner(&self, who: &Identity, sweep_id: i64, verb: &str) -> Result<(), Status> {
        if who.role == Role::Admin {
            return Ok(());
        }
        let s = self.0.store.get_sweep(sweep_id).await.map_err(status)?;
        if s.owner.as_deref() == Some(who.name.as_str()) {
            return Ok(());
        }
        let message = format!(
            "sweep {sweep_id} belongs to {}: a submitter token ({:?}) may {verb} only its own sweeps; this needs role admin",
            s.owner.as_deref().map(|o| format!("{o:?}")).unwrap_or_else(|| "no recorded owner".into()),
            who.name
        );
        let owner = s.owner.unwrap_or_default();
        Err(lth_proto::errors::error_status_with(
            tonic::Code::PermissionDenied,
            pb::ErrorReason::NotOwner,
            message,
            &[("needed_roles", "admin"), ("owner", owner.as_str()), ("role", who.role.as_str()), ("token", who.name.as_str())],
        ))
    }
}

#[tonic::async_trait]
impl pb::sweep_service_server::SweepService for SweepSvc {
    async fn submit_sweep(&self, req: Request<pb::SubmitSweepRequest>) -> Result<Response<pb::SubmitSweepResponse>, Status> {
        let who = caller(&req);
        let req = req.into_inner();
        let wire = req.spec.ok_or_else(|| lth_proto::errors::invalid_argument("spec is missing: send the sweep spec to submit"))?;
        let spec = SweepSpec::try_from(&wire).map_err(|e| lth_proto::errors::invalid_argument(e.to_string()))?;
        lth_sweep::check_grid_size(spec.job_count(), self.0.opts.max_jobs_per_sweep).map_err(limit_exceeded)?;
        self.0.check_inputs(&spec).await?;
        let out = if req.dry_run {
            self.0.store.plan_sweep(&spec).await
        } else {
            self.0.store.submit_sweep_as(&spec, Some(req.client_token.as_str()), Some(who.name.as_str())).await
        }
        .map_err(status)?;
        if out.created {
            audit(&who, "submit", Some(out.sweep_id), None);
            tracing::info!(sweep_id = out.sweep_id, name = %spec.name, jobs = out.jobs, reused = out.jobs_reused, "sweep submitted");
        }
        Ok(Response::new(pb::SubmitSweepResponse {
            sweep_id: out.sweep_id,
            created: out.created,
            trials: out.trials,
            jobs: out.jobs,
            jobs_reused: out.jobs_reused,
            dense_jobs: out.dense_jobs,
        }))
    }

    async fn get_sweep(&self, req: Request<pb::GetSweepRequest>) -> Result<Response<pb::SweepSummary>, Status> {
        let s = self.0.store.get_sweep(req.into_inner().sweep_id).await.map_err(status)?;
        Ok(Response::new(summary(&s)))
    }

    async fn list_sweeps(&self, req: Request<pb::ListSweepsRequest>) -> Result<Response<pb::ListSweepsResponse>, Status> {
        let list = self.0.store.list_sweeps(req.into_inner().limit).await.map_err(status)?;
        Ok(Response::new(pb::ListSweepsResponse { sweeps: list.iter().map(summary).collect() }))
    }

    async fn cancel_sweep(&self, req: Request<pb::SweepRef>) -> Result<Response<pb::SweepSummary>, Status> {
        let who = caller(&req);
        let id = req.into_inner().sweep_id;
        self.check_owner(&who, id, "cancel").await?;
        self.0.store.cancel_sweep(id).await.map_err(status)?;
        audit(&who, "cancel", Some(id), None);
        tracing::info!(sweep_id = id, "sweep cancelled");
        self.get_sweep(Request::new(pb::GetSweepRequest { sweep_id: id })).await
    }

    async fn pause_sweep(&self, req: Request<pb::SweepRef>) -> Result<Response<pb::SweepSummary>, Status> {
        let who = caller(&req);
        let id = req.into_inner().sweep_id;
        self.check_owner(&who, id, "pause").await?;
        self.0.store.pause_sweep(id).await.map_err(status)?;
        audit(&who, "pause", Some(id), None);
        tracing::info!(sweep_id = id, "sweep paused");
        self.get_sweep(Request::new(pb::GetSweepRequest { sweep_id: id })).await
    }

    async fn resume_sweep(&self, req: Request<pb::SweepRef>) -> Result<Response<pb::SweepSummary>, Status> {
        let who = caller(&req);
        let id = req.into_inner().sweep_id;
        self.check_owner(&who, id, "resume").await?;
        self.0.store.resume_sweep(id).await.map_err(status)?;
        audit(&who, "resume", Some(id), None);
        tracing::info!(sweep_id = id, "sweep resumed");
        self.get_sweep(Request::new(pb::GetSweepRequest { sweep_id: id })).await
    }

    async fn retry_sweep(&self, req: Request<pb::RetrySweepRequest>) -> Result<Response<pb::RetrySweepResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        self.check_owner(&who, r.sweep_id, "retry").await?;
        let trial = (r.trial_id != 0).then_some(r.trial_id);
        let n = self.0.store.retry_sweep(r.sweep_id, trial).await.map_err(status)?;
        audit(&who, "retry", Some(r.sweep_id), None);
        tracing::info!(sweep_id = r.sweep_id, trial_id = r.trial_id, jobs = n, "failed jobs re-queued");
        let s = self.0.store.get_sweep(r.sweep_id).await.map_err(status)?;
        Ok(Response::new(pb::RetrySweepResponse { jobs_requeued: n, sweep: Some(summary(&s)) }))
    }

    async fn list_jobs(&self, req: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let req = req.into_inner();
        let state = pb::JobState::try_from(req.state).map_err(|_| lth_proto::errors::invalid_argument(format!("unknown job state {}", req.state)))?;
        self.0.store.sweep_spec(req.sweep_id).await.map_err(status)?;
        let after: i64 = if req.page_token.is_empty() {
            0
        } else {
            req.page_token.parse().map_err(|_| lth_proto::errors::invalid_argument(format!("page_token {:?} is not one this coordinator gave out", req.page_token)))?
        };
        let size = page_size(req.page_size);
        let rows = self.0.store.list_jobs_page(req.sweep_id, job_state_name(state), after, size as i64 + 1).await.map_err(status)?;
        let (jobs, more) = page(rows.iter().map(job_info).collect(), size);
        let next_page_token = if more { jobs.last().map(|j| j.job_id.to_string()).unwrap_or_default() } else { String::new() };
        Ok(Response::new(pb::ListJobsResponse { jobs, next_page_token }))
    }

    async fn list_workers(&self, req: Request<pb::ListWorkersRequest>) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let req = req.into_inner();
        // A worker is alive while it heartbeats; allow three missed beats.
        let window = self.0.opts.heartbeat * 3;
        let size = page_size(req.page_size);
        let rows = self.0.store.list_workers_page(window, req.all, &req.page_token, size as i64 + 1).await.map_err(status)?;
        let workers: Vec<pb::WorkerInfo> = rows
                .into_iter()
                .map(|w| pb::WorkerInfo {
                    worker_id: w.reg.worker_id,
                    host: w.reg.host,
                    gpus: w.reg.gpus.into_iter().map(|g| pb::GpuInfo { index: g.index, name: g.name, memory_bytes: g.memory_bytes }).collect(),
                    cpus: w.reg.cpus,
                    slots: w.reg.slots,
                    running_jobs: w.running_jobs as u32,
                    last_seen: Some(ts(w.last_seen)),
                    alive: w.alive,
                    libtorch_version: w.reg.libtorch_version,
                    cuda_version: w.reg.cuda_version,
                    unhealthy: w.unhealthy.unwrap_or_default(),
                })
                .collect();
        let (workers, more) = page(workers, size);
        let next_page_token = if more { workers.last().map(|w| w.worker_id.clone()).unwrap_or_default() } else { String::new() };
        Ok(Response::new(pb::ListWorkersResponse { workers, next_page_token }))
    }

    type WatchSweepStream = EventStream;

    /// Sends the sweep's summary first, then every event after `after_event_id` in order (polling
    /// the events table), with a fresh summary on each sweep-level event; ends once the sweep has
    /// finished and every event was sent.
    async fn watch_sweep(&self, req: Request<pb::WatchSweepRequest>) -> Result<Response<Self::WatchSweepStream>, Status> {
        let req = req.into_inner();
        let coord = self.0.clone();
        let first = coord.store.get_sweep(req.sweep_id).await.map_err(status)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::SweepEvent, Status>>(64);
        tokio::spawn(async move {
            let sweep_id = req.sweep_id;
            let mut after = req.after_event_id.max(0);
            let hello = pb::SweepEvent { event_id: after, at: Some(ts(chrono::Utc::now())), event: Some(pb::sweep_event::Event::Sweep(summary(&first))) };
            if tx.send(Ok(hello)).await.is_err() {
                return;
            }
            loop {
                let batch = match coord.store.events_after(sweep_id, after, 500).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                };
                for e in &batch {
                    after = e.id;
                    let event = match &e.job {
                        Some(j) => pb::sweep_event::Event::Job(job_info(j)),
                        None => match coord.store.get_sweep(sweep_id).await {
                            Ok(s) => pb::sweep_event::Event::Sweep(summary(&s)),
                            Err(e) => {
                                let _ = tx.send(Err(status(e))).await;
                                return;
                            }
                        },
                    };
                    if tx.send(Ok(pb::SweepEvent { event_id: e.id, at: Some(ts(e.at)), event: Some(event) })).await.is_err() {
                        return; // the client went away
                    }
                }
                if !batch.is_empty() {
                    continue;
                }
                match coord.store.get_sweep(sweep_id).await {
                    Ok(s) if sweep_terminal(&s.state) => {
                        // The final events commit with the final state; one more look catches any
                        // written between the empty read above and this one.
                        match coord.store.events_after(sweep_id, after, 1).await {
                            Ok(more) if more.is_empty() => return,
                            Ok(_) => continue,
                            Err(e) => {
                                let _ = tx.send(Err(status(e))).await;
                                return;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(status(e))).await;
                        return;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(coord.opts.watch_poll) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn get_throughput(&self, _req: Request<pb::GetThroughputRequest>) -> Result<Response<pb::GetThroughputResponse>, Status> {
        let rows = self.0.store.measured_throughput().await.map_err(status)?;
        Ok(Response::new(pb::GetThroughputResponse {
            rows: rows
                .into_iter()
                .map(|t| pb::ThroughputRow {
                    model: t.model,
                    batch_size: t.batch_size,
                    precision: t.precision,
                    device: t.device,
                    jobs: t.jobs,
                    images: t.images,
                    seconds: t.seconds,
                    images_per_second: t.images_per_second,
                })
                .collect(),
        }))
    }

    async fn get_results(&self, req: Request<pb::GetResultsRequest>) -> Result<Response<pb::GetResultsResponse>, Status> {
        let id = req.into_inner().sweep_id;
        self.0.store.get_sweep(id).await.map_err(status)?;
        let rows = self.0.store.results(id).await.map_err(status)?;
        let accuracy = self.0.store.accuracy(id).await.map_err(status)?;
        Ok(Response::new(pb::GetResultsResponse {
            accuracy: accuracy
                .into_iter()
                .map(|a| pb::AccuracyPoint {
                    metric: metric_i32(Some(&a.metric)),
                    rate: a.rate,
                    level: a.level as u32,
                    sparsity: a.sparsity,
                    mean_accuracy: a.mean_accuracy,
                    std_accuracy: a.std_accuracy.unwrap_or(0.0),
                    min_accuracy: a.min_accuracy,
                    max_accuracy: a.max_accuracy,
                    seeds: a.seeds as u32,
                })
                .collect(),
            rows: rows
                .into_iter()
                .map(|r| pb::ResultRow {
                    metric: metric_i32(Some(&r.metric)),
                    rate: r.rate,
                    seed: r.seed as u64,
                    level: r.level as u32,
                    job_id: r.job_id,
                    control: control_i32(r.control.as_deref()),
                    schedule: r.schedule.clone().unwrap_or_default(),
                    result: Some(pb::LevelResult {
                        sparsity: r.sparsity,
                        test_accuracy: r.test_accuracy,
                        test_loss: r.test_loss,
                        train_loss: r.train_loss,
                        epochs: r.epochs,
                        wall_seconds: r.wall_seconds,
                        iterations: r.iterations as u64,
                        diverged: r.diverged,
                        layers: r
                            .layers
                            .into_iter()
                            .map(|l| pb::LayerStats {
                                layer: l.layer,
                                kept: l.kept as u64,
                                total: l.total as u64,
                                mask_bits: Vec::new(),
                                collapsed: l.collapsed,
                                weight_norm: l.weight_norm,
                                outputs: l.units.map_or(0, |u| u.outputs),
                                dead_outputs: l.units.map_or(0, |u| u.dead_outputs),
                                inputs: l.units.map_or(0, |u| u.inputs),
                                dead_inputs: l.units.map_or(0, |u| u.dead_inputs),
                                output_layer: l.units.is_some_and(|u| u.output_layer),
                            })
                            .collect(),
                        // GetResults rows carry no device (measured_throughput has it).
                        device: String::new(),
                    }),
                })
                .collect(),
        }))
    }

    async fn upload_input(&self, req: Request<tonic::Streaming<pb::InputChunk>>) -> Result<Response<pb::InputInfo>, Status> {
        let who = caller(&req);
        self.0.upload_input(&who, req.into_inner()).await.map(Response::new)
    }

    async fn list_inputs(&self, req: Request<pb::ListInputsRequest>) -> Result<Response<pb::ListInputsResponse>, Status> {
        let r = req.into_inner();
        let inputs = if r.sha256.is_empty() {
            self.0.store.list_inputs().await.map_err(status)?
        } else {
            let mut found = Vec::new();
            for sha in r.sha256.iter().take(1000) {
                if let Some(row) = self.0.store.find_input(&sha.to_ascii_lowercase()).await.map_err(status)? {
                    found.push(row);
                }
            }
            found
        };
        Ok(Response::new(pb::ListInputsResponse { inputs: inputs.iter().map(|r| input_info(r, false)).collect() }))
    }

    type StreamMasksStream = crate::masks_rpc::MaskStream;

    async fn stream_masks(&self, req: Request<pb::StreamMasksRequest>) -> Result<Response<Self::StreamMasksStream>, Status> {
        crate::masks_rpc::stream_masks(&self.0.store, req.into_inner()).await.map(Response::new)
    }
}

// ---------------------------------------------------------------------------------------------
// WorkerService
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
pub struct WorkerSvc(pub Arc<Coordinator>);

/// At most this many jobs per claim, whatever a worker asks for.
const MAX_CLAIM: u32 = 64;
fn valid_artifact_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !name.starts_with('.')
}

impl WorkerSvc {
    async fn assignment(&self, c: ClaimedJob) -> Result<pb::JobAssignment, Status> {
        let spec = self.0.spec_of(c.job.sweep_id).await?;
        let j = &c.job;
        let mut inputs = Vec::new();
        if let Some(a) = &c.rewind {
            inputs.push(pb::ArtifactRef { name: "rewind".into(), ..artifact_ref(a) });
        }
        if let Some(a) = &c.weights {
            inputs.push(pb::ArtifactRef { name: "weights".into(), ..artifact_ref(a) });
        }
        Ok(pb::JobAssignment {
            job_id: j.id,
            attempt: j.attempt as u32,
            kind: job_kind(&j.kind),
            sweep_id: j.sweep_id,
            spec: Some(spec),
            seed: j.seed as u64,
            metric: metric_i32(j.metric.as_deref()),
            rate: j.rate,
            level: j.level as u32,
            parent_job_id: j.parent_job_id.unwrap_or(0),
            dense_job_id: j.dense_job_id.unwrap_or(if j.kind == "dense" { j.id } else { 0 }),
            inputs,
            resume_checkpoint: c.resume_checkpoint.as_ref().map(artifact_ref),
            lease_expires_at: j.lease_expires_at.map(ts),
            content_hash: j.content_hash.clone(),
            control: control_i32(j.control.as_deref()),
        })
    }
}

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for WorkerSvc {
    async fn register_worker(&self, req: Request<pb::RegisterWorkerRequest>) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        check_worker_id(&r.worker_id).map_err(lth_proto::errors::invalid_argument)?;
        self.0
            .store
            .register_worker(&WorkerRegistration {
                worker_id: r.worker_id.clone(),
                host: r.host,
                gpus: r.gpus.into_iter().map(|g| GpuRow { index: g.index, name: g.name, memory_bytes: g.memory_bytes }).collect(),
                cpus: r.cpus,
                slots: r.slots,
                libtorch_version: r.libtorch_version,
                cuda_version: r.cuda_version,
            })
            .await
            .map_err(status)?;
        tracing::info!(worker_id = %r.worker_id, "worker registered");
        audit(&who, "register_worker", None, None);
        Ok(Response::new(pb::RegisterWorkerResponse {
            lease_seconds: self.0.opts.lease.as_secs().max(1) as u32,
            heartbeat_seconds: self.0.opts.heartbeat.as_secs().max(1) as u32,
        }))
    }

    async fn claim_jobs(&self, req: Request<pb::ClaimJobsRequest>) -> Result<Response<pb::ClaimJobsResponse>, Status> {
        let r = req.into_inner();
        let t0 = std::time::Instant::now();
        let claimed = self.0.queue.claim(&r.worker_id, r.free_slots.min(MAX_CLAIM), self.0.opts.lease).await;
        metrics::histogram!(M::CLAIM_SECONDS, "outcome" => outcome(&claimed)).record(t0.elapsed().as_secs_f64());
        let claimed = claimed.map_err(status)?;
        metrics::counter!(M::JOBS_CLAIMED).increment(claimed.len() as u64);
        let mut jobs = Vec::with_capacity(claimed.len());
        for c in claimed {
            // A level job whose inputs have no record (a repair forgot a lost file while this
            // job was already unblocked): hand it back to wait for the re-run instead of sending
            // it off without them.
            let missing = [("rewind", c.rewind.is_none()), ("weights", c.weights.is_none())].into_iter().find(|(_, none)| *none);
            if let (true, Some((name, _))) = (c.job.kind == "level", missing) {
                let lease = Lease { job_id: c.job.id, attempt: c.job.attempt };
                let what = format!("the {name:?} input of job {}", c.job.id);
                self.0.artifact_lost(lease, &what, name, None, "has no record (the file was lost)").await;
                continue;
            }
            tracing::info!(job_id = c.job.id, attempt = c.job.attempt, worker_id = %r.worker_id, "job claimed");
            jobs.push(self.assignment(c).await?);
        }
        Ok(Response::new(pb::ClaimJobsResponse { jobs }))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = req.into_inner();
        let leases: Vec<Lease> = r.running.iter().map(|l| Lease { job_id: l.job_id, attempt: l.attempt as i32 }).collect();
        // At most a line of text: it is shown in `lthctl workers` and the dashboard.
        let unhealthy: Option<String> = (!r.unhealthy.is_empty()).then(|| r.unhealthy.chars().take(500).collect());
        let aborts = self.0.store.heartbeat_with_health(&r.worker_id, &leases, self.0.opts.lease, unhealthy.as_deref()).await.map_err(status)?;
        Ok(Response::new(pb::HeartbeatResponse {
            abort: aborts
                .into_iter()
                .map(|(l, why)| pb::JobAbort {
                    lease: Some(pb::JobLease { job_id: l.job_id, attempt: l.attempt as u32 }),
                    reason: match why {
                        AbortReason::Cancelled => pb::AbortReason::Cancelled,
                        AbortReason::Paused => pb::AbortReason::Paused,
                        AbortReason::LeaseLost => pb::AbortReason::LeaseLost,
                    } as i32,
                })
                .collect(),
        }))
    }

    async fn report_progress(&self, req: Request<pb::ReportProgressRequest>) -> Result<Response<pb::Ack>, Status> {
        let r = req.into_inner();
        let lease = lease_of(r.lease)?;
        let p = ProgressInput {
            iteration: r.iteration,
            total_iterations: r.total_iterations,
            epoch: r.epoch,
            train_loss: r.train_loss,
            test_accuracy: if r.test_accuracy.is_nan() { None } else { Some(r.test_accuracy) },
            images_per_second: r.images_per_second,
        };
        self.0.store.report_progress(lease, &p).await.map_err(status)?;
        Ok(Response::new(pb::Ack {}))
    }

    async fn complete_job(&self, req: Request<pb::CompleteJobRequest>) -> Result<Response<pb::Ack>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        let lease = lease_of(r.lease)?;
        let result = r.result.ok_or_else(|| lth_proto::errors::invalid_argument("result is missing: send the level's result with the completion"))?;
        let input = ResultInput::from(result);
        let (accuracy, diverged) = (input.test_accuracy, input.diverged);
        // The store refuses, in the completing statement itself, a stale lease and a completion
        // whose attempt has not uploaded what the next levels download.
        let t0 = std::time::Instant::now();
        let done = self.0.queue.complete(Completion { lease, result: input, require_uploads: true }).await;
        metrics::histogram!(M::COMPLETE_SECONDS, "outcome" => outcome(&done)).record(t0.elapsed().as_secs_f64());
        done.map_err(status)?;
        metrics::counter!(M::JOBS_COMPLETED).increment(1);
        if diverged {
            tracing::warn!(job_id = lease.job_id, attempt = lease.attempt, accuracy, "job finished; its training diverged (recorded as diverged)");
        } else {
            tracing::info!(job_id = lease.job_id, attempt = lease.attempt, accuracy, "job succeeded");
        }
        audit(&who, "complete_job", None, Some(lease.job_id));
        Ok(Response::new(pb::Ack {}))
    }

    async fn fail_job(&self, req: Request<pb::FailJobRequest>) -> Result<Response<pb::Ack>, Status> {
        let who = caller(&req);
        let r = req.into_inner();
        let lease = lease_of(r.lease)?;
        let how = crate::store::Failure { retryable: r.retryable, node_local: r.node_local };
        // A node-local failure goes to another worker, if one is alive (three missed heartbeats: lost).
        self.0.store.fail_job_on(lease, &r.error, how, self.0.opts.heartbeat * 3).await.map_err(status)?;
        metrics::counter!(M::JOB_FAILURES, "retryable" => if r.retryable { "true" } else { "false" }, "node_local" => if r.node_local { "true" } else { "false" }).increment(1);
        tracing::warn!(job_id = lease.job_id, attempt = lease.attempt, retryable = r.retryable, node_local = r.node_local, error = %r.error, "job attempt failed");
        audit(&who, "fail_job", None, Some(lease.job_id));
        Ok(Response::new(pb::Ack {}))
    }

    async fn release_job(&self, req: Request<pb::ReleaseJobRequest>) -> Result<Response<pb::Ack>, Status> {
        let r = req.into_inner();
        let lease = lease_of(r.lease)?;
        let reason: String = r.reason.chars().take(1000).collect();
        self.0.store.release_job(lease, &reason).await.map_err(status)?;
        metrics::counter!(M::JOBS_RELEASED).increment(1);
        tracing::info!(job_id = lease.job_id, attempt = lease.attempt, reason = %reason, "job released by its worker; claimable again");
        Ok(Response::new(pb::Ack {}))
    }

    /// The first chunk names the lease, artifact and digest; the data is streamed into the object
    /// store, verified, and only then recorded (fenced by the lease).
    async fn upload_artifact(
        &self,
        req: Request<tonic::Streaming<pb::ArtifactChunk>>,
    ) -> Result<Response<pb::UploadArtifactResponse>, Status> {
        let who = caller(&req);
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| lth_proto::errors::invalid_argument("empty upload: the first chunk must name the lease, the artifact and its sha256"))?;
        let lease = lease_of(first.lease)?;
        let name = first.name.clone();
        if !valid_artifact_name(&name) {
            return Err(lth_proto::errors::invalid_argument(format!(
                "artifact name {name:?} is not allowed: use \"rewind\", \"weights\", \"checkpoint\" (letters, digits, _ - .)"
            )));
        }
        if first.sha256.len() != 64 || !first.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(lth_proto::errors::invalid_argument("the first chunk's sha256 must be the artifact's 64-digit hex digest"));
        }
        let Some(kind) = self.0.store.running_job_kind(lease).await.map_err(status)? else {
            return Err(status(StoreError::StaleLease(format!("lease {lease} is not current: the upload was refused"))));
        };
        let allowed = allowed_uploads(&kind);
        if !allowed.contains(&name.as_str()) {
            return Err(lth_proto::errors::invalid_argument(format!(
                "a {kind} job uploads only {allowed:?}, not {name:?}: job {} attempt {}",
                lease.job_id, lease.attempt
            )));
        }
        let max = self.0.opts.max_artifact_bytes;
        if first.total_bytes > max {
            return Err(limit_exceeded(format!(
                "artifact {name:?} of job {} is {} bytes, over this coordinator's limit of {max} bytes (--max-artifact-mib)",
                lease.job_id, first.total_bytes
            )));
        }
        let declared_bytes = if first.total_bytes > 0 { Some(first.total_bytes) } else { None };
        let head = futures::stream::once(futures::future::ready(Ok::<bytes::Bytes, Status>(bytes::Bytes::from(first.data))));
        let rest = stream.map(|c| c.map(|c| bytes::Bytes::from(c.data)));
        // An upload that did not declare its size (or lied) is cut off at the limit.
        let mut seen = 0u64;
        let job_id = lease.job_id;
        let limit_name = name.clone();
        let chunks = head.chain(rest).map(move |c| {
            let c = c?;
            seen += c.len() as u64;
            if seen > max {
                return Err(limit_exceeded(format!(
                    "artifact {limit_name:?} of job {job_id} passed this coordinator's limit of {max} bytes (--max-artifact-mib); the upload was dropped"
                )));
            }
            Ok(c)
        });
        let key = ArtifactStore::key_for(lease.job_id, lease.attempt, &name);
        let stored = self.0.artifacts.put_verified(&key, &name, &first.sha256, declared_bytes, Box::pin(chunks)).await?;
        let stored = stored.map_err(|e| Status::data_loss(e.to_string()))?;
        let rec = ArtifactRecord { lease, name: name.clone(), uri: stored.uri.clone(), sha256: stored.sha256.clone(), bytes: stored.bytes };
        if let Err(e) = self.0.queue.record_artifact(rec).await {
            self.0.artifacts.delete_uri(&stored.uri).await;
            return Err(status(e));
        }
        tracing::info!(job_id = lease.job_id, attempt = lease.attempt, name = %name, bytes = stored.bytes, "artifact stored");
        metrics::counter!(M::ARTIFACT_BYTES, "direction" => "in").increment(stored.bytes);
        audit(&who, "upload_artifact", None, Some(lease.job_id));
        Ok(Response::new(pb::UploadArtifactResponse {
            artifact: Some(pb::ArtifactRef { job_id: lease.job_id, name, sha256: stored.sha256, bytes: stored.bytes }),
        }))
    }

    type DownloadArtifactStream = ChunkStream;

    /// Streams a recorded file, checked against its record as it goes (`download.rs`). When the
    /// caller names its lease, a lost file is repaired: the job that made it runs again and the
    /// caller's job is handed back (ARTIFACT_LOST), so no dependent waits on a file that is gone.
    async fn download_artifact(&self, req: Request<pb::DownloadArtifactRequest>) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        let r = req.into_inner();
        let a = self.0.store.find_artifact(r.job_id, &r.name).await.map_err(status)?;
        let expected = Expected { name: a.name.clone(), sha256: a.sha256.clone(), bytes: a.bytes as u64 };
        let lost: OnLost = match r.lease {
            Some(l) => {
                let (coordinator, lease, uri) = (self.0.clone(), Lease { job_id: l.job_id, attempt: l.attempt as i32 }, a.uri.clone());
                let what = format!("artifact {:?} of job {}", a.name, a.job_id);
                let name = a.name.clone();
                on_lost(move |problem| async move { coordinator.artifact_lost(lease, &what, &name, Some(&uri), &problem).await })
            }
            None => {
                let what = format!("artifact {:?} of job {}", a.name, a.job_id);
                on_lost(move |problem| async move {
                    tracing::warn!(artifact = %what, problem = %problem, "artifact lost from the object store (the download named no lease: nothing repaired)");
                    lth_proto::errors::not_found(format!("{what} {problem}: it must be made again"))
                })
            }
        };
        stream_object(&self.0.artifacts, &a.uri, expected, lost).await.map(Response::new)
    }

    type DownloadInputStream = ChunkStream;

    async fn download_input(&self, req: Request<pb::DownloadInputRequest>) -> Result<Response<Self::DownloadInputStream>, Status> {
        let sha = req.into_inner().sha256.to_ascii_lowercase();
        let Some(row) = self.0.store.find_input(&sha).await.map_err(status)? else {
            return Err(lth_proto::errors::not_found(format!(
                "this coordinator holds no upload sha256:{sha}: upload it again (`lthctl submit` for a model, `lthctl dataset upload` for a dataset)"
            )));
        };
        let expected = Expected { name: row.name.clone(), sha256: row.sha256.clone(), bytes: row.bytes as u64 };
        let lost = on_lost(move |problem| async move {
            tracing::error!(sha256 = %sha, problem = %problem, "an uploaded input is lost from the object store");
            lth_proto::errors::not_found(format!("the upload sha256:{sha} {problem}: upload it again"))
        });
        stream_object(&self.0.artifacts, &row.uri, expected, lost).await.map(Response::new)
    }
}

#[cfg(test)]
mod rules {
    use super::*;

    #[test]
    fn worker_ids_are_short_and_printable() {
        assert!(check_worker_id("gpu-node-7/0,1").is_ok());
        assert!(check_worker_id(&"é".repeat(128)).is_ok(), "characters, not bytes");
        assert!(check_worker_id(&"x".repeat(129)).unwrap_err().contains("129 characters"));
        assert!(check_worker_id("").is_err());
        assert!(check_worker_id("   ").is_err());
        assert!(check_worker_id("a\u{0}b").unwrap_err().contains("control character"));
        assert!(check_worker_id("line\nbreak").is_err());
        assert!(check_worker_id(" padded").is_err());
    }

    #[test]
    fn pages_hold_at_most_size_items_and_two_mib() {
        let jobs = |n: usize, error: usize| (0..n).map(|i| pb::JobInfo { job_id: i as i64 + 1, error: "e".repeat(error), ..Default::default() }).collect::<Vec<_>>();
        let (p, more) = page(jobs(11, 0), 10);
        assert_eq!((p.len(), more), (10, true));
        let (p, more) = page(jobs(10, 0), 10);
        assert_eq!((p.len(), more), (10, false));
        // 1,000 failed jobs with 4 KiB of log each would be a 4 MiB reply: cut at 2 MiB.
        let (p, more) = page(jobs(1000, 4096), 1000);
        assert!(more && p.len() < 520 && p.len() > 400, "{}", p.len());
        assert!(p.iter().map(|j| prost::Message::encoded_len(j)).sum::<usize>() <= MAX_PAGE_BYTES);
        assert_eq!(page_size(0), DEFAULT_PAGE);
        assert_eq!(page_size(1 << 30), MAX_PAGE);
    }

    #[test]
    fn uploads_are_the_names_the_job_kind_expects() {
        assert_eq!(allowed_uploads("dense"), &["rewind", "weights", "checkpoint"]);
        assert!(!allowed_uploads("level").contains(&"rewind"));
        for kind in ["dense", "level"] {
            for need in crate::store::uploads_needed(kind) {
                assert!(allowed_uploads(kind).contains(need), "{kind} must be allowed to upload {need}");
            }
        }
    }
}
// ---------------------------------------------------------------------------------------------
// Uploaded inputs (your own models and datasets)
// ---------------------------------------------------------------------------------------------

/// The store's name of an input kind (the `inputs.kind` column).
fn input_kind_name(k: pb::InputKind) -> Option<&'static str> {
    match k {
        pb::InputKind::Unspecified => None,
        pb::InputKind::Torchscript => Some("torchscript"),
        pb::InputKind::ImageFolder => Some("image_folder"),
        pb::InputKind::Safetensors => Some("safetensors"),
    }
}

fn input_kind_of(name: &str) -> pb::InputKind {
    match name {
        "torchscript" => pb::InputKind::Torchscript,
        "image_folder" => pb::InputKind::ImageFolder,
        "safetensors" => pb::InputKind::Safetensors,
        _ => pb::InputKind::Unspecified,
    }
}

fn input_info(r: &InputRow, created: bool) -> pb::InputInfo {
    pb::InputInfo {
        sha256: r.sha256.clone(),
        bytes: r.bytes as u64,
        kind: input_kind_of(&r.kind) as i32,
        name: r.name.clone(),
        owner: r.owner.clone().unwrap_or_default(),
        created_at: r.created_at.map(ts),
        created,
    }
}

/// The inputs a sweep downloads through the coordinator: (sha256, the kind it must have, what
/// names it in the sweep).
pub fn required_inputs(spec: &SweepSpec) -> Vec<(String, &'static str, &'static str)> {
    let mut out = Vec::new();
    if let Some(t) = spec.model.torchscript().filter(|t| t.uploaded) {
        out.push((t.sha256.clone().unwrap_or_default().to_ascii_lowercase(), "torchscript", "model.torchscript"));
    }
    if let Some(sha) = spec.dataset.upload_sha256() {
        out.push((sha.to_ascii_lowercase(), spec.dataset.name.as_str(), "dataset.upload"));
    }
    out
}

impl Coordinator {
    /// Refuses a sweep naming an uploaded input the coordinator does not hold (or one of another
    /// kind), before anything is created.
    async fn check_inputs(&self, spec: &SweepSpec) -> Result<(), Status> {
        let mut problems = Vec::new();
        for (sha, kind, key) in required_inputs(spec) {
            match self.store.find_input(&sha).await.map_err(status)? {
                None => problems.push(format!(
                    "{key} names the upload sha256:{sha}, which this coordinator does not hold: upload it first (`lthctl submit` uploads the sweep's model file; `lthctl dataset upload PATH` a dataset; `lthctl dataset ls` lists what is here)"
                )),
                Some(r) if r.kind != kind => problems.push(format!(
                    "{key} names the upload sha256:{sha}, which was uploaded as {} ({:?}), not as {kind}",
                    r.kind, r.name
                )),
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(lth_proto::errors::error_status(tonic::Code::FailedPrecondition, pb::ErrorReason::MissingUploads, problems.join("; ")))
    }

    /// UploadInput: stream the chunks into a staging object, verify size and digest, then move it
    /// to its content address and record it.
    async fn upload_input(&self, who: &Identity, mut stream: tonic::Streaming<pb::InputChunk>) -> Result<pb::InputInfo, Status> {
        let first = stream
            .message()
            .await?
            .ok_or_else(|| lth_proto::errors::invalid_argument("empty upload: the first chunk must name the input's sha256, kind, name and size"))?;
        let sha = first.sha256.to_ascii_lowercase();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(lth_proto::errors::invalid_argument("the first chunk's sha256 must be the whole input's 64-digit hex digest"));
        }
        let kind = pb::InputKind::try_from(first.kind).ok().and_then(input_kind_name).ok_or_else(|| {
            lth_proto::errors::invalid_argument(format!("input kind {} is not one of torchscript, image_folder, safetensors", first.kind))
        })?;
        let name: String = first.name.chars().filter(|c| !c.is_control()).take(200).collect();
        let max = self.opts.max_input_bytes;
        if first.total_bytes > max {
            return Err(too_large(&name, first.total_bytes, max));
        }
        if let Some(existing) = self.store.find_input(&sha).await.map_err(status)? {
            // Content-addressed: the bytes are already here. Nothing more is read.
            tracing::info!(sha256 = %sha, kind = %existing.kind, "input already stored; upload skipped");
            return Ok(input_info(&existing, false));
        }
        let declared = (first.total_bytes > 0).then_some(first.total_bytes);
        let head = futures::stream::once(futures::future::ready(Ok::<bytes::Bytes, Status>(bytes::Bytes::from(first.data))));
        let rest = stream.map(|c| c.map(|c| bytes::Bytes::from(c.data)));
        // The limit holds whatever the first chunk declared.
        let mut seen = 0u64;
        let limit_name = name.clone();
        let limited = head.chain(rest).map(move |c| {
            let c = c?;
            seen += c.len() as u64;
            if seen > max {
                return Err(too_large(&limit_name, seen, max));
            }
            Ok(c)
        });
        let staging = format!("uploads/{sha}.{}", unique_suffix());
        let stored = self.artifacts.put_verified(&staging, &name, &sha, declared, Box::pin(limited)).await?;
        let stored = stored.map_err(|e| lth_proto::errors::error_status(tonic::Code::DataLoss, pb::ErrorReason::InvalidArgument, e.to_string()))?;
        let key = format!("inputs/sha256/{sha}");
        let uri = self.artifacts.rename(&stored.uri, &key).await.map_err(|e| lth_proto::errors::unavailable(format!("object store: {e}")))?;
        let row = InputRow { sha256: sha.clone(), kind: kind.to_string(), name: name.clone(), bytes: stored.bytes as i64, uri, owner: Some(who.name.clone()), created_at: None };
        let created = self.store.record_input(&row).await.map_err(status)?;
        let row = self.store.find_input(&sha).await.map_err(status)?.unwrap_or(row);
        tracing::info!(sha256 = %sha, kind, name = %name, bytes = stored.bytes, created, "input uploaded");
        audit(who, "upload_input", None, None);
        Ok(input_info(&row, created))
    }
}

fn too_large(name: &str, bytes: u64, max: u64) -> Status {
    lth_proto::errors::error_status(
        tonic::Code::ResourceExhausted,
        pb::ErrorReason::LimitExceeded,
        format!(
            "{name:?} is {bytes} bytes or more, over this coordinator's upload limit of {max} bytes: ask its admin to raise --max-input-bytes, or put the file where the workers can read it and give its path"
        ),
    )
}

fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{nanos}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}
