//! The distributed path end to end, with real processes: `lth-coordinator` on a fresh Postgres
//! database, `lth-worker daemon` processes on CPU (each job in its own `exec-job` child), gRPC
//! over local sockets, and the bundled digits with LeNet-300-100.
//!
//! Scenarios (issue 4's "done when"): a sweep completes on two workers with a result row and
//! masks in SQL for every (metric, rate, seed, level), equal bit for bit to `lth-worker run-local`;
//! `kill -9` of a worker mid-job re-queues the job after its lease and the other worker finishes it
//! (resuming from the uploaded checkpoint) with the same results and no duplicate rows; a
//! coordinator restarted mid-sweep is reconnected to and the sweep completes; a cancelled sweep's
//! jobs stop within 10 s and nothing more is claimed. Controls and a rate schedule run through the
//! daemon exactly as through run-local (issue 13).
//!
//! The coordinator binary is taken from the same target folder as lth-worker (built on demand with
//! cargo when missing), or from LTH_COORDINATOR_BIN.

use lth_proto::v1 as pb;
use lth_worker::engine::LevelReport;
use sqlx::Row;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{assert_one_result_per_trial_level, bit_string, children_of, is_zombie, stored_results, Cluster, StoredLevel};

// The processes, the coordinator on its own port and the result checks are lth-testkit's
// (testkit/src/cluster.rs, results.rs), shared with the fault suite (chaos/).

fn worker_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lth-worker"))
}

// ---------------------------------------------------------------------------------------------
// Sweeps and results
// ---------------------------------------------------------------------------------------------

fn sweep_toml(name: &str, metrics: &str, seeds: &str, levels: u32, length: &str) -> String {
    format!(
        r#"
name = "{name}"
model = "lenet300100"
dataset = {{ name = "digits" }}
metrics = [{metrics}]
rates = [0.2]
seeds = [{seeds}]
levels = {levels}
max_attempts = 3
[recipe]
length = "{length}"
batch_size = 64
lr = 0.05
momentum = 0.9
rewind = "0it"
checkpoint_every = "10it"
"#
    )
}

/// `lth-worker run-local` for one chain of the sweep file (rate 0.2), as StoredLevel rows.
fn run_local(dir: &Path, sweep_file: &Path, metric: &str, seed: u64, levels: u32) -> Vec<StoredLevel> {
    run_local_at(dir, sweep_file, metric, "0.2", seed, levels)
}

/// [`run_local`] at another rate.
fn run_local_at(dir: &Path, sweep_file: &Path, metric: &str, rate: &str, seed: u64, levels: u32) -> Vec<StoredLevel> {
    common::run_local(dir, sweep_file, metric, rate, seed, levels)
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while !f().await {
        assert!(t0.elapsed() < within, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Jobs of the sweep that are running and have reported progress (training has started).
/// Waits until a statement matching one of `like` (LIKE patterns: pg_stat_activity keeps the
/// first 1 kB of a statement, which for the store's query files is their leading comment) waits
/// on a lock in this database.
async fn wait_for_lock_waiter(pool: &sqlx::PgPool, what: &str, like: &[&str], within: Duration) {
    let like: Vec<String> = like.iter().map(|l| l.to_string()).collect();
    wait_until(&format!("{what} to wait on the lock"), within, || {
        let (pool, like) = (pool.clone(), like.clone());
        async move {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                  AND wait_event_type = 'Lock' AND query LIKE ANY($1)",
            )
            .bind(&like)
            .fetch_one(&pool)
            .await
            .unwrap();
            waiting > 0
        }
    })
    .await;
}

async fn jobs_training(pool: &sqlx::PgPool, sweep_id: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM jobs WHERE sweep_id = $1 AND state = 'running' AND progress > 0")
        .bind(sweep_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The fault suite's last bar (lth_chaos::SCENARIOS lists these tests): no content hash stored
/// twice, the daemons stop cleanly on SIGTERM with no job process left behind, and no job or
/// attempt is left running in the store.
async fn assert_nothing_left(c: &mut Cluster, pool: &sqlx::PgPool) {
    lth_testkit::results::assert_no_duplicate_rows(pool).await;
    c.stop_workers_and_check_none_left(Duration::from_secs(30));
    lth_testkit::results::assert_nothing_running(pool).await;
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_finish_a_sweep_with_run_local_results() {
    let mut c = Cluster::new(10).await;
    c.start_worker("w1");
    c.start_worker("w2");
    let text = sweep_toml("e2e-two-workers", "\"magnitude\", \"l2\"", "1", 2, "4ep");
    let sweep_file = c.dir.path().join("sweep.toml");
    std::fs::write(&sweep_file, &text).unwrap();
    let sweep_id = c.submit(&text).await;
    c.wait_for_state(sweep_id, pb::SweepState::Succeeded, Duration::from_secs(240)).await;

    let pool = c.db.pool().await;
    // 2 metrics × 1 rate × 1 seed × (level 0 + 2 levels)
    assert_one_result_per_trial_level(&pool, sweep_id, 6).await;
    let workers: Vec<String> = sqlx::query_scalar("SELECT DISTINCT worker_id FROM job_attempts WHERE outcome = 'succeeded' ORDER BY 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(!workers.is_empty() && workers.iter().all(|w| w == "w1" || w == "w2"), "{workers:?}");

    let stored = stored_results(&pool, sweep_id).await;
    for metric in ["l2", "magnitude"] {
        let local = run_local(c.dir.path(), &sweep_file, metric, 1, 2);
        let dist: Vec<&StoredLevel> = stored.iter().filter(|s| s.metric == metric).collect();
        assert_eq!(dist.len(), local.len());
        for (d, l) in dist.iter().zip(&local) {
            assert_eq!(d.level, l.level);
            assert_eq!(d.test_accuracy.to_bits(), l.test_accuracy.to_bits(), "{metric} level {}: accuracy", l.level);
            assert_eq!(d.sparsity, l.sparsity, "{metric} level {}: sparsity", l.level);
            assert_eq!(d.layers, l.layers, "{metric} level {}: masks", l.level);
        }
    }
}

/// Controls and a per-level rate schedule through the coordinator and a daemon: the store creates
/// the reinit and random_mask jobs as children of the level they control, the daemon trains them
/// from the ticket's weights, and SQL holds ticket, reinit and random_mask rows per controlled
/// level, equal bit for bit to `lth-worker run-local` on the same schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controls_and_a_rate_schedule_run_through_the_daemon_like_run_local() {
    let mut c = Cluster::new(10).await;
    c.start_worker("w1");
    let text = sweep_toml("e2e-controls", "\"magnitude\"", "2", 2, "2ep")
        .replace("rates = [0.2]", "rates = [[0.5, 0.3]]")
        .replace("levels = 2\n", "levels = 2\ncontrols = [\"reinit\", \"random_mask\"]\ncontrol_levels = [1, 2]\n");
    let sweep_file = c.dir.path().join("sweep.toml");
    std::fs::write(&sweep_file, &text).unwrap();
    let sweep_id = c.submit(&text).await;
    c.wait_for_state(sweep_id, pb::SweepState::Succeeded, Duration::from_secs(300)).await;
    let pool = c.db.pool().await;

    // (level, control, accuracy, sparsity, per-layer (name, kept, bits)) as stored.
    type Row = (i32, String, f64, f64, Vec<(String, i64, String)>);
    let mut stored: Vec<Row> = Vec::new();
    for r in sqlx::query(
        "SELECT level, COALESCE(control, 'ticket') AS label, result_job_id, test_accuracy, sparsity, schedule FROM trial_results \
          WHERE sweep_id = $1 ORDER BY level, control NULLS FIRST",
    )
    .bind(sweep_id)
    .fetch_all(&pool)
    .await
    .unwrap()
    {
        assert_eq!(r.get::<Option<String>, _>("schedule").as_deref(), Some("[0.5,0.3]"));
        let layers = sqlx::query("SELECT layer, kept, bits::text AS bits FROM masks WHERE job_id = $1 ORDER BY ordinal")
            .bind(r.get::<i64, _>("result_job_id"))
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.get::<String, _>("layer"), m.get::<i64, _>("kept"), m.get::<String, _>("bits")))
            .collect();
        stored.push((r.get("level"), r.get("label"), r.get("test_accuracy"), r.get("sparsity"), layers));
    }
    let labels: Vec<(i32, &str)> = stored.iter().map(|r| (r.0, r.1.as_str())).collect();
    assert_eq!(labels, [(0, "ticket"), (1, "ticket"), (1, "random_mask"), (1, "reinit"), (2, "ticket"), (2, "random_mask"), (2, "reinit")]);
    // Level 1 pruned 50%, level 2 30% of the rest: 1 - 0.5 * 0.7 = 65% sparsity.
    let rates: Vec<(i32, f64)> =
        sqlx::query_as("SELECT level, rate FROM jobs WHERE sweep_id = $1 AND kind = 'level' AND control IS NULL ORDER BY level")
            .bind(sweep_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rates, [(1, 0.5), (2, 0.3)]);
    assert!((stored[4].3 - 0.65).abs() < 0.01, "level-2 sparsity {}", stored[4].3);
    for level in [1, 2] {
        let of = |control: &str| stored.iter().find(|r| r.0 == level && r.1 == control).unwrap();
        let (ticket, reinit, random) = (of("ticket"), of("reinit"), of("random_mask"));
        // reinit keeps the ticket's mask; random_mask keeps its per-layer counts, not its bits.
        assert_eq!(reinit.4, ticket.4, "level {level}: reinit trains the ticket's mask");
        assert_eq!(random.4.iter().map(|l| (&l.0, l.1)).collect::<Vec<_>>(), ticket.4.iter().map(|l| (&l.0, l.1)).collect::<Vec<_>>());
        assert_ne!(random.4, ticket.4, "level {level}: random_mask draws another mask");
    }

    // The same chain through run-local: every row bit for bit.
    let out = c.dir.path().join("local-controls");
    let status = Command::new(worker_bin())
        .args(["--threads", "1", "run-local"])
        .arg(&sweep_file)
        .args(["--metric", "magnitude", "--rate", "0.5,0.3", "--seed", "2", "--levels", "2", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "run-local failed");
    for row in &stored {
        let folder = if row.1 == "ticket" { format!("level-{}", row.0) } else { format!("level-{}-{}", row.0, row.1) };
        let report: LevelReport = serde_json::from_slice(&std::fs::read(out.join(&folder).join("report.json")).unwrap()).unwrap();
        assert_eq!(row.2.to_bits(), report.test_accuracy.to_bits(), "{folder}: accuracy");
        let layers: Vec<(String, i64, String)> =
            report.layers.iter().map(|l| (l.name.clone(), l.kept as i64, bit_string(&l.bits, l.total))).collect();
        assert_eq!(row.4, layers, "{folder}: masks");
    }
}

/// Your own network through the coordinator and a daemon: the TorchScript LeNet the repository
/// ships (read by path; its sha256 travels in the spec) gives exactly run-local's results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torchscript_model_trains_through_the_daemon_like_run_local() {
    let mut c = Cluster::new(10).await;
    c.start_worker("w1");
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/models/lenet300100-digits.pt").canonicalize().unwrap();
    let sha = lth_sweep::file_sha256(&model).unwrap();
    let text = sweep_toml("e2e-torchscript", "\"l1\"", "3", 2, "3ep")
        .replace("model = \"lenet300100\"", &format!("model = {{ torchscript = {:?}, sha256 = \"{sha}\" }}", model.to_string_lossy()));
    let sweep_file = c.dir.path().join("sweep.toml");
    std::fs::write(&sweep_file, &text).unwrap();
    let sweep_id = c.submit(&text).await;
    c.wait_for_state(sweep_id, pb::SweepState::Succeeded, Duration::from_secs(240)).await;
    let pool = c.db.pool().await;
    assert_one_result_per_trial_level(&pool, sweep_id, 3).await;
    let stored = stored_results(&pool, sweep_id).await;
    let local = run_local(c.dir.path(), &sweep_file, "l1", 3, 2);
    assert_eq!(stored.len(), local.len());
    for (d, l) in stored.iter().zip(&local) {
        assert_eq!(d.test_accuracy.to_bits(), l.test_accuracy.to_bits(), "level {}: accuracy", l.level);
        assert_eq!(d.layers, l.layers, "level {}: masks", l.level);
    }
    assert_eq!(stored[0].layers.iter().map(|l| l.0.as_str()).collect::<Vec<_>>(), ["fc_layers.0.weight", "fc_layers.1.weight", "fc.weight"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_loses_its_lease_and_the_other_finishes_the_job() {
    let mut c = Cluster::new(3).await;
    c.start_worker("doomed");
    // Long enough that the level-1 job is still running when it is killed.
    let text = sweep_toml("e2e-kill", "\"l1\"", "5", 1, "60ep");
    let sweep_file = c.dir.path().join("sweep.toml");
    std::fs::write(&sweep_file, &text).unwrap();
    let sweep_id = c.submit(&text).await;
    let pool = c.db.pool().await;

    // Wait until the level-1 job runs on "doomed" and has uploaded a checkpoint.
    let found = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    wait_until("the level-1 job to run and checkpoint on the doomed worker", Duration::from_secs(180), || {
        let pool = pool.clone();
        let found = found.clone();
        async move {
            let row: Option<(i64,)> = sqlx::query_as(
                "SELECT j.id FROM jobs j JOIN artifacts a ON a.job_id = j.id AND a.name = 'checkpoint' \
                  WHERE j.sweep_id = $1 AND j.level = 1 AND j.state = 'running' AND j.worker_id = 'doomed'",
            )
            .bind(sweep_id)
            .fetch_optional(&pool)
            .await
            .unwrap();
            if let Some((id,)) = row {
                found.store(id, std::sync::atomic::Ordering::SeqCst);
            }
            row.is_some()
        }
    })
    .await;
    let victim = found.load(std::sync::atomic::Ordering::SeqCst);
    kill9_with_its_job_process(&mut c, "doomed").await;
    c.start_worker("survivor");
    c.wait_for_state(sweep_id, pb::SweepState::Succeeded, Duration::from_secs(240)).await;

    let (lost, state, worker): (i32, String, Option<String>) =
        sqlx::query_as("SELECT lost_count, state, worker_id FROM jobs WHERE id = $1").bind(victim).fetch_one(&pool).await.unwrap();
    assert_eq!(state, "succeeded");
    assert!(lost >= 1, "the killed attempt counts as lost");
    let _ = worker;
    let attempts: Vec<(i32, String, String)> =
        sqlx::query_as("SELECT attempt, worker_id, outcome FROM job_attempts WHERE job_id = $1 ORDER BY attempt")
            .bind(victim)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(attempts.first().map(|a| (a.1.as_str(), a.2.as_str())), Some(("doomed", "lost")), "{attempts:?}");
    assert_eq!(attempts.last().map(|a| (a.1.as_str(), a.2.as_str())), Some(("survivor", "succeeded")), "{attempts:?}");
    assert!(
        c.worker("survivor").log_text().contains("resuming from the checkpoint"),
        "the survivor resumed from the doomed worker's checkpoint"
    );
    assert_one_result_per_trial_level(&pool, sweep_id, 2).await;

    let stored = stored_results(&pool, sweep_id).await;
    let local = run_local(c.dir.path(), &sweep_file, "l1", 5, 1);
    for (d, l) in stored.iter().zip(&local) {
        assert_eq!(d.test_accuracy.to_bits(), l.test_accuracy.to_bits(), "level {}: accuracy", l.level);
        assert_eq!(d.layers, l.layers, "level {}: masks", l.level);
    }
    assert_nothing_left(&mut c, &pool).await;
}

/// `kill -9` of daemon `name` while it runs one job: the daemon is gone, and its job process
/// dies with it (PR_SET_PDEATHSIG) rather than training on as an orphan.
async fn kill9_with_its_job_process(c: &mut Cluster, name: &str) {
    let job_processes = children_of(c.worker(name).pid());
    assert_eq!(job_processes.len(), 1, "one exec-job child under the daemon");
    c.worker(name).signal(libc::SIGKILL);
    c.worker(name).wait_exit(Duration::from_secs(5)).expect("kill -9 ends the daemon");
    wait_until("the orphaned job process to die", Duration::from_secs(5), || {
        let alive = job_processes.iter().any(|p| Path::new(&format!("/proc/{p}")).exists() && !is_zombie(*p));
        async move { !alive }
    })
    .await;
}

/// The running job of the sweep on worker id `worker` that has reported progress, if any.
async fn training_job_of(pool: &sqlx::PgPool, sweep_id: i64, worker: &str) -> Option<(i64, i32)> {
    sqlx::query_as("SELECT id, attempt FROM jobs WHERE sweep_id = $1 AND state = 'running' AND worker_id = $2 AND progress > 0")
        .bind(sweep_id)
        .bind(worker)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn attempt_outcome(pool: &sqlx::PgPool, (job_id, attempt): (i64, i32)) -> String {
    sqlx::query_scalar("SELECT outcome FROM job_attempts WHERE job_id = $1 AND attempt = $2").bind(job_id).bind(attempt).fetch_one(pool).await.unwrap()
}

/// A daemon killed -9 and started again under the same worker id (a node rebooted, a crashed
/// daemon restarted by systemd): its registration as a new process re-queues the job leased to
/// the dead one at once, instead of after the lease (60 s here). Then a second daemon started
/// under that id by mistake supersedes the running one: the running one's job is re-queued, it
/// stops with an error saying why (its heartbeats are refused as WORKER_SUPERSEDED), and the
/// newest finishes the sweep, equal to run-local bit for bit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_restarted_under_its_worker_id_requeues_its_old_job_at_once_and_a_duplicate_supersedes_it() {
    let lease = Duration::from_secs(60);
    let mut c = Cluster::new(lease.as_secs() as u32).await;
    c.start_worker_process("first", "w", None, &[]);
    let text = sweep_toml("e2e-same-id", "\"l1\"", "5", 2, "60ep");
    let sweep_file = c.dir.path().join("sweep.toml");
    std::fs::write(&sweep_file, &text).unwrap();
    let sweep_id = c.submit(&text).await;
    let pool = c.db.pool().await;

    let found = std::sync::Arc::new(std::sync::Mutex::new(None));
    let wait_training = |what: &'static str| {
        let (pool, found) = (pool.clone(), found.clone());
        async move {
            wait_until(what, Duration::from_secs(180), || {
                let (pool, found) = (pool.clone(), found.clone());
                async move {
                    let job = training_job_of(&pool, sweep_id, "w").await;
                    *found.lock().unwrap() = job;
                    job.is_some()
                }
            })
            .await;
            found.lock().unwrap().expect("found")
        }
    };
    let first_job = wait_training("a job to train on the first daemon").await;
    kill9_with_its_job_process(&mut c, "first").await;

    // Restarted under the same id: the old job is re-queued when it registers, not in 60 s.
    let restarted = Instant::now();
    c.start_worker_process("second", "w", None, &[]);
    wait_until("the dead process's job to be re-queued", Duration::from_secs(20), || {
        let pool = pool.clone();
        async move { attempt_outcome(&pool, first_job).await == "lost" }
    })
    .await;
    assert!(restarted.elapsed() < lease / 2, "re-queued after {:?}, a lease is {lease:?}", restarted.elapsed());
    let second_job = wait_training("a job to train on the restarted daemon").await;
    assert!(second_job != first_job, "{second_job:?} is a new attempt");

    // A duplicate under the same id: the running daemon is superseded and stops with an error.
    c.start_worker_process("third", "w", None, &[]);
    let status = c.worker("second").wait_exit(Duration::from_secs(20)).expect("the superseded daemon stops");
    assert!(!status.success(), "a superseded daemon exits with an error: {status:?}");
    let log = c.worker("second").log_text();
    assert!(log.contains("another daemon process registered as worker \"w\""), "the superseded daemon says why:\n{log}");
    let outcome = attempt_outcome(&pool, second_job).await;
    assert!(outcome == "lost" || outcome == "succeeded", "the superseded process's job was re-queued (or had just finished): {outcome}");
    assert!(c.worker("third").is_running(), "the newest daemon runs on");

    c.wait_for_state(sweep_id, pb::SweepState::Succeeded, Duration::from_secs(300)).await;
    let workers: i64 = sqlx::query_scalar("SELECT count(*) FROM workers").fetch_one(&pool).await.unwrap();
    assert_eq!(workers, 1, "one worker id, whichever process registered it last");
    assert_one_result_per_trial_level(&pool, sweep_id, 3).await;
    lth_testkit::results::assert_same_results(&stored_results(&pool, sweep_id).await, &run_local(c.dir.path(), &sweep_file, "l1", 5, 2));
    assert_nothing_left(&mut c, &pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_reconnect_to_a_restarted_coordinator_and_finish() {
    let mut c = Cluster::new(15).await;
    c.start_worker("w1");
    let text = sweep_toml("e2e-restart", "\"magnitude\"", "2", 1, "40ep");
    let sweep_id = c.submit(&text).await;
    let pool = c.db.pool().await;
    wait_until("a job to run", Duration::from_secs(120), || {
        let pool = pool.clone();
        async move { jobs_training(&pool, sweep_id).await > 0 }
    })
    .await;
    // Stop the coordinator (gracefully), keep it away a few seconds, start it again.
    let mut old = c.coordinator.take().unwrap();
    old.proc.signal(libc::SIGTERM);
    old.proc.wait_exit(Duration::from_secs(20)).expect("the coordinator stops on SIGTERM");
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.start_coordinator();
    drop(old);
    c.wait_for_state(sweep_id, pb::SweepState::Succeeded, Duration::from_secs(240)).await;
    assert_one_result_per_trial_level(&pool, sweep_id, 2).await;
    let log = c.worker("w1").log_text();
    assert!(log.contains("coordinator reachable again") || log.contains("heartbeats reach the coordinator again"), "the worker noticed the outage and reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_sweep_stops_its_jobs_within_ten_seconds() {
    let mut c = Cluster::new(10).await;
    c.start_worker("w1");
    c.start_worker("w2");
    let text = sweep_toml("e2e-cancel", "\"magnitude\"", "1, 2", 1, "2000ep");
    let sweep_id = c.submit(&text).await;
    let pool = c.db.pool().await;
    wait_until("both dense jobs to run", Duration::from_secs(120), || {
        let pool = pool.clone();
        async move { jobs_training(&pool, sweep_id).await == 2 }
    })
    .await;
    let daemons: Vec<i32> = c.workers.iter().map(|w| w.pid()).collect();
    assert!(daemons.iter().all(|d| children_of(*d).len() == 1), "each worker runs one job process");
    let attempts_before: i64 = sqlx::query_scalar("SELECT count(*) FROM job_attempts").fetch_one(&pool).await.unwrap();

    let t0 = Instant::now();
    c.client().await.cancel_sweep(pb::SweepRef { sweep_id }).await.expect("cancel");
    wait_until("the job processes to stop", Duration::from_secs(10), || {
        let busy = daemons.iter().any(|d| !children_of(*d).is_empty());
        async move { !busy }
    })
    .await;
    let stopped_after = t0.elapsed();
    assert!(stopped_after < Duration::from_secs(10), "stopped after {stopped_after:?}");
    eprintln!("cancel → job processes gone in {stopped_after:?}");

    // Nothing more is claimed: the sweep stays cancelled and no new attempt starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.sweep_state(sweep_id).await, pb::SweepState::Cancelled);
    let attempts_after: i64 = sqlx::query_scalar("SELECT count(*) FROM job_attempts").fetch_one(&pool).await.unwrap();
    assert_eq!(attempts_before, attempts_after, "no job was claimed after the cancel");
    let running: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE sweep_id = $1 AND state = 'running'")
        .bind(sweep_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(running, 0);
    for w in &mut c.workers {
        assert!(w.is_running(), "the daemon {} keeps running after the cancel", w.name);
    }
}

/// The worker's artifact cache is not trusted by file name (issue 9, failure 3): flipped low bits
/// in cached θk/weights files would otherwise train silently different tickets that are recorded
/// as succeeded. A second sweep reuses the first one's dense job (same seed and recipe), so its
/// level job takes the rewind point and the dense weights from w1's cache: the corrupted entries
/// must be detected, evicted and downloaded again, and the results must equal run-local's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_cache_entries_are_evicted_and_fetched_again() {
    let mut c = Cluster::new(10).await;
    c.start_worker("w1");
    let first = sweep_toml("e2e-cache-first", "\"magnitude\"", "5", 1, "2ep");
    let id1 = c.submit(&first).await;
    c.wait_for_state(id1, pb::SweepState::Succeeded, Duration::from_secs(240)).await;

    let cache = c.dir.path().join("cache-w1/artifacts/sha256");
    let entries: Vec<PathBuf> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(entries.len() >= 2, "the level job cached the dense job's rewind and weights: {entries:?}");
    for path in &entries {
        // Same length, low bits of the last floats flipped: the file still parses.
        let mut bytes = std::fs::read(path).unwrap();
        let n = bytes.len();
        for b in &mut bytes[n - 64..] {
            *b ^= 1;
        }
        std::fs::write(path, &bytes).unwrap();
    }

    let second = sweep_toml("e2e-cache-second", "\"l2\"", "5", 1, "2ep");
    let sweep_file = c.dir.path().join("second.toml");
    std::fs::write(&sweep_file, &second).unwrap();
    let id2 = c.submit(&second).await;
    c.wait_for_state(id2, pb::SweepState::Succeeded, Duration::from_secs(240)).await;

    for e in std::fs::read_dir(&cache).unwrap() {
        let path = e.unwrap().path();
        let (actual, _) = lth_worker::daemon::artifacts::sha256_file(&path).unwrap();
        assert_eq!(path.file_name().unwrap().to_string_lossy(), actual, "a cache entry whose bytes do not match its name survived");
    }
    let log = c.worker("w1").log_text();
    assert!(log.contains("no longer matches its sha256"), "the eviction is logged");

    let pool = c.db.pool().await;
    let stored = stored_results(&pool, id2).await;
    let local = run_local(c.dir.path(), &sweep_file, "l2", 5, 1);
    assert_eq!(stored.len(), local.len());
    for (d, l) in stored.iter().zip(&local) {
        assert_eq!(d.test_accuracy.to_bits(), l.test_accuracy.to_bits(), "level {}: accuracy", l.level);
        assert_eq!(d.layers, l.layers, "level {}: masks", l.level);
    }
    assert_nothing_left(&mut c, &pool).await;
}

/// Issue 9, failure 1: after the coordinator's store is reset (database dropped and created
/// empty, coordinator restarted on it) the running daemon is unknown to it. The coordinator says
/// so with the UNKNOWN_WORKER reason code and the daemon registers again; before reason codes it
/// read the FAILED_PRECONDITION as a lost lease and backed off forever, so no later sweep ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_register_again_after_the_store_is_reset_and_finish_the_next_sweep() {
    let mut c = Cluster::new(10).await;
    c.start_worker("w1");
    let before = c.submit(&sweep_toml("e2e-reset-before", "\"magnitude\"", "1", 1, "2ep")).await;
    c.wait_for_state(before, pb::SweepState::Succeeded, Duration::from_secs(240)).await;

    drop(c.coordinator.take());
    c.db.recreate().await;
    c.start_coordinator();
    let after = c.submit(&sweep_toml("e2e-reset-after", "\"l1\"", "2", 1, "2ep")).await;
    c.wait_for_state(after, pb::SweepState::Succeeded, Duration::from_secs(120)).await;

    let pool = c.db.pool().await;
    assert_one_result_per_trial_level(&pool, after, 2).await;
    let workers: Vec<String> = sqlx::query_scalar("SELECT worker_id FROM workers").fetch_all(&pool).await.unwrap();
    assert_eq!(workers, vec!["w1".to_string()], "the daemon registered with the reset store");
    assert!(c.worker("w1").log_text().contains("does not know this worker; registering again"));
    assert_nothing_left(&mut c, &pool).await;
}

/// ReleaseJob (issue 9, failure 8): SIGTERM to a daemon mid-job checkpoints the job, uploads the
/// checkpoint and hands the job back; it is claimable at once (not after its 60 s lease), counts
/// neither as failed nor as lost, and another worker resumes it to run-local's exact results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_stopped_mid_job_hands_the_job_back_at_once() {
    let mut c = Cluster::new(60).await;
    c.start_worker("leaving");
    let text = sweep_toml("e2e-release", "\"l1\"", "6", 1, "60ep");
    let sweep_file = c.dir.path().join("sweep.toml");
    std::fs::write(&sweep_file, &text).unwrap();
    let sweep_id = c.submit(&text).await;
    let pool = c.db.pool().await;

    let found = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    wait_until("the level-1 job to run and checkpoint on the leaving worker", Duration::from_secs(180), || {
        let pool = pool.clone();
        let found = found.clone();
        async move {
            let row: Option<(i64,)> = sqlx::query_as(
                "SELECT j.id FROM jobs j JOIN artifacts a ON a.job_id = j.id AND a.name = 'checkpoint' \
                  WHERE j.sweep_id = $1 AND j.level = 1 AND j.state = 'running' AND j.worker_id = 'leaving'",
            )
            .bind(sweep_id)
            .fetch_optional(&pool)
            .await
            .unwrap();
            if let Some((id,)) = row {
                found.store(id, std::sync::atomic::Ordering::SeqCst);
            }
            row.is_some()
        }
    })
    .await;
    let job = found.load(std::sync::atomic::Ordering::SeqCst);
    c.worker("leaving").signal(libc::SIGTERM);
    let status = c.worker("leaving").wait_exit(Duration::from_secs(60)).expect("the daemon stops on SIGTERM");
    assert!(status.success(), "clean exit: {status:?}");
    // Handed back before the daemon exited: ready now, 60 s before its lease would have ended.
    let (state, lost, errors): (String, i32, i32) =
        sqlx::query_as("SELECT state, lost_count, error_count FROM jobs WHERE id = $1").bind(job).fetch_one(&pool).await.unwrap();
    assert_eq!((state.as_str(), lost, errors), ("ready", 0, 0), "released, not failed or lost");

    c.start_worker("staying");
    c.wait_for_state(sweep_id, pb::SweepState::Succeeded, Duration::from_secs(50)).await;
    let attempts: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT worker_id, outcome, error FROM job_attempts WHERE job_id = $1 ORDER BY attempt")
            .bind(job)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!((attempts[0].0.as_str(), attempts[0].1.as_str()), ("leaving", "aborted"), "{attempts:?}");
    assert!(attempts[0].2.as_deref().unwrap_or("").contains("released by the worker"), "{attempts:?}");
    assert_eq!((attempts[1].0.as_str(), attempts[1].1.as_str()), ("staying", "succeeded"), "{attempts:?}");
    assert!(c.worker("staying").log_text().contains("resuming from the checkpoint"), "the next attempt resumed");

    assert_one_result_per_trial_level(&pool, sweep_id, 2).await;
    let stored = stored_results(&pool, sweep_id).await;
    let local = run_local(c.dir.path(), &sweep_file, "l1", 6, 1);
    assert_eq!(stored.len(), local.len());
    for (d, l) in stored.iter().zip(&local) {
        assert_eq!(d.test_accuracy.to_bits(), l.test_accuracy.to_bits(), "level {}: accuracy", l.level);
        assert_eq!(d.layers, l.layers, "level {}: masks", l.level);
    }
    assert_nothing_left(&mut c, &pool).await;
}

/// A SIGTERM while a ClaimJobs is in flight. The coordinator may already have leased jobs to the
/// daemon: before, the daemon dropped the reply and exited at once, and those jobs stayed
/// "running" on a worker that was gone until their leases expired (60 s here) — the loss
/// ReleaseJob exists to avoid. Now the daemon waits for the claim and hands back what it brought.
///
/// The claim is held in flight deterministically: the test locks the jobs table (EXCLUSIVE: plain
/// reads pass, the claim's FOR UPDATE waits) before the daemon starts, sends SIGTERM once the
/// claim waits on that lock, and then lets it through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_stopped_during_a_claim_hands_the_claimed_job_back() {
    let mut c = Cluster::new(60).await;
    let sweep_id = c.submit(&sweep_toml("e2e-claim-shutdown", "\"magnitude\"", "4", 1, "2ep")).await;
    let pool = c.db.pool().await;
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE jobs IN EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    c.start_worker("leaving");
    // The claim is coordinator/queries/postgres/claim.sql.
    wait_for_lock_waiter(&pool, "the daemon's ClaimJobs", &["-- Claims for a batch of workers%", "WITH req AS%"], Duration::from_secs(60)).await;
    c.worker("leaving").signal(libc::SIGTERM);
    // Time for the old daemon to be gone before the claim goes through.
    tokio::time::sleep(Duration::from_secs(1)).await;
    lock.rollback().await.unwrap();
    let status = c.worker("leaving").wait_exit(Duration::from_secs(40)).expect("the daemon stops on SIGTERM");
    assert!(status.success(), "clean exit: {status:?}");

    // The claim committed (the coordinator finishes it whether or not the caller still listens).
    let dense: i64 = sqlx::query_scalar("SELECT id FROM jobs WHERE sweep_id = $1 AND kind = 'dense'").bind(sweep_id).fetch_one(&pool).await.unwrap();
    wait_until("the claim to commit", Duration::from_secs(20), || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM job_attempts WHERE job_id = $1").bind(dense).fetch_one(&pool).await.unwrap();
            n > 0
        }
    })
    .await;
    let (state, lost, errors): (String, i32, i32) =
        sqlx::query_as("SELECT state, lost_count, error_count FROM jobs WHERE id = $1").bind(dense).fetch_one(&pool).await.unwrap();
    assert_eq!((state.as_str(), lost, errors), ("ready", 0, 0), "the job claimed during shutdown was handed back, not left running");
    let attempts: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT worker_id, outcome, error FROM job_attempts WHERE job_id = $1 ORDER BY attempt").bind(dense).fetch_all(&pool).await.unwrap();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!((attempts[0].0.as_str(), attempts[0].1.as_str()), ("leaving", "aborted"), "{attempts:?}");
    assert!(attempts[0].2.as_deref().unwrap_or("").contains("released by the worker"), "{attempts:?}");

    // Claimable at once: another worker finishes the sweep long before the 60 s lease would end.
    c.start_worker("staying");
    c.wait_for_state(sweep_id, pb::SweepState::Succeeded, Duration::from_secs(50)).await;
    assert_one_result_per_trial_level(&pool, sweep_id, 2).await;
    assert_nothing_left(&mut c, &pool).await;
}

/// A SIGTERM while a finished job's completion is on its way. A solo job's CompleteJob also
/// claims the worker's next job (`claim_next`): one sent after the shutdown began would lease a
/// job to a daemon that is leaving, to sit "running" until its lease expired. Now the shutdown
/// closes that (the completion asks for nothing) and whatever a completion brought is handed
/// back before the daemon exits.
///
/// Held deterministically as in the test above: the jobs table is locked (EXCLUSIVE) while the
/// dense job trains, so its uploads' records (which lock the job row) wait; SIGTERM goes once they
/// do, then the lock is let go. No checkpoints: their uploads would wait on the lock too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_stopped_while_completing_leaves_no_job_leased_to_it() {
    let mut c = Cluster::new(60).await;
    let text = sweep_toml("e2e-complete-shutdown", "\"magnitude\"", "4", 1, "20ep").replace("checkpoint_every = \"10it\"", "checkpoint_every = \"1000ep\"");
    let sweep_id = c.submit(&text).await;
    let pool = c.db.pool().await;
    c.start_worker("leaving");
    let dense: i64 = sqlx::query_scalar("SELECT id FROM jobs WHERE sweep_id = $1 AND kind = 'dense'").bind(sweep_id).fetch_one(&pool).await.unwrap();
    wait_until("the dense job to start on the leaving worker", Duration::from_secs(60), || {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM job_attempts WHERE job_id = $1").bind(dense).fetch_one(&pool).await.unwrap();
            n > 0
        }
    })
    .await;
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE jobs IN EXCLUSIVE MODE").execute(&mut *lock).await.unwrap();
    // coordinator/queries/postgres/record_artifacts.sql.
    wait_for_lock_waiter(&pool, "the dense job's upload records", &["-- Records a batch of uploads%"], Duration::from_secs(120)).await;
    c.worker("leaving").signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_secs(1)).await;
    lock.rollback().await.unwrap();
    let status = c.worker("leaving").wait_exit(Duration::from_secs(40)).expect("the daemon stops on SIGTERM");
    assert!(status.success(), "clean exit: {status:?}");

    // The finished job's result was kept; nothing else is leased to the daemon that left.
    let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1").bind(dense).fetch_one(&pool).await.unwrap();
    assert_eq!(state, "succeeded", "the completion went through during the shutdown");
    let held: Vec<(i64, String)> = sqlx::query_as("SELECT id, state FROM jobs WHERE sweep_id = $1 AND state = 'running'").bind(sweep_id).fetch_all(&pool).await.unwrap();
    assert!(held.is_empty(), "jobs left running on a worker that is gone: {held:?}");
    let lost: i64 = sqlx::query_scalar("SELECT coalesce(sum(lost_count), 0) FROM jobs WHERE sweep_id = $1").bind(sweep_id).fetch_one(&pool).await.unwrap();
    assert_eq!(lost, 0);

    c.start_worker("staying");
    c.wait_for_state(sweep_id, pb::SweepState::Succeeded, Duration::from_secs(50)).await;
    assert_one_result_per_trial_level(&pool, sweep_id, 2).await;
    assert_nothing_left(&mut c, &pool).await;
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// GET `path` over plain HTTP/1.1: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return (0, String::new()) };
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    (head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), body.to_string())
}

/// The sum of the samples of `name` whose label text contains every one of `labels` (`k="v"`).
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut hit = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (n, l) = series.split_once('{').unwrap_or((series, ""));
        if n == name && labels.iter().all(|want| l.contains(want)) {
            *hit.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    hit
}

/// The address a process printed after `prefix` in `log`, waiting for it.
fn printed_addr(log: &Path, prefix: &str) -> String {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find_map(|l| l.strip_prefix(prefix)) {
            return line.trim().to_string();
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no {prefix:?} in {}:\n{text}", log.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_and_the_coordinator_export_metrics_of_a_real_job() {
    let mut c = Cluster::new(10).await;
    c.start_worker_with("w-metrics", &["--metrics-listen", "127.0.0.1:0"]);
    let log = c.worker("w-metrics").log.clone();
    let addr = printed_addr(&log, "lth-worker metrics on ");
    let (code, body) = http_get(&addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    // No NVIDIA library on a CPU node: GPU series are off, with a log line saying so.
    let nvml = sample(&body, "lth_worker_nvml_up", &[]).expect("lth_worker_nvml_up is always exported");
    if nvml == 0.0 {
        assert!(c.worker("w-metrics").log_text().contains("NVML is not available"), "the NVML-absent log line");
        assert_eq!(sample(&body, "lth_worker_gpu_utilization_ratio", &[]), None);
    }

    let text = sweep_toml("e2e-metrics", "\"magnitude\"", "3", 1, "20ep");
    let sweep_id = c.submit(&text).await;
    let pool = c.db.pool().await;
    wait_until("the dense job to report progress", Duration::from_secs(120), || {
        let pool = pool.clone();
        async move { jobs_training(&pool, sweep_id).await > 0 }
    })
    .await;
    // During the job: slot 0 is busy and its throughput and step time are exported.
    let (_, during) = http_get(&addr, "/metrics");
    assert_eq!(sample(&during, "lth_worker_jobs_running", &["slot=\"0\""]), Some(1.0), "{during}");
    assert!(sample(&during, "lth_worker_images_per_second", &["slot=\"0\""]).unwrap_or(0.0) > 0.0, "{during}");

    c.wait_for_state(sweep_id, pb::SweepState::Succeeded, Duration::from_secs(300)).await;
    let (_, after) = http_get(&addr, "/metrics");
    assert_eq!(sample(&after, "lth_worker_jobs_running", &["slot=\"0\""]), Some(0.0), "{after}");
    assert_eq!(sample(&after, "lth_worker_job_duration_seconds_count", &["outcome=\"completed\""]), Some(2.0), "{after}");
    assert_eq!(sample(&after, "lth_worker_job_duration_seconds_count", &["kind=\"dense\""]), Some(1.0), "{after}");
    assert!(sample(&after, "lth_worker_job_duration_seconds_sum", &[]).unwrap() > 0.0);
    assert!(sample(&after, "lth_worker_step_seconds", &["slot=\"0\""]).unwrap_or(0.0) > 0.0, "{after}");
    // The level job downloaded θk and the dense weights into an empty cache.
    assert_eq!(sample(&after, "lth_worker_cache_misses_total", &[]), Some(2.0), "{after}");
    assert!(sample(&after, "lth_worker_cache_downloaded_bytes_total", &[]).unwrap() > 0.0);

    // The coordinator counted the same two jobs.
    let http = c.http_addr().to_string();
    let (code, coord) = http_get(&http, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(sample(&coord, "lth_jobs_completed_total", &[]), Some(2.0), "{coord}");
    // The dense job's completion brought the level job it unblocked (one slot, one worker): the
    // daemon ran it without a ClaimJobs.
    assert_eq!(sample(&coord, "lth_jobs_claimed_total", &[]), Some(2.0), "{coord}");
    assert_eq!(sample(&coord, "lth_jobs_claimed_with_completion_total", &[]), Some(1.0), "{coord}");
    assert_eq!(sample(&coord, "lth_jobs", &["state=\"succeeded\""]), Some(2.0), "{coord}");
    assert!(sample(&coord, "lth_complete_duration_seconds_count", &[]).unwrap() >= 2.0);
    assert!(sample(&coord, "lth_artifact_bytes_total", &["direction=\"in\""]).unwrap() > 0.0);
    assert_eq!(sample(&coord, "lth_workers_live", &[]), Some(1.0));
}

/// Issue 9, failure 5: a run whose loss stops being a number is a real outcome. Before, the job
/// process wrote its NaN losses as JSON `null`, the daemon could not read the result, and each
/// attempt failed until the job and its sweep did. Now every level is recorded as diverged, on
/// the first attempt, and the sweep succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverged_run_is_recorded_as_diverged_with_its_level() {
    let mut c = Cluster::new(10).await;
    c.start_worker("w1");
    let text = sweep_toml("e2e-diverged", "\"magnitude\"", "0", 1, "1ep").replace("lr = 0.05", "lr = 1e6");
    let sweep_id = c.submit(&text).await;
    c.wait_for_state(sweep_id, pb::SweepState::Succeeded, Duration::from_secs(180)).await;
    let pool = c.db.pool().await;
    let rows: Vec<(i32, bool, f64)> = sqlx::query_as(
        "SELECT t.level, r.diverged, r.train_loss FROM trial_results t JOIN level_results r ON r.job_id = t.result_job_id \
          WHERE t.sweep_id = $1 ORDER BY t.level",
    )
    .bind(sweep_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[0].1 && rows[0].2 == f64::INFINITY, "level 0 diverged, its NaN loss stored as +Infinity: {rows:?}");
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM job_attempts a JOIN jobs j ON j.id = a.job_id WHERE j.sweep_id = $1 AND a.outcome <> 'succeeded'")
        .bind(sweep_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(failed, 0, "no attempt failed or was retried");
    let s = c.client().await.get_sweep(pb::GetSweepRequest { sweep_id }).await.unwrap().into_inner();
    assert_eq!(s.diverged, rows.iter().filter(|r| r.1).count() as u64);
    let res = c.client().await.get_results(pb::GetResultsRequest { sweep_id }).await.unwrap().into_inner();
    assert!(res.rows.iter().any(|r| r.level == 0 && r.result.as_ref().unwrap().diverged));
    assert_nothing_left(&mut c, &pool).await;
}

/// Issue 9, failure 2: a trained `weights` file vanishes from the coordinator's object store, and
/// another one is corrupted there (same length, flipped bits), after their jobs finished. A later
/// sweep reuses those dense jobs (content hash) and its new levels need the files. Before, the
/// missing file was sent as an error the worker retried or failed on, the corrupt one failed its
/// dependents' attempts until the sweep failed. Now the coordinator checks each download against
/// the recorded size and sha256, re-runs the job that made a lost file (once, in the sweep that
/// needs it), hands the dependents back without counting an attempt, writes one event per repair,
/// and the sweep succeeds with exactly run-local's (an undisturbed run's) results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_or_corrupt_weights_file_is_made_again_and_the_sweep_finishes_like_run_local() {
    let mut c = Cluster::new(10).await;
    c.start_worker("w1");
    let first = sweep_toml("e2e-lost-first", "\"magnitude\"", "1, 2", 1, "2ep");
    let id1 = c.submit(&first).await;
    c.wait_for_state(id1, pb::SweepState::Succeeded, Duration::from_secs(240)).await;
    // w1 holds the files in its own cache: a fresh worker must download them.
    c.worker("w1").signal(libc::SIGKILL);
    let pool = c.db.pool().await;
    let weights: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT j.seed, a.uri, a.bytes FROM artifacts a JOIN jobs j ON j.id = a.job_id \
          WHERE j.sweep_id = $1 AND j.kind = 'dense' AND a.name = 'weights' ORDER BY j.seed",
    )
    .bind(id1)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(weights.len(), 2);
    let file = |uri: &str| PathBuf::from(uri.strip_prefix("file://").unwrap());
    std::fs::remove_file(file(&weights[0].1)).unwrap();
    let mut bytes = std::fs::read(file(&weights[1].1)).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n - 64..] {
        *b ^= 1;
    }
    std::fs::write(file(&weights[1].1), &bytes).unwrap();

    let second = sweep_toml("e2e-lost-second", "\"magnitude\"", "1, 2", 1, "2ep").replace("rates = [0.2]", "rates = [0.2, 0.5]");
    let sweep_file = c.dir.path().join("second.toml");
    std::fs::write(&sweep_file, &second).unwrap();
    let id2 = c.submit(&second).await;
    c.start_worker("w2");
    c.wait_for_state(id2, pb::SweepState::Succeeded, Duration::from_secs(240)).await;

    // One repair event per lost file, saying what was wrong.
    let repairs: Vec<(i64, String)> = sqlx::query_as(
        "SELECT j.seed, e.detail->'repair'->>'problem' FROM events e JOIN jobs j ON j.id = e.job_id \
          WHERE e.sweep_id = $1 AND e.detail ? 'repair' ORDER BY j.seed",
    )
    .bind(id2)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(repairs.len(), 2, "{repairs:?}");
    assert!(repairs[0].1.contains("missing from the object store"), "{repairs:?}");
    assert!(repairs[1].1.contains("sha256"), "{repairs:?}");
    // The dense jobs ran again in the second sweep, the first sweep was left alone, and no
    // attempt was counted against any job.
    let dense: Vec<(Option<i64>, String)> =
        sqlx::query_as("SELECT reused_from, state FROM jobs WHERE sweep_id = $1 AND kind = 'dense'").bind(id2).fetch_all(&pool).await.unwrap();
    assert!(dense.iter().all(|d| d.0.is_none() && d.1 == "succeeded"), "{dense:?}");
    let counted: i64 = sqlx::query_scalar("SELECT COALESCE(sum(error_count + lost_count), 0)::bigint FROM jobs").fetch_one(&pool).await.unwrap();
    assert_eq!(counted, 0);
    assert_eq!(c.sweep_state(id1).await, pb::SweepState::Succeeded);
    assert_one_result_per_trial_level(&pool, id2, 2 * 2 * 2).await;

    // Bit for bit what an undisturbed run gives.
    let rows = sqlx::query("SELECT rate, seed, level, result_job_id, test_accuracy FROM trial_results WHERE sweep_id = $1 ORDER BY rate, seed, level")
        .bind(id2)
        .fetch_all(&pool)
        .await
        .unwrap();
    for (rate, seed) in [("0.2", 1u64), ("0.2", 2), ("0.5", 1), ("0.5", 2)] {
        // One folder per rate: run-local's output folder is named by file, metric and seed.
        let dir = c.dir.path().join(format!("rate-{rate}"));
        std::fs::create_dir_all(&dir).unwrap();
        let local = run_local_at(&dir, &sweep_file, "magnitude", rate, seed, 1);
        for l in &local {
            let r = rows
                .iter()
                .find(|r| r.get::<f64, _>("rate") == rate.parse::<f64>().unwrap() && r.get::<i64, _>("seed") == seed as i64 && r.get::<i32, _>("level") == l.level)
                .unwrap();
            assert_eq!(r.get::<f64, _>("test_accuracy").to_bits(), l.test_accuracy.to_bits(), "rate {rate} seed {seed} level {}", l.level);
            let layers: Vec<(String, i64, String)> = sqlx::query("SELECT layer, kept, bits::text AS bits FROM masks WHERE job_id = $1 ORDER BY ordinal")
                .bind(r.get::<i64, _>("result_job_id"))
                .fetch_all(&pool)
                .await
                .unwrap()
                .into_iter()
                .map(|m| (m.get::<String, _>("layer"), m.get::<i64, _>("kept"), m.get::<String, _>("bits")))
                .collect();
            assert_eq!(layers, l.layers, "rate {rate} seed {seed} level {}: masks", l.level);
        }
    }
    assert!(c.worker("w2").log_text().contains("an input was lost and is being made again"));
}

/// A small safetensors dataset (8×8 one-channel images, 4 classes) at `path`.
fn write_tiny_dataset(path: &Path) {
    use tch::{Kind, Tensor};
    let images = |n: i64, seed: i64| {
        tch::manual_seed(seed);
        Tensor::randint(256, [n, 8, 8, 1], (Kind::Uint8, tch::Device::Cpu))
    };
    let labels = |n: i64| Tensor::arange(n, (Kind::Int64, tch::Device::Cpu)).remainder(4);
    let tensors = [("train_images", images(256, 1)), ("train_labels", labels(256)), ("test_images", images(64, 2)), ("test_labels", labels(64))];
    Tensor::write_safetensors(&tensors, path).unwrap();
}

/// Issue 9, failure 4: one worker lacks the dataset (its jobs read `tiny.safetensors` relative to
/// its working directory, which does not have the file), another has it. Before, the missing
/// file failed each job on its first attempt (not retryable) and with it the sweep. Now the bad
/// worker's failures are node-local: each job goes to the healthy worker, is never claimed by the
/// bad one again, counts at most one failed attempt, and the error names the missing path and
/// the worker; after `--max-node-failures` different jobs the bad worker stops claiming and
/// reports itself unhealthy; its failed attempts leave no working directories behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_the_dataset_hands_its_jobs_to_a_healthy_one_and_turns_unhealthy() {
    let mut c = Cluster::new(10).await;
    let (good_dir, bad_dir) = (c.dir.path().join("good-node"), c.dir.path().join("bad-node"));
    std::fs::create_dir_all(&good_dir).unwrap();
    std::fs::create_dir_all(&bad_dir).unwrap();
    write_tiny_dataset(&good_dir.join("tiny.safetensors"));
    let text = sweep_toml("e2e-bad-node", "\"magnitude\"", "1, 2, 3", 1, "1ep")
        .replace("dataset = { name = \"digits\" }", "dataset = { name = \"safetensors\", path = \"tiny.safetensors\" }");
    c.start_worker_in("good", Some(&good_dir), &[]);
    let pool = c.db.pool().await;
    wait_until("the good worker to register", Duration::from_secs(60), || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM workers WHERE worker_id = 'good'").fetch_one(&pool).await.unwrap() == 1
    })
    .await;
    let sweep_id = c.submit(&text).await;
    c.start_worker_in("bad", Some(&bad_dir), &["--cpu-slots", "3", "--max-node-failures", "2"]);
    c.wait_for_state(sweep_id, pb::SweepState::Succeeded, Duration::from_secs(240)).await;

    let failed: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT a.job_id, a.worker_id, a.error FROM job_attempts a JOIN jobs j ON j.id = a.job_id \
          WHERE j.sweep_id = $1 AND a.outcome = 'failed' ORDER BY a.job_id",
    )
    .bind(sweep_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(failed.len() >= 2, "the bad worker took (and failed) jobs: {failed:?}");
    let missing = bad_dir.join("tiny.safetensors").display().to_string();
    for (job, worker, error) in &failed {
        assert_eq!(worker, "bad", "job {job}: only the bad worker fails");
        assert!(error.contains("on worker bad") && error.contains(&missing), "job {job}: the error names the worker and the path: {error}");
    }
    let per_job: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT a.job_id, count(*) FROM job_attempts a JOIN jobs j ON j.id = a.job_id WHERE j.sweep_id = $1 AND a.worker_id = 'bad' GROUP BY a.job_id",
    )
    .bind(sweep_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(per_job.iter().all(|(_, n)| *n == 1), "no job was retried on the bad worker: {per_job:?}");
    let max_errors: i32 = sqlx::query_scalar("SELECT max(error_count) FROM jobs WHERE sweep_id = $1").bind(sweep_id).fetch_one(&pool).await.unwrap();
    assert!(max_errors <= 1, "one failed attempt counted at most");
    let states: Vec<String> = sqlx::query_scalar("SELECT DISTINCT state FROM jobs WHERE sweep_id = $1").bind(sweep_id).fetch_all(&pool).await.unwrap();
    assert_eq!(states, ["succeeded"]);

    // Unhealthy, as `lthctl workers` and the dashboard read it.
    let workers = c.client().await.list_workers(pb::ListWorkersRequest::default()).await.unwrap().into_inner().workers;
    let bad = workers.iter().find(|w| w.worker_id == "bad").expect("the bad worker is listed");
    assert!(bad.unhealthy.contains("different jobs in a row failed on this machine"), "{bad:?}");
    assert!(workers.iter().find(|w| w.worker_id == "good").unwrap().unhealthy.is_empty());
    assert!(c.worker("bad").log_text().contains("stops claiming jobs"));
    let leftovers: Vec<_> = std::fs::read_dir(c.dir.path().join("cache-bad/jobs/bad")).unwrap().collect();
    assert!(leftovers.is_empty(), "failed attempts' working directories are removed: {leftovers:?}");
}
