//! Ticket bundles in the store (issue 10, item 3), on both backends: formed at submit, claimed
//! together into one slot, and fenced, failed and retried per member.

#[macro_use]
mod common;

use common::*;
use lth_coordinator::store::{AbortReason, Failure, JobRow, Lease, Store, StoreError};
use lth_sweep::{BundleMode, SweepSpec};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;


contract!(
    bundles_are_formed_at_submit_deterministically,
    a_claim_takes_every_ready_member_of_a_bundle_into_one_slot,
    a_sibling_claim_respects_exclusions,
    members_are_fenced_failed_and_retried_one_by_one,
    pause_and_cancel_reach_every_member_by_its_own_lease,
);

fn bundled(metrics: &[&str], rates: &[f64], seeds: &[u64], levels: u32, mode: BundleMode, max: Option<u32>) -> SweepSpec {
    let mut s = spec(metrics, rates, seeds, levels);
    s.bundle = mode;
    s.max_bundle = max;
    s.validate().expect("a valid bundled spec");
    s
}


/// bundle id -> its members' ids, over a sweep's jobs.
fn bundles(jobs: &[JobRow]) -> BTreeMap<i64, Vec<i64>> {
    let mut out: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for j in jobs {
        if let Some(b) = j.bundle_id {
            out.entry(b).or_default().push(j.id);
        }
    }
    out
}

/// Claims the seed's dense job and completes it, so its level-1 jobs become ready.
async fn finish_dense(store: &Store, worker: &str) {
    let mut got = store.claim_jobs(worker, 1, LEASE).await.unwrap();
    assert_eq!(got.len(), 1);
    let d = got.pop().unwrap();
    assert_eq!((d.job.kind.as_str(), d.job.bundle_id), ("dense", None), "dense jobs are never bundled");
    store.complete_job(lease_of(&d), &fabricated_result(&d)).await.unwrap();
}

async fn bundles_are_formed_at_submit_deterministically(store: Store) {
    // "metrics": the 3 metrics of one (seed, rate) at one level.
    let s = bundled(&["magnitude", "l1", "l2"], &[0.2, 0.5], &[0, 1], 2, BundleMode::Metrics, None);
    let out = store.submit_sweep(&s, None).await.unwrap();
    let jobs = store.list_jobs(out.sweep_id, None).await.unwrap();
    assert!(jobs.iter().filter(|j| j.kind == "dense").all(|j| j.bundle_id.is_none()));
    let b = bundles(&jobs);
    assert_eq!(b.len(), 2 * 2 * 2, "one bundle per (seed, rate, level)");
    for (bid, members) in &b {
        assert_eq!(members.len(), 3);
        assert_eq!(bid, members.iter().min().unwrap(), "a bundle is named by its first member");
        let rows: Vec<&JobRow> = members.iter().map(|id| jobs.iter().find(|j| j.id == *id).unwrap()).collect();
        let key = |j: &JobRow| (j.seed, j.rate.to_bits(), j.level);
        assert!(rows.iter().all(|j| key(j) == key(rows[0]) && j.kind == "level" && j.control.is_none()));
        let metrics: HashSet<_> = rows.iter().map(|j| j.metric.clone()).collect();
        assert_eq!(metrics.len(), 3);
    }
    // Bundled jobs hash apart from unbundled ones (results equal only within tolerance), so
    // the same grid unbundled reuses nothing of it but the dense jobs.
    let off = spec(&["magnitude", "l1", "l2"], &[0.2, 0.5], &[0, 1], 2);
    let plain = store.submit_sweep(&off, None).await.unwrap();
    let plain_jobs = store.list_jobs(plain.sweep_id, None).await.unwrap();
    assert!(plain_jobs.iter().all(|j| j.bundle_id.is_none()), "bundle = off forms none");
    let hashes: HashSet<&str> = jobs.iter().filter(|j| j.kind == "level").map(|j| j.content_hash.as_str()).collect();
    assert!(plain_jobs.iter().filter(|j| j.kind == "level").all(|j| !hashes.contains(j.content_hash.as_str())));
    let dense_hashes: HashSet<&str> = jobs.iter().filter(|j| j.kind == "dense").map(|j| j.content_hash.as_str()).collect();
    assert!(plain_jobs.iter().filter(|j| j.kind == "dense").all(|j| dense_hashes.contains(j.content_hash.as_str())));

    // "metrics+rates" with max_bundle = 4: per (seed, level) 6 jobs, chunks of 4 and 2, in the
    // plan's order: the same submit twice forms the same bundles.
    let wide = bundled(&["magnitude", "l1", "l2"], &[0.2, 0.5], &[0], 1, BundleMode::MetricsRates, Some(4));
    let shape = |jobs: &[JobRow]| {
        let sweep_first = jobs.iter().map(|j| j.id).min().unwrap();
        bundles(jobs).values().map(|m| m.iter().map(|id| id - sweep_first).collect::<Vec<_>>()).collect::<Vec<_>>()
    };
    let a = store.submit_sweep(&wide, None).await.unwrap();
    let a_jobs = store.list_jobs(a.sweep_id, None).await.unwrap();
    assert_eq!(bundles(&a_jobs).values().map(Vec::len).collect::<Vec<_>>(), vec![4, 2]);
    let mut again = wide.clone();
    again.name = "again".into();
    let b2 = store.submit_sweep(&again, None).await.unwrap();
    let b_jobs = store.list_jobs(b2.sweep_id, None).await.unwrap();
    assert_eq!(shape(&a_jobs), shape(&b_jobs), "deterministic");
}

async fn a_claim_takes_every_ready_member_of_a_bundle_into_one_slot(store: Store) {
    let s = bundled(&["magnitude", "l1", "l2"], &[0.2], &[0], 2, BundleMode::Metrics, None);
    let out = store.submit_sweep(&s, None).await.unwrap();
    register(&store, "w").await;
    register(&store, "other").await;
    finish_dense(&store, "w").await;

    // One free slot brings the whole bundle: three jobs, three leases, one worker.
    let got = store.claim_jobs("w", 1, LEASE).await.unwrap();
    assert_eq!(got.len(), 3, "{:?}", got.iter().map(|c| c.job.id).collect::<Vec<_>>());
    let bid = got[0].job.bundle_id.expect("bundled");
    assert!(got.iter().all(|c| c.job.bundle_id == Some(bid) && c.job.state == "running" && c.job.attempt == 1));
    assert!(got.iter().all(|c| c.job.worker_id.as_deref() == Some("w") && c.rewind.is_none() && c.job.level == 1));
    assert!(store.claim_jobs("other", 4, LEASE).await.unwrap().is_empty(), "nothing of it is left for another worker");
    assert_eq!(scalar(&store, "SELECT count(*) FROM job_attempts WHERE outcome = 'running'").await, 3, "an attempt per member");
    assert_eq!(scalar(&store, "SELECT count(*) FROM events WHERE kind = 'state' AND job_state = 'running'").await, 4);

    // Each completes on its own; the next level's bundle is ready once all three are done and
    // comes as one claim again.
    for c in &got {
        store.complete_job(lease_of(c), &fabricated_result(c)).await.unwrap();
    }
    let next = store.claim_jobs("w", 1, LEASE).await.unwrap();
    assert_eq!(next.len(), 3);
    assert!(next.iter().all(|c| c.job.level == 2 && c.job.bundle_id == next[0].job.bundle_id && c.job.bundle_id != Some(bid)));
    for c in &next {
        store.complete_job(lease_of(c), &fabricated_result(c)).await.unwrap();
    }
    assert_eq!(store.get_sweep(out.sweep_id).await.unwrap().state, "succeeded");

    // Two workers in one claim batch (the group committer's shape): each bundle goes whole to
    // one of them, one slot each.
    let s2 = bundled(&["magnitude", "l1"], &[0.2, 0.5], &[7], 1, BundleMode::Metrics, None);
    let out2 = store.submit_sweep(&s2, None).await.unwrap();
    finish_dense(&store, "w").await;
    let reqs: Vec<_> = ["w", "other"]
        .iter()
        .map(|w| lth_coordinator::store::ClaimRequest { worker_id: w.to_string(), n: 1, lease: LEASE })
        .collect();
    let per = store.claim_jobs_batch(&reqs).await.unwrap();
    let (a, b) = (per[0].as_ref().unwrap(), per[1].as_ref().unwrap());
    assert_eq!((a.len(), b.len()), (2, 2));
    assert!(a.iter().all(|c| c.job.bundle_id == a[0].job.bundle_id) && b.iter().all(|c| c.job.bundle_id == b[0].job.bundle_id));
    assert_ne!(a[0].job.bundle_id, b[0].job.bundle_id);
    assert_eq!(store.list_jobs(out2.sweep_id, Some("ready")).await.unwrap().len(), 0);

    // Postgres: a member locked by a concurrent transaction is skipped, not waited for.
    if let Store::Postgres(pool) = &store {
        let s3 = bundled(&["magnitude", "l1", "l2"], &[0.2], &[9], 1, BundleMode::Metrics, None);
        let out3 = store.submit_sweep(&s3, None).await.unwrap();
        finish_dense(&store, "w").await;
        let ready = store.list_jobs(out3.sweep_id, Some("ready")).await.unwrap();
        let locked = ready.iter().map(|j| j.id).max().unwrap();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("SELECT id FROM jobs WHERE id = $1 FOR UPDATE").bind(locked).execute(&mut *tx).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), store.claim_jobs("w", 1, LEASE)).await.expect("SKIP LOCKED: no wait").unwrap();
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|c| c.job.id != locked));
        tx.rollback().await.unwrap();
        let rest = store.claim_jobs("other", 1, LEASE).await.unwrap();
        assert_eq!(rest.iter().map(|c| c.job.id).collect::<Vec<_>>(), vec![locked], "it runs later, alone");
    }
}

const ALIVE: Duration = Duration::from_secs(30);
const NODE_LOCAL: Failure = Failure { retryable: false, node_local: true };

async fn a_sibling_claim_respects_exclusions(store: Store) {
    let s = bundled(&["magnitude", "l1", "l2"], &[0.2], &[0], 1, BundleMode::Metrics, None);
    store.submit_sweep(&s, None).await.unwrap();
    register(&store, "w").await;
    register(&store, "w2").await;
    finish_dense(&store, "w").await;
    let got = store.claim_jobs("w", 1, LEASE).await.unwrap();
    assert_eq!(got.len(), 3);
    let (lead, middle, last) = (&got[0], &got[1], &got[2]);
    // The middle member fails for a reason of w's machine: excluded for w, ready for others.
    store.fail_job_on(lease_of(middle), "No space left on device", NODE_LOCAL, ALIVE).await.unwrap();
    // The others are handed back (a shutdown): all three ready again.
    store.release_job(lease_of(lead), "shutdown").await.unwrap();
    store.release_job(lease_of(last), "shutdown").await.unwrap();
    let again = store.claim_jobs("w", 1, LEASE).await.unwrap();
    let ids: Vec<i64> = again.iter().map(|c| c.job.id).collect();
    assert_eq!(ids, vec![lead.job.id, last.job.id], "w takes the bundle without the member it is excluded from");
    let other = store.claim_jobs("w2", 1, LEASE).await.unwrap();
    assert_eq!(other.iter().map(|c| c.job.id).collect::<Vec<_>>(), vec![middle.job.id]);
}

async fn members_are_fenced_failed_and_retried_one_by_one(store: Store) {
    let s = bundled(&["magnitude", "l1", "l2"], &[0.2], &[0], 2, BundleMode::Metrics, None);
    let out = store.submit_sweep(&s, None).await.unwrap();
    register(&store, "w").await;
    finish_dense(&store, "w").await;
    let got = store.claim_jobs("w", 1, LEASE).await.unwrap();
    assert_eq!(got.len(), 3);
    let (a, b, c) = (&got[0], &got[1], &got[2]);

    // One member fails: only it goes back to ready, and its retry runs alone (its siblings are
    // running, and nothing waits for them).
    store.fail_job(lease_of(a), "boom", true).await.unwrap();
    assert_eq!(store.get_job(b.job.id).await.unwrap().state, "running");
    let retry = store.claim_jobs("w", 1, LEASE).await.unwrap();
    assert_eq!(retry.iter().map(|r| (r.job.id, r.job.attempt)).collect::<Vec<_>>(), vec![(a.job.id, 2)]);

    // The failed attempt's completion is refused; the siblings' are accepted.
    let err = store.complete_job(lease_of(a), &fabricated_result(a)).await.unwrap_err();
    assert!(matches!(err, StoreError::StaleLease(_)), "{err}");
    store.complete_job(lease_of(b), &fabricated_result(b)).await.unwrap();
    store.complete_job(lease_of(c), &fabricated_result(c)).await.unwrap();
    store.complete_job(lease_of(&retry[0]), &fabricated_result(&retry[0])).await.unwrap();

    // Level 2 is one bundle again; the sweep finishes with a result per job.
    let next = store.claim_jobs("w", 1, LEASE).await.unwrap();
    assert_eq!(next.len(), 3);
    for n in &next {
        store.complete_job(lease_of(n), &fabricated_result(n)).await.unwrap();
    }
    assert_eq!(store.get_sweep(out.sweep_id).await.unwrap().state, "succeeded");
    assert_eq!(scalar(&store, "SELECT count(*) FROM level_results").await, 7);
}

async fn pause_and_cancel_reach_every_member_by_its_own_lease(store: Store) {
    let s = bundled(&["magnitude", "l1", "l2"], &[0.2], &[0], 1, BundleMode::Metrics, None);
    let out = store.submit_sweep(&s, None).await.unwrap();
    register(&store, "w").await;
    finish_dense(&store, "w").await;
    let got = store.claim_jobs("w", 1, LEASE).await.unwrap();
    assert_eq!(got.len(), 3);
    let leases: Vec<Lease> = got.iter().map(lease_of).collect();
    assert!(store.heartbeat("w", &leases, LEASE).await.unwrap().is_empty());

    store.pause_sweep(out.sweep_id).await.unwrap();
    let aborts = store.heartbeat("w", &leases, LEASE).await.unwrap();
    let mut aborted: Vec<Lease> = aborts.iter().filter(|(_, r)| *r == AbortReason::Paused).map(|(l, _)| *l).collect();
    aborted.sort_by_key(|l| l.job_id);
    assert_eq!(aborted, leases, "each member is aborted by its own lease");
    let err = store.complete_job(leases[1], &fabricated_result(&got[1])).await.unwrap_err();
    assert!(matches!(err, StoreError::StaleLease(_)), "{err}");

    // Resumed, the bundle is claimed whole again, with fresh attempts; a cancel aborts each.
    store.resume_sweep(out.sweep_id).await.unwrap();
    let again = store.claim_jobs("w", 1, LEASE).await.unwrap();
    assert_eq!(again.len(), 3);
    assert!(again.iter().all(|c| c.job.attempt == 2));
    store.cancel_sweep(out.sweep_id).await.unwrap();
    let leases2: Vec<Lease> = again.iter().map(lease_of).collect();
    let aborts = store.heartbeat("w", &leases2, LEASE).await.unwrap();
    assert_eq!(aborts.iter().filter(|(_, r)| *r == AbortReason::Cancelled).count(), 3);
}
