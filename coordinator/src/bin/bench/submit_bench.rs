//! `lth-coordinator-bench submit`: how long big submits take, and what they do to the hot path.
//!
//! For each grid size, on a fresh database: the real gRPC services on a local socket; a worker
//! that holds one running job and heartbeats it every `--heartbeat-ms`, and another that claims,
//! uploads and completes jobs of a small sweep one after another, each on its own connection;
//! then a SubmitSweep of the grid (8 metrics x 5 rates x seeds x `--levels`). Printed per size:
//! the submit's time, and the heartbeats and completions that started while it ran (how many,
//! the slowest, p99) and any that failed.

use super::*;

#[derive(clap::Args, Debug, Clone)]
pub struct SubmitArgs {
    /// Server URL whose database is used to create (and drop) a fresh bench database.
    #[arg(long, env = "LTH_TEST_DATABASE_URL", default_value = "postgres://root@127.0.0.1:5432/postgres")]
    admin_url: String,
    /// Use SQLite instead of Postgres: each size gets a fresh file named PATH-<size>-<id>.
    #[arg(long)]
    sqlite: Option<String>,
    /// Grid sizes to submit (comma-separated); each is rounded to whole seeds.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000u64, 100_000, 400_000])]
    jobs: Vec<u64>,
    /// Pruning levels per trial (the grid has 40 trials per seed).
    #[arg(long, default_value_t = 50)]
    levels: u32,
    /// How often the heartbeating worker heartbeats, in milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Connections in the coordinator's pool.
    #[arg(long, default_value_t = 16)]
    pool: u32,
    /// Keep the bench databases afterwards.
    #[arg(long)]
    keep: bool,
    /// Measure this coordinator binary (an older build, say) instead of this build's services in
    /// process: started on each fresh database as `--coordinator-bin` does for the claim bench.
    #[arg(long)]
    coordinator_bin: Option<std::path::PathBuf>,
}

/// Calls that started while the submit ran: (count, slowest ms, p99 ms).
fn during(calls: &[(Instant, Duration)], from: Instant, to: Instant) -> (usize, f64, f64) {
    let mut us: Vec<u64> = calls.iter().filter(|(t, _)| *t >= from && *t <= to).map(|(_, d)| d.as_micros() as u64).collect();
    us.sort_unstable();
    (us.len(), percentile(&us, 1.0), percentile(&us, 0.99))
}

#[derive(Default)]
struct HotPath {
    heartbeats: Vec<(Instant, Duration)>,
    completions: Vec<(Instant, Duration)>,
    errors: Vec<String>,
}

async fn channel(url: &str) -> anyhow::Result<tonic::transport::Channel> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_string())?.tcp_nodelay(true).connect().await?)
}

/// Holds one job and heartbeats it every `every` until `stop`.
async fn heartbeater(url: String, every: Duration, stop: Arc<AtomicBool>) -> anyhow::Result<HotPath> {
    let mut w = WorkerServiceClient::new(channel(&url).await?);
    let me = "hot-heartbeat".to_string();
    w.register_worker(pb::RegisterWorkerRequest { worker_id: me.clone(), host: "bench".into(), cpus: 1, slots: 1, ..Default::default() }).await?;
    let jobs = w.claim_jobs(pb::ClaimJobsRequest { worker_id: me.clone(), free_slots: 1 }).await?.into_inner().jobs;
    let running: Vec<pb::JobLease> = jobs.iter().map(|a| pb::JobLease { job_id: a.job_id, attempt: a.attempt }).collect();
    anyhow::ensure!(running.len() == 1, "the heartbeating worker found no job to hold");
    let mut out = HotPath::default();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        match w.heartbeat(pb::HeartbeatRequest { worker_id: me.clone(), running: running.clone(), ..Default::default() }).await {
            Ok(r) if r.get_ref().abort.is_empty() => {}
            Ok(r) => out.errors.push(format!("Heartbeat: told to abort {:?}", r.into_inner().abort)),
            Err(e) => out.errors.push(format!("Heartbeat: {e}")),
        }
        out.heartbeats.push((t, t.elapsed()));
        tokio::time::sleep(every.saturating_sub(t.elapsed())).await;
    }
    Ok(out)
}

/// Claims, uploads and completes one job at a time until `stop` (idle once the small sweep is
/// done), timing each completion (its uploads and CompleteJob) and keeping every failure.
async fn completer(url: String, stop: Arc<AtomicBool>) -> anyhow::Result<HotPath> {
    let mut w = WorkerServiceClient::new(channel(&url).await?);
    let me = "hot-complete".to_string();
    w.register_worker(pb::RegisterWorkerRequest { worker_id: me.clone(), host: "bench".into(), cpus: 1, slots: 1, ..Default::default() }).await?;
    let digest = hex::encode(Sha256::digest(BLOB));
    let mut out = HotPath::default();
    while !stop.load(Ordering::Relaxed) {
        let jobs = match w.claim_jobs(pb::ClaimJobsRequest { worker_id: me.clone(), free_slots: 1 }).await {
            Ok(r) => r.into_inner().jobs,
            Err(e) => {
                out.errors.push(format!("ClaimJobs: {e}"));
                Vec::new()
            }
        };
        let Some(a) = jobs.into_iter().next() else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let lease = pb::JobLease { job_id: a.job_id, attempt: a.attempt };
        let kind = if a.kind == pb::JobKind::Dense as i32 { "dense" } else { "level" };
        let t = Instant::now();
        for name in uploads_needed(kind) {
            let chunk = pb::ArtifactChunk { lease: Some(lease), name: (*name).into(), data: BLOB.to_vec(), sha256: digest.clone(), total_bytes: BLOB.len() as u64 };
            if let Err(e) = w.upload_artifact(tokio_stream::iter([chunk])).await {
                out.errors.push(format!("UploadArtifact: {e}"));
            }
        }
        let result = pb::LevelResult::from(result(a.level as i32));
        if let Err(e) = w.complete_job(pb::CompleteJobRequest { lease: Some(lease), result: Some(result), ..Default::default() }).await {
            out.errors.push(format!("CompleteJob: {e}"));
        }
        out.completions.push((t, t.elapsed()));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(out)
}

struct Row {
    jobs: u64,
    seconds: f64,
    heartbeats: (usize, f64, f64),
    completions: (usize, f64, f64),
    errors: usize,
    load: String,
}

async fn one_size(a: &SubmitArgs, target: u64) -> anyhow::Result<Row> {
    let per_seed = 1 + 40 * a.levels as u64;
    let seeds = ((target as f64 / per_seed as f64).round() as u64).max(1);
    let db = FreshDb::create(&a.admin_url, a.sqlite.as_deref(), &format!("submit-{target}")).await?;
    // The coordinator: this build's services in process, or a binary as a process of its own.
    let mut hot = grid_spec(25, 1)?;
    hot.name = "hot".into();
    let (url, backend, in_process) = match &a.coordinator_bin {
        Some(bin) => {
            let p = spawn_coordinator(bin, &db.url, a.pool, 64).await?;
            (p.url.clone(), if db.pg.is_some() { "postgres" } else { "sqlite" }, Err(p))
        }
        None => {
            let store = Store::connect(&db.url, &StoreOptions { max_connections: a.pool, ..Default::default() }).await?;
            let art_dir = std::env::temp_dir().join(format!("lth-bench-artifacts-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&art_dir)?;
            let artifacts = ArtifactStore::open(art_dir.to_str().expect("a UTF-8 temp dir"))?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}", listener.local_addr()?);
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let opts = ServiceOptions { max_jobs_per_sweep: u64::MAX, ..Default::default() };
            let server = tokio::spawn(lth_coordinator::server::serve(store.clone(), artifacts, opts, Duration::from_secs(2), listener, async {
                let _ = rx.await;
            }));
            (url, store.backend_name(), Ok((store, server, tx, art_dir)))
        }
    };
    let mut sweeps = pb::sweep_service_client::SweepServiceClient::new(channel(&url).await?);
    // The hot path's own sweep: 25 dense jobs and 1,000 level jobs behind them.
    sweeps.submit_sweep(pb::SubmitSweepRequest { spec: Some((&hot).into()), client_token: String::new(), dry_run: false }).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let hb = tokio::spawn(heartbeater(url.clone(), Duration::from_millis(a.heartbeat_ms), stop.clone()));
    let done = tokio::spawn(completer(url.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let spec = grid_spec(seeds, a.levels)?;
    let load = load_average();
    let t0 = Instant::now();
    let sub = sweeps.submit_sweep(pb::SubmitSweepRequest { spec: Some((&spec).into()), client_token: String::new(), dry_run: false }).await?.into_inner();
    let t1 = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (hb, done) = (hb.await??, done.await??);
    match in_process {
        Ok((store, server, tx, art_dir)) => {
            let _ = tx.send(());
            server.await??;
            store.close().await;
            let _ = std::fs::remove_dir_all(&art_dir);
        }
        Err(p) => p.stop().await,
    }

    let row = Row {
        jobs: sub.jobs,
        seconds: (t1 - t0).as_secs_f64(),
        heartbeats: during(&hb.heartbeats, t0, t1),
        completions: during(&done.completions, t0, t1),
        errors: hb.errors.len() + done.errors.len(),
        load,
    };
    println!(
        "[submit {backend}{}] {} jobs ({} levels) in {:.2} s = {:.0} jobs/s | meanwhile {} heartbeats, slowest {:.1} ms, p99 {:.1} ms; {} completions, slowest {:.1} ms | {} failed calls{} | load average {}",
        a.coordinator_bin.as_ref().map(|b| format!(", {}", b.display())).unwrap_or_default(),
        row.jobs,
        a.levels,
        row.seconds,
        row.jobs as f64 / row.seconds,
        row.heartbeats.0,
        row.heartbeats.1,
        row.heartbeats.2,
        row.completions.0,
        row.completions.1,
        row.errors,
        hb.errors.iter().chain(done.errors.iter()).next().map(|e| format!(" (first: {e})")).unwrap_or_default(),
        row.load
    );
    db.drop_now(a.keep).await?;
    Ok(row)
}

pub async fn main(a: SubmitArgs) -> anyhow::Result<()> {
    let backend = if a.sqlite.is_some() { "sqlite" } else { "postgres" };
    let mut rows = Vec::new();
    for &n in &a.jobs {
        rows.push(one_size(&a, n).await?);
    }
    println!("backend | jobs | submit s | heartbeats during | slowest heartbeat ms | p99 ms | completions during | slowest completion ms | failed calls | load average");
    for r in &rows {
        println!(
            "{backend} | {} | {:.2} | {} | {:.1} | {:.1} | {} | {:.1} | {} | {}",
            r.jobs, r.seconds, r.heartbeats.0, r.heartbeats.1, r.heartbeats.2, r.completions.0, r.completions.1, r.errors, r.load
        );
    }
    Ok(())
}
