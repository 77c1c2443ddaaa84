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
//!   cargo run --release -p lth-coordinator --bin lth-coordinator-bench -- --workers 64

use clap::Parser;
use lth_coordinator::group_commit::{GroupCommit, GroupCommitOptions};
use lth_coordinator::artifacts::ArtifactStore;
use lth_coordinator::service::ServiceOptions;
use lth_coordinator::store::{uploads_needed, Completion, LayerInput, Lease, ResultInput, Store, StoreOptions, WorkerRegistration};
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

fn result(level: i32) -> ResultInput {
    let layer = |name: &str, total: u64| {
        let kept = if level == 0 { total } else { total * 4 / 5 };
        let mut bits = vec![0u8; total.div_ceil(8) as usize];
        for i in 0..kept as usize {
            bits[i / 8] |= 0x80 >> (i % 8);
        }
        LayerInput { name: name.into(), kept, total, bits, collapsed: false, weight_norm: 1.0, units: None }
    };
    ResultInput {
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
    async fn complete(&self, lease: Lease, r: ResultInput) {
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
                jobs.into_iter().next().map(|a| Claimed {
                    lease: Lease { job_id: a.job_id, attempt: a.attempt as i32 },
                    level: a.level as i32,
                    kind: if a.kind == pb::JobKind::Dense as i32 { "dense" } else { "level" },
                })
            }
        }
    }

    /// Completes the job; over gRPC, uploads what its dependents need first.
    async fn finish(&mut self, c: &Claimed) {
        match self {
            Client::Store(p) => p.complete(c.lease, result(c.level)).await,
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
                w.complete_job(pb::CompleteJobRequest { lease: Some(lease), result: Some(result), artifacts: vec![] }).await.expect("CompleteJob");
            }
        }
    }
}

struct Outcome {
    rate: f64,
    claim_p50: f64,
    claim_p99: f64,
}

async fn run(args: &Args, mode: Mode, secure: bool) -> anyhow::Result<Outcome> {
    let tag = match (args.via, secure) {
        (Via::Store, _) => format!("{mode:?}"),
        (Via::Grpc, false) => format!("{mode:?} via gRPC"),
        (Via::Grpc, true) => format!("{mode:?} via gRPC+token+TLS"),
    };
    let mut drop_db: Option<String> = None;
    let mut drop_file: Option<String> = None;
    let url = match &args.sqlite {
        // A fresh file beside the one named, per run: `--mode both` must not let the second run
        // reuse the first one's finished jobs.
        Some(u) => {
            let path = format!("{}-{}-{}", u.trim_start_matches("sqlite://"), tag.replace(' ', "-"), &uuid::Uuid::new_v4().simple().to_string()[..8]);
            drop_file = Some(path.clone());
            format!("sqlite://{path}")
        }
        None => {
            let name = format!("lth_bench_{}", uuid::Uuid::new_v4().simple());
            let mut c = sqlx::PgConnection::connect(&args.admin_url).await?;
            sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut c).await?;
            drop_db = Some(name.clone());
            with_database(&args.admin_url, &name)
        }
    };
    let store = Store::connect(&url, &StoreOptions { max_connections: args.pool, generic_plans: !args.custom_plans }).await?;

    let metrics: Vec<String> = ["magnitude", "l1", "l2", "softmax", "min_max", "random", "lamp", "uniform_magnitude"]
        .iter()
        .map(|m| format!("{m:?}"))
        .collect();
    let seeds: Vec<String> = (0..args.seeds).map(|s| s.to_string()).collect();
    let text = format!(
        "name = \"bench\"\nmodel = \"lenet300100\"\nmetrics = [{}]\nrates = [0.1, 0.2, 0.3, 0.4, 0.5]\nseeds = [{}]\nlevels = 1\n[dataset]\nname = \"digits\"\n[recipe]\nlength = \"1ep\"\nlr = 0.1\n",
        metrics.join(", "),
        seeds.join(", ")
    );
    let spec = lth_sweep::SweepSpec::from_toml_str(&text)?;
    let t = Instant::now();
    let sub = store.submit_sweep(&spec, None).await?;
    let submit_s = t.elapsed().as_secs_f64();
    println!(
        "[{tag}] backend {} | submitted {} jobs ({} trials) in one transaction in {submit_s:.2} s",
        store.backend_name(),
        sub.jobs,
        sub.trials
    );
    // Let autovacuum and the checkpointer settle after the bulk insert, as on a live coordinator.
    if let Store::Postgres(pool) = &store {
        sqlx::query("VACUUM ANALYZE").execute(pool).await?;
    }

    for w in 0..args.workers {
        store
            .register_worker(&WorkerRegistration {
                worker_id: format!("bench-{w}"),
                host: "bench".into(),
                gpus: vec![],
                cpus: 1,
                slots: 1,
                libtorch_version: String::new(),
                cuda_version: String::new(),
            })
            .await?;
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
        Via::Store => Some(tokio::spawn(lth_coordinator::server::run_reaper(store.clone(), Duration::from_secs(2), reaper_rx))),
        Via::Grpc => None,
    };
    let art_dir = std::env::temp_dir().join(format!("lth-bench-artifacts-{}", uuid::Uuid::new_v4().simple()));
    let (server_stop, server) = match args.via {
        Via::Store => (None, None),
        Via::Grpc => {
            std::fs::create_dir_all(&art_dir)?;
            let artifacts = ArtifactStore::open(art_dir.to_str().expect("a UTF-8 temp dir"))?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let port = listener.local_addr()?.port();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let opts = ServiceOptions { lease: Duration::from_secs(60), group_commit: batching, ..Default::default() };
            let (security, url, client_opts) = if secure {
                let dir = args.tls_dir.as_ref().ok_or_else(|| anyhow::anyhow!("--secure needs --tls-dir (server.pem, server.key, ca.pem)"))?;
                let token = lth_coordinator::auth::new_token();
                let line = lth_coordinator::auth::auth_line(lth_coordinator::auth::Role::Worker, "bench", &token);
                let auth = lth_coordinator::auth::AuthPolicy { tokens: Some(lth_coordinator::auth::Tokens::parse(&line, "bench")?), require_worker_cert: false };
                let identity = tonic::transport::Identity::from_pem(std::fs::read(dir.join("server.pem"))?, std::fs::read(dir.join("server.key"))?);
                let tls = tonic::transport::ServerTlsConfig::new().identity(identity);
                let security = lth_coordinator::server::Security { auth, tls: Some(tls), ..Default::default() };
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
    let digest = hex::encode(Sha256::digest(BLOB));
    let mut clients = Vec::with_capacity(args.workers);
    for _ in 0..args.workers {
        clients.push(match &server {
            None => Client::Store(path.clone().expect("in-process runs have a path")),
            Some((_, url, opts)) => {
                let channel = opts.endpoint(url)?.tcp_nodelay(true).connect().await?;
                Client::Grpc(WorkerServiceClient::with_interceptor(channel, opts.interceptor()?), digest.clone())
            }
        });
    }
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let mut handles = Vec::new();
    for (w, mut client) in clients.into_iter().enumerate() {
        let (done, stop) = (done.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            let worker = format!("bench-{w}");
            let mut claim_us = Vec::with_capacity(4096);
            // Claims that started after the first 5 s window (the dense phase), for a second p99.
            let mut later_claim_us = Vec::with_capacity(4096);
            let mut complete_us = Vec::with_capacity(4096);
            let mut empty = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let t = Instant::now();
                let got = client.claim(&worker).await;
                claim_us.push(t.elapsed().as_micros() as u64);
                if t >= start + Duration::from_secs(5) {
                    later_claim_us.push(t.elapsed().as_micros() as u64);
                }
                let Some(job) = got else {
                    empty += 1;
                    if done.load(Ordering::Relaxed) >= sub.jobs {
                        stop.store(true, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let t = Instant::now();
                client.finish(&job).await;
                complete_us.push(t.elapsed().as_micros() as u64);
                done.fetch_add(1, Ordering::Relaxed);
            }
            (claim_us, later_claim_us, complete_us, empty)
        }));
    }
    // Throughput per 5 s window: the dense phase (each completion unblocks 40 jobs) and the
    // steady state differ.
    let ticker = {
        let (done, stop) = (done.clone(), stop.clone());
        let tag = tag.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let mut windows = Vec::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let now = done.load(Ordering::Relaxed);
                windows.push(format!("{:.0}", (now - last) as f64 / 5.0));
                last = now;
            }
            println!("[{tag}] claim+complete per second, 5 s windows: {}", windows.join(" "));
        })
    };
    let mut claim_us = Vec::new();
    let mut later_claim_us = Vec::new();
    let mut complete_us = Vec::new();
    let mut empty = 0;
    for h in handles {
        let (c, l, d, e) = h.await?;
        claim_us.extend(c);
        later_claim_us.extend(l);
        complete_us.extend(d);
        empty += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = ticker.await;
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
    claim_us.sort_unstable();
    later_claim_us.sort_unstable();
    complete_us.sort_unstable();
    let n = done.load(Ordering::Relaxed);
    let rate = n as f64 / elapsed;
    println!(
        "[{tag}] {} workers, pool {} | {n} claim+complete in {elapsed:.1} s = {rate:.0}/s | claim p50 {:.2} ms p99 {:.2} ms max {:.1} ms ({} claims, {empty} empty) | {} p50 {:.2} ms p99 {:.2} ms",
        args.workers,
        args.pool,
        percentile(&claim_us, 0.5),
        percentile(&claim_us, 0.99),
        percentile(&claim_us, 1.0),
        claim_us.len(),
        if args.via == Via::Grpc { "upload+complete" } else { "complete" },
        percentile(&complete_us, 0.5),
        percentile(&complete_us, 0.99),
    );
    println!(
        "[{tag}] claims started after the first 5 s (past the dense phase): {} claims, p50 {:.2} ms p99 {:.2} ms",
        later_claim_us.len(),
        percentile(&later_claim_us, 0.5),
        percentile(&later_claim_us, 0.99)
    );
    // Check the bookkeeping, not just the speed: every completion left exactly its rows.
    let info = store.get_sweep(sub.sweep_id).await?;
    println!("[{tag}] sweep state {} | jobs succeeded {} of {}", info.state, info.jobs.succeeded, sub.jobs);
    anyhow::ensure!(info.jobs.succeeded == n, "{n} completions acknowledged but {} jobs succeeded", info.jobs.succeeded);
    store.close().await;
    if let (Some(path), false) = (drop_file, args.keep) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
    }
    if let (Some(name), false) = (drop_db, args.keep) {
        let mut c = sqlx::PgConnection::connect(&args.admin_url).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut c).await?;
    }
    Ok(Outcome { rate, claim_p50: percentile(&claim_us, 0.5), claim_p99: percentile(&claim_us, 0.99) })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.secure != Secure::Off {
        anyhow::ensure!(args.via == Via::Grpc, "--secure needs --via grpc (tokens and TLS are the gRPC server's)");
        anyhow::ensure!(args.mode != Mode::Both, "--secure: pick one --mode (group is what the coordinator runs)");
    }
    if args.secure == Secure::Both {
        let plain = run(&args, args.mode, false).await?;
        let secure = run(&args, args.mode, true).await?;
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
            let direct = run(&args, Mode::Direct, secure).await?;
            let group = run(&args, Mode::Group, secure).await?;
            println!(
                "group/direct: throughput x{:.2}, claim p50 x{:.2}, claim p99 x{:.2}",
                group.rate / direct.rate,
                group.claim_p50 / direct.claim_p50,
                group.claim_p99 / direct.claim_p99
            );
        }
        m => {
            run(&args, m, secure).await?;
        }
    }
    Ok(())
}
