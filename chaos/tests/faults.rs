//! The fault suite's own scenarios (the list, and the ones that live in daemon_e2e.rs, are in
//! `lth_chaos::SCENARIOS`). Each disturbs a tiny digits sweep on real processes and then holds it
//! to `lth_chaos::assert_recovered`: succeeded, equal to run-local bit for bit, no duplicate rows,
//! nothing left running.

use lth_chaos::{assert_nothing_left, assert_recovered, assert_results_match, job_mid_way};
use lth_proto::v1 as pb;
use lth_testkit::process::children_of;
use lth_testkit::{bin, Cluster, DigitsSweep, PgCluster, TestDb};
use std::process::Command;
use std::time::Duration;

/// Long enough that a job is still training when the fault hits it (about 2-4 s a job on one
/// CPU thread), short enough that the whole suite stays within a couple of minutes.
const LENGTH: &str = "100ep";
const WITHIN: Duration = Duration::from_secs(240);

/// kill -9 of the job process (exec-job) under a daemon: the daemon sees it end without a result,
/// fails the attempt as retryable, and the next attempt resumes from the uploaded checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_a_job_process() {
    let mut c = Cluster::new(10).await;
    c.start_worker("w1");
    let sweep = DigitsSweep::new("chaos-job-kill").metrics(&["l1"]).seeds(&[7]).length(LENGTH);
    let id = c.submit(&sweep.toml()).await;
    let pool = c.db.pool().await;
    let job = job_mid_way(&pool, id, "w1", WITHIN).await;
    let daemon = c.worker("w1").pid();
    let kids = children_of(daemon);
    assert_eq!(kids.len(), 1, "one exec-job process under the daemon: {kids:?}");
    unsafe {
        libc::kill(kids[0], libc::SIGKILL);
    }

    assert_recovered(&mut c, id, &sweep, &[("l1", 7)], WITHIN).await;
    let attempts: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT outcome, error FROM job_attempts WHERE job_id = $1 ORDER BY attempt").bind(job).fetch_all(&pool).await.unwrap();
    assert_eq!(attempts.len(), 2, "the killed attempt and its retry: {attempts:?}");
    assert_eq!(attempts[0].0, "failed", "{attempts:?}");
    assert!(attempts[0].1.as_deref().unwrap_or("").contains("SIGKILL"), "the error names the signal: {attempts:?}");
    assert_eq!(attempts[1].0, "succeeded", "{attempts:?}");
    assert!(c.worker("w1").log_text().contains("resuming from the checkpoint"), "the retry resumed from the checkpoint");
}

/// kill -9 of the coordinator while a job trains, started again on the same address two seconds
/// later: the daemon keeps training through the outage, its writes land once the coordinator is
/// back, and nothing is lost or done twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_coordinator() {
    let mut c = Cluster::new(15).await;
    c.start_worker("w1");
    let sweep = DigitsSweep::new("chaos-coordinator-kill").metrics(&["magnitude"]).seeds(&[3]).length(LENGTH);
    let id = c.submit(&sweep.toml()).await;
    let pool = c.db.pool().await;
    job_mid_way(&pool, id, "w1", WITHIN).await;
    c.kill9_coordinator();
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.start_coordinator();

    assert_recovered(&mut c, id, &sweep, &[("magnitude", 3)], WITHIN).await;
    let lost: i64 = sqlx::query_scalar("SELECT count(*) FROM job_attempts a JOIN jobs j ON j.id = a.job_id WHERE j.sweep_id = $1 AND a.outcome <> 'succeeded'")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(lost, 0, "a 2 s outage within the lease costs no attempt");
}

/// kill -9 of PostgreSQL (postmaster and backends of a throwaway cluster of this test's own)
/// while a job trains, started again two seconds later: the coordinator keeps running, answers
/// "unavailable" meanwhile, and the sweep finishes as if nothing happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_postgres() {
    let pg = PgCluster::start_new();
    let db = TestDb::postgres_on(&pg.url(), "lth_chaos");
    let mut c = Cluster::on(db, 15, &[]);
    c.start_worker("w1");
    let sweep = DigitsSweep::new("chaos-postgres-kill").metrics(&["l2"]).seeds(&[4]).length(LENGTH);
    let id = c.submit(&sweep.toml()).await;
    {
        let pool = c.db.pool().await;
        job_mid_way(&pool, id, "w1", WITHIN).await;
        pool.close().await;
    }
    pg.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(c.coordinator.as_mut().unwrap().proc.is_running(), "the coordinator survives its database's death");
    pg.start();

    assert_recovered(&mut c, id, &sweep, &[("l2", 4)], WITHIN).await;
    drop(c);
    drop(pg);
}

/// Issue 9, failure 10, end to end: two sweeps with the same jobs (same model, data, recipe,
/// seed and grid; different names), submitted with lthctl before any worker runs, then two
/// daemons. Each job runs once: the twin waits for the running copy and reuses its result, so
/// the store holds 2 computed results for 4 succeeded jobs, and both sweeps equal run-local.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_sweeps_in_flight_run_each_job_once() {
    let mut c = Cluster::new(10).await;
    let sweep = DigitsSweep::new("chaos-twin-a").metrics(&["magnitude"]).seeds(&[2]).length("20ep");
    let mut twin = sweep.clone();
    twin.name = "chaos-twin-b".into();
    let mut ids = Vec::new();
    for s in [&sweep, &twin] {
        let file = c.write_file(&format!("{}.toml", s.name), &s.toml());
        let out = Command::new(bin("lthctl")).arg("submit").arg(&file).env("LTH_COORDINATOR", c.url()).output().expect("run lthctl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "lthctl submit: {text}{}", String::from_utf8_lossy(&out.stderr));
        let id: i64 = text.split("submitted sweep ").nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no sweep id in: {text}"));
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "two sweeps, not one submitted twice");
    c.start_worker("w1");
    c.start_worker("w2");
    for id in &ids {
        c.wait_for_state(*id, pb::SweepState::Succeeded, WITHIN).await;
    }

    let pool = c.db.pool().await;
    let (computed, attempts, succeeded): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM level_results), (SELECT count(*) FROM job_attempts), \
                (SELECT count(*) FROM jobs WHERE state = 'succeeded')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((computed, attempts, succeeded), (2, 2, 4), "(results computed, attempts run, jobs succeeded)");
    let reused: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE reused_from IS NOT NULL").fetch_one(&pool).await.unwrap();
    assert_eq!(reused, 2, "one sweep's jobs reuse the other's");
    assert_results_match(&c, ids[0], &sweep, &[("magnitude", 2)]).await;
    assert_results_match(&c, ids[1], &twin, &[("magnitude", 2)]).await;
    assert_nothing_left(&mut c).await;
}
