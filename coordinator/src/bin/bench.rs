//! `lth-coordinator-bench`: claim latency and claim+complete throughput of the job store.
//!
//! Submits one sweep of ~100k jobs (8 metrics x 5 rates x 2,500 seeds x 1 level: 2,500 dense
//! jobs + 100,000 level jobs, unblocked as their dense job completes) into a fresh database, then
//! runs N simulated workers that each loop claim(1) -> complete (a 3-layer result with masks),
//! through the same `Store` calls the gRPC services make. Not a test: run it by hand.
//!
//! By default it measures twice, each on a fresh database: `direct` (every call its own
//! statements and commit, the baseline) and `group` (the coordinator's group commit, what the
//! gRPC services use), and prints their ratio.
//!
//! `--via grpc` measures the whole coordinator instead: it serves the real gRPC services on a
//! local socket (group commit on, or off for `direct`) and each simulated worker, over its own
//! connection, runs the worker protocol per job: ClaimJobs, UploadArtifact of the files the
//! next levels need (a small blob each: the object-store write, the lease check and the record,
//! not the bytes, are what costs the control plane), and CompleteJob.
//!
//! `--secure on` serves that with a worker token and TLS (the certificate and key in `--tls-dir`:
//! server.pem, server.key and the CA that signed them, ca.pem; the clients send the token and
//! verify the server against ca.pem); `--secure both` runs plain then secure and prints the ratio.
//!
//! `--clients process` (with `--via grpc`) runs the simulated workers in a separate process, this
//! binary's `clients` subcommand, so that the clients' CPU (tonic, encoding, the uploads) is not
//! counted against the coordinator's runtime and the coordinator runs as it does in production.
//!
//! `--claim-with-completion` (with `--via grpc`) runs the protocol the worker daemon runs: each
//! CompleteJob also claims the worker's next job (`claim_next`), so a cycle is UploadArtifact and
//! CompleteJob, with a ClaimJobs only when a completion brought nothing. The claim latency of a
//! job that came with a completion is that CompleteJob call's (which includes the completion).
//! Either way the bench also reports a slot's wait between jobs: from the end of a job's uploads
//! until the next job is in hand (CompleteJob plus ClaimJobs, or the one CompleteJob).
//!
//! `--queued 10000,100000,1000000` measures how the cost grows with work: for each size a fresh
//! database with a sweep of that many level jobs ready to claim (their dense jobs completed first,
//! through the store), then the measurement; a table at the end.
//!
//! `submit` (a subcommand) measures big submits instead: the submit time of each grid size, and the
//! longest heartbeat and completion a worker saw meanwhile (`submit_bench.rs`).
//!
//!   cargo run --release -p lth-coordinator --bin lth-coordinator-bench -- --workers 64
//!   lth-coordinator-bench --via grpc --clients process --queued 10000,100000,1000000
//!   lth-coordinator-bench submit --jobs 10000,100000,400000 [--sqlite /tmp/sub.db]

#[path = "bench/submit_bench.rs"]
mod submit_bench;

use clap::Parser;
use lth_coordinator::group_commit::{GroupCommit, GroupCommitOptions};
use lth_coordinator::artifacts::ArtifactStore;
use lth_coordinator::rpc::ServiceOptions;
use lth_coordinator::store::{uploads_needed, ArtifactRecord, Completion, LayerResult, Lease, LevelResult, Store, StoreOptions, WorkerRegistration};
use lth_proto::v1 as pb;
use pb::worker_service_client::WorkerServiceClient;
use sha2::{Digest, Sha256};
use sqlx::Connection;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Server URL whose database is used to create (and drop) a fresh bench database.
    #[arg(long, env = "LTH_TEST_DATABASE_URL", default_value = "postgres://root@127.0.0.1:5432/postgres")]
    admin_url: String,
    /// Use SQLite instead of Postgres: each run creates a fresh file named PATH-<mode>-<id>.
    #[arg(long)]
    sqlite: Option<String>,
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Seeds in the sweep: jobs = seeds x (1 + 40).
    #[arg(long, default_value_t = 2500)]
    seeds: u64,
    /// Connections in the coordinator's pool.
    #[arg(long, default_value_t = 16)]
    pool: u32,
    /// Stop each run after this many seconds even if jobs remain.
    #[arg(long, default_value_t = 45)]
    seconds: u64,
    /// Which paths to measure: `direct` (one Store call per claim/complete, the baseline),
    /// `group` (the coordinator's group commit), or `both` (direct first, then group, each on a
    /// fresh database, and their ratio).
    #[arg(long, default_value = "both")]
    mode: Mode,
    /// Group commit: the most calls in one batch.
    #[arg(long, default_value_t = 64)]
    max_batch: usize,
    /// Group commit: batches of one kind running at once.
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// Let Postgres re-plan statements per call (its default) instead of the store's generic plans.
    #[arg(long)]
    custom_plans: bool,
    /// Postgres: reset `pg_stat_statements` when the measured window starts (after the setup),
    /// so that the view holds the window's statements alone. Needs the extension loaded
    /// (`shared_preload_libraries`) and created in `template1`, which the bench's fresh
    /// databases are copied from.
    #[arg(long)]
    reset_pg_stats: bool,
    /// Keep the bench databases afterwards.
    #[arg(long)]
    keep: bool,
    /// Where the simulated workers call: `store` (the store and its group commit, in process)
    /// or `grpc` (the real services over a local socket, with uploads; see the top of this file).
    #[arg(long, default_value = "store")]
    via: Via,
    /// With `--via grpc`: `off` (plaintext, no tokens), `on` (a worker token and TLS), or `both`
    /// (off then on, each on a fresh database, and their ratio).
    #[arg(long, default_value = "off")]
    secure: Secure,
    /// For `--secure`: a folder with server.pem, server.key (for localhost) and ca.pem.
    #[arg(long)]
    tls_dir: Option<std::path::PathBuf>,
    /// With `--via grpc`: where the simulated workers run, `in-process` (tasks beside the server)
    /// or `process` (a child process: this binary's `clients` subcommand).
    #[arg(long, default_value = "in-process")]
    clients: Clients,
    /// Sizes of the ready queue to measure at (comma-separated): each gets a fresh database with a
    /// sweep of that many level jobs ready (their dense jobs completed before the clock starts).
    #[arg(long, value_delimiter = ',')]
    queued: Vec<u64>,
    /// Measure this coordinator binary (one built from an older commit, say) instead of this
    /// build's services in process: it is started on a fresh database, configured through LTH_*
    /// variables (so an older binary ignores the settings it does not know), the sweep is
    /// submitted over gRPC, and the simulated workers run in a `clients` process.
    #[arg(long)]
    coordinator_bin: Option<std::path::PathBuf>,
    /// Over gRPC: each CompleteJob also claims the worker's next job (`claim_next`), as the worker
    /// daemon does; ClaimJobs only when a completion brought none. The claim latency reported
    /// for a job that came with a completion is that CompleteJob call's.
    #[arg(long)]
    claim_with_completion: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Clients {
    InProcess,
    Process,
}

#[derive(Parser, Debug)]
#[command(name = "lth-coordinator-bench", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    args: Args,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Only the simulated workers, against a running coordinator (what `--clients process` starts).
    Clients(ClientsArgs),
    /// Submit benchmark: submit time per grid size, and the hot path's longest wait meanwhile.
    Submit(submit_bench::SubmitArgs),
}

#[derive(clap::Args, Debug, Clone)]
struct ClientsArgs {
    /// The coordinator's gRPC URL.
    #[arg(long)]
    coordinator: String,
    #[arg(long, default_value_t = 64)]
    workers: usize,
    #[arg(long, default_value_t = 45)]
    seconds: u64,
    /// Stop once this many jobs were completed.
    #[arg(long)]
    jobs: u64,
    /// CA (PEM) of an https:// coordinator; the worker token comes in LTH_TOKEN.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// A label for the printed lines.
    #[arg(long, default_value = "clients")]
    tag: String,
    /// Each CompleteJob also claims the next job (see the driver's flag).
    #[arg(long)]
    claim_with_completion: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Secure {
    Off,
    On,
    Both,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Store,
    Grpc,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Direct,
    Group,
    Both,
}

fn with_database(base: &str, name: &str) -> String {
    let after = base.find("://").map(|i| i + 3).unwrap_or(0);
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (base, None),
    };
    let root = match head[after..].find('/') {
        Some(i) => &head[..after + i],
        None => head,
    };
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn result(level: i32) -> LevelResult {
    let layer = |name: &str, total: u64| {
        let kept = if level == 0 { total } else { total * 4 / 5 };
        let mut bits = vec![0u8; total.div_ceil(8) as usize];
        for i in 0..kept as usize {
            bits[i / 8] |= 0x80 >> (i % 8);
        }
        LayerResult { name: name.into(), kept, total, bits, collapsed: false, weight_norm: 1.0, units: None }
    };
    LevelResult {
        sparsity: if level == 0 { 0.0 } else { 0.2 },
        test_accuracy: 0.9,
        test_loss: 0.3,
        train_loss: 0.2,
        epochs: 1.0,
        wall_seconds: 1.0,
        iterations: 100,
        layers: vec![layer("fc1.weight", 1024), layer("fc2.weight", 512), layer("fc3.weight", 100)],
        device: "cpu".into(),
        diverged: false,
    }
}

/// The two ways a claim or completion reaches the store.
#[derive(Clone)]
enum Path {
    Direct(Store),
    Group(GroupCommit),
}

impl Path {
    async fn claim(&self, worker: &str) -> Vec<lth_coordinator::store::ClaimedJob> {
        match self {
            Path::Direct(s) => s.claim_jobs(worker, 1, Duration::from_secs(60)).await,
            Path::Group(g) => g.claim(worker, 1, Duration::from_secs(60)).await,
        }
        .expect("claim")
    }
    async fn complete(&self, lease: Lease, r: LevelResult) {
        match self {
            Path::Direct(s) => s.complete_job(lease, &r).await,
            Path::Group(g) => g.complete(Completion { lease, result: r, require_uploads: false }).await,
        }
        .expect("complete")
    }
}

/// A claimed job, as much of it as the simulated worker needs.
struct Claimed {
    lease: Lease,
    level: i32,
    kind: &'static str,
}

fn claimed_of(a: &pb::JobAssignment) -> Claimed {
    Claimed {
        lease: Lease { job_id: a.job_id, attempt: a.attempt as i32 },
        level: a.level as i32,
        kind: if a.kind == pb::JobKind::Dense as i32 { "dense" } else { "level" },
    }
}

/// The bytes every simulated upload sends, and their digest.
const BLOB: &[u8] = &[0x5a; 4096];

/// One simulated worker's way in: the store's calls, or its own gRPC connection.
enum Client {
    Store(Path),
    Grpc(WorkerServiceClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, lth_proto::client::TokenInterceptor>>, String),
}

impl Client {
    async fn claim(&mut self, worker: &str) -> Option<Claimed> {
        match self {
            Client::Store(p) => p.claim(worker).await.into_iter().next().map(|c| Claimed {
                lease: Lease { job_id: c.job.id, attempt: c.job.attempt },
                level: c.job.level,
                kind: if c.job.kind == "dense" { "dense" } else { "level" },
            }),
            Client::Grpc(w, _) => {
                let req = pb::ClaimJobsRequest { worker_id: worker.into(), free_slots: 1 };
                let jobs = w.claim_jobs(req).await.expect("ClaimJobs").into_inner().jobs;
                jobs.first().map(claimed_of)
            }
        }
    }

    /// Completes the job; over gRPC, uploads what its dependents need first. Returns how long
    /// the completing call took (the uploads not counted) and, with `claim_next`, the job the
    /// completion brought.
    async fn finish(&mut self, c: &Claimed, worker: &str, claim_next: bool) -> (Duration, Option<Claimed>) {
        match self {
            Client::Store(p) => {
                let t = Instant::now();
                p.complete(c.lease, result(c.level)).await;
                (t.elapsed(), None)
            }
            Client::Grpc(w, digest) => {
                let lease = pb::JobLease { job_id: c.lease.job_id, attempt: c.lease.attempt as u32 };
                for name in uploads_needed(c.kind) {
                    let chunk = pb::ArtifactChunk {
                        lease: Some(lease),
                        name: (*name).into(),
                        data: BLOB.to_vec(),
                        sha256: digest.clone(),
                        total_bytes: BLOB.len() as u64,
                    };
                    w.upload_artifact(tokio_stream::iter([chunk])).await.expect("UploadArtifact");
                }
                let result = pb::LevelResult::from(result(c.level));
                let req = pb::CompleteJobRequest { lease: Some(lease), result: Some(result), claim_next: u32::from(claim_next), worker_id: worker.into() };
                let t = Instant::now();
                let jobs = w.complete_job(req).await.expect("CompleteJob").into_inner().jobs;
                (t.elapsed(), jobs.first().map(claimed_of))
            }
        }
    }
}

/// What a set of simulated workers measured, as the `clients` process reports it to the driver.
/// A percentile of no samples is NaN, which JSON writes as null (claims after the first 5 s of a
/// queue that ran out before then): read back as NaN.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Summary {
    done: u64,
    elapsed: f64,
    claims: usize,
    empty: u64,
    #[serde(deserialize_with = "nan_if_null")]
    claim_p50: f64,
    #[serde(deserialize_with = "nan_if_null")]
    claim_p99: f64,
    #[serde(deserialize_with = "nan_if_null")]
    claim_max: f64,
    /// Claims that started after the first 5 s (past the dense phase, or the warm-up).
    later_claims: usize,
    #[serde(deserialize_with = "nan_if_null")]
    later_p50: f64,
    #[serde(deserialize_with = "nan_if_null")]
    later_p99: f64,
    #[serde(deserialize_with = "nan_if_null")]
    complete_p50: f64,
    #[serde(deserialize_with = "nan_if_null")]
    complete_p99: f64,
    /// A slot's wait between jobs: from the end of a job's uploads until the next job is in hand
    /// (CompleteJob, then ClaimJobs unless the completion brought the next job).
    #[serde(default, deserialize_with = "nan_if_null")]
    gap_p50: f64,
    #[serde(default, deserialize_with = "nan_if_null")]
    gap_p99: f64,
    /// claim+complete per second in 5 s windows.
    windows: Vec<f64>,
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(<Option<f64> as serde::Deserialize>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl Summary {
    fn rate(&self) -> f64 {
        self.done as f64 / self.elapsed
    }
}

/// Runs the clients (one per worker, `bench-<i>`) until `total` jobs are done or `seconds` pass.
/// With `claim_next`, each completion also asks for the next job (gRPC only).
async fn drive(clients: Vec<Client>, seconds: u64, total: u64, claim_next: bool) -> Summary {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut handles = Vec::new();
    for (w, mut client) in clients.into_iter().enumerate() {
        let (done, stop) = (done.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            let worker = format!("bench-{w}");
            let mut claim_us = Vec::with_capacity(4096);
            let mut later_claim_us = Vec::with_capacity(4096);
            let mut complete_us = Vec::with_capacity(4096);
            let mut gap_us = Vec::with_capacity(4096);
            let mut empty = 0u64;
            // The job the last completion brought, and that CompleteJob call's start.
            let mut brought: Option<(Claimed, Instant)> = None;
            // The slot's wait since the last job's uploads ended, while no job is in hand.
            let mut waiting: Option<Duration> = None;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let (got, t, took, came) = match brought.take() {
                    Some((job, t)) => (Some(job), t, waiting.unwrap_or_default(), true),
                    None => {
                        let t = Instant::now();
                        let got = client.claim(&worker).await;
                        (got, t, t.elapsed(), false)
                    }
                };
                claim_us.push(took.as_micros() as u64);
                if t >= start + Duration::from_secs(5) {
                    later_claim_us.push(took.as_micros() as u64);
                }
                if got.is_some() {
                    if let Some(w) = waiting.take() {
                        // Brought: the CompleteJob call was the whole wait; else the claim adds to it.
                        gap_us.push(if came { w } else { w + took }.as_micros() as u64);
                    }
                } else if let Some(w) = waiting.as_mut() {
                    *w += took;
                }
                let Some(job) = got else {
                    empty += 1;
                    if done.load(Ordering::Relaxed) >= total {
                        stop.store(true, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let t = Instant::now();
                let (completing, next) = client.finish(&job, &worker, claim_next && !stop.load(Ordering::Relaxed)).await;
                complete_us.push(t.elapsed().as_micros() as u64);
                waiting = Some(completing);
                // The CompleteJob call started after the uploads: its start is now less its length.
                brought = next.map(|job| (job, Instant::now() - completing));
                if done.fetch_add(1, Ordering::Relaxed) + 1 >= total {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            (claim_us, later_claim_us, complete_us, gap_us, empty)
        }));
    }
    // Throughput per 5 s window: the dense phase (each completion unblocks 40 jobs) and the
    // steady state differ.
    let ticker = {
        let (done, stop) = (done.clone(), stop.clone());
        tokio::spawn(async move {
            let mut last = 0;
            let mut windows = Vec::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let now = done.load(Ordering::Relaxed);
                windows.push((now - last) as f64 / 5.0);
                last = now;
            }
            windows
        })
    };
    let (mut claim_us, mut later_claim_us, mut complete_us, mut gap_us, mut empty) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0);
    for h in handles {
        let (c, l, d, g, e) = h.await.expect("a simulated worker panicked");
        claim_us.extend(c);
        later_claim_us.extend(l);
        complete_us.extend(d);
        gap_us.extend(g);
        empty += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let windows = ticker.await.unwrap_or_default();
    claim_us.sort_unstable();
    later_claim_us.sort_unstable();
    complete_us.sort_unstable();
    gap_us.sort_unstable();
    Summary {
        done: done.load(Ordering::Relaxed),
        elapsed,
        claims: claim_us.len(),
        empty,
        claim_p50: percentile(&claim_us, 0.5),
        claim_p99: percentile(&claim_us, 0.99),
        claim_max: percentile(&claim_us, 1.0),
        later_claims: later_claim_us.len(),
        later_p50: percentile(&later_claim_us, 0.5),
        later_p99: percentile(&later_claim_us, 0.99),
        complete_p50: percentile(&complete_us, 0.5),
        complete_p99: percentile(&complete_us, 0.99),
        gap_p50: percentile(&gap_us, 0.5),
        gap_p99: percentile(&gap_us, 0.99),
        windows,
    }
}

/// gRPC clients, one connection each.
async fn grpc_clients(url: &str, opts: &lth_proto::client::ClientOptions, n: usize) -> anyhow::Result<Vec<Client>> {
    let digest = hex::encode(Sha256::digest(BLOB));
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let channel = opts.endpoint(url)?.tcp_nodelay(true).connect().await?;
        clients.push(Client::Grpc(WorkerServiceClient::with_interceptor(channel, opts.interceptor()?), digest.clone()));
    }
    Ok(clients)
}

/// The `clients` subcommand: registers `bench-0..` over gRPC, drives them, prints the summary as
/// one `RESULT {json}` line on stdout.
async fn clients_main(a: ClientsArgs) -> anyhow::Result<()> {
    let opts = lth_proto::client::ClientOptions {
        token: std::env::var("LTH_TOKEN").ok().filter(|t| !t.is_empty()),
        tls_ca: a.tls_ca.clone(),
        ..Default::default()
    };
    let mut clients = grpc_clients(&a.coordinator, &opts, a.workers).await?;
    for (w, c) in clients.iter_mut().enumerate() {
        let Client::Grpc(w_client, _) = c else { unreachable!("gRPC clients") };
        w_client
            .register_worker(pb::RegisterWorkerRequest { worker_id: format!("bench-{w}"), host: "bench".into(), cpus: 1, slots: 1, ..Default::default() })
            .await?;
    }
    let s = drive(clients, a.seconds, a.jobs, a.claim_with_completion).await;
    eprintln!("[{}] claim+complete per second, 5 s windows: {}", a.tag, s.windows.iter().map(|w| format!("{w:.0}")).collect::<Vec<_>>().join(" "));
    println!("RESULT {}", serde_json::to_string(&s)?);
    Ok(())
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg has them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_else(|_| "?".into())
}

/// A fresh database for one run: a Postgres database on `admin_url`'s server, or a SQLite file
/// beside `sqlite`. Dropped by [`FreshDb::drop_now`] unless kept.
struct FreshDb {
    url: String,
    pg: Option<(String, String)>,
    file: Option<String>,
}

impl FreshDb {
    async fn create(admin_url: &str, sqlite: Option<&str>, tag: &str) -> anyhow::Result<FreshDb> {
        Ok(match sqlite {
            // A fresh file beside the one named, per run: a second run must not reuse the first
            // one's finished jobs.
            Some(u) => {
                let path = format!("{}-{}-{}", u.trim_start_matches("sqlite://"), tag.replace(' ', "-"), &uuid::Uuid::new_v4().simple().to_string()[..8]);
                FreshDb { url: format!("sqlite://{path}"), pg: None, file: Some(path) }
            }
            None => {
                let name = format!("lth_bench_{}", uuid::Uuid::new_v4().simple());
                let mut c = sqlx::PgConnection::connect(admin_url).await?;
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut c).await?;
                FreshDb { url: with_database(admin_url, &name), pg: Some((admin_url.to_string(), name)), file: None }
            }
        })
    }

    async fn drop_now(self, keep: bool) -> anyhow::Result<()> {
        if keep {
            return Ok(());
        }
        if let Some(path) = self.file {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{path}{suffix}"));
            }
        }
        if let Some((admin, name)) = self.pg {
            let mut c = sqlx::PgConnection::connect(&admin).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut c).await?;
        }
        Ok(())
    }
}

/// The bench sweep: 8 metrics x 5 rates x `seeds` seeds x 1 level.
fn bench_spec(seeds: u64) -> anyhow::Result<lth_sweep::SweepSpec> {
    grid_spec(seeds, 1)
}

/// 8 metrics x 5 rates x `seeds` seeds x `levels` levels: `seeds` x (1 + 40 `levels`) jobs.
fn grid_spec(seeds: u64, levels: u32) -> anyhow::Result<lth_sweep::SweepSpec> {
    let metrics: Vec<String> = ["magnitude", "l1", "l2", "softmax", "min_max", "random", "lamp", "uniform_magnitude"]
        .iter()
        .map(|m| format!("{m:?}"))
        .collect();
    let seeds: Vec<String> = (0..seeds).map(|s| s.to_string()).collect();
    let text = format!(
        "name = \"bench\"\nmodel = \"lenet300100\"\nmetrics = [{}]\nrates = [0.1, 0.2, 0.3, 0.4, 0.5]\nseeds = [{}]\nlevels = {levels}\n[dataset]\nname = \"digits\"\n[recipe]\nlength = \"1ep\"\nlr = 0.1\n",
        metrics.join(", "),
        seeds.join(", ")
    );
    Ok(lth_sweep::SweepSpec::from_toml_str(&text)?)
}

/// A simulated worker: one CPU slot, no GPU.
fn bench_worker(worker_id: &str) -> WorkerRegistration {
    WorkerRegistration {
        worker_id: worker_id.into(),
        host: "bench".into(),
        gpus: vec![],
        cpus: 1,
        slots: 1,
        libtorch_version: String::new(),
        cuda_version: String::new(),
    }
}

/// Completes the sweep's `seeds` dense jobs through the store (with their files recorded, so that
/// each level job's claim finds its inputs as in a real sweep): afterwards every level job is ready.
async fn complete_dense_jobs(store: &Store, seeds: u64) -> anyhow::Result<()> {
    store
        .register_worker(&bench_worker("bench-prefill"))
        .await?;
    let digest = hex::encode(Sha256::digest(BLOB));
    let mut left = seeds;
    while left > 0 {
        // Dense jobs have the lowest ids, so a claim of at most `left` takes only dense jobs.
        let jobs = store.claim_jobs("bench-prefill", left.min(256) as u32, Duration::from_secs(600)).await?;
        anyhow::ensure!(!jobs.is_empty() && jobs.iter().all(|c| c.job.kind == "dense"), "the dense jobs were not claimable first");
        let mut recs = Vec::new();
        for c in &jobs {
            for name in ["rewind", "weights"] {
                recs.push(ArtifactRecord {
                    lease: Lease { job_id: c.job.id, attempt: c.job.attempt },
                    name: name.into(),
                    uri: format!("file:///bench/{}/{name}", c.job.id),
                    sha256: digest.clone(),
                    bytes: BLOB.len() as u64,
                });
            }
        }
        for r in store.record_artifacts(&recs).await? {
            r?;
        }
        let items: Vec<Completion> = jobs
            .iter()
            .map(|c| Completion { lease: Lease { job_id: c.job.id, attempt: c.job.attempt }, result: result(0), require_uploads: false })
            .collect();
        for r in store.complete_jobs(&items).await? {
            r?;
        }
        left -= jobs.len() as u64;
    }
    Ok(())
}

/// Runs the simulated workers in a child process (this binary's `clients` subcommand) and reads
/// its summary.
#[allow(clippy::too_many_arguments)]
async fn clients_process(url: &str, tag: &str, workers: usize, seconds: u64, jobs: u64, token: Option<&str>, tls_ca: Option<&std::path::Path>, claim_next: bool) -> anyhow::Result<Summary> {
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args(["clients", "--coordinator", url, "--tag", tag])
        .args(["--workers", &workers.to_string(), "--seconds", &seconds.to_string(), "--jobs", &jobs.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    if let Some(token) = token {
        cmd.env("LTH_TOKEN", token);
    }
    if let Some(ca) = tls_ca {
        cmd.arg("--tls-ca").arg(ca);
    }
    if claim_next {
        cmd.arg("--claim-with-completion");
    }
    let out = cmd.output().await?;
    anyhow::ensure!(out.status.success(), "the clients process failed ({})", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("RESULT ")).ok_or_else(|| anyhow::anyhow!("the clients process printed no RESULT line: {text}"))?;
    Ok(serde_json::from_str(line)?)
}

/// A coordinator binary running as a process of its own; killed on drop.
struct CoordinatorProcess {
    child: tokio::process::Child,
    url: String,
    art_dir: std::path::PathBuf,
}

impl Drop for CoordinatorProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.art_dir);
    }
}

impl CoordinatorProcess {
    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Starts `bin` on `db_url`, configured through LTH_* variables (an older binary ignores the ones
/// it does not know), and waits until it listens.
async fn spawn_coordinator(bin: &std::path::Path, db_url: &str, pool: u32, max_batch: usize) -> anyhow::Result<CoordinatorProcess> {
    use tokio::io::AsyncBufReadExt;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let art_dir = std::env::temp_dir().join(format!("lth-bench-artifacts-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&art_dir)?;
    let mut child = tokio::process::Command::new(bin)
        .env("LTH_LISTEN", format!("127.0.0.1:{port}"))
        .env("LTH_DB", db_url)
        .env("LTH_ARTIFACTS", &art_dir)
        .env("LTH_LEASE_SECONDS", "60")
        .env("LTH_DB_MAX_CONNECTIONS", pool.to_string())
        .env("LTH_MAX_BATCH", max_batch.to_string())
        .env("LTH_HTTP_LISTEN", "off")
        .env("LTH_MAX_JOBS_PER_SWEEP", "1000000000")
        // Per-claim info lines would be the binary's cost alone (the in-process runs log nothing).
        .env("RUST_LOG", "warn")
        .env_remove("LTH_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(l) = lines.next_line().await? {
            if l.contains("listening on") {
                return Ok(());
            }
        }
        anyhow::bail!("{} exited before it listened", bin.display())
    })
    .await??;
    // Keep reading, so the coordinator never writes into a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(CoordinatorProcess { child, url: format!("http://127.0.0.1:{port}"), art_dir })
}

/// `--coordinator-bin`: the coordinator as a process of its own (this build's or an older
/// one), the bench sweep submitted over gRPC, the simulated workers in a `clients` process.
/// Before the measured window: VACUUM ANALYZE after the bulk insert (as autovacuum would settle
/// it on a live coordinator) and, with `--reset-pg-stats`, empty statement statistics.
async fn settle_postgres(conn: &mut sqlx::PgConnection, reset_stats: bool) -> anyhow::Result<()> {
    sqlx::query("VACUUM ANALYZE").execute(&mut *conn).await?;
    if reset_stats {
        sqlx::query("SELECT pg_stat_statements_reset()").execute(&mut *conn).await.map_err(|e| {
            anyhow::anyhow!("--reset-pg-stats: {e} (load pg_stat_statements in shared_preload_libraries and CREATE EXTENSION pg_stat_statements in template1)")
        })?;
    }
    Ok(())
}

async fn run_binary(args: &Args, bin: &std::path::Path, mode: Mode) -> anyhow::Result<Outcome> {
    let tag = format!("{mode:?}, {} as a process, clients in a separate process", bin.display());
    let db = FreshDb::create(&args.admin_url, args.sqlite.as_deref(), &format!("bin-{mode:?}")).await?;
    let max_batch = if mode == Mode::Group { args.max_batch } else { 1 };
    let coordinator = spawn_coordinator(bin, &db.url, args.pool, max_batch).await?;
    let url = coordinator.url.clone();
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?.connect().await?;
    let mut sweeps = pb::sweep_service_client::SweepServiceClient::new(channel);
    let spec = bench_spec(args.seeds)?;
    let t = Instant::now();
    let sub = sweeps.submit_sweep(pb::SubmitSweepRequest { spec: Some((&spec).into()), client_token: String::new(), dry_run: false }).await?.into_inner();
    println!("[{tag}] submitted {} jobs ({} trials) over gRPC in {:.2} s", sub.jobs, sub.trials, t.elapsed().as_secs_f64());
    if db.pg.is_some() {
        settle_postgres(&mut sqlx::PgConnection::connect(&db.url).await?, args.reset_pg_stats).await?;
    }
    let load_before = load_average();
    let summary = clients_process(&url, &tag, args.workers, args.seconds, sub.jobs, None, None, args.claim_with_completion).await?;
    let load_after = load_average();
    print_summary(&tag, args, &summary, &load_before, &load_after);
    let info = sweeps.get_sweep(pb::GetSweepRequest { sweep_id: sub.sweep_id }).await?.into_inner();
    let succeeded = info.jobs.map(|c| c.succeeded).unwrap_or(0);
    println!("[{tag}] jobs succeeded {succeeded} of {}", sub.jobs);
    anyhow::ensure!(succeeded == summary.done, "{} completions acknowledged but {succeeded} jobs succeeded", summary.done);
    coordinator.stop().await;
    db.drop_now(args.keep).await?;
    Ok(Outcome { rate: summary.rate(), claim_p50: summary.claim_p50, claim_p99: summary.claim_p99, later_p99: summary.later_p99 })
}

fn print_summary(tag: &str, args: &Args, summary: &Summary, load_before: &str, load_after: &str) {
    println!(
        "[{tag}] {} workers, pool {} | {} claim+complete in {:.1} s = {:.0}/s | claim p50 {:.2} ms p99 {:.2} ms max {:.1} ms ({} claims, {} empty) | {} p50 {:.2} ms p99 {:.2} ms | load average {load_before} before, {load_after} after",
        args.workers,
        args.pool,
        summary.done,
        summary.elapsed,
        summary.rate(),
        summary.claim_p50,
        summary.claim_p99,
        summary.claim_max,
        summary.claims,
        summary.empty,
        if args.via == Via::Grpc || args.coordinator_bin.is_some() { "upload+complete" } else { "complete" },
        summary.complete_p50,
        summary.complete_p99,
    );
    println!(
        "[{tag}] claims started after the first 5 s: {} claims, p50 {:.2} ms p99 {:.2} ms",
        summary.later_claims, summary.later_p50, summary.later_p99
    );
    println!(
        "[{tag}] a slot's wait between jobs (end of the uploads to the next job in hand): p50 {:.2} ms p99 {:.2} ms",
        summary.gap_p50, summary.gap_p99
    );
}

struct Outcome {
    rate: f64,
    claim_p50: f64,
    claim_p99: f64,
    later_p99: f64,
}

/// One measurement on a fresh database. `queued`: the sweep holds this many level jobs, all made
/// ready before the clock starts (else `--seeds` and the dense phase are measured too).
async fn run(args: &Args, mode: Mode, secure: bool, queued: Option<u64>) -> anyhow::Result<Outcome> {
    let clients_where = if args.via == Via::Grpc && args.clients == Clients::Process { ", clients in a separate process" } else { "" };
    let tag = match (args.via, secure) {
        (Via::Store, _) => format!("{mode:?}"),
        (Via::Grpc, false) => format!("{mode:?} via gRPC{clients_where}"),
        (Via::Grpc, true) => format!("{mode:?} via gRPC+token+TLS{clients_where}"),
    };
    let tag = match queued {
        Some(n) => format!("{tag}, {n} queued"),
        None => tag,
    };
    let db = FreshDb::create(&args.admin_url, args.sqlite.as_deref(), &tag.replace([',', ' '], "-")).await?;
    let store = Store::connect(&db.url, &StoreOptions { max_connections: args.pool, generic_plans: !args.custom_plans }).await?;

    let seeds = match queued {
        Some(n) => n.div_ceil(40),
        None => args.seeds,
    };
    let spec = bench_spec(seeds)?;
    let t = Instant::now();
    let sub = store.submit_sweep(&spec, None).await?;
    let submit_s = t.elapsed().as_secs_f64();
    println!("[{tag}] backend {} | submitted {} jobs ({} trials) in {submit_s:.2} s", store.backend_name(), sub.jobs, sub.trials);
    let prefilled = if queued.is_some() {
        let t = Instant::now();
        complete_dense_jobs(&store, seeds).await?;
        println!("[{tag}] completed the {seeds} dense jobs through the store in {:.1} s: {} level jobs ready", t.elapsed().as_secs_f64(), sub.jobs - seeds);
        seeds
    } else {
        0
    };
    if let Store::Postgres(pool) = &store {
        settle_postgres(&mut *pool.acquire().await?, args.reset_pg_stats).await?;
    }
    let to_do = sub.jobs - prefilled;

    let in_process_clients = !(args.via == Via::Grpc && args.clients == Clients::Process);
    if in_process_clients {
        for w in 0..args.workers {
            store
                .register_worker(&bench_worker(&format!("bench-{w}")))
                .await?;
        }
    }
    let batching = GroupCommitOptions { max_batch: if mode == Mode::Group { args.max_batch } else { 1 }, in_flight: args.in_flight };
    // In process: the store directly, or through group commit. Over gRPC the server has its own.
    let path = match (args.via, mode) {
        (Via::Grpc, _) => None,
        (Via::Store, Mode::Group) => Some(Path::Group(GroupCommit::start(store.clone(), batching))),
        (Via::Store, _) => Some(Path::Direct(store.clone())),
    };

    // The coordinator's reaper runs beside the hot path (lease expiry, sweep closing, vacuum);
    // over gRPC, the server runs its own.
    let (reaper_stop, reaper_rx) = tokio::sync::watch::channel(false);
    let reaper = match args.via {
        Via::Store => Some(tokio::spawn(lth_coordinator::reaper::run_reaper(store.clone(), Duration::from_secs(2), reaper_rx))),
        Via::Grpc => None,
    };
    let art_dir = std::env::temp_dir().join(format!("lth-bench-artifacts-{}", uuid::Uuid::new_v4().simple()));
    let mut worker_token = None;
    let (server_stop, server) = match args.via {
        Via::Store => (None, None),
        Via::Grpc => {
            std::fs::create_dir_all(&art_dir)?;
            let artifacts = ArtifactStore::open(art_dir.to_str().expect("a UTF-8 temp dir"))?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let port = listener.local_addr()?.port();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let opts = ServiceOptions { lease: Duration::from_secs(60), group_commit: batching, max_jobs_per_sweep: u64::MAX, ..Default::default() };
            let (security, url, client_opts) = if secure {
                let dir = args.tls_dir.as_ref().ok_or_else(|| anyhow::anyhow!("--secure needs --tls-dir (server.pem, server.key, ca.pem)"))?;
                let token = lth_coordinator::auth::new_token();
                let line = lth_coordinator::auth::auth_line(lth_coordinator::auth::Role::Worker, "bench", &token);
                let auth = lth_coordinator::auth::AuthPolicy { tokens: Some(lth_coordinator::auth::Tokens::parse(&line, "bench")?), require_worker_cert: false };
                let identity = tonic::transport::Identity::from_pem(std::fs::read(dir.join("server.pem"))?, std::fs::read(dir.join("server.key"))?);
                let tls = tonic::transport::ServerTlsConfig::new().identity(identity);
                let security = lth_coordinator::server::Security { auth, tls: Some(tls), ..Default::default() };
                worker_token = Some(token.clone());
                let client = lth_proto::client::ClientOptions { token: Some(token), tls_ca: Some(dir.join("ca.pem")), ..Default::default() };
                (security, format!("https://localhost:{port}"), client)
            } else {
                (lth_coordinator::server::Security::default(), format!("http://127.0.0.1:{port}"), lth_proto::client::ClientOptions::default())
            };
            let server = tokio::spawn(lth_coordinator::server::serve_with(store.clone(), artifacts, opts, Duration::from_secs(2), listener, security, async {
                let _ = rx.await;
            }));
            (Some(tx), Some((server, url, client_opts)))
        }
    };
    let load_before = load_average();
    let summary = match (&server, in_process_clients) {
        (None, _) => {
            let clients = (0..args.workers).map(|_| Client::Store(path.clone().expect("in-process runs have a path"))).collect();
            drive(clients, args.seconds, to_do, false).await
        }
        (Some((_, url, opts)), true) => drive(grpc_clients(url, opts, args.workers).await?, args.seconds, to_do, args.claim_with_completion).await,
        (Some((_, url, _)), false) => {
            let tls_ca = if secure { args.tls_dir.as_ref().map(|d| d.join("ca.pem")) } else { None };
            clients_process(url, &tag, args.workers, args.seconds, to_do, worker_token.as_deref(), tls_ca.as_deref(), args.claim_with_completion).await?
        }
    };
    let load_after = load_average();
    if in_process_clients {
        println!("[{tag}] claim+complete per second, 5 s windows: {}", summary.windows.iter().map(|w| format!("{w:.0}")).collect::<Vec<_>>().join(" "));
    }
    if let Some(Path::Group(g)) = &path {
        let (c, d) = g.stats();
        println!(
            "[{tag}] batches: claims {} in {} ({:.1} per batch), completions {} in {} ({:.1} per batch), {} retried alone",
            c.calls,
            c.batches,
            c.calls as f64 / c.batches.max(1) as f64,
            d.calls,
            d.batches,
            d.calls as f64 / d.batches.max(1) as f64,
            c.retried_alone + d.retried_alone
        );
    }
    drop(path);
    let _ = reaper_stop.send(true);
    if let Some(r) = reaper {
        let _ = r.await;
    }
    if let (Some(tx), Some((server, _, _))) = (server_stop, server) {
        let _ = tx.send(());
        server.await??;
        let _ = std::fs::remove_dir_all(&art_dir);
    }
    let n = summary.done;
    print_summary(&tag, args, &summary, &load_before, &load_after);
    // Check the bookkeeping, not just the speed: every completion left exactly its rows.
    let info = store.get_sweep(sub.sweep_id).await?;
    println!("[{tag}] sweep state {} | jobs succeeded {} of {}", info.state, info.jobs.succeeded, sub.jobs);
    anyhow::ensure!(info.jobs.succeeded == n + prefilled, "{n} completions acknowledged (+{prefilled} before) but {} jobs succeeded", info.jobs.succeeded);
    store.close().await;
    db.drop_now(args.keep).await?;
    Ok(Outcome { rate: summary.rate(), claim_p50: summary.claim_p50, claim_p99: summary.claim_p99, later_p99: summary.later_p99 })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Clients(a)) => return clients_main(a).await,
        Some(Cmd::Submit(a)) => return submit_bench::main(a).await,
        None => {}
    }
    let args = cli.args;
    if args.secure != Secure::Off {
        anyhow::ensure!(args.via == Via::Grpc, "--secure needs --via grpc (tokens and TLS are the gRPC server's)");
        anyhow::ensure!(args.mode != Mode::Both, "--secure: pick one --mode (group is what the coordinator runs)");
    }
    anyhow::ensure!(args.clients == Clients::InProcess || args.via == Via::Grpc, "--clients process needs --via grpc");
    anyhow::ensure!(!args.reset_pg_stats || args.sqlite.is_none(), "--reset-pg-stats resets Postgres's pg_stat_statements: drop --sqlite");
    if let Some(bin) = &args.coordinator_bin {
        anyhow::ensure!(args.mode != Mode::Both && args.secure == Secure::Off && args.queued.is_empty(), "--coordinator-bin: one --mode, plaintext, no --queued");
        run_binary(&args, bin, args.mode).await?;
        return Ok(());
    }
    if !args.queued.is_empty() {
        anyhow::ensure!(args.mode != Mode::Both && args.secure != Secure::Both, "--queued: pick one --mode and --secure");
        let mut rows = Vec::new();
        for &n in &args.queued {
            let o = run(&args, args.mode, args.secure == Secure::On, Some(n)).await?;
            rows.push((n, o, load_average()));
        }
        println!("queued jobs | claim+complete/s | claim p50 ms | claim p99 ms | p99 after 5 s | load average after");
        for (n, o, load) in &rows {
            println!("{n} | {:.0} | {:.2} | {:.2} | {:.2} | {load}", o.rate, o.claim_p50, o.claim_p99, o.later_p99);
        }
        if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
            println!("p99 {} -> {}: x{:.2}", first.0, last.0, last.1.claim_p99 / first.1.claim_p99);
        }
        return Ok(());
    }
    if args.secure == Secure::Both {
        let plain = run(&args, args.mode, false, None).await?;
        let secure = run(&args, args.mode, true, None).await?;
        println!(
            "secure/plain: throughput x{:.2}, claim p50 x{:.2}, claim p99 x{:.2}",
            secure.rate / plain.rate,
            secure.claim_p50 / plain.claim_p50,
            secure.claim_p99 / plain.claim_p99
        );
        return Ok(());
    }
    let secure = args.secure == Secure::On;
    match args.mode {
        Mode::Both => {
            let direct = run(&args, Mode::Direct, secure, None).await?;
            let group = run(&args, Mode::Group, secure, None).await?;
            println!(
                "group/direct: throughput x{:.2}, claim p50 x{:.2}, claim p99 x{:.2}",
                group.rate / direct.rate,
                group.claim_p50 / direct.claim_p50,
                group.claim_p99 / direct.claim_p99
            );
        }
        m => {
            run(&args, m, secure, None).await?;
        }
    }
    Ok(())
}
