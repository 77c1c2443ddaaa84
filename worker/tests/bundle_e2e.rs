//! Ticket bundles through the whole system (issue 10, item 3): a real coordinator on Postgres, a
//! real `lth-worker daemon`, gRPC over local sockets, LeNet on the bundled digits. A bundled
//! sweep's level jobs are claimed a bundle at a time into one slot and trained in one `exec-job`
//! process, completed one member at a time, and its results table has the shape of the same
//! sweep run unbundled, with values within the engine's documented tolerance (ARCHITECTURE.md,
//! "Ticket bundles"). A cancel stops a bundle's process; a shutdown hands every member back.

use lth_proto::v1 as pb;
use sqlx::Row;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

mod common;
use common::{Cluster, DigitsSweep};

fn digits(name: &str, bundle: Option<&str>) -> DigitsSweep {
    let mut s = DigitsSweep::new(name).metrics(&["magnitude", "l1", "l2"]).levels(2).length("1ep");
    if let Some(b) = bundle {
        s.extra.push(format!("bundle = {b:?}"));
    }
    s
}

/// Per bundle of the sweep: (members, distinct (worker, claim time) of their first attempts).
/// A claim (one ClaimJobs: the leads' statement and, right after, their siblings') counts once when
/// its members went to one worker within a second.
async fn claims_per_bundle(pool: &sqlx::PgPool, sweep_id: i64) -> Vec<(i64, i64)> {
    sqlx::query(
        "SELECT count(*) AS members, \
                count(DISTINCT a.worker_id) + (max(a.started_at) - min(a.started_at) > interval '1 second')::int AS claims \
           FROM jobs j JOIN job_attempts a ON a.job_id = j.id AND a.attempt = 1 \
          WHERE j.sweep_id = $1 AND j.kind = 'level' AND j.bundle_id IS NOT NULL GROUP BY j.bundle_id ORDER BY j.bundle_id",
    )
    .bind(sweep_id)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.get("members"), r.get("claims")))
    .collect()
}

type Key = (i32, u64, u64, u32, i32);

async fn results(c: &Cluster, sweep_id: i64) -> (BTreeMap<Key, pb::LevelResult>, Vec<pb::AccuracyPoint>) {
    let r = c.client().await.get_results(pb::GetResultsRequest { sweep_id }).await.unwrap().into_inner();
    let rows = r
        .rows
        .into_iter()
        .map(|row| ((row.metric, row.rate.to_bits(), row.seed, row.level, row.control), row.result.expect("a result per row")))
        .collect();
    (rows, r.accuracy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundled_sweep_finishes_like_the_same_sweep_unbundled() {
    let mut c = Cluster::new(20).await;
    c.start_worker("w1");
    let solo = c.submit(&digits("solo", None).toml()).await;
    c.wait_for_state(solo, pb::SweepState::Succeeded, Duration::from_secs(300)).await;
    let t0 = Instant::now();
    let bundled = c.submit(&digits("bundled", Some("metrics")).toml()).await;
    c.wait_for_state(bundled, pb::SweepState::Succeeded, Duration::from_secs(300)).await;
    eprintln!("bundled sweep: {:.1} s", t0.elapsed().as_secs_f64());

    let pool = c.db.pool().await;
    // Every level job was claimed in a bundle: 2 levels, one bundle of the 3 metrics each, its
    // members claimed by one worker in one claim and completed one by one.
    assert_eq!(claims_per_bundle(&pool, bundled).await, vec![(3, 1), (3, 1)]);
    let unbundled: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE sweep_id = $1 AND kind = 'level' AND bundle_id IS NULL")
        .bind(bundled)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(unbundled, 0);
    let completions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_attempts a JOIN jobs j ON j.id = a.job_id WHERE j.sweep_id = $1 AND a.outcome = 'succeeded'",
    )
    .bind(bundled)
    .fetch_one(&pool)
    .await
    .unwrap();
    // The dense job is shared with (reused from) the solo sweep: 6 level jobs ran here.
    assert_eq!(completions, 6, "one completion per member");
    let log = std::fs::read_to_string(c.dir.path().join("w1.log")).unwrap();
    assert!(log.contains("bundle claimed"), "the daemon ran bundles");

    // The results table: the same rows, columns, levels and metrics; values within tolerance.
    let (a, acc_a) = results(&c, solo).await;
    let (b, acc_b) = results(&c, bundled).await;
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "same (metric, rate, seed, level, control) rows");
    assert!(a.len() >= 3 * 2, "{} rows", a.len());
    for (k, ra) in &a {
        let rb = &b[k];
        let names = |r: &pb::LevelResult| r.layers.iter().map(|l| (l.layer.clone(), l.total)).collect::<Vec<_>>();
        assert_eq!(names(ra), names(rb), "{k:?}: same layers");
        // LeNet levels on the digits agree to ~5e-7 relative on the weights (engine tests);
        // accuracy and masks may move only where scores are near-tied.
        assert!((ra.test_accuracy - rb.test_accuracy).abs() <= 0.01, "{k:?}: accuracy {} vs {}", ra.test_accuracy, rb.test_accuracy);
        assert!((ra.sparsity - rb.sparsity).abs() <= 1e-3, "{k:?}: sparsity {} vs {}", ra.sparsity, rb.sparsity);
        for (la, lb) in ra.layers.iter().zip(&rb.layers) {
            assert!(la.kept.abs_diff(lb.kept) as f64 <= 1e-3 * la.total as f64 + 1.0, "{k:?} {}: kept {} vs {}", la.layer, la.kept, lb.kept);
        }
        assert!(!rb.diverged);
    }
    // The SQL results table (trial_results, masks) the same way: the same (metric, seed, level)
    // rows with the same layers, per member; masks equal but for near-tied scores.
    let (sa, sb) = (lth_testkit::results::stored_results(&pool, solo).await, lth_testkit::results::stored_results(&pool, bundled).await);
    let key = |v: &[lth_testkit::results::StoredLevel]| v.iter().map(|l| (l.metric.clone(), l.seed, l.level)).collect::<Vec<_>>();
    assert_eq!(key(&sa), key(&sb), "trial_results: same rows");
    assert_eq!(sa.len(), 3 * 3, "3 metrics x (dense + 2 levels)");
    for (la, lb) in sa.iter().zip(&sb) {
        assert!((la.test_accuracy - lb.test_accuracy).abs() <= 0.01, "{}/{}: accuracy {} vs {}", la.metric, la.level, la.test_accuracy, lb.test_accuracy);
        assert_eq!(la.layers.len(), lb.layers.len());
        for ((na, ka, ba), (nb, kb, bb)) in la.layers.iter().zip(&lb.layers) {
            assert_eq!(na, nb);
            let differing = ba.chars().zip(bb.chars()).filter(|(x, y)| x != y).count();
            assert!(differing as f64 <= 1e-3 * ba.len() as f64 + 1.0, "{}/{} {na}: {differing} of {} mask bits differ (kept {ka} vs {kb})", la.metric, la.level, ba.len());
        }
    }
    let shape = |v: &[pb::AccuracyPoint]| v.iter().map(|p| (p.metric, p.rate.to_bits(), p.level, p.seeds)).collect::<Vec<_>>();
    assert_eq!(shape(&acc_a), shape(&acc_b), "the accuracy_vs_sparsity view has the same rows");
    assert!(acc_b.len() >= 3 * 2, "{} points", acc_b.len());
    c.stop_workers_and_check_none_left(Duration::from_secs(30));
    lth_testkit::results::assert_nothing_running(&pool).await;
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

/// Level jobs of the sweep that are running and have uploaded a checkpoint (of this attempt).
async fn checkpointed(pool: &sqlx::PgPool, sweep_id: i64) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs j JOIN artifacts a ON a.job_id = j.id AND a.name = 'checkpoint' AND a.attempt = j.attempt \
          WHERE j.sweep_id = $1 AND j.kind = 'level' AND j.state = 'running'",
    )
    .bind(sweep_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A shutdown mid-bundle hands every member back (each with its own checkpoint); another daemon
/// claims the bundle whole and finishes it. A cancel of the next sweep stops its bundle's process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_is_handed_back_member_by_member_and_a_cancel_stops_its_process() {
    let mut c = Cluster::new(30).await;
    c.start_worker("w1");
    let pool = c.db.pool().await;
    // 40 epochs (~900 iterations): the shutdown comes right after every member's first checkpoint
    // (every 10 iterations), long before the end.
    let sweep = digits("handback", Some("metrics")).levels(1).length("40ep");
    let id = c.submit(&sweep.toml()).await;
    wait_until("the bundle's first checkpoints", Duration::from_secs(120), || async { checkpointed(&pool, id).await == 3 }).await;
    let status = c.worker("w1").terminate(Duration::from_secs(30)).expect("the daemon stops on SIGTERM");
    assert!(status.success(), "{status:?}");
    let released: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_attempts a JOIN jobs j ON j.id = a.job_id WHERE j.sweep_id = $1 AND j.kind = 'level' AND a.outcome = 'aborted'",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(released, 3, "every member handed back with ReleaseJob");
    let ready: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE sweep_id = $1 AND kind = 'level' AND state = 'ready'")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(ready, 3);
    c.start_worker("w2");
    c.wait_for_state(id, pb::SweepState::Succeeded, Duration::from_secs(300)).await;
    assert_eq!(claims_per_bundle(&pool, id).await, vec![(3, 1)]);
    let second: Vec<(i64, i64)> = sqlx::query(
        "SELECT count(*) AS members, (1 + (max(a.started_at) - min(a.started_at) > interval '1 second')::int)::bigint AS claims FROM job_attempts a JOIN jobs j ON j.id = a.job_id \
          WHERE j.sweep_id = $1 AND j.kind = 'level' AND a.attempt = 2 AND a.worker_id = 'w2'",
    )
    .bind(id)
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.get("members"), r.get("claims")))
    .collect();
    let attempts: Vec<(i64, i32, String, String)> = sqlx::query_as(
        "SELECT a.job_id, a.attempt, a.worker_id, a.outcome || coalesce(a.error, '') FROM job_attempts a JOIN jobs j ON j.id = a.job_id \
          WHERE j.sweep_id = $1 AND j.kind = 'level' ORDER BY a.job_id, a.attempt",
    )
    .bind(id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(second, vec![(3, 1)], "w2 claimed the handed-back bundle whole; attempts: {attempts:?}");
    // The members' last uploaded checkpoints can be at different iterations (each member uploads
    // its own as it goes); a member that is behind then trains alone after the bundle, from its
    // own checkpoint. Either way the handback cost no attempt: every second attempt succeeded.
    for (job, attempt, _, outcome) in &attempts {
        assert!(*attempt == 1 || outcome.starts_with("succeeded"), "job {job} attempt {attempt}: {outcome}");
    }
    assert!(attempts.iter().all(|(_, attempt, _, _)| *attempt <= 2), "a handback cost an attempt: {attempts:?}");

    // A cancel aborts each member by its lease; when the last one leaves, the process goes.
    // Another rate: the same dense job (reused), a new bundle of three.
    let mut next = sweep.clone().rates(&[0.5]);
    next.name = "cancelled".into();
    let other = c.submit(&next.toml()).await;
    wait_until("the next bundle's first checkpoints", Duration::from_secs(120), || async { checkpointed(&pool, other).await == 3 }).await;
    let bundle_processes = || c.processes().into_iter().filter(|(_, cmd)| cmd.contains("bundle.json")).count();
    assert_eq!(bundle_processes(), 1, "one process trains the bundle");
    let t0 = Instant::now();
    c.client().await.cancel_sweep(pb::SweepRef { sweep_id: other }).await.unwrap();
    while bundle_processes() > 0 {
        assert!(t0.elapsed() < Duration::from_secs(10), "the bundle's process outlived its cancelled members");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.stop_workers_and_check_none_left(Duration::from_secs(30));
    lth_testkit::results::assert_nothing_running(&pool).await;
}
