//! The fault suite (issue 9): the real `lth-coordinator`, `lth-worker daemon` and `lthctl`
//! processes on real sockets and a real Postgres (SQLite where the scenario is about that backend),
//! each scenario disturbing a tiny digits sweep one way, and every scenario held to the same bar
//! ([`assert_recovered`], on either backend):
//!
//! 1. the sweep reaches a final state (succeeded);
//! 2. its results equal an undisturbed run bit for bit on CPU (`lth-worker run-local` of every
//!    chain: accuracy, sparsity and every mask);
//! 3. no duplicate rows (one result and one set of masks per (trial, level); no content hash
//!    computed and stored twice);
//! 4. nothing left running: no running job or open attempt in the store, and once the daemons
//!    are stopped with SIGTERM (a clean exit), no process of the test left (no orphaned job
//!    process).
//!
//! The scenarios are listed in [`SCENARIOS`] with the test that runs each. Some ran as tests of
//! `worker/tests/daemon_e2e.rs` before this suite existed and stay there (same names); the suite's
//! own are in `chaos/tests/faults.rs`. `chaos/tests/scenarios.rs` checks that every listed test
//! exists, so the list cannot drift, and that every one of issue 9's ten failure modes has a
//! scenario. A slot with `test: None` would be a fault still without its test; there is none today.
//!
//! Besides process deaths, the suite's own scenarios include a hostile gRPC client going over every
//! limit of the coordinator while a sweep runs (failure 6: each refusal checked by its code and
//! ErrorInfo reason, never its text), a big submit (~288,000 jobs on SQLite, ~96,000 on Postgres)
//! beside a daemon under a 3 s lease (failure 7: a probe times heartbeats through it), and a sweep
//! that failed for good, re-queued with `lthctl retry`, beside a daemon killed -9 and listed as
//! lost (failure 9).
//!
//! # Layout
//! - `src/lib.rs`: the scenario list and the shared checks.
//! - `tests/faults.rs`: the scenarios that live here.
//! - `tests/scenarios.rs`: the list's own check.
//!
//! The processes, databases and result readers are lth-testkit's.

use lth_proto::v1 as pb;
use lth_testkit::results::{assert_no_duplicate_rows, assert_nothing_running, assert_one_result_per_trial_level, assert_same_results, run_local, sqlite, stored_results};
use lth_testkit::{Cluster, DigitsSweep};
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

/// One fault and where it is tested.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// What is done to the system.
    pub fault: &'static str,
    /// The failure mode of issue 9 it closes, if it is one of them (1 to 10).
    pub failure_mode: Option<u8>,
    /// `path/from/workspace/root.rs::test_function`, or None: not written yet (an open slot).
    pub test: Option<&'static str>,
}

/// Every fault the suite covers (and any slot still open).
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        fault: "kill -9 of a worker daemon mid-job: its lease expires, another worker resumes the job from its checkpoint",
        failure_mode: None,
        test: Some("worker/tests/daemon_e2e.rs::a_worker_killed_mid_job_loses_its_lease_and_the_other_finishes_the_job"),
    },
    Scenario {
        fault: "kill -9 of a worker daemon mid-job, started again under the same worker id: its old job is re-queued when it registers, not after the lease; then a second daemon under that id supersedes it, and the superseded one stops with an error",
        failure_mode: None,
        test: Some("worker/tests/daemon_e2e.rs::a_daemon_restarted_under_its_worker_id_requeues_its_old_job_at_once_and_a_duplicate_supersedes_it"),
    },
    Scenario {
        fault: "kill -9 of a job process (exec-job) mid-job: the daemon fails the attempt as retryable and the retry resumes",
        failure_mode: None,
        test: Some("chaos/tests/faults.rs::kill9_of_a_job_process"),
    },
    Scenario {
        fault: "kill -9 of the coordinator mid-sweep, restarted on the same address",
        failure_mode: None,
        test: Some("chaos/tests/faults.rs::kill9_of_the_coordinator"),
    },
    Scenario {
        fault: "kill -9 of PostgreSQL (a throwaway cluster of the test's own) mid-sweep, started again",
        failure_mode: None,
        test: Some("chaos/tests/faults.rs::kill9_of_postgres"),
    },
    Scenario {
        fault: "the store reset (database dropped and created empty) under running daemons",
        failure_mode: Some(1),
        test: Some("worker/tests/daemon_e2e.rs::daemons_register_again_after_the_store_is_reset_and_finish_the_next_sweep"),
    },
    Scenario {
        fault: "a weights file deleted from the coordinator's object store, another corrupted there: each producer re-runs once, its dependents wait, the sweep equals run-local",
        failure_mode: Some(2),
        test: Some("worker/tests/daemon_e2e.rs::a_lost_or_corrupt_weights_file_is_made_again_and_the_sweep_finishes_like_run_local"),
    },
    Scenario {
        fault: "flipped bits in the worker's artifact cache",
        failure_mode: Some(3),
        test: Some("worker/tests/daemon_e2e.rs::corrupted_cache_entries_are_evicted_and_fetched_again"),
    },
    Scenario {
        fault: "one bad node (its dataset path missing) failing every job it takes: the jobs move to a healthy worker, the bad one turns unhealthy",
        failure_mode: Some(4),
        test: Some("worker/tests/daemon_e2e.rs::a_worker_without_the_dataset_hands_its_jobs_to_a_healthy_one_and_turns_unhealthy"),
    },
    Scenario {
        fault: "a diverged run (NaN loss)",
        failure_mode: Some(5),
        test: Some("worker/tests/daemon_e2e.rs::a_diverged_run_is_recorded_as_diverged_with_its_level"),
    },
    Scenario {
        fault: "a hostile client over every limit while a sweep runs: a grid over the 100,000-job cap, worker ids of 129 characters or with control characters, uploads under names the job kind does not make, over --max-artifact-mib (declared and streamed) and under a handed-back lease, made-up page tokens, pages of u32::MAX rows",
        failure_mode: Some(6),
        test: Some("chaos/tests/faults.rs::a_hostile_client_is_refused_at_every_limit_and_the_sweep_finishes"),
    },
    Scenario {
        fault: "a ~288,000-job grid submitted on SQLite while a daemon trains under a 3 s lease",
        failure_mode: Some(7),
        test: Some("chaos/tests/faults.rs::a_big_submit_on_sqlite_starves_no_lease"),
    },
    Scenario {
        fault: "a ~96,000-job grid submitted on Postgres while a daemon trains under a 3 s lease",
        failure_mode: Some(7),
        test: Some("chaos/tests/faults.rs::a_big_submit_on_postgres_starves_no_lease"),
    },
    Scenario {
        fault: "SIGTERM to a daemon mid-job: checkpoint uploaded, job released and claimable at once",
        failure_mode: Some(8),
        test: Some("worker/tests/daemon_e2e.rs::a_daemon_stopped_mid_job_hands_the_job_back_at_once"),
    },
    Scenario {
        fault: "SIGTERM to a daemon while its ClaimJobs is in flight: what the claim brought is handed back",
        failure_mode: Some(8),
        test: Some("worker/tests/daemon_e2e.rs::a_daemon_stopped_during_a_claim_hands_the_claimed_job_back"),
    },
    Scenario {
        fault: "SIGTERM to a daemon while a finished job's completion (which also claims the next job) is in flight: no job is left leased to it",
        failure_mode: Some(8),
        test: Some("worker/tests/daemon_e2e.rs::a_daemon_stopped_while_completing_leaves_no_job_leased_to_it"),
    },
    Scenario {
        fault: "a job failed for good (its process killed -9 under max_attempts = 1) and a daemon killed -9: the sweep fails, the dead daemon is listed as lost only by `lthctl workers --all`, `lthctl retry` reopens the sweep",
        failure_mode: Some(9),
        test: Some("chaos/tests/faults.rs::a_failed_sweep_is_retried_with_lthctl_and_a_dead_daemon_is_listed_as_lost"),
    },
    Scenario {
        fault: "identical sweeps in flight at once, submitted with lthctl",
        failure_mode: Some(10),
        test: Some("chaos/tests/faults.rs::identical_sweeps_in_flight_run_each_job_once"),
    },
];

/// One chain of a sweep: (metric, seed) at the sweep's rate.
pub type Chain = (&'static str, u64);

/// The suite's bar for a disturbed sweep (see the crate docs): waits for it to succeed, compares
/// every chain with run-local, checks the rows, stops the daemons and checks nothing is left.
pub async fn assert_recovered(c: &mut Cluster, sweep_id: i64, sweep: &DigitsSweep, chains: &[Chain], within: Duration) {
    c.wait_for_state(sweep_id, pb::SweepState::Succeeded, within).await;
    assert_results_match(c, sweep_id, sweep, chains).await;
    assert_nothing_left(c).await;
}

/// Bars 2 and 3 for a finished sweep: one result per (trial, level), no content hash stored
/// twice, and every chain equal to run-local's bit for bit. On either backend.
pub async fn assert_results_match(c: &Cluster, sweep_id: i64, sweep: &DigitsSweep, chains: &[Chain]) {
    let trial_levels = chains.len() as i64 * (1 + sweep.levels as i64);
    let stored = if c.db.is_postgres() {
        let pool = c.db.pool().await;
        assert_one_result_per_trial_level(&pool, sweep_id, trial_levels).await;
        assert_no_duplicate_rows(&pool).await;
        stored_results(&pool, sweep_id).await
    } else {
        let pool = c.db.sqlite_pool().await;
        sqlite::assert_one_result_per_trial_level(&pool, sweep_id, trial_levels).await;
        sqlite::assert_no_duplicate_rows(&pool).await;
        sqlite::stored_results(&pool, sweep_id).await
    };
    let file = c.write_file(&format!("undisturbed-{sweep_id}.toml"), &sweep.toml());
    for (metric, seed) in chains {
        let mine: Vec<_> = stored.iter().filter(|s| s.metric == *metric && s.seed == *seed as i64).cloned().collect();
        let local = run_local(c.dir.path(), &file, metric, &sweep.rates.join(","), *seed, sweep.levels);
        assert_same_results(&mine, &local);
    }
}

/// Bar 4: the daemons stop cleanly on SIGTERM, no process of the test is left (no orphaned job
/// process), and the store has no running job or open attempt.
pub async fn assert_nothing_left(c: &mut Cluster) {
    c.stop_workers_and_check_none_left(Duration::from_secs(30));
    if c.db.is_postgres() {
        assert_nothing_running(&c.db.pool().await).await;
    } else {
        sqlite::assert_nothing_running(&c.db.sqlite_pool().await).await;
    }
}

/// Polls `f` every 100 ms until it is true; fails the test after `within`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let t0 = Instant::now();
    while !f().await {
        assert!(t0.elapsed() < within, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The id of a job of the sweep that is running on `worker`, has trained (progress > 0) and
/// uploaded a checkpoint: the moment a fault hurts most. Waits up to `within`.
pub async fn job_mid_way(pool: &sqlx::PgPool, sweep_id: i64, worker: &str, within: Duration) -> i64 {
    let t0 = Instant::now();
    loop {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT j.id FROM jobs j JOIN artifacts a ON a.job_id = j.id AND a.name = 'checkpoint' \
              WHERE j.sweep_id = $1 AND j.state = 'running' AND j.worker_id = $2 AND j.progress > 0 ORDER BY j.id LIMIT 1",
        )
        .bind(sweep_id)
        .bind(worker)
        .fetch_optional(pool)
        .await
        .unwrap_or(None);
        if let Some((id,)) = row {
            return id;
        }
        assert!(t0.elapsed() < within, "no job of sweep {sweep_id} running with a checkpoint on {worker} after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`job_mid_way`] on any worker: (job id, the worker running it).
pub async fn any_job_mid_way(pool: &sqlx::PgPool, sweep_id: i64, within: Duration) -> (i64, String) {
    let t0 = Instant::now();
    loop {
        let row: Option<(i64, String)> = sqlx::query_as(
            "SELECT j.id, j.worker_id FROM jobs j JOIN artifacts a ON a.job_id = j.id AND a.name = 'checkpoint' \
              WHERE j.sweep_id = $1 AND j.state = 'running' AND j.progress > 0 ORDER BY j.id LIMIT 1",
        )
        .bind(sweep_id)
        .fetch_optional(pool)
        .await
        .unwrap_or(None);
        if let Some(found) = row {
            return found;
        }
        assert!(t0.elapsed() < within, "no job of sweep {sweep_id} running with a checkpoint after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`job_mid_way`] on a SQLite store.
pub async fn job_mid_way_sqlite(pool: &sqlx::SqlitePool, sweep_id: i64, worker: &str, within: Duration) -> i64 {
    let t0 = Instant::now();
    loop {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT j.id FROM jobs j JOIN artifacts a ON a.job_id = j.id AND a.name = 'checkpoint' \
              WHERE j.sweep_id = ? AND j.state = 'running' AND j.worker_id = ? AND j.progress > 0 ORDER BY j.id LIMIT 1",
        )
        .bind(sweep_id)
        .bind(worker)
        .fetch_optional(pool)
        .await
        .unwrap_or(None);
        if let Some((id,)) = row {
            return id;
        }
        assert!(t0.elapsed() < within, "no job of sweep {sweep_id} running with a checkpoint on {worker} after {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The scenario list's test reference split into (file, function).
pub fn split_test(test: &str) -> (&Path, &str) {
    let (file, function) = test.split_once("::").expect("path::function");
    (Path::new(file), function)
}
