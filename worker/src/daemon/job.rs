//! One claimed job, from its inputs to CompleteJob or FailJob.
//!
//! Phases: prepare (working directory, input artifacts from the cache, the resume checkpoint,
//! job.json) → run (the child process; its events become progress reports and checkpoint uploads)
//! → finish (upload outputs, CompleteJob) or fail (FailJob). At any point the job can be stopped:
//! an abort (cancel, pause, lost lease) kills the process group and drops the job without another
//! write; a shutdown lets the child finish or checkpoint, uploads the checkpoint, and hands the job
//! back.

use super::artifacts::{self, ArtifactCache, CachedArtifact, TransferError};
use super::bundle::{MemberProc, Seat};
use super::child;
use super::failure;
use super::convert;
use super::events::ChildEvent;
use super::host::Slot;
use super::jobfile::JobFile;
use super::rpc::{self, Client, Failure};
use crate::engine::{self, StepOutput};
use lth_proto::v1 as pb;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tokio::time::Instant;

/// Settings and handles shared by every job of a daemon.
pub struct JobContext {
    pub client: Client,
    pub cache: ArtifactCache,
    /// Working directories live here, one per (job, attempt).
    pub jobs_dir: PathBuf,
    /// The `lth-worker` binary that runs `exec-job`.
    pub exe: PathBuf,
    pub torch_lib_dir: Option<PathBuf>,
    pub threads: Option<i32>,
    pub progress_interval: Duration,
    pub kill_grace: Duration,
    pub shutdown_grace: Duration,
    pub keep_workdirs: bool,
    /// GPU names by nvidia-smi index, for the device a finished job reports ("cuda NVIDIA H200").
    pub gpu_names: std::collections::HashMap<u32, String>,
    /// This worker's id and host, named in the errors of node-local failures.
    pub worker_id: String,
    pub host: String,
    /// The next jobs that completions brought (CompleteJob's `claim_next`).
    pub handoff: Handoff,
}

/// A solo job's completion also claims the worker's next job (`claim_next` = 1), so the slot it
/// frees is filled without a ClaimJobs round trip. The job task leaves what the reply brought
/// here before it frees its slot; the main loop starts it in that slot, or hands it back when the
/// daemon stopped taking work meanwhile.
#[derive(Debug, Default)]
pub struct Handoff {
    /// Set when the daemon stops taking work (shutdown, unhealthy): completions ask for nothing.
    closed: std::sync::atomic::AtomicBool,
    brought: std::sync::Mutex<Vec<pb::JobAssignment>>,
}

impl Handoff {
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn is_open(&self) -> bool {
        !self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn put(&self, jobs: Vec<pb::JobAssignment>) {
        self.brought.lock().unwrap().extend(jobs);
    }

    /// What completions brought since the last call.
    pub fn take(&self) -> Vec<pb::JobAssignment> {
        std::mem::take(&mut *self.brought.lock().unwrap())
    }
}

impl JobContext {
    /// Where a job on `slot` runs, as CompleteJob reports it: "cpu" or "cuda <GPU name>".
    pub fn device_label(&self, slot: Slot) -> String {
        match slot.gpu {
            None => "cpu".to_string(),
            Some(i) => match self.gpu_names.get(&i) {
                Some(name) if !name.is_empty() => format!("cuda {name}"),
                _ => "cuda".to_string(),
            },
        }
    }
}

/// Why a job must stop before it ends by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The coordinator said so (heartbeat reply): the lease is gone, nothing more is written.
    Abort(pb::AbortReason),
    /// The daemon is shutting down: finish or checkpoint, then give the job back.
    Shutdown,
}

/// How a job ended, from this worker's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// `node_local`: the failure was this machine's (see `failure`), not the job's; `error` is
    /// the first line of what was reported.
    Failed { retryable: bool, node_local: bool, error: String },
    /// Killed and forgotten: cancelled, paused or the lease was lost.
    Dropped(String),
    /// Handed back on shutdown (with its latest checkpoint uploaded, if any).
    Released,
}

enum Prepared {
    /// The job file, and the cached inputs, pinned against cache eviction while the job runs.
    Ready { job_file: PathBuf, inputs: Vec<CachedArtifact> },
    /// A deterministic problem with the job itself.
    Invalid(String),
    /// A problem getting the inputs; another attempt may succeed.
    Unavailable(String),
    /// A problem of this machine (a full disk): another worker may succeed.
    NodeLocal(String),
    LeaseLost,
    /// An input was lost from the coordinator's object store: the coordinator re-runs the job
    /// that made it and has taken this job back (ARTIFACT_LOST); nothing more is written.
    HandedBack(String),
}

/// Runs one claimed job to its end. `seat`: the job is a member of a ticket bundle and trains in
/// its bundle's shared process (`bundle.rs`); None: in a process of its own.
pub async fn run(ctx: Arc<JobContext>, job: pb::JobAssignment, slot: Slot, stop: watch::Receiver<Option<Stop>>, seat: Option<Seat>) -> Outcome {
    use super::metrics::names as M;
    let kind = if job.kind == pb::JobKind::Dense as i32 { "dense" } else { "level" };
    let slot_label = slot.id.to_string();
    metrics::gauge!(M::JOBS_RUNNING, "slot" => slot_label.clone()).set(1.0);
    let t0 = Instant::now();
    let outcome = run_job(ctx, job, slot, stop, seat).await;
    metrics::gauge!(M::JOBS_RUNNING, "slot" => slot_label.clone()).set(0.0);
    metrics::gauge!(M::IMAGES_PER_SECOND, "slot" => slot_label.clone()).set(0.0);
    let label = match &outcome {
        Outcome::Completed => "completed",
        Outcome::Failed { .. } => "failed",
        Outcome::Dropped(_) => "dropped",
        Outcome::Released => "released",
    };
    metrics::histogram!(M::JOB_SECONDS, "kind" => kind, "outcome" => label).record(t0.elapsed().as_secs_f64());
    outcome
}

async fn run_job(ctx: Arc<JobContext>, job: pb::JobAssignment, slot: Slot, mut stop: watch::Receiver<Option<Stop>>, seat: Option<Seat>) -> Outcome {
    let slot_label = slot.id.to_string();
    let mut last_progress: Option<(Instant, u64)> = None;
    let lease = pb::JobLease { job_id: job.job_id, attempt: job.attempt };
    // A bundle member's slot frees only when the last member ends: its completion claims nothing.
    let solo = seat.is_none();
    let workdir = ctx.jobs_dir.join(format!("job-{}-a{}", job.job_id, job.attempt));
    tracing::info!(job = job.job_id, attempt = job.attempt, level = job.level, seed = job.seed, slot = slot.id, gpu = ?slot.gpu, "job claimed");
    remove_earlier_attempts(&ctx.jobs_dir, job.job_id, &workdir);

    // Prepare, unless stopped meanwhile.
    let prepared = tokio::select! {
        p = prepare(&ctx, &job, &workdir, slot) => p,
        s = next_stop(&mut stop) => return stopped_before_start(&ctx, lease, &workdir, s).await,
    };
    let (job_file, _inputs) = match prepared {
        Prepared::Ready { job_file, inputs } => (job_file, inputs),
        Prepared::LeaseLost => return finish_dropped(&ctx, &workdir, "lease lost while fetching inputs"),
        Prepared::HandedBack(msg) => return finish_dropped(&ctx, &workdir, &format!("an input was lost and is being made again: {msg}")),
        Prepared::Invalid(msg) => return fail(&ctx, lease, &workdir, format!("invalid job: {msg}"), false, false).await,
        Prepared::Unavailable(msg) => return fail(&ctx, lease, &workdir, format!("cannot fetch inputs: {msg}"), true, false).await,
        Prepared::NodeLocal(msg) => return fail(&ctx, lease, &workdir, format!("cannot prepare the job: {msg}"), true, true).await,
    };

    let mut child = match seat {
        None => {
            let log = workdir.join("exec-job.log");
            match child::spawn(&ctx.exe, &job_file, &log, slot.gpu) {
                Ok((child, stdout)) => Proc::Own { child, lines: BufReader::new(stdout).lines(), log },
                Err(e) => {
                    return fail(&ctx, lease, &workdir, format!("cannot start {} exec-job: {e}", ctx.exe.display()), true, failure::io_is_node_local(&e)).await;
                }
            }
        }
        // A bundle member: waits for the others to be prepared; one process trains them all.
        Some(seat) => {
            let joined = tokio::select! {
                j = seat.join(job_file.clone()) => j,
                // The seat was dropped with the select: the bundle starts without this member.
                s = next_stop(&mut stop) => return stopped_before_start(&ctx, lease, &workdir, s).await,
            };
            match joined {
                Ok(m) => Proc::Member(m),
                Err(e) => return fail(&ctx, lease, &workdir, e, true, false).await,
            }
        }
    };
    let log_path = child.log_path().to_path_buf();
    tracing::debug!(job = job.job_id, pid = child.pid(), "job process started");

    let (lost_tx, mut lost_rx) = watch::channel(false);
    let (progress_tx, progress_rx) = watch::channel(None::<pb::ReportProgressRequest>);
    let (checkpoint_tx, checkpoint_rx) = watch::channel(None::<PathBuf>);
    let reporter = tokio::spawn(report_progress(ctx.client.clone(), progress_rx, ctx.progress_interval, lost_tx.clone()));
    let uploader = tokio::spawn(upload_checkpoints(ctx.client.clone(), lease, checkpoint_rx, lost_tx.clone()));

    let mut finished: Option<StepOutput> = None;
    let mut failed: Option<(String, bool, bool)> = None;
    let mut shutdown_deadline: Option<Instant> = None;
    let mut snapshots = 0u64;
    let mut stop_open = true;
    let mut eof = false;
    let status = loop {
        tokio::select! {
            next = child.next(eof) => match next {
                Next::Exited(status) => break status,
                Next::Event(event) => match event {
                    ChildEvent::Started { device, resumed } => {
                        tracing::info!(job = job.job_id, %device, resumed, "training started");
                    }
                    ChildEvent::Progress { iteration, total_iterations, epoch, train_loss, test_accuracy, images_per_second } => {
                        use super::metrics::names as M;
                        metrics::gauge!(M::IMAGES_PER_SECOND, "slot" => slot_label.clone()).set(images_per_second);
                        let now = Instant::now();
                        if let Some((t, it)) = last_progress {
                            if iteration > it {
                                let step = (now - t).as_secs_f64() / (iteration - it) as f64;
                                metrics::gauge!(M::STEP_SECONDS, "slot" => slot_label.clone()).set(step);
                            }
                        }
                        last_progress = Some((now, iteration));
                        let _ = progress_tx.send(Some(pb::ReportProgressRequest {
                            lease: Some(lease),
                            iteration,
                            total_iterations,
                            epoch,
                            train_loss,
                            test_accuracy: test_accuracy.unwrap_or(f64::NAN),
                            images_per_second,
                        }));
                    }
                    ChildEvent::Checkpoint { path } => {
                        // Hard-link the checkpoint so the child can replace it while we upload.
                        snapshots += 1;
                        match snapshot(&path, &workdir, snapshots) {
                            Ok(snap) => { let _ = checkpoint_tx.send(Some(snap)); }
                            Err(e) => tracing::warn!(job = job.job_id, error = %e, "cannot snapshot checkpoint for upload"),
                        }
                    }
                    ChildEvent::Finished { output } => finished = Some(output),
                    ChildEvent::Failed { error, retryable, node_local } => failed = Some((error, retryable, node_local)),
                },
                Next::Eof => eof = true,
            },
            changed = stop.changed(), if stop_open => {
                if changed.is_err() { stop_open = false; continue; }
                let s = *stop.borrow_and_update();
                match s {
                    Some(Stop::Abort(reason)) => {
                        reporter.abort();
                        uploader.abort();
                        let _ = child.terminate(ctx.kill_grace).await;
                        return finish_dropped(&ctx, &workdir, &format!("aborted by the coordinator ({})", reason.as_str_name()));
                    }
                    Some(Stop::Shutdown) if shutdown_deadline.is_none() => {
                        tracing::info!(job = job.job_id, "shutting down: asking the job to finish or checkpoint");
                        child.signal_group(libc::SIGTERM);
                        shutdown_deadline = Some(Instant::now() + ctx.shutdown_grace);
                    }
                    _ => {}
                }
            }
            _ = lost_rx.changed() => {
                reporter.abort();
                uploader.abort();
                let _ = child.terminate(ctx.kill_grace).await;
                return finish_dropped(&ctx, &workdir, "lease lost (the coordinator rejected a write)");
            }
            _ = tokio::time::sleep_until(shutdown_deadline.unwrap_or_else(Instant::now)), if shutdown_deadline.is_some() => {
                tracing::warn!(job = job.job_id, "job did not stop within the shutdown grace period; killing it");
                child.signal_group(libc::SIGKILL);
                shutdown_deadline = None;
            }
        }
    };
    // Whatever else of the group is still around goes now.
    child.after_exit();
    reporter.abort();
    drop(progress_tx);
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            uploader.abort();
            return fail(&ctx, lease, &workdir, format!("lost track of the job process: {e}"), true, false).await;
        }
    };

    if let (Some(output), true) = (finished, status.success()) {
        uploader.abort();
        return complete(&ctx, lease, &workdir, output, ctx.device_label(slot), &mut stop, solo).await;
    }

    if shutdown_deadline.is_some() || matches!(*stop.borrow(), Some(Stop::Shutdown)) {
        // Stopped for shutdown: hand the job back with its latest checkpoint.
        drop(checkpoint_tx);
        let last_uploaded = uploader.await.ok().flatten();
        let note = match upload_final_checkpoint(&ctx, lease, &workdir, last_uploaded.as_deref()).await {
            Ok(Some(r)) => format!("checkpoint uploaded ({} bytes); the next attempt resumes from it", r.bytes),
            Ok(None) => "no checkpoint was written yet".to_string(),
            Err(TransferError::Rpc(s)) if rpc::classify(&s) == Failure::LeaseLost => {
                return finish_dropped(&ctx, &workdir, "lease lost while uploading the checkpoint");
            }
            Err(e) => format!("checkpoint upload failed: {e}"),
        };
        release(&ctx, lease, &format!("the worker shut down mid-job; {note}")).await;
        let outcome = Outcome::Released;
        cleanup(&ctx, &workdir, &outcome);
        return outcome;
    }
    uploader.abort();

    let (error, retryable, node_local) = failed.unwrap_or_else(|| {
        (format!("the job process ended with {} without reporting a result", child::describe_exit(&status)), true, false)
    });
    let tail = log_tail(&log_path, 2000);
    let error = if tail.is_empty() { error } else { format!("{error}\n--- end of the job's log ---\n{tail}") };
    fail(&ctx, lease, &workdir, error, retryable, node_local).await
}

/// The process a job's events come from: its own `exec-job`, or its bundle's, shared with the
/// other members (`bundle.rs`).
enum Proc {
    Own { child: child::JobChild, lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>, log: PathBuf },
    Member(MemberProc),
}

/// What a job's process did next: an event, the end of its output, then its exit.
enum Next {
    Event(ChildEvent),
    Eof,
    Exited(std::io::Result<std::process::ExitStatus>),
}

impl Proc {
    /// Before `eof`: the next event (or the end of the output); after it: the exit status. One
    /// call for both, so that the job's select loop borrows the process once (cancel-safe).
    async fn next(&mut self, eof: bool) -> Next {
        if eof {
            Next::Exited(self.wait().await)
        } else {
            match self.next_event().await {
                Some(e) => Next::Event(e),
                None => Next::Eof,
            }
        }
    }

    fn pid(&self) -> i32 {
        match self {
            Proc::Own { child, .. } => child.pid(),
            Proc::Member(m) => m.pid(),
        }
    }

    /// The job's next event; None when the process's output has ended. Lines that are not
    /// events (a stray print) are skipped rather than failing the job.
    async fn next_event(&mut self) -> Option<ChildEvent> {
        match self {
            Proc::Own { lines, .. } => loop {
                match lines.next_line().await {
                    Ok(Some(line)) => match ChildEvent::parse(&line) {
                        Some(e) => return Some(e),
                        None => tracing::debug!(line = %line, "ignoring non-event output of the job"),
                    },
                    Ok(None) | Err(_) => return None,
                }
            },
            Proc::Member(m) => m.next_event().await,
        }
    }

    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self {
            Proc::Own { child, .. } => child.wait().await,
            Proc::Member(m) => m.wait().await,
        }
    }

    /// Stops following the job: its own process is terminated; a bundle member leaves, and the
    /// bundle's process trains on for the others.
    async fn terminate(&mut self, grace: Duration) {
        match self {
            Proc::Own { child, .. } => {
                let _ = child.terminate(grace).await;
            }
            Proc::Member(m) => m.leave(),
        }
    }

    fn signal_group(&self, signal: i32) {
        match self {
            Proc::Own { child, .. } => child.signal_group(signal),
            Proc::Member(m) => m.signal_group(signal),
        }
    }

    /// After the process exited: nothing of its group may survive it (a bundle's driver sees
    /// to its own).
    fn after_exit(&self) {
        if let Proc::Own { child, .. } = self {
            child.signal_group(libc::SIGKILL);
        }
    }

    fn log_path(&self) -> &Path {
        match self {
            Proc::Own { log, .. } => log,
            Proc::Member(m) => m.log_path(),
        }
    }
}

/// Waits for the next stop request (never returns if the sender is gone).
async fn next_stop(stop: &mut watch::Receiver<Option<Stop>>) -> Stop {
    loop {
        if let Some(s) = *stop.borrow_and_update() {
            return s;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn prepare(ctx: &JobContext, job: &pb::JobAssignment, workdir: &Path, slot: Slot) -> Prepared {
    let lease = pb::JobLease { job_id: job.job_id, attempt: job.attempt };
    let mut step = match convert::step_spec(job) {
        Ok(s) => s,
        Err(e) => return Prepared::Invalid(format!("{e:#}")),
    };
    if let Err(e) = tokio::fs::create_dir_all(workdir).await {
        let msg = format!("cannot create {}: {e}", workdir.display());
        return if failure::io_is_node_local(&e) { Prepared::NodeLocal(msg) } else { Prepared::Unavailable(msg) };
    }
    let client = ctx.client.clone();
    let mut rewind = None;
    let mut parent = None;
    let mut pinned = Vec::new();
    // Inputs uploaded with lthctl (the model file, a dataset): fetched by digest into the cache,
    // and the job reads them there.
    let model_upload = match &step.model {
        lth_sweep::ModelSpec::TorchScript(t) if t.uploaded => Some(t.sha256.clone().unwrap_or_default()),
        _ => None,
    };
    if let Some(sha) = model_upload {
        let cached = match fetch_input(ctx, &sha, "model").await {
            Ok(c) => c,
            Err(p) => return p,
        };
        if let lth_sweep::ModelSpec::TorchScript(t) = &mut step.model {
            t.torchscript = cached.path.to_string_lossy().into_owned();
            t.uploaded = false;
        }
        pinned.push(cached);
    }
    if let Some(sha) = step.dataset.upload_sha256().map(str::to_string) {
        let cached = match fetch_input(ctx, &sha, "dataset").await {
            Ok(c) => c,
            Err(p) => return p,
        };
        let path = if step.dataset.name == lth_sweep::DatasetKind::ImageFolder {
            let (cache, tar, s) = (ctx.cache.clone(), cached.path.clone(), sha.clone());
            match tokio::task::spawn_blocking(move || cache.unpacked(&s, &tar)).await {
                Ok(Ok((dir, was_there))) => {
                    if was_there {
                        tracing::info!(job = job.job_id, sha256 = %sha, "unpacked ImageFolder cache hit");
                    }
                    dir
                }
                Ok(Err(e)) => return Prepared::Invalid(format!("{e:#}")),
                Err(e) => return Prepared::Unavailable(format!("unpacking the dataset: {e}")),
            }
        } else {
            cached.path.clone()
        };
        step.dataset.path = Some(path.to_string_lossy().into_owned());
        step.dataset.upload = None;
        pinned.push(cached);
    }
    for input in &job.inputs {
        let cached = match retry_transfer("download input", || {
            let mut c = client.clone();
            let cache = ctx.cache.clone();
            let input = input.clone();
            async move { cache.fetch(&mut c, &input, Some(lease)).await }
        })
        .await
        {
            Ok(p) => p,
            Err(TransferError::Rpc(s)) if rpc::classify(&s) == Failure::LeaseLost => return Prepared::LeaseLost,
            Err(TransferError::Rpc(s)) if rpc::classify(&s) == Failure::ArtifactLost => return Prepared::HandedBack(s.message().to_string()),
            Err(TransferError::Local(e)) if failure::is_node_local(&e) => {
                return Prepared::NodeLocal(format!("artifact {:?} of job {}: {e:#}", input.name, input.job_id))
            }
            Err(e) => return Prepared::Unavailable(format!("artifact {:?} of job {}: {e}", input.name, input.job_id)),
        };
        let path = cached.path.clone();
        pinned.push(cached);
        match input.name.as_str() {
            "rewind" => rewind = Some(path),
            "weights" => parent = Some(path),
            other => tracing::warn!(job = job.job_id, name = other, "ignoring an input artifact with an unknown name"),
        }
    }
    if step.level >= 1 && (rewind.is_none() || parent.is_none()) {
        return Prepared::Invalid(format!(
            "level {} needs the \"rewind\" and \"weights\" artifacts of earlier jobs, the assignment lists {:?}",
            step.level,
            job.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>()
        ));
    }
    if let Some(ckpt) = job.resume_checkpoint.as_ref().filter(|c| !c.name.is_empty()) {
        let dest = workdir.join(engine::CHECKPOINT_FILE);
        let tmp = workdir.join("resume.partial");
        let expected = (!ckpt.sha256.is_empty()).then(|| ckpt.sha256.to_ascii_lowercase());
        let got = retry_transfer("download checkpoint", || {
            let mut c = client.clone();
            let (tmp, expected, job_id, name) = (tmp.clone(), expected.clone(), ckpt.job_id, ckpt.name.clone());
            async move { artifacts::download_to(&mut c, job_id, &name, Some(lease), expected.as_deref(), &tmp).await }
        })
        .await;
        match got {
            Ok(_) => {
                if let Err(e) = tokio::fs::rename(&tmp, &dest).await {
                    return Prepared::Unavailable(format!("cannot place the resume checkpoint: {e}"));
                }
                tracing::info!(job = job.job_id, bytes = ckpt.bytes, "resuming from the checkpoint of an earlier attempt");
            }
            Err(TransferError::Rpc(s)) if rpc::classify(&s) == Failure::LeaseLost => return Prepared::LeaseLost,
            // Without the checkpoint the job restarts from scratch, which yields the same result.
            Err(e) => tracing::warn!(job = job.job_id, error = %e, "cannot fetch the resume checkpoint; starting over"),
        }
    }
    let file = JobFile {
        job_id: job.job_id,
        attempt: job.attempt,
        step,
        rewind,
        parent,
        workdir: workdir.to_path_buf(),
        torch_lib_dir: ctx.torch_lib_dir.clone(),
        cuda_device: slot.gpu.map(|_| 0),
        threads: ctx.threads,
    };
    let path = workdir.join("job.json");
    match file.write(&path) {
        Ok(()) => Prepared::Ready { job_file: path, inputs: pinned },
        Err(e) if failure::is_node_local(&e) => Prepared::NodeLocal(format!("{e:#}")),
        Err(e) => Prepared::Unavailable(format!("{e:#}")),
    }
}

/// An uploaded input from the cache (downloading it when needed). A digest the coordinator does
/// not hold fails the job for good: no attempt can succeed until someone uploads it again.
async fn fetch_input(ctx: &JobContext, sha256: &str, what: &str) -> Result<CachedArtifact, Prepared> {
    let got = retry_transfer("download input", || {
        let mut c = ctx.client.clone();
        let cache = ctx.cache.clone();
        let sha = sha256.to_string();
        async move { cache.fetch_input(&mut c, &sha).await }
    })
    .await;
    match got {
        Ok(c) => Ok(c),
        Err(TransferError::Rpc(s)) if s.code() == tonic::Code::NotFound => Err(Prepared::Invalid(format!(
            "the sweep's {what} was uploaded as sha256:{sha256}, but the coordinator does not hold it ({}); upload it again and resubmit",
            s.message()
        ))),
        Err(TransferError::Rpc(s)) if rpc::classify(&s) == Failure::LeaseLost => Err(Prepared::LeaseLost),
        Err(e) => Err(Prepared::Unavailable(format!("the uploaded {what} sha256:{sha256}: {e}"))),
    }
}

/// Retries a transfer while the coordinator is unreachable.
async fn retry_transfer<T, F, Fut>(what: &str, mut call: F) -> Result<T, TransferError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, TransferError>>,
{
    let mut backoff = rpc::Backoff::coordinator();
    let mut failures = 0u32;
    loop {
        match call().await {
            Err(TransferError::Rpc(s)) if rpc::classify(&s) == Failure::Transient => {
                if failures % 10 == 0 {
                    tracing::warn!(what, error = %s.message(), "transfer failed; retrying with backoff");
                }
                failures += 1;
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(TransferError::Local(e)) if failures < 3 => {
                // A corrupt or cut download: try again a few times before giving up.
                tracing::warn!(what, error = %e, "transfer failed; retrying");
                failures += 1;
                tokio::time::sleep(backoff.next_delay()).await;
            }
            other => return other,
        }
    }
}

fn snapshot(path: &Path, workdir: &Path, n: u64) -> std::io::Result<PathBuf> {
    let dir = workdir.join("upload");
    std::fs::create_dir_all(&dir)?;
    let snap = dir.join(format!("checkpoint-{n}.safetensors"));
    if std::fs::hard_link(path, &snap).is_err() {
        std::fs::copy(path, &snap)?;
    }
    Ok(snap)
}

/// Sends the latest progress at most once per `interval`. Progress is best effort: a failed
/// report is skipped, except that a fenced one (lease lost) stops the job.
async fn report_progress(
    mut client: Client,
    mut rx: watch::Receiver<Option<pb::ReportProgressRequest>>,
    interval: Duration,
    lost: watch::Sender<bool>,
) {
    while rx.changed().await.is_ok() {
        let Some(req) = rx.borrow_and_update().clone() else { continue };
        match tokio::time::timeout(Duration::from_secs(10), client.report_progress(req)).await {
            Ok(Ok(_)) => {}
            Ok(Err(s)) if rpc::classify(&s) == Failure::LeaseLost => {
                let _ = lost.send(true);
                return;
            }
            Ok(Err(s)) => tracing::debug!(error = %s.message(), "progress report failed (skipped)"),
            Err(_) => tracing::debug!("progress report timed out (skipped)"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Uploads each new checkpoint snapshot (only the latest when several queue up). Returns the
/// sha256 of the last one uploaded.
async fn upload_checkpoints(
    client: Client,
    lease: pb::JobLease,
    mut rx: watch::Receiver<Option<PathBuf>>,
    lost: watch::Sender<bool>,
) -> Option<String> {
    let mut last: Option<String> = None;
    while rx.changed().await.is_ok() {
        let Some(path) = rx.borrow_and_update().clone() else { continue };
        let result = retry_transfer("upload checkpoint", || {
            let mut c = client.clone();
            let p = path.clone();
            async move { artifacts::upload(&mut c, lease, "checkpoint", &p).await }
        })
        .await;
        match result {
            Ok(r) => {
                tracing::debug!(job = lease.job_id, bytes = r.bytes, "checkpoint uploaded");
                last = Some(r.sha256.to_ascii_lowercase());
            }
            Err(TransferError::Rpc(s)) if rpc::classify(&s) == Failure::LeaseLost => {
                let _ = lost.send(true);
                return last;
            }
            Err(e) => tracing::warn!(job = lease.job_id, error = %e, "checkpoint upload failed; the next one will be tried"),
        }
        let _ = std::fs::remove_file(&path);
    }
    last
}

/// On shutdown: uploads the workdir's checkpoint unless it is the one already uploaded.
async fn upload_final_checkpoint(
    ctx: &JobContext,
    lease: pb::JobLease,
    workdir: &Path,
    last_uploaded: Option<&str>,
) -> Result<Option<pb::ArtifactRef>, TransferError> {
    let path = workdir.join(engine::CHECKPOINT_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let (sha, bytes) = artifacts::sha256_file(&path).map_err(|e| TransferError::Local(e.into()))?;
    if last_uploaded == Some(sha.as_str()) {
        return Ok(Some(pb::ArtifactRef { job_id: lease.job_id, name: "checkpoint".into(), sha256: sha, bytes }));
    }
    let deadline = ctx.shutdown_grace.max(Duration::from_secs(10));
    match tokio::time::timeout(
        deadline,
        retry_transfer("upload checkpoint", || {
            let mut c = ctx.client.clone();
            let p = path.clone();
            async move { artifacts::upload(&mut c, lease, "checkpoint", &p).await }
        }),
    )
    .await
    {
        Ok(r) => r.map(Some),
        Err(_) => Err(TransferError::Local(anyhow::anyhow!("timed out after {deadline:?}"))),
    }
}

/// Uploads the step's outputs and reports the result (a solo job's report also claims the
/// worker's next job, see [`Handoff`]). An abort during the uploads drops the job; a shutdown
/// does not interrupt (the work is done, only the report remains).
async fn complete(
    ctx: &JobContext,
    lease: pb::JobLease,
    workdir: &Path,
    output: StepOutput,
    device: String,
    stop: &mut watch::Receiver<Option<Stop>>,
    solo: bool,
) -> Outcome {
    let work = async {
        // The coordinator records each upload under the lease; CompleteJob then checks that the
        // ones the children need are there.
        for (name, path) in &output.artifacts {
            retry_transfer("upload output", || {
                let mut c = ctx.client.clone();
                let (name, path) = (name.clone(), path.clone());
                async move { artifacts::upload(&mut c, lease, &name, &path).await }
            })
            .await?;
        }
        Ok::<(), TransferError>(())
    };
    let aborted = async {
        loop {
            if let Stop::Abort(reason) = next_stop(stop).await {
                return reason;
            }
            // A shutdown while completing: keep going; wait for a later abort.
            if stop.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let uploaded = tokio::select! {
        r = work => r,
        reason = aborted => return finish_dropped(ctx, workdir, &format!("aborted while reporting the result ({})", reason.as_str_name())),
    };
    // Not cut short by an abort: the reply may carry a job leased to this worker, which would
    // otherwise run nowhere until its lease ran out. A job aborted meanwhile is refused here
    // (STALE_LEASE) and dropped below.
    let result = match uploaded {
        Ok(()) => report(ctx, lease, &output, device, solo).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => {
            tracing::info!(
                job = lease.job_id,
                attempt = lease.attempt,
                accuracy = output.report.test_accuracy,
                sparsity = output.report.sparsity,
                "job completed"
            );
            let outcome = Outcome::Completed;
            cleanup(ctx, workdir, &outcome);
            outcome
        }
        Err(TransferError::Rpc(s)) if rpc::classify(&s) == Failure::LeaseLost => {
            finish_dropped(ctx, workdir, "lease lost while reporting the result")
        }
        // The coordinator will never accept this result: running the job again gives the same.
        Err(TransferError::Rpc(s)) if lth_proto::errors::error_reason(&s) == Some(pb::ErrorReason::InvalidResult) => {
            fail(ctx, lease, workdir, format!("the coordinator refused the job's result: {}", s.message()), false, false).await
        }
        Err(e) => fail(ctx, lease, workdir, format!("the step finished but its result could not be stored: {e}"), true, false).await,
    }
}

/// CompleteJob with the engine's result as the wire carries it (the domain's one conversion) and
/// the slot's device; a solo job's asks for the worker's next job, left in the [`Handoff`].
async fn report(ctx: &JobContext, lease: pb::JobLease, output: &StepOutput, device: String, solo: bool) -> Result<(), TransferError> {
    let result = pb::LevelResult::from(lth_sweep::result::LevelResult { device, ..output.report.result.clone() });
    let claim_next = u32::from(solo && ctx.handoff.is_open());
    let req = pb::CompleteJobRequest { lease: Some(lease), result: Some(result), claim_next, worker_id: ctx.worker_id.clone() };
    let reply = rpc::retry_transient("CompleteJob", || {
        let mut c = ctx.client.clone();
        let req = req.clone();
        async move { c.complete_job(req).await }
    })
    .await
    .map_err(TransferError::Rpc)?;
    ctx.handoff.put(reply.into_inner().jobs);
    Ok(())
}

/// Reports a failed attempt. A node-local failure (this machine's fault, see `failure`) is sent
/// as such, retryable (on another worker), and its error names this worker and host; the paths
/// in it are this machine's.
async fn fail(ctx: &JobContext, lease: pb::JobLease, workdir: &Path, error: String, retryable: bool, node_local: bool) -> Outcome {
    let (error, retryable) = if node_local {
        (format!("node-local failure on worker {} (host {}); the job runs on another worker: {error}", ctx.worker_id, ctx.host), true)
    } else {
        (error, retryable)
    };
    tracing::warn!(job = lease.job_id, attempt = lease.attempt, retryable, node_local, error = %first_line(&error), "job failed");
    let summary = first_line(&error).to_string();
    let req = pb::FailJobRequest { lease: Some(lease), error, retryable, node_local };
    let sent = rpc::retry_transient("FailJob", || {
        let mut c = ctx.client.clone();
        let req = req.clone();
        async move { c.fail_job(req).await }
    })
    .await;
    if let Err(s) = sent {
        tracing::warn!(job = lease.job_id, code = ?s.code(), error = %s.message(), "FailJob was not accepted");
    }
    let outcome = Outcome::Failed { retryable, node_local, error: summary };
    cleanup(ctx, workdir, &outcome);
    outcome
}

/// Hands a job back on shutdown with ReleaseJob: the coordinator re-queues it at once, without
/// counting the attempt as failed (a worker restart is not the job's fault) or lost, and the next
/// attempt resumes from the uploaded checkpoint. If the call cannot be made (the coordinator is
/// away past the grace period, or too old to know ReleaseJob) the job is left to its lease, which
/// the reaper re-queues when it expires.
pub async fn release(ctx: &JobContext, lease: pb::JobLease, why: &str) {
    let req = pb::ReleaseJobRequest { lease: Some(lease), reason: why.to_string() };
    // Short: the checkpoint upload before it already used the shutdown budget.
    let deadline = Duration::from_secs(10);
    let sent = tokio::time::timeout(
        deadline,
        rpc::retry_transient("ReleaseJob", || {
            let mut c = ctx.client.clone();
            let req = req.clone();
            async move { c.release_job(req).await }
        }),
    )
    .await;
    match sent {
        Ok(Ok(_)) => tracing::info!(job = lease.job_id, attempt = lease.attempt, "job handed back: {why}; claimable again at once"),
        Ok(Err(s)) if rpc::classify(&s) == Failure::LeaseLost => {
            tracing::info!(job = lease.job_id, attempt = lease.attempt, "job not handed back: its lease was already gone")
        }
        Ok(Err(s)) => tracing::warn!(
            job = lease.job_id,
            attempt = lease.attempt,
            code = ?s.code(),
            error = %s.message(),
            "ReleaseJob was refused; the job is re-queued when its lease expires"
        ),
        Err(_) => tracing::warn!(
            job = lease.job_id,
            attempt = lease.attempt,
            "ReleaseJob did not reach the coordinator within {deadline:?}; the job is re-queued when its lease expires"
        ),
    }
}

/// A job stopped before its process started (while preparing, or while its bundle gathered): an
/// abort drops it, a shutdown hands it back at once; either way its workdir goes.
async fn stopped_before_start(ctx: &JobContext, lease: pb::JobLease, workdir: &Path, stop: Stop) -> Outcome {
    let outcome = match stop {
        Stop::Abort(reason) => Outcome::Dropped(format!("aborted before start ({})", reason.as_str_name())),
        Stop::Shutdown => {
            release(ctx, lease, "the worker shut down before the job started").await;
            Outcome::Released
        }
    };
    cleanup(ctx, workdir, &outcome);
    outcome
}

fn finish_dropped(ctx: &JobContext, workdir: &Path, why: &str) -> Outcome {
    tracing::info!(workdir = %workdir.display(), "job dropped: {why}");
    let outcome = Outcome::Dropped(why.to_string());
    cleanup(ctx, workdir, &outcome);
    outcome
}

/// Removes the attempt's working directory, whatever its outcome (a failed attempt's too: its
/// checkpoints and outputs could fill a disk, and the log tail is already in its error).
fn cleanup(ctx: &JobContext, workdir: &Path, _outcome: &Outcome) {
    if ctx.keep_workdirs {
        return;
    }
    let _ = std::fs::remove_dir_all(workdir);
}

/// Working directories of earlier attempts of the same job on this worker are stale.
fn remove_earlier_attempts(jobs_dir: &Path, job_id: i64, keep: &Path) {
    let prefix = format!("job-{job_id}-a");
    if let Ok(entries) = std::fs::read_dir(jobs_dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p != keep && e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_dir_all(p);
            }
        }
    }
}

fn log_tail(path: &Path, max: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else { return String::new() };
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[allow(dead_code)]
fn _assert_send(ctx: Arc<JobContext>, job: pb::JobAssignment, slot: Slot, stop: watch::Receiver<Option<Stop>>, seat: Option<Seat>) {
    fn is_send<T: Send>(_: T) {}
    is_send(run(ctx, job, slot, stop, seat));
}
