//! The gRPC services: `SweepService` for people and lthctl, `WorkerService` for worker daemons.
//!
//! This layer translates between the wire types and the store, and owns the rules that need more
//! than the database: which artifacts a job may upload, streaming uploads and downloads through
//! the object store (every download checked against its record), and turning the events table
//! into a live WatchSweep stream.
//!
//! # Layout
//! - `mod.rs` (here): [`Coordinator`], the state both services share (store, batcher, object
//!   store, options, the sweep-spec cache), [`ServiceOptions`], and the store error → gRPC status
//!   rule ([`status`]) every handler uses.
//! - `convert.rs`: store rows to wire messages (jobs, sweeps, workers, inputs, results) and back
//!   (leases); the store's TEXT states are parsed into `lth_sweep::state` enums here, and a value
//!   the enums do not know is an error, never a silent UNSPECIFIED.
//! - `limits.rs`: the size rules: page sizes and the 2 MiB page cap, the worker-id rule, the
//!   artifact names a job kind may upload, the most jobs one claim hands out.
//! - `sweep_service.rs`: `SweepService` (submit, get/list, pause/resume/cancel/retry, results,
//!   jobs and workers in pages, throughput), with the owner check for submitter tokens.
//! - `worker_service.rs`: `WorkerService` (register, claim through the batcher, heartbeat,
//!   progress, complete, fail, release).
//! - `watch.rs`: the WatchSweep stream over the events table.
//! - `transfer.rs`: streams in and out of the object store: UploadArtifact (fenced by the lease,
//!   limited by name and size), DownloadArtifact (a lost file is repaired), UploadInput /
//!   ListInputs / DownloadInput (content-addressed models and datasets), and the submit-time
//!   check that a sweep's uploaded inputs exist.
//! - `download.rs`: a download checked against its record as it streams (size and sha256; the
//!   last chunk held back until both agree).
//! - `masks.rs`: StreamMasks, a sweep's masks one layer per message, a few jobs per statement.
//! - `leased.rs`: the kind of each lease handed out, so an upload needs no lookup of its own (the
//!   record statement stays the fence).

mod convert;
mod download;
mod leased;
mod limits;
mod masks;
mod sweep_service;
mod transfer;
mod watch;
mod worker_service;

pub use sweep_service::SweepSvc;
pub use worker_service::WorkerSvc;

use crate::artifacts::ArtifactStore;
use crate::auth::Identity;
use crate::group_commit::{GroupCommit, GroupCommitOptions};
use crate::store::{Lease, LostArtifact, Store, StoreError};
use lth_proto::v1 as pb;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::Status;

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

/// Shared state of both services (and of the HTTP port's pages).
pub struct Coordinator {
    pub store: Store,
    /// The store's claim and completion (and artifact records), batched across concurrent calls
    /// into one database round trip each (`group_commit.rs`).
    pub batcher: GroupCommit,
    pub artifacts: ArtifactStore,
    pub opts: ServiceOptions,
    /// Sweep specs never change once stored; assignments carry them (without the seed list), so
    /// keep them at hand. One cell per sweep, so the claims that race in after a restart read the
    /// spec once, not once each.
    specs: Mutex<HashMap<i64, Arc<tokio::sync::OnceCell<pb::SweepSpec>>>>,
    /// The job kind of each lease handed out here and not yet ended (`leased.rs`).
    leased: leased::LeasedKinds,
}

impl Coordinator {
    /// Needs a tokio runtime: it starts the group-commit batchers.
    pub fn new(store: Store, artifacts: ArtifactStore, opts: ServiceOptions) -> Arc<Coordinator> {
        let batcher = GroupCommit::start(store.clone(), opts.group_commit);
        Arc::new(Coordinator { store, batcher, artifacts, opts, specs: Mutex::new(HashMap::new()), leased: Default::default() })
    }

    /// A file `dependent` needs was found lost (`what` names it for people): repairs it through
    /// the store (`store/repair.rs`) and answers the dependent ARTIFACT_LOST, its job handed back.
    /// FAILED_PRECONDITION, so that a worker that does not know the reason drops the attempt as
    /// it would for a lost lease, which is what it now is.
    pub(super) async fn artifact_lost(&self, dependent: Lease, what: &str, name: &str, uri: Option<&str>, problem: &str) -> Status {
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

    /// The sweep's spec as an assignment of a job with `seed` carries it, read from the store once
    /// per sweep: the seed list cut to the job's own seed. The worker needs the recipe, not the
    /// grid, and the whole list made every assignment grow with the grid: at 25,000 seeds (1M
    /// jobs) ~60 KB to clone, encode and decode per claimed job, which cost the coordinator and
    /// the workers about twice the CPU per claim+complete of a 250-seed sweep (BENCHMARKS.md).
    async fn spec_of(&self, sweep_id: i64, seed: u64) -> Result<pb::SweepSpec, Status> {
        let cell = self.specs.lock().unwrap().entry(sweep_id).or_default().clone();
        let spec = cell
            .get_or_try_init(|| async {
                let mut spec = self.store.sweep_spec(sweep_id).await.map(|s| pb::SweepSpec::from(&s)).map_err(status)?;
                spec.seeds = Vec::new();
                Ok::<_, Status>(spec)
            })
            .await?;
        Ok(pb::SweepSpec { seeds: vec![seed], ..spec.clone() })
    }
}

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
fn status(e: StoreError) -> Status {
    use tonic::Code;
    let reason = e.reason();
    let code = match &e {
        StoreError::NotFound(_) => Code::NotFound,
        StoreError::FailedPrecondition(_)
        | StoreError::UnknownWorker(_)
        | StoreError::Superseded(_)
        | StoreError::StaleLease(_)
        | StoreError::MissingUploads(_) => {
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

/// The audit log: one line per state-changing call, naming who did what to which sweep or job.
/// Target `lth::audit`, so it can be routed or filtered on its own (`RUST_LOG=lth::audit=info`).
fn audit(who: &Identity, action: &str, sweep_id: Option<i64>, job_id: Option<i64>) {
    tracing::info!(target: "lth::audit", who = %who.name, role = who.role.as_str(), action, sweep_id, job_id, "audit");
}
