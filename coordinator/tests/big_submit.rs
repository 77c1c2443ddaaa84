//! A big submit never starves the hot path (issue 9, failure 7), on both backends.
//!
//! - While a ~100k-job grid is submitted over gRPC, a worker on its own connection keeps claiming,
//!   heartbeating, uploading and completing jobs of another sweep through the real server: no
//!   call fails ("database is locked"), no heartbeat or completion waits longer than [`BOUND`]
//!   (a lease is 30 s), and heartbeats keep being answered all through the submit. Before the
//!   submit was written in short transactions, SQLite held its one write lock for the whole
//!   submit and every heartbeat waited for it.
//! - The real `lth-coordinator` binary is killed (SIGKILL) in the middle of such a submit: nothing
//!   of the half-written sweep was claimable while it was written or after, the restarted
//!   coordinator deletes it, and the client's retry with the same token writes it whole, once.
//! - Two concurrent submits with one client token make one sweep (idempotency survives chunking).

mod common;

use common::*;
use lth_coordinator::artifacts::ArtifactStore;
use lth_coordinator::rpc::ServiceOptions;
use lth_coordinator::store::Store;
use lth_proto::v1 as pb;
use pb::sweep_service_client::SweepServiceClient;
use pb::worker_service_client::WorkerServiceClient;
use sha2::{Digest, Sha256};
use sqlx::Connection;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The longest a heartbeat or completion may wait while the big sweep is submitted: well under
/// the 30 s lease, and far more than the ~50 ms a submit holds SQLite's lock at a time.
const BOUND: Duration = Duration::from_secs(2);

/// The big grid: 4 metrics x 2 rates x `seeds` seeds x `levels` levels, plus a dense job per seed.
fn big_spec(seeds: u64, levels: u32) -> lth_sweep::SweepSpec {
    let seeds: Vec<u64> = (0..seeds).collect();
    spec(&["magnitude", "l1", "l2", "random"], &[0.2, 0.4], &seeds, levels)
}

/// 250 + 4 x 2 x 250 x 50 = 100,250 jobs.
const BIG_SEEDS: u64 = 250;
const BIG_LEVELS: u32 = 50;
const BIG_JOBS: u64 = BIG_SEEDS + 8 * BIG_SEEDS * BIG_LEVELS as u64;

fn limits() -> ServiceOptions {
    ServiceOptions { max_jobs_per_sweep: 10_000_000, ..Default::default() }
}

async fn connect(url: &str) -> Channel {
    let t0 = Instant::now();
    loop {
        match Channel::from_shared(url.to_string()).unwrap().connect().await {
            Ok(c) => return c,
            Err(e) => {
                assert!(t0.elapsed() < Duration::from_secs(30), "cannot reach {url}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The real services on 127.0.0.1, in this process.
struct Server {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _artifacts: tempfile::TempDir,
}

async fn serve(store: &Store) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let artifacts = ArtifactStore::open(dir.path().to_str().unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(lth_coordinator::server::serve(store.clone(), artifacts, limits(), Duration::from_millis(500), listener, async {
        let _ = rx.await;
    }));
    Server { url, stop: Some(tx), task, _artifacts: dir }
}

impl Server {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

/// One timed call of the hot path: when it started and how long it took.
#[derive(Default)]
struct Calls {
    heartbeats: Vec<(Instant, Duration)>,
    completions: Vec<(Instant, Duration)>,
    errors: Vec<String>,
}

fn lease_of(a: &pb::JobAssignment) -> pb::JobLease {
    pb::JobLease { job_id: a.job_id, attempt: a.attempt }
}

fn small_result(a: &pb::JobAssignment) -> pb::LevelResult {
    let total = 16u64;
    let kept = if a.level == 0 { 16 } else { 8 };
    let bits: Vec<bool> = (0..total).map(|i| i < kept).collect();
    pb::LevelResult {
        sparsity: 1.0 - kept as f64 / total as f64,
        test_accuracy: 0.9,
        test_loss: 0.3,
        train_loss: 0.2,
        epochs: 2.0,
        wall_seconds: 1.0,
        iterations: 10,
        layers: vec![pb::LayerStats {
            layer: "fc1.weight".into(),
            kept,
            total,
            mask_bits: pack(&bits),
            weight_norm: 1.0,
            ..Default::default()
        }],
        device: "cpu".into(),
        diverged: false,
    }
}

/// A worker that claims, heartbeats, uploads and completes one job at a time (heartbeating with
/// no lease when nothing is ready) until `stop`, timing every heartbeat and completion.
async fn hot_path(url: String, stop: Arc<AtomicBool>) -> Calls {
    let mut w = WorkerServiceClient::new(connect(&url).await);
    let me = "hot-worker".to_string();
    w.register_worker(pb::RegisterWorkerRequest { worker_id: me.clone(), host: "h".into(), cpus: 1, slots: 1, ..Default::default() })
        .await
        .unwrap();
    let blob = vec![7u8; 1024];
    let digest = hex::encode(Sha256::digest(&blob));
    let mut calls = Calls::default();
    while !stop.load(Ordering::Relaxed) {
        let claimed = match w.claim_jobs(pb::ClaimJobsRequest { worker_id: me.clone(), free_slots: 1 }).await {
            Ok(r) => r.into_inner().jobs,
            Err(e) => {
                calls.errors.push(format!("ClaimJobs: {e}"));
                Vec::new()
            }
        };
        let running: Vec<pb::JobLease> = claimed.iter().map(lease_of).collect();
        let t = Instant::now();
        match w.heartbeat(pb::HeartbeatRequest { worker_id: me.clone(), running, ..Default::default() }).await {
            Ok(r) => assert!(r.into_inner().abort.is_empty(), "the hot path's lease was lost"),
            Err(e) => calls.errors.push(format!("Heartbeat: {e}")),
        }
        calls.heartbeats.push((t, t.elapsed()));
        for a in &claimed {
            let names: &[&str] = if a.kind == pb::JobKind::Dense as i32 { &["rewind", "weights"] } else { &["weights"] };
            for name in names {
                let chunk = pb::ArtifactChunk {
                    lease: Some(lease_of(a)),
                    name: (*name).into(),
                    data: blob.clone(),
                    sha256: digest.clone(),
                    total_bytes: blob.len() as u64,
                };
                if let Err(e) = w.upload_artifact(tokio_stream::iter([chunk])).await {
                    calls.errors.push(format!("UploadArtifact: {e}"));
                }
            }
            let t = Instant::now();
            let done = w.complete_job(pb::CompleteJobRequest { lease: Some(lease_of(a)), result: Some(small_result(a)), ..Default::default() }).await;
            calls.completions.push((t, t.elapsed()));
            if let Err(e) = done {
                calls.errors.push(format!("CompleteJob: {e}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    calls
}

/// The slowest of the calls that started within `window`, and how many did.
fn within(calls: &[(Instant, Duration)], window: (Instant, Instant)) -> (Duration, usize) {
    let inside: Vec<Duration> = calls.iter().filter(|(t, _)| *t >= window.0 && *t <= window.1).map(|(_, d)| *d).collect();
    (inside.iter().copied().max().unwrap_or_default(), inside.len())
}

async fn hot_path_is_not_starved(db: TestDb) {
    let store = db.store().await;
    let server = serve(&store).await;
    let mut sweeps = SweepServiceClient::new(connect(&server.url).await);
    // The hot path's own sweep: 60 chains of 5 levels.
    let small = spec(&["magnitude"], &[0.5], &(1000..1060).collect::<Vec<u64>>(), 5);
    sweeps.submit_sweep(pb::SubmitSweepRequest { spec: Some((&small).into()), client_token: String::new(), dry_run: false }).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let worker = tokio::spawn(hot_path(server.url.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let big = big_spec(BIG_SEEDS, BIG_LEVELS);
    let t0 = Instant::now();
    let sub = sweeps
        .submit_sweep(pb::SubmitSweepRequest { spec: Some((&big).into()), client_token: "big".into(), dry_run: false })
        .await
        .expect("the big submit")
        .into_inner();
    let t1 = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let calls = worker.await.unwrap();

    let (slowest_hb, hbs) = within(&calls.heartbeats, (t0, t1));
    let (slowest_done, dones) = within(&calls.completions, (t0, t1));
    eprintln!(
        "{}: submitted {} jobs in {:.2} s; meanwhile {hbs} heartbeats (slowest {slowest_hb:?}) and {dones} completions (slowest {slowest_done:?})",
        store.backend_name(),
        sub.jobs,
        (t1 - t0).as_secs_f64()
    );
    assert!(calls.errors.is_empty(), "hot-path calls failed during the submit: {:?}", calls.errors);
    assert_eq!((sub.created, sub.jobs), (true, BIG_JOBS));
    assert!(slowest_hb < BOUND, "a heartbeat waited {slowest_hb:?} for the submit ({hbs} heartbeats in {:?})", t1 - t0);
    assert!(slowest_done < BOUND, "a completion waited {slowest_done:?} for the submit");
    // Answered all through the submit, not just once it let go: at least one a second (a
    // hot-path round takes tens of milliseconds when the store is not held).
    let rounds = (t1 - t0).as_secs_f64().floor() as usize;
    assert!(hbs >= rounds.max(2), "only {hbs} heartbeats during a {:?} submit (at least {} expected)", t1 - t0, rounds.max(2));
    assert!(dones >= 1, "no completion during the submit");

    // The big sweep is whole and running: its dense jobs ready, everything else blocked.
    let s = sweeps.get_sweep(pb::GetSweepRequest { sweep_id: sub.sweep_id }).await.unwrap().into_inner();
    assert_eq!(s.state(), pb::SweepState::Running);
    let c = s.jobs.unwrap();
    assert_eq!((c.ready, c.blocked, c.running, c.succeeded), (BIG_SEEDS, BIG_JOBS - BIG_SEEDS, 0, 0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_submit_does_not_starve_the_hot_path_sqlite() {
    hot_path_is_not_starved(TestDb::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_submit_does_not_starve_the_hot_path_postgres() {
    hot_path_is_not_starved(TestDb::postgres().await).await;
}

// ---------------------------------------------------------------------------------------------
// kill -9 in the middle of a submit
// ---------------------------------------------------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The real `lth-coordinator` binary; killed on drop (its log printed if the test failed).
struct Coordinator {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("===== coordinator log =====\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

fn start_coordinator(db: &str, dir: &std::path::Path, run: u32) -> Coordinator {
    let port = free_port();
    let log = dir.join(format!("coordinator-{run}.log"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_lth-coordinator"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--http-listen", "off", "--db", db, "--max-jobs-per-sweep", "10000000"])
        .arg("--artifacts")
        .arg(dir.join("artifacts"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("start lth-coordinator");
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(line) if line.contains("listening on") => break,
            Ok(_) => {}
            Err(_) => panic!("lth-coordinator did not start; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default()),
        }
    }
    Coordinator { child, url: format!("http://127.0.0.1:{port}"), log }
}

/// A read-only look at the database behind the coordinator's back.
async fn count(db: &TestDb, sql: &str) -> i64 {
    if db.url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(&format!("{}?mode=ro", db.url)).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    } else {
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
    }
}

/// Jobs written so far by the submit in flight: on SQLite its committed rows; on Postgres, where
/// the uncommitted rows are invisible, how far the id sequence (not transactional) has moved.
async fn jobs_written(db: &TestDb) -> i64 {
    if db.url.starts_with("sqlite:") {
        count(db, "SELECT count(*) FROM jobs").await
    } else {
        count(db, "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM jobs_id_seq").await
    }
}

async fn crash_mid_submit(db: TestDb) {
    let sqlite = db.url.starts_with("sqlite:");
    let dir = tempfile::tempdir().unwrap();
    // Migrated before the coordinator starts, so that the looks below find the tables.
    db.store().await.close().await;
    let c = start_coordinator(&db.url, dir.path(), 1);
    let channel = connect(&c.url).await;
    let mut w = WorkerServiceClient::new(channel.clone());
    w.register_worker(pb::RegisterWorkerRequest { worker_id: "w".into(), host: "h".into(), cpus: 1, slots: 8, ..Default::default() }).await.unwrap();
    let big = big_spec(BIG_SEEDS, BIG_LEVELS);
    let request = pb::SubmitSweepRequest { spec: Some((&big).into()), client_token: "crash".into(), dry_run: false };
    let submit = tokio::spawn({
        let mut sweeps = SweepServiceClient::new(channel.clone());
        let request = request.clone();
        async move { sweeps.submit_sweep(request).await }
    });

    // Wait until a part of the grid is written.
    let t0 = Instant::now();
    while jobs_written(&db).await < 5_000 {
        assert!(!submit.is_finished(), "the submit finished before the test could look at it: {:?}", submit.await.unwrap().map(|r| r.into_inner()));
        assert!(t0.elapsed() < Duration::from_secs(60), "the submit wrote nothing in 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if sqlite {
        // Half-written: visible as submitting, but nothing claimable, and not pausable.
        let mut sweeps = SweepServiceClient::new(channel.clone());
        let id = count(&db, "SELECT id FROM sweeps WHERE client_token = 'crash'").await;
        let s = sweeps.get_sweep(pb::GetSweepRequest { sweep_id: id }).await.unwrap().into_inner();
        assert_eq!(s.state(), pb::SweepState::Submitting);
        let jobs = w.claim_jobs(pb::ClaimJobsRequest { worker_id: "w".into(), free_slots: 8 }).await.unwrap().into_inner().jobs;
        assert!(jobs.is_empty(), "claimed {} jobs of a sweep still being submitted", jobs.len());
        let err = sweeps.pause_sweep(pb::SweepRef { sweep_id: id }).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    }
    assert!(!submit.is_finished(), "the submit finished before the kill");
    drop(c); // SIGKILL
    assert!(submit.await.unwrap().is_err(), "the submit cannot have succeeded");

    let written = count(&db, "SELECT count(*) FROM jobs").await;
    let claimable = count(&db, "SELECT count(*) FROM jobs WHERE state IN ('ready', 'running')").await;
    assert_eq!(claimable, 0, "the half-written sweep left claimable jobs");
    if sqlite {
        assert!(written > 0, "the kill came before anything was committed");
        assert_eq!(count(&db, "SELECT count(*) FROM sweeps WHERE state = 'submitting'").await, 1);
    } else {
        assert_eq!((written, count(&db, "SELECT count(*) FROM sweeps").await), (0, 0), "one transaction on Postgres: nothing committed");
    }

    // Restarted, the coordinator deletes the half-written sweep before it serves.
    // (The port listens before the services serve; the first answer comes after the cleanup.)
    let c = start_coordinator(&db.url, dir.path(), 2);
    let channel = connect(&c.url).await;
    let mut w = WorkerServiceClient::new(channel.clone());
    w.register_worker(pb::RegisterWorkerRequest { worker_id: "w".into(), host: "h".into(), cpus: 1, slots: 8, ..Default::default() }).await.unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM sweeps").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM jobs").await, 0);
    assert!(w.claim_jobs(pb::ClaimJobsRequest { worker_id: "w".into(), free_slots: 8 }).await.unwrap().into_inner().jobs.is_empty());

    // The client's retry with the same token writes the sweep whole, and once.
    let mut sweeps = SweepServiceClient::new(channel.clone());
    let sub = sweeps.submit_sweep(request.clone()).await.unwrap().into_inner();
    assert_eq!((sub.created, sub.jobs), (true, BIG_JOBS));
    let again = sweeps.submit_sweep(request).await.unwrap().into_inner();
    assert_eq!((again.created, again.sweep_id, again.jobs), (false, sub.sweep_id, BIG_JOBS));
    assert_eq!(count(&db, "SELECT count(*) FROM jobs").await, BIG_JOBS as i64);
    let jobs = w.claim_jobs(pb::ClaimJobsRequest { worker_id: "w".into(), free_slots: 8 }).await.unwrap().into_inner().jobs;
    assert_eq!(jobs.len(), 8, "the resubmitted sweep's dense jobs are claimable");
    assert!(jobs.iter().all(|j| j.sweep_id == sub.sweep_id && j.kind == pb::JobKind::Dense as i32));
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_mid_submit_leaves_nothing_claimable_sqlite() {
    crash_mid_submit(TestDb::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_mid_submit_leaves_nothing_claimable_postgres() {
    crash_mid_submit(TestDb::postgres().await).await;
}

// ---------------------------------------------------------------------------------------------
// One client token, two concurrent submits
// ---------------------------------------------------------------------------------------------

async fn one_token_one_sweep(db: TestDb) {
    let store = db.store().await;
    // 20,100 jobs: several transactions on SQLite.
    let big = big_spec(100, 25);
    let (a, b) = tokio::join!(store.submit_sweep(&big, Some("twice")), store.submit_sweep(&big, Some("twice")));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.sweep_id, b.sweep_id);
    assert_eq!(u32::from(a.created) + u32::from(b.created), 1, "exactly one of them created the sweep: {a:?} {b:?}");
    assert_eq!((a.jobs, b.jobs, a.trials, b.trials), (20_100, 20_100, 800, 800));
    assert_eq!(scalar(&store, "SELECT count(*) FROM sweeps").await, 1);
    assert_eq!(scalar(&store, "SELECT count(*) FROM jobs").await, 20_100);
    // A different spec under the same token is refused, as before.
    let other = big_spec(100, 24);
    let err = store.submit_sweep(&other, Some("twice")).await.unwrap_err();
    assert!(matches!(err, lth_coordinator::store::StoreError::AlreadyExists(_)), "{err:?}");
    // Once written, the sweep is running with only its dense jobs ready.
    let s = store.get_sweep(a.sweep_id).await.unwrap();
    assert_eq!((s.state.as_str(), s.jobs.ready, s.jobs.blocked), ("running", 100, 20_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_with_one_token_make_one_sweep_sqlite() {
    one_token_one_sweep(TestDb::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_with_one_token_make_one_sweep_postgres() {
    one_token_one_sweep(TestDb::postgres().await).await;
}
