//! `SweepService.StreamMasks` over a real socket, on both backends: the bits a worker sent come
//! back unchanged, under the job ids GetResults names (reused jobs included), in job then layer
//! order, across more jobs than one page; a level filter; an unknown sweep.

mod common;

use common::*;
use lth_coordinator::artifacts::ArtifactStore;
use lth_coordinator::rpc::ServiceOptions;
use lth_coordinator::store::{Lease, LevelResult, Store};
use lth_proto::v1 as pb;
use pb::sweep_service_client::SweepServiceClient;
use std::collections::HashMap;
use std::time::Duration;
use tonic::transport::Channel;

const LEASE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_masks_come_back_bit_for_bit() {
    let db = TestDb::postgres().await;
    masks_come_back_bit_for_bit(db.store().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_masks_come_back_bit_for_bit() {
    let db = TestDb::sqlite().await;
    masks_come_back_bit_for_bit(db.store().await).await;
}

async fn stream(client: &mut SweepServiceClient<Channel>, sweep_id: i64, levels: &[u32]) -> Result<Vec<pb::LayerMask>, tonic::Status> {
    let mut s = client.stream_masks(pb::StreamMasksRequest { sweep_id, levels: levels.to_vec() }).await?.into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        out.push(m);
    }
    Ok(out)
}

async fn masks_come_back_bit_for_bit(store: Store) {
    // 2 dense + 3 metrics × 2 seeds × 3 levels = 20 jobs: more than one page of 8.
    let s = spec(&["magnitude", "l1", "l2"], &[0.5], &[0, 1], 3);
    let first = store.submit_sweep(&s, Some("a")).await.unwrap();
    register(&store, "w").await;
    let mut sent: HashMap<i64, LevelResult> = HashMap::new();
    loop {
        let jobs = store.claim_jobs("w", 4, LEASE).await.unwrap();
        if jobs.is_empty() {
            break;
        }
        for j in jobs {
            let r = fabricated_result(&j);
            store.complete_job(Lease { job_id: j.job.id, attempt: j.job.attempt }, &r).await.unwrap();
            sent.insert(j.job.id, r);
        }
    }
    assert_eq!(sent.len(), 20);
    // The same study again: every job reused, its masks read through the original job.
    let mut again = s.clone();
    again.name = "again".into();
    let second = store.submit_sweep(&again, Some("b")).await.unwrap();
    assert_eq!(second.jobs_reused, 20);
    let reused_from: HashMap<i64, i64> =
        store.list_jobs(second.sweep_id, None).await.unwrap().into_iter().map(|j| (j.id, j.reused_from.expect("reused"))).collect();

    let dir = tempfile::tempdir().unwrap();
    let artifacts = ArtifactStore::open(dir.path().to_str().unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(lth_coordinator::server::serve(store.clone(), artifacts, ServiceOptions::default(), Duration::from_secs(1), listener, async {
        let _ = stop_rx.await;
    }));
    let channel = loop {
        match Channel::from_shared(format!("http://{addr}")).unwrap().connect().await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut client = SweepServiceClient::new(channel);

    for (sweep_id, origin) in [(first.sweep_id, None), (second.sweep_id, Some(&reused_from))] {
        let rows = client.get_results(pb::GetResultsRequest { sweep_id }).await.unwrap().into_inner().rows;
        let masks = stream(&mut client, sweep_id, &[]).await.unwrap();
        // Every job GetResults names, every layer, once; ordered by job, then layer position.
        let mut jobs: Vec<i64> = rows.iter().map(|r| r.job_id).collect();
        jobs.sort();
        jobs.dedup();
        assert_eq!(jobs.len(), 20);
        assert_eq!(masks.len(), 20 * 2);
        let order: Vec<(i64, u32)> = masks.iter().map(|m| (m.job_id, m.ordinal)).collect();
        let mut sorted = order.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(order, sorted, "not in job, ordinal order or repeated");
        for m in &masks {
            assert!(jobs.contains(&m.job_id), "job {} is not in GetResults", m.job_id);
            let source = origin.map(|o| o[&m.job_id]).unwrap_or(m.job_id);
            let layer = sent[&source].layers.iter().find(|l| l.name == m.layer).unwrap();
            assert_eq!((m.kept, m.total), (layer.kept, layer.total), "{}", m.layer);
            assert_eq!(m.mask_bits, layer.bits, "bits of job {} layer {}", m.job_id, m.layer);
        }
        // One level only: its jobs and nothing else.
        let at_two = stream(&mut client, sweep_id, &[2]).await.unwrap();
        let want: std::collections::BTreeSet<i64> = rows.iter().filter(|r| r.level == 2).map(|r| r.job_id).collect();
        let got: std::collections::BTreeSet<i64> = at_two.iter().map(|m| m.job_id).collect();
        assert_eq!(got, want);
        assert_eq!(at_two.len(), want.len() * 2);
        // Level 0: the two dense jobs, once each although six trials share them.
        assert_eq!(stream(&mut client, sweep_id, &[0]).await.unwrap().len(), 2 * 2);
    }
    let err = stream(&mut client, 987_654, &[]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    assert!(err.message().contains("lthctl ls"), "{}", err.message());

    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}
