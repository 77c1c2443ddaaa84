//! The daemon's main loop: register, claim jobs for free slots, heartbeat the running leases,
//! relay aborts, and shut down without losing work.
//!
//! The coordinator being away is normal (restarts, network): registration and claims back off
//! and retry, heartbeats keep trying on their interval, and running jobs are never stopped
//! because the coordinator is unreachable; only the coordinator's own word (an abort in a heartbeat
//! reply, FAILED_PRECONDITION on a write) ends a job early.

use super::artifacts::ArtifactCache;
use super::host::{self, GpuSelection, Slot};
use super::job::{self, JobContext, Outcome, Stop};
use super::rpc::{self, Backoff, Client, Failure};
use super::DaemonArgs;
use anyhow::Context;
use lth_proto::v1 as pb;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

struct Running {
    attempt: u32,
    stop: watch::Sender<Option<Stop>>,
}

struct Shared {
    worker_id: String,
    /// This process (RegisterWorkerRequest.instance).
    instance: String,
    /// Set when the coordinator said another process registered under this worker id since
    /// (WORKER_SUPERSEDED): why this daemon stops.
    superseded: Mutex<Option<String>>,
    registration: pb::RegisterWorkerRequest,
    running: Mutex<HashMap<i64, Running>>,
    free_slots: Mutex<Vec<Slot>>,
    slot_freed: Notify,
    health: Mutex<Health>,
}

/// Whether this machine still takes work: a node whose jobs keep failing for reasons of its own
/// (a missing dataset path, a full disk, no CUDA) would otherwise take every job of a sweep in
/// turn. After `limit` different jobs in a row failed node-locally it stops claiming and says why
/// in its heartbeats, until it is restarted. A job that completes resets the count.
#[derive(Debug, Default)]
pub struct Health {
    limit: u32,
    /// The different jobs that failed node-locally since the last completion.
    failed_here: std::collections::BTreeSet<i64>,
    /// Why it stopped claiming.
    pub unhealthy: Option<String>,
}

impl Health {
    pub fn new(limit: u32) -> Health {
        Health { limit, ..Health::default() }
    }

    /// Takes one job's outcome into account; returns the reason when this one made the worker
    /// unhealthy.
    pub fn record(&mut self, job_id: i64, outcome: &Outcome) -> Option<String> {
        match outcome {
            Outcome::Completed => self.failed_here.clear(),
            Outcome::Failed { node_local: true, error, .. } => {
                self.failed_here.insert(job_id);
                if self.limit > 0 && self.unhealthy.is_none() && self.failed_here.len() >= self.limit as usize {
                    let why = format!("{} different jobs in a row failed on this machine (the last: {error})", self.failed_here.len());
                    self.unhealthy = Some(why.clone());
                    return Some(why);
                }
            }
            _ => {}
        }
        None
    }
}

pub async fn run(args: DaemonArgs) -> anyhow::Result<()> {
    let inventory = host::detect();
    let selection: GpuSelection = args.gpus.parse()?;
    let slots = host::plan_slots(&inventory.gpus, &selection, args.slots_per_gpu, args.cpu_slots)?;
    let worker_id = args.worker_id.clone().unwrap_or_else(|| host::default_worker_id(&inventory.host, &slots));
    let cache_dir = args.cache_dir.clone().unwrap_or_else(host::default_cache_dir);
    if !(args.cache_max_gib >= 0.0 && args.cache_max_gib.is_finite()) {
        anyhow::bail!("--cache-max-gib must be a number of GiB ≥ 0 (0: no limit), got {}", args.cache_max_gib);
    }
    let cache_max_bytes = (args.cache_max_gib > 0.0).then(|| (args.cache_max_gib * (1u64 << 30) as f64) as u64);
    let cache = ArtifactCache::new(cache_dir.join("artifacts"), cache_max_bytes)
        .with_context(|| format!("cannot create the artifact cache in {} (pass --cache-dir)", cache_dir.display()))?;
    if let Some(max) = cache_max_bytes {
        // The limit may have shrunk since the last run.
        let ev = cache.evict(max).with_context(|| format!("cannot trim the artifact cache in {}", cache_dir.display()))?;
        if !ev.removed.is_empty() {
            tracing::info!(removed = ev.removed.len(), freed_bytes = ev.freed_bytes, "artifact cache trimmed to its size limit");
        }
    }
    let jobs_dir = cache_dir.join("jobs").join(sanitize(&worker_id));
    std::fs::create_dir_all(&jobs_dir).with_context(|| format!("cannot create {}", jobs_dir.display()))?;
    let threads = args.job_threads.or_else(|| Some((inventory.cpus as usize / slots.len()).max(1) as i32));
    let client_opts = lth_proto::client::ClientOptions::from_env(args.token_file.as_deref())?;
    let client = rpc::connect(&args.coordinator, &client_opts)?;
    let exe = std::env::current_exe().context("cannot locate the lth-worker binary for exec-job")?;
    if let Some(addr) = args.metrics_listen.0 {
        let bound = super::metrics::serve(addr).await?;
        tracing::info!(addr = %bound, "metrics on http://{bound}/metrics");
        // For scripts and tests (the logs are on stderr).
        println!("lth-worker metrics on {bound}");
    }

    let instance = process_instance_id();
    let registration = pb::RegisterWorkerRequest {
        instance: instance.clone(),
        worker_id: worker_id.clone(),
        host: inventory.host.clone(),
        gpus: inventory.gpus.clone(),
        cpus: inventory.cpus,
        slots: slots.len() as u32,
        libtorch_version: inventory.libtorch_version.clone(),
        cuda_version: inventory.cuda_version.clone(),
    };
    tracing::info!(
        worker = %worker_id,
        instance = %instance,
        coordinator = %args.coordinator,
        slots = slots.len(),
        gpus = inventory.gpus.len(),
        cpus = inventory.cpus,
        libtorch = %inventory.libtorch_version,
        cpu_kernels = %host::cpu_kernels(),
        cache = %cache_dir.display(),
        "lth-worker daemon starting"
    );

    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    spawn_signal_handler(shutdown_tx.clone());

    let reply = tokio::select! {
        r = first_register(&client, &registration, &args.coordinator) => r?,
        _ = shutdown_rx.wait_for(|s| *s) => {
            tracing::info!("shut down before registering");
            return Ok(());
        }
    };
    let heartbeat = Duration::from_secs(u64::from(reply.heartbeat_seconds.max(1)));
    tracing::info!(worker = %worker_id, lease_seconds = reply.lease_seconds, heartbeat_seconds = heartbeat.as_secs(), "registered");

    let shared = Arc::new(Shared {
        worker_id: worker_id.clone(),
        instance,
        superseded: Mutex::new(None),
        registration,
        running: Mutex::new(HashMap::new()),
        free_slots: Mutex::new(slots.iter().rev().copied().collect()),
        slot_freed: Notify::new(),
        health: Mutex::new(Health::new(args.max_node_failures)),
    });
    let ctx = Arc::new(JobContext {
        client: client.clone(),
        cache,
        jobs_dir,
        exe,
        torch_lib_dir: args.torch_lib_dir.clone(),
        threads,
        progress_interval: Duration::from_secs_f64(args.progress_seconds.max(0.1)),
        kill_grace: Duration::from_secs_f64(args.kill_grace_seconds.max(0.0)),
        shutdown_grace: Duration::from_secs_f64(args.shutdown_grace_seconds.max(0.0)),
        keep_workdirs: args.keep_workdirs,
        gpu_names: inventory.gpus.iter().map(|g| (g.index, g.name.clone())).collect(),
        worker_id: worker_id.clone(),
        host: inventory.host.clone(),
        handoff: job::Handoff::default(),
    });

    let (heartbeat_stop_tx, heartbeat_stop_rx) = watch::channel(false);
    let heartbeats = tokio::spawn(heartbeat_loop(client.clone(), shared.clone(), heartbeat, heartbeat_stop_rx, shutdown_tx.clone()));

    let mut jobs: JoinSet<()> = JoinSet::new();
    let poll = Duration::from_secs_f64(args.poll_seconds.max(0.05));
    let mut backoff = Backoff::coordinator();
    loop {
        if *shutdown_rx.borrow() {
            break;
        }
        // Reap finished job tasks (their slots were returned by the tasks themselves).
        while jobs.try_join_next().is_some() {}
        if shared.health.lock().unwrap().unhealthy.is_some() {
            // No more claims (the job tasks logged why); heartbeats carry the reason.
            ctx.handoff.close();
            for assignment in ctx.handoff.take() {
                hand_back_unstarted(&mut jobs, &ctx, assignment, "the worker stopped taking jobs (unhealthy)");
            }
            tokio::select! {
                _ = shared.slot_freed.notified() => {}
                _ = shutdown_rx.changed() => {}
            }
            continue;
        }
        // Jobs that completions brought, each with the slot its completion freed.
        let brought = ctx.handoff.take();
        if !brought.is_empty() {
            start_groups(&mut jobs, &ctx, &shared, brought);
            continue;
        }
        let free = shared.free_slots.lock().unwrap().len();
        if free == 0 {
            tokio::select! {
                _ = shared.slot_freed.notified() => {}
                _ = shutdown_rx.changed() => {}
            }
            continue;
        }
        let claim = pb::ClaimJobsRequest { worker_id: worker_id.clone(), free_slots: free as u32 };
        let mut claim_client = client.clone();
        let call = tokio::time::timeout(CLAIM_TIMEOUT, claim_client.claim_jobs(claim));
        tokio::pin!(call);
        // A shutdown does not cancel a claim in flight: the coordinator may already have leased
        // jobs to this worker, and a reply dropped here would leave them "running" on a worker
        // that is gone until their leases expire. The claim is finished and whatever it brought
        // is handed back below.
        let result = tokio::select! {
            r = &mut call => r,
            _ = shutdown_rx.changed() => {
                tracing::info!("shutting down: waiting for the claim in flight, to hand back what it brings");
                call.await
            }
        };
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(tonic::Status::deadline_exceeded("ClaimJobs timed out after 30 s")),
        };
        match result {
            Ok(reply) => {
                backoff.reset();
                let assignments = reply.into_inner().jobs;
                if *shutdown_rx.borrow() {
                    for assignment in assignments {
                        hand_back_unstarted(&mut jobs, &ctx, assignment, "the worker shut down while claiming it");
                    }
                    break;
                }
                if assignments.is_empty() {
                    tokio::select! {
                        _ = tokio::time::sleep(poll) => {}
                        // A completion may have brought a job meanwhile (its task frees the slot after).
                        _ = shared.slot_freed.notified() => {}
                        _ = shutdown_rx.changed() => {}
                    }
                    continue;
                }
                start_groups(&mut jobs, &ctx, &shared, assignments);
            }
            Err(status) => {
                match rpc::classify(&status) {
                    Failure::UnknownWorker => {
                        tracing::warn!(error = %status.message(), "the coordinator does not know this worker; registering again");
                        if let Err(e) = register(&client, &shared.registration).await {
                            tracing::error!(error = %e, "registration failed");
                        }
                    }
                    Failure::Transient => tracing::debug!(error = %status.message(), "ClaimJobs failed; backing off"),
                    _ => tracing::error!(code = ?status.code(), error = %status.message(), "ClaimJobs rejected; backing off"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = shutdown_rx.changed() => {}
                }
            }
        }
    }

    // Shutdown: no more claims; every running job finishes or checkpoints and is handed back
    // (superseded: aborted at once, since their leases were re-queued).
    ctx.handoff.close();
    let superseded = shared.superseded.lock().unwrap().clone();
    let running = shared.running.lock().unwrap().len();
    tracing::info!(running, "shutting down: no more claims; stopping running jobs");
    let mut leases = Vec::new();
    for (id, r) in shared.running.lock().unwrap().iter() {
        let _ = r.stop.send(Some(if superseded.is_some() { Stop::Abort(pb::AbortReason::LeaseLost) } else { Stop::Shutdown }));
        leases.push(pb::JobLease { job_id: *id, attempt: r.attempt });
    }
    if superseded.is_some() {
        // What was leased at the takeover is re-queued already (its release is refused as stale);
        // what this process claimed since, before a heartbeat told it, is handed back here.
        for lease in leases {
            let ctx = ctx.clone();
            jobs.spawn(async move { job::release(&ctx, lease, "the worker's daemon was superseded by another under the same worker id").await });
        }
    }
    // A second signal means "now": abort everything.
    let mut second = shutdown_signal_count();
    loop {
        tokio::select! {
            next = jobs.join_next() => if next.is_none() { break },
            _ = second.changed() => {
                tracing::warn!("second signal: killing running jobs without waiting");
                for r in shared.running.lock().unwrap().values() {
                    let _ = r.stop.send(Some(Stop::Abort(pb::AbortReason::Unspecified)));
                }
            }
        }
    }
    // What completions brought while the jobs stopped (their requests went out before the
    // shutdown) was never started: hand it back.
    let brought = ctx.handoff.take();
    if !brought.is_empty() {
        for assignment in brought {
            hand_back_unstarted(&mut jobs, &ctx, assignment, "the worker shut down as its completion brought it");
        }
        while jobs.join_next().await.is_some() {}
    }
    let _ = heartbeat_stop_tx.send(true);
    let _ = heartbeats.await;
    if let Some(why) = superseded {
        anyhow::bail!("lth-worker daemon stopped: {why}");
    }
    tracing::info!("lth-worker daemon stopped");
    Ok(())
}

/// A random id for this daemon process (32 hex digits), sent with its registration and
/// heartbeats: the coordinator tells a restart, or a second daemon under the same worker id, from
/// this process registering again. std's `RandomState` keys come from the OS's random source.
fn process_instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let half = || {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    };
    format!("{:016x}{:016x}", half(), half())
}

/// How long one ClaimJobs may take, a shutdown included.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(30);

/// A job claimed while the daemon was already stopping (shutting down, or unhealthy): released
/// with ReleaseJob (claimable again at once, no attempt counted) without being started.
fn hand_back_unstarted(jobs: &mut JoinSet<()>, ctx: &Arc<JobContext>, assignment: pb::JobAssignment, why: &'static str) {
    let lease = pb::JobLease { job_id: assignment.job_id, attempt: assignment.attempt };
    tracing::info!(job = lease.job_id, attempt = lease.attempt, "{why}; handing it back unstarted");
    let ctx = ctx.clone();
    jobs.spawn(async move { job::release(&ctx, lease, why).await });
}

/// Starts claimed jobs in free slots: each ticket bundle in one slot, every other job in its own.
fn start_groups(jobs: &mut JoinSet<()>, ctx: &Arc<JobContext>, shared: &Arc<Shared>, assignments: Vec<pb::JobAssignment>) {
    for group in bundles_of(assignments) {
        if group.len() == 1 {
            start_job(jobs, ctx, shared, group.into_iter().next().expect("one job"));
        } else {
            start_bundle(jobs, ctx, shared, group);
        }
    }
}

/// A claim's jobs grouped for the slots: the members of one ticket bundle (same nonzero
/// `bundle_id`) together, in claim order; every other job alone. A bundle takes one slot.
fn bundles_of(assignments: Vec<pb::JobAssignment>) -> Vec<Vec<pb::JobAssignment>> {
    let mut groups: Vec<Vec<pb::JobAssignment>> = Vec::new();
    for a in assignments {
        match groups.iter_mut().find(|g| a.bundle_id != 0 && g[0].bundle_id == a.bundle_id) {
            Some(g) => g.push(a),
            None => groups.push(vec![a]),
        }
    }
    groups
}

/// Starts a ticket bundle's members in one slot (`bundle.rs`): each member is a job task of its
/// own (own lease, heartbeat entry, outcome), sharing one process. The slot is free again when
/// the last member's task ends.
fn start_bundle(jobs: &mut JoinSet<()>, ctx: &Arc<JobContext>, shared: &Arc<Shared>, members: Vec<pb::JobAssignment>) {
    let Some(slot) = shared.free_slots.lock().unwrap().pop() else {
        tracing::error!(bundle = members[0].bundle_id, "claimed a bundle without a free slot; handing its members back");
        for a in members {
            let mut client = ctx.client.clone();
            let lease = pb::JobLease { job_id: a.job_id, attempt: a.attempt };
            jobs.spawn(async move {
                let _ = client
                    .fail_job(pb::FailJobRequest { lease: Some(lease), error: "released: worker had no free slot".into(), retryable: true, node_local: false })
                    .await;
            });
        }
        return;
    };
    tracing::info!(
        bundle = members[0].bundle_id,
        jobs = ?members.iter().map(|m| m.job_id).collect::<Vec<_>>(),
        slot = slot.id,
        "bundle claimed: its members train together in one process"
    );
    let seats = super::bundle::start(ctx, &members, slot);
    let mut tasks = Vec::new();
    for (assignment, seat) in members.into_iter().zip(seats) {
        let (stop_tx, stop_rx) = watch::channel(None);
        shared.running.lock().unwrap().insert(assignment.job_id, Running { attempt: assignment.attempt, stop: stop_tx });
        let (ctx, shared) = (ctx.clone(), shared.clone());
        tasks.push(async move {
            let job_id = assignment.job_id;
            let outcome = job::run(ctx, assignment, slot, stop_rx, Some(seat)).await;
            finish_job(&shared, job_id, &outcome);
        });
    }
    let shared = shared.clone();
    jobs.spawn(async move {
        futures::future::join_all(tasks).await;
        shared.free_slots.lock().unwrap().push(slot);
        shared.slot_freed.notify_one();
    });
}

/// A job task's end on this worker: health, and out of the heartbeat's running list.
fn finish_job(shared: &Shared, job_id: i64, outcome: &Outcome) {
    tracing::debug!(job = job_id, ?outcome, "job finished on this worker");
    if let Outcome::Dropped(why) = outcome {
        tracing::info!(job = job_id, "job stopped: {why}");
    }
    if let Some(why) = shared.health.lock().unwrap().record(job_id, outcome) {
        tracing::error!(reason = %why, "this worker stops claiming jobs and reports itself unhealthy; fix the machine and restart the daemon");
    }
    shared.running.lock().unwrap().remove(&job_id);
}

fn start_job(jobs: &mut JoinSet<()>, ctx: &Arc<JobContext>, shared: &Arc<Shared>, assignment: pb::JobAssignment) {
    let Some(slot) = shared.free_slots.lock().unwrap().pop() else {
        // More jobs than free slots: the coordinator should never do this. Hand the extra back.
        tracing::error!(job = assignment.job_id, "claimed more jobs than free slots; handing one back");
        let mut client = ctx.client.clone();
        let lease = pb::JobLease { job_id: assignment.job_id, attempt: assignment.attempt };
        jobs.spawn(async move {
            let _ = client
                .fail_job(pb::FailJobRequest { lease: Some(lease), error: "released: worker had no free slot".into(), retryable: true, node_local: false })
                .await;
        });
        return;
    };
    let (stop_tx, stop_rx) = watch::channel(None);
    shared.running.lock().unwrap().insert(assignment.job_id, Running { attempt: assignment.attempt, stop: stop_tx });
    let (ctx, shared) = (ctx.clone(), shared.clone());
    let job_id = assignment.job_id;
    jobs.spawn(async move {
        let outcome = job::run(ctx, assignment, slot, stop_rx, None).await;
        finish_job(&shared, job_id, &outcome);
        shared.free_slots.lock().unwrap().push(slot);
        shared.slot_freed.notify_one();
    });
}

/// The first registration: like [`register`], but a plaintext/TLS mismatch (https:// to a
/// plaintext coordinator, http:// to a TLS one) that repeats is an error, not a wait.
async fn first_register(client: &Client, req: &pb::RegisterWorkerRequest, url: &str) -> anyhow::Result<pb::RegisterWorkerResponse> {
    let mut mismatches = 0;
    loop {
        let mut c = client.clone();
        let attempt = tokio::time::timeout(Duration::from_secs(30), c.register_worker(req.clone())).await;
        match attempt {
            Ok(Ok(reply)) => return Ok(reply.into_inner()),
            Ok(Err(status)) => {
                let text = format!("{status:?}");
                if let Some(hint) = lth_proto::client::scheme_hint(url, &text) {
                    mismatches += 1;
                    if mismatches >= 3 {
                        anyhow::bail!("{hint} ({})", status.message());
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
                if let Some(advice) = lth_proto::errors::auth_advice(&status) {
                    anyhow::bail!("the coordinator refused registration ({:?}): {advice}", status.code());
                }
                if rpc::classify(&status) != Failure::Transient {
                    anyhow::bail!("the coordinator refused registration ({:?}): {}", status.code(), status.message());
                }
                // Unreachable for now: the usual patient retry.
                return register(client, req).await;
            }
            Err(_) => return register(client, req).await,
        }
    }
}

/// Registers, retrying while the coordinator is unreachable.
async fn register(client: &Client, req: &pb::RegisterWorkerRequest) -> anyhow::Result<pb::RegisterWorkerResponse> {
    let reply = rpc::retry_transient("RegisterWorker", || {
        let mut c = client.clone();
        let req = req.clone();
        async move { tokio::time::timeout(Duration::from_secs(30), c.register_worker(req)).await.unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("RegisterWorker timed out"))) }
    })
    .await
    .map_err(|s| anyhow::anyhow!("the coordinator refused registration ({:?}): {}", s.code(), s.message()))?;
    Ok(reply.into_inner())
}

async fn heartbeat_loop(client: Client, shared: Arc<Shared>, every: Duration, mut stop: watch::Receiver<bool>, shutdown: watch::Sender<bool>) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let running: Vec<pb::JobLease> = shared
            .running
            .lock()
            .unwrap()
            .iter()
            .map(|(id, r)| pb::JobLease { job_id: *id, attempt: r.attempt })
            .collect();
        let unhealthy = shared.health.lock().unwrap().unhealthy.clone().unwrap_or_default();
        let req = pb::HeartbeatRequest { worker_id: shared.worker_id.clone(), running, unhealthy, instance: shared.instance.clone() };
        let reply = tokio::time::timeout(every.max(Duration::from_secs(2)) * 2, client.clone().heartbeat(req)).await;
        match reply {
            Ok(Ok(reply)) => {
                if failures > 0 {
                    tracing::info!(failures, "heartbeats reach the coordinator again");
                }
                failures = 0;
                for abort in reply.into_inner().abort {
                    let Some(lease) = abort.lease else { continue };
                    let reason = pb::AbortReason::try_from(abort.reason).unwrap_or(pb::AbortReason::Unspecified);
                    let running = shared.running.lock().unwrap();
                    if let Some(r) = running.get(&lease.job_id).filter(|r| r.attempt == lease.attempt) {
                        tracing::info!(job = lease.job_id, attempt = lease.attempt, reason = reason.as_str_name(), "coordinator aborts the job");
                        let _ = r.stop.send(Some(Stop::Abort(reason)));
                    }
                }
            }
            Ok(Err(status)) => {
                failures += 1;
                match rpc::classify(&status) {
                    Failure::UnknownWorker => {
                        tracing::warn!(error = %status.message(), "the coordinator does not know this worker; registering again");
                        let _ = tokio::time::timeout(every * 2, register(&client, &shared.registration)).await;
                    }
                    Failure::Superseded => {
                        tracing::error!(worker = %shared.worker_id, error = %status.message(), "another daemon registered under this worker id; stopping");
                        *shared.superseded.lock().unwrap() = Some(status.message().to_string());
                        let _ = shutdown.send(true);
                        // Nothing of this process's is leased any more: no more heartbeats.
                        return;
                    }
                    _ if failures == 1 || failures % 10 == 0 => {
                        tracing::warn!(code = ?status.code(), error = %status.message(), failures, "heartbeat failed; running jobs continue");
                    }
                    _ => {}
                }
            }
            Err(_) => {
                failures += 1;
                if failures == 1 || failures % 10 == 0 {
                    tracing::warn!(failures, "heartbeat timed out; running jobs continue");
                }
            }
        }
    }
}

static SIGNALS: std::sync::OnceLock<watch::Sender<u32>> = std::sync::OnceLock::new();

fn shutdown_signal_count() -> watch::Receiver<u32> {
    let tx = SIGNALS.get_or_init(|| watch::channel(0).0);
    let mut rx = tx.subscribe();
    rx.mark_unchanged();
    rx
}

/// SIGTERM / SIGINT: the first starts a graceful shutdown, later ones are counted (see above).
fn spawn_signal_handler(shutdown: watch::Sender<bool>) {
    let counter = SIGNALS.get_or_init(|| watch::channel(0).0).clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!(signal = name, "signal received");
            // Counted first: the shutdown it starts subscribes to the count, and must not see
            // this signal as a second one.
            counter.send_modify(|n| *n += 1);
            let _ = shutdown.send(true);
        }
    });
}

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed_here(error: &str) -> Outcome {
        Outcome::Failed { retryable: true, node_local: true, error: error.into() }
    }

    #[test]
    fn different_jobs_failing_here_in_a_row_make_the_worker_unhealthy() {
        let mut h = Health::new(3);
        assert_eq!(h.record(1, &failed_here("no /data/cifar10")), None);
        assert_eq!(h.record(1, &failed_here("no /data/cifar10")), None, "the same job again is one job");
        assert_eq!(h.record(2, &Outcome::Failed { retryable: true, node_local: false, error: "bad spec".into() }), None);
        assert_eq!(h.record(2, &failed_here("no /data/cifar10")), None);
        assert_eq!(h.record(5, &Outcome::Completed), None, "a completion shows the machine works");
        assert_eq!(h.record(6, &failed_here("disk full")), None);
        assert_eq!(h.record(7, &failed_here("disk full")), None);
        let why = h.record(8, &failed_here("disk full")).expect("the third different job");
        assert!(why.contains("3 different jobs") && why.contains("disk full"), "{why}");
        assert_eq!(h.unhealthy.as_deref(), Some(why.as_str()));
        assert_eq!(h.record(9, &Outcome::Completed), None);
        assert!(h.unhealthy.is_some(), "it stays unhealthy until restarted");
        let mut never = Health::new(0);
        for j in 0..10 {
            assert_eq!(never.record(j, &failed_here("x")), None);
        }
    }
}
