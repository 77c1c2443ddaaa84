//! Group commit for the writes every job makes: ClaimJobs, the record of each UploadArtifact, and
//! CompleteJob.
//!
//! Concurrent calls queue on a channel; a batcher takes whatever has queued (up to `max_batch`)
//! and runs it as one [`Store::claim_jobs_batch`], [`Store::record_artifacts`] or
//! [`Store::complete_jobs`], with at most
//! `in_flight` batches running at once. Under light load a batch is one call and nothing waits;
//! under heavy load the queue grows while a batch runs, so batches grow and the per-call cost of
//! round trips and commits shrinks. This is what lets one Postgres on a small machine serve
//! thousands of claims and completions a second (BENCHMARKS.md).
//!
//! A completion may also claim its worker's next job (CompleteJob's `claim_next`): once its batch
//! committed, the claims of the batch's accepted completions run as one claim statement in that
//! batch's turn ([`GroupCommit::complete_then_claim`]).
//!
//! Every caller still gets its reply only after its batch committed, so nothing is acknowledged
//! that a crash could lose. When a batch fails as a whole (a database error), each of its calls
//! is retried alone, so one bad item fails only its own caller.

use crate::http::metrics::names as M;
use crate::store::{ArtifactRecord, ClaimRequest, ClaimedJob, Completion, Recorded, Store, StoreError};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// How batches are formed.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommitOptions {
    /// The most calls in one batch.
    pub max_batch: usize,
    /// Batches of one kind (claims, or completions) running at once. One is best when the
    /// database is CPU-bound, as on a small machine: calls wait a little longer and batches grow
    /// (measured with 64 workers on 2 cores: 17 calls per batch and 2,048/s with one in flight,
    /// 5.6 and 1,970/s with three, 4.5 and 1,617/s with four; BENCHMARKS.md). More can help when
    /// the database has cores to spare and commits are slow.
    pub in_flight: usize,
}

impl Default for GroupCommitOptions {
    fn default() -> Self {
        GroupCommitOptions { max_batch: 64, in_flight: 1 }
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A completion, and the claim to run for its worker once it is committed (CompleteJob's
/// `claim_next`).
type CompleteThenClaim = (Completion, Option<ClaimRequest>);

/// What the claim after a completion brought: None when none was asked for (or the completion
/// was refused); its own error when it failed, which never fails the completion.
pub type ClaimAfter = Option<Result<Vec<ClaimedJob>, StoreError>>;

/// Counters of one batcher, for logs and benchmarks.
#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    calls: AtomicU64,
    retried_alone: AtomicU64,
}

/// What one batcher has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatcherStats {
    /// Database round trips (batches) run.
    pub batches: u64,
    /// Calls answered through batches.
    pub calls: u64,
    /// Calls retried alone after their batch failed as a whole.
    pub retried_alone: u64,
}

impl Counters {
    fn snapshot(&self) -> BatcherStats {
        BatcherStats {
            batches: self.batches.load(Ordering::Relaxed),
            calls: self.calls.load(Ordering::Relaxed),
            retried_alone: self.retried_alone.load(Ordering::Relaxed),
        }
    }
}

/// The hot path of the store, batched. Cheap to clone; the batchers stop when the last clone is
/// dropped.
#[derive(Clone)]
pub struct GroupCommit {
    store: Store,
    claims: mpsc::UnboundedSender<(ClaimRequest, Reply<Vec<ClaimedJob>>)>,
    completions: mpsc::UnboundedSender<(CompleteThenClaim, Reply<ClaimAfter>)>,
    records: mpsc::UnboundedSender<(ArtifactRecord, Reply<Recorded>)>,
    claim_counters: Arc<Counters>,
    complete_counters: Arc<Counters>,
}

impl GroupCommit {
    /// Starts the two batchers on the current tokio runtime.
    pub fn start(store: Store, opts: GroupCommitOptions) -> GroupCommit {
        let (claims, claim_rx) = mpsc::unbounded_channel();
        let (completions, complete_rx) = mpsc::unbounded_channel();
        let (claim_counters, complete_counters) = (Arc::new(Counters::default()), Arc::new(Counters::default()));
        let s = store.clone();
        tokio::spawn(run_batcher(claim_rx, opts, claim_counters.clone(), "claim", move |reqs: Arc<[ClaimRequest]>| {
            let s = s.clone();
            async move { s.claim_jobs_batch(&reqs).await }
        }));
        let s = store.clone();
        tokio::spawn(run_batcher(complete_rx, opts, complete_counters.clone(), "complete", move |items: Arc<[CompleteThenClaim]>| {
            let s = s.clone();
            async move { complete_then_claim(&s, &items).await }
        }));
        let (records, record_rx) = mpsc::unbounded_channel();
        let s = store.clone();
        tokio::spawn(run_batcher(record_rx, opts, Arc::new(Counters::default()), "record", move |recs: Arc<[ArtifactRecord]>| {
            let s = s.clone();
            async move { s.record_artifacts(&recs).await }
        }));
        GroupCommit { store, claims, completions, records, claim_counters, complete_counters }
    }

    /// (claims, completions) batched so far.
    pub fn stats(&self) -> (BatcherStats, BatcherStats) {
        (self.claim_counters.snapshot(), self.complete_counters.snapshot())
    }

    /// [`Store::claim_jobs`], batched with concurrent claims.
    pub async fn claim(&self, worker_id: &str, n: u32, lease: Duration) -> Result<Vec<ClaimedJob>, StoreError> {
        let req = ClaimRequest { worker_id: worker_id.to_string(), n, lease };
        enqueue(&self.claims, req, |req| async move { self.store.claim_jobs_batch(std::slice::from_ref(&req)).await }).await
    }

    /// One completion, batched with concurrent completions ([`Store::complete_jobs`]).
    pub async fn complete(&self, item: Completion) -> Result<(), StoreError> {
        self.complete_then_claim(item, None).await.map(|_| ())
    }

    /// One completion and then, once its batch is committed, `claim` for its worker: the claims
    /// of a batch's accepted completions run together as one [`Store::claim_jobs_batch`], in the
    /// completion batch's own turn (not queued again behind the ClaimJobs batcher).
    pub async fn complete_then_claim(&self, item: Completion, claim: Option<ClaimRequest>) -> Result<ClaimAfter, StoreError> {
        enqueue(&self.completions, (item, claim), |item| async move { complete_then_claim(&self.store, std::slice::from_ref(&item)).await }).await
    }

    /// One upload record, batched with concurrent ones ([`Store::record_artifacts`]).
    pub async fn record_artifact(&self, rec: ArtifactRecord) -> Result<Recorded, StoreError> {
        enqueue(&self.records, rec, |rec| async move { self.store.record_artifacts(std::slice::from_ref(&rec)).await }).await
    }
}

/// Hands `item` to its batcher and waits for the batch's answer; with the batcher gone (the
/// coordinator shutting down), runs it as a batch of one with `alone`.
async fn enqueue<Item, T, F, Fut>(queue: &mpsc::UnboundedSender<(Item, Reply<T>)>, item: Item, alone: F) -> Result<T, StoreError>
where
    F: FnOnce(Item) -> Fut,
    Fut: Future<Output = Result<Vec<Result<T, StoreError>>, StoreError>>,
{
    let (tx, rx) = oneshot::channel();
    match queue.send((item, tx)) {
        Ok(()) => rx.await.unwrap_or_else(|_| Err(batcher_gone())),
        Err(mpsc::error::SendError((item, _))) => only_outcome(alone(item).await),
    }
}

/// A completion batch, then one claim batch for the accepted completions that asked for one. Only
/// the completion statement can fail the batch as a whole: a batch retried call by call after a
/// failed claim would find its completions already committed.
async fn complete_then_claim(store: &Store, items: &[CompleteThenClaim]) -> Result<Vec<Result<ClaimAfter, StoreError>>, StoreError> {
    let completions: Vec<&Completion> = items.iter().map(|(c, _)| c).collect();
    let done = store.complete_jobs(&completions).await?;
    let asking: Vec<usize> = done.iter().zip(items).enumerate().filter(|(_, (d, (_, claim)))| d.is_ok() && claim.is_some()).map(|(i, _)| i).collect();
    let mut claimed: Vec<ClaimAfter> = (0..items.len()).map(|_| None).collect();
    if !asking.is_empty() {
        let reqs: Vec<ClaimRequest> = asking.iter().map(|&i| items[i].1.clone().expect("asked")).collect();
        match store.claim_jobs_batch(&reqs).await {
            Ok(outcomes) => {
                for (&i, outcome) in asking.iter().zip(outcomes) {
                    claimed[i] = Some(outcome);
                }
            }
            Err(e) if reqs.len() == 1 => claimed[asking[0]] = Some(Err(e)),
            // One bad claim (a database error) fails the whole statement: each claim alone.
            Err(_) => {
                for (&i, req) in asking.iter().zip(&reqs) {
                    claimed[i] = Some(only_outcome(store.claim_jobs_batch(std::slice::from_ref(req)).await));
                }
            }
        }
    }
    Ok(done.into_iter().zip(claimed).map(|(d, c)| d.map(|()| c)).collect())
}

/// The outcome of a batch of one.
fn only_outcome<T>(batch: Result<Vec<Result<T, StoreError>>, StoreError>) -> Result<T, StoreError> {
    batch.and_then(|mut v| v.pop().expect("one outcome per call"))
}

fn batcher_gone() -> StoreError {
    StoreError::Db(sqlx::Error::WorkerCrashed)
}

/// Takes batches off `rx` and runs each with `exec`, at most `opts.in_flight` at a time.
async fn run_batcher<Item, T, F, Fut>(
    mut rx: mpsc::UnboundedReceiver<(Item, Reply<T>)>,
    opts: GroupCommitOptions,
    counters: Arc<Counters>,
    kind: &'static str,
    exec: F,
)
where
    Item: Clone + Send + Sync + 'static,
    T: Send + 'static,
    F: Fn(Arc<[Item]>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Vec<Result<T, StoreError>>, StoreError>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(opts.in_flight.max(1)));
    while let Some(first) = rx.recv().await {
        // Wait for a free slot before draining: calls that arrive meanwhile join this batch.
        let permit = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        let mut batch = vec![first];
        while batch.len() < opts.max_batch.max(1) {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let exec = exec.clone();
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters.calls.fetch_add(batch.len() as u64, Ordering::Relaxed);
        metrics::histogram!(M::BATCH_SIZE, "kind" => kind).record(batch.len() as f64);
        let counters = counters.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (items, replies): (Vec<Item>, Vec<Reply<T>>) = batch.into_iter().unzip();
            let items: Arc<[Item]> = items.into();
            let t0 = std::time::Instant::now();
            let result = exec(items.clone()).await;
            metrics::histogram!(M::BATCH_SECONDS, "kind" => kind).record(t0.elapsed().as_secs_f64());
            match result {
                Ok(outcomes) => {
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(outcome);
                    }
                }
                Err(e) if items.len() == 1 => {
                    let _ = replies.into_iter().next().expect("one reply").send(Err(e));
                }
                Err(e) => {
                    tracing::warn!(error = %e, calls = items.len(), "batch failed; retrying its calls one by one");
                    counters.retried_alone.fetch_add(items.len() as u64, Ordering::Relaxed);
                    metrics::counter!(M::BATCH_RETRIED_ALONE, "kind" => kind).increment(items.len() as u64);
                    for (item, reply) in items.iter().zip(replies) {
                        let _ = reply.send(only_outcome(exec(Arc::from([item.clone()])).await));
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// The batcher's own logic, with an executor that fails any batch holding the item `13`
    /// (as a database error from one bad row would) and records every batch it was given.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_batch_is_retried_call_by_call_and_only_the_bad_call_fails() {
        let seen: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let gate = Arc::new(tokio::sync::Notify::new());
        let (tx, rx) = mpsc::unbounded_channel::<(u32, Reply<u32>)>();
        let exec = {
            let (seen, gate) = (seen.clone(), gate.clone());
            move |items: Arc<[u32]>| {
                let (seen, gate) = (seen.clone(), gate.clone());
                async move {
                    let first = seen.lock().unwrap().is_empty();
                    seen.lock().unwrap().push(items.to_vec());
                    if first {
                        // Hold the only slot until every other call has queued behind it.
                        gate.notified().await;
                    }
                    if items.contains(&13) {
                        return Err(StoreError::InvalidArgument("item 13 poisons its batch".into()));
                    }
                    Ok(items.iter().map(|i| Ok(i * 10)).collect())
                }
            }
        };
        let counters = Arc::new(Counters::default());
        tokio::spawn(run_batcher(rx, GroupCommitOptions { max_batch: 64, in_flight: 1 }, counters.clone(), "test", exec));

        let mut replies = Vec::new();
        for i in 10..20u32 {
            let (rtx, rrx) = oneshot::channel();
            tx.send((i, rtx)).unwrap();
            replies.push((i, rrx));
            if i == 10 {
                // Let the first call start its batch alone, then queue the rest behind it.
                while seen.lock().unwrap().is_empty() {
                    tokio::task::yield_now().await;
                }
            }
        }
        gate.notify_one();
        for (i, rrx) in replies {
            let got = rrx.await.unwrap();
            if i == 13 {
                assert!(matches!(got, Err(StoreError::InvalidArgument(_))), "the bad call fails: {got:?}");
            } else {
                assert_eq!(got.unwrap(), i * 10, "call {i} is answered with its own outcome");
            }
        }
        let batches = seen.lock().unwrap().clone();
        assert_eq!(batches[0], vec![10]);
        assert_eq!(batches[1], (11..20).collect::<Vec<_>>(), "the calls that queued meanwhile form one batch");
        assert_eq!(batches.len(), 2 + 9, "after the batch failed, each of its 9 calls ran alone");
        let stats = counters.snapshot();
        assert_eq!((stats.batches, stats.calls, stats.retried_alone), (2, 10, 9));
    }
}
