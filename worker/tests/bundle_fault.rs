//! A ticket bundle member that fails is isolated (issue 10, item 3): the others train on and
//! complete, the failed member is reported alone, and its retry runs alone. The failure is the
//! engine's own set-up failure of one member (its parent weights unreadable), injected by
//! `LTH_FAULT_BUNDLE_MISSING_PARENT` (exec-job, first attempts only). In its own test binary:
//! the variable is set for the whole process, and so reaches every daemon it starts.

use lth_proto::v1 as pb;
use sqlx::Row;
use std::time::{Duration, Instant};

mod common;
use common::{Cluster, DigitsSweep};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_member_is_isolated_and_its_retry_runs_alone() {
    std::env::set_var(lth_worker::daemon::exec_job::FAULT_MISSING_PARENT, "l1");
    let mut c = Cluster::new(20).await;
    c.start_worker("w1");
    let mut sweep = DigitsSweep::new("fault").metrics(&["magnitude", "l1", "l2"]).levels(1).length("1ep");
    sweep.extra.push("bundle = \"metrics\"".into());
    let id = c.submit(&sweep.toml()).await;
    let pool = c.db.pool().await;

    // The l1 member fails (for good or for a retry, as the child classifies a missing file);
    // its siblings complete.
    let t0 = Instant::now();
    loop {
        let state = c.sweep_state(id).await;
        if matches!(state, pb::SweepState::Failed | pb::SweepState::Succeeded) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "sweep still {state:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if c.sweep_state(id).await == pb::SweepState::Failed {
        let r = c.client().await.retry_sweep(pb::RetrySweepRequest { sweep_id: id, trial_id: 0 }).await.unwrap().into_inner();
        assert_eq!(r.jobs_requeued, 1, "only the failed member");
    }
    c.wait_for_state(id, pb::SweepState::Succeeded, Duration::from_secs(300)).await;

    let rows = sqlx::query(
        "SELECT j.metric, a.attempt, a.outcome, extract(epoch FROM a.started_at)::float8 AS started_at, a.error FROM jobs j JOIN job_attempts a ON a.job_id = j.id \
          WHERE j.sweep_id = $1 AND j.kind = 'level' ORDER BY j.metric, a.attempt",
    )
    .bind(id)
    .fetch_all(&pool)
    .await
    .unwrap();
    let get = |metric: &str, attempt: i32| {
        rows.iter().find(|r| r.get::<String, _>("metric") == metric && r.get::<i32, _>("attempt") == attempt).unwrap_or_else(|| panic!("no attempt {attempt} of {metric}"))
    };
    let first = get("l1", 1);
    assert_eq!(first.get::<String, _>("outcome"), "failed");
    assert!(first.get::<Option<String>, _>("error").unwrap_or_default().contains("fault-injected-missing-parent"), "the member's own error");
    // One claim: the leads' statement and their siblings' right after (within a second).
    let claimed_at = |r: &sqlx::postgres::PgRow| r.get::<f64, _>("started_at");
    for m in ["magnitude", "l2"] {
        let r = get(m, 1);
        assert_eq!(r.get::<String, _>("outcome"), "succeeded", "{m}: the siblings finish");
        assert!((claimed_at(r) - claimed_at(first)).abs() < 1.0, "{m}: claimed with l1 in one claim");
    }
    let retry = get("l1", 2);
    assert_eq!(retry.get::<String, _>("outcome"), "succeeded");
    let log = std::fs::read_to_string(c.dir.path().join("w1.log")).unwrap();
    // The daemon logs "bundle claimed" for each bundle it starts: the first attempts only; the
    // retry was a claim of one job.
    assert_eq!(log.matches("bundle claimed").count(), 1, "the first attempt ran in a bundle, the retry alone");
    c.stop_workers_and_check_none_left(Duration::from_secs(30));
    lth_testkit::results::assert_nothing_running(&pool).await;
}
