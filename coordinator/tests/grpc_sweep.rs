//! End to end over a real TCP socket: a coordinator on 127.0.0.1:0 with a fresh Postgres, and a
//! scripted worker (a tonic client) that claims, heartbeats, reports progress, uploads and
//! downloads artifacts and completes every job of a small sweep with fabricated-but-consistent
//! per-layer masks. Then the SQL views are checked row by row.

mod common;

use common::*;
use lth_coordinator::artifacts::ArtifactStore;
use lth_coordinator::rpc::ServiceOptions;
use lth_coordinator::store::Store;
use lth_proto::v1 as pb;
use pb::sweep_service_client::SweepServiceClient;
use pb::worker_service_client::WorkerServiceClient;
use sha2::{Digest, Sha256};
use sqlx::Row;
use std::time::Duration;
use tonic::transport::Channel;

/// Bits kept by a (fabricated) ticket: a window of `kept` positions starting at an offset that
/// depends on the metric, so tickets of different metrics overlap partly.
fn mask(total: usize, kept: usize, salt: usize) -> Vec<bool> {
    (0..total).map(|i| ((i + salt) % total) < kept).collect()
}

fn salt(metric: i32) -> usize {
    match pb::ImportanceMetric::try_from(metric).unwrap() {
        pb::ImportanceMetric::Magnitude => 5,
        pb::ImportanceMetric::L1 => 2,
        _ => 0,
    }
}

const LAYERS: [(&str, usize); 2] = [("fc1.weight", 40), ("fc2.weight", 12)];

fn kept_at(total: usize, rate: f64, level: u32) -> usize {
    ((total as f64) * (1.0 - rate).powi(level as i32)).round() as usize
}

/// fc2 collapses (nothing kept) for magnitude from level 2 on: the global threshold's failure mode.
fn collapses(metric: i32, level: u32) -> bool {
    metric == pb::ImportanceMetric::Magnitude as i32 && level >= 2
}

fn accuracy(seed: u64, level: u32) -> f64 {
    0.95 - 0.02 * level as f64 - 0.01 * seed as f64
}

fn result_for(a: &pb::JobAssignment) -> pb::LevelResult {
    let layers = LAYERS
        .iter()
        .map(|&(name, total)| {
            let kept = if name == "fc2.weight" && collapses(a.metric, a.level) { 0 } else { kept_at(total, a.rate, a.level) };
            let bits = mask(total, kept, salt(a.metric));
            pb::LayerStats {
                layer: name.into(),
                kept: kept as u64,
                total: total as u64,
                mask_bits: pack(&bits),
                collapsed: kept == 0,
                weight_norm: kept as f64 * 0.1,
                ..Default::default()
            }
        })
        .collect::<Vec<_>>();
    let total: u64 = layers.iter().map(|l| l.total).sum();
    let kept: u64 = layers.iter().map(|l| l.kept).sum();
    pb::LevelResult {
        sparsity: 1.0 - kept as f64 / total as f64,
        test_accuracy: accuracy(a.seed, a.level),
        test_loss: 0.2,
        train_loss: 0.1,
        epochs: 2.0,
        wall_seconds: 0.5,
        iterations: 60,
        layers,
        device: "cuda Test GPU".into(),
        diverged: false,
    }
}

/// The bytes a job "trained": deterministic, 1.5 MiB so uploads and downloads take several chunks.
fn weights_of(job_id: i64, name: &str) -> Vec<u8> {
    let seed = format!("{name} of job {job_id};");
    seed.as_bytes().iter().copied().cycle().take(3 << 19).collect()
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

async fn upload(w: &mut WorkerServiceClient<Channel>, a: &pb::JobAssignment, name: &str, data: &[u8], declared: &str) -> Result<pb::UploadArtifactResponse, tonic::Status> {
    let lease = pb::JobLease { job_id: a.job_id, attempt: a.attempt };
    let mut chunks = Vec::new();
    for (i, part) in data.chunks(1 << 20).enumerate() {
        chunks.push(if i == 0 {
            pb::ArtifactChunk { lease: Some(lease), name: name.into(), data: part.to_vec(), sha256: declared.into(), total_bytes: data.len() as u64 }
        } else {
            pb::ArtifactChunk { data: part.to_vec(), ..Default::default() }
        });
    }
    w.upload_artifact(tokio_stream::iter(chunks)).await.map(|r| r.into_inner())
}

/// Uploads what a job's children download (`rewind` and `weights` for a dense job, `weights` for
/// a level job), intact.
async fn upload_outputs(w: &mut WorkerServiceClient<Channel>, a: &pb::JobAssignment) {
    let kind = if a.kind == pb::JobKind::Dense as i32 { "dense" } else { "level" };
    for name in lth_coordinator::store::uploads_needed(kind) {
        let data = weights_of(a.job_id, name);
        upload(w, a, name, &data, &sha(&data)).await.unwrap();
    }
}

async fn download(w: &mut WorkerServiceClient<Channel>, job_id: i64, name: &str) -> (Vec<u8>, String) {
    let mut s = w.download_artifact(pb::DownloadArtifactRequest { job_id, name: name.into(), lease: None }).await.unwrap().into_inner();
    let mut data = Vec::new();
    let mut digest = String::new();
    let mut n = 0;
    while let Some(c) = s.message().await.unwrap() {
        if n == 0 {
            digest = c.sha256.clone();
        }
        n += 1;
        data.extend_from_slice(&c.data);
    }
    assert!(n >= 2, "1.5 MiB comes in more than one chunk");
    (data, digest)
}

fn spec_proto() -> pb::SweepSpec {
    let s = spec(&["magnitude", "l1", "l2"], &[0.5], &[0, 1], 3);
    pb::SweepSpec::from(&s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scripted_worker_drives_a_sweep_to_completion_and_views_answer() {
    let db = TestDb::postgres().await;
    let store = db.store().await;
    let art_dir = tempfile::tempdir().unwrap();
    let artifacts = ArtifactStore::open(art_dir.path().to_str().unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let opts = ServiceOptions { watch_poll: Duration::from_millis(50), ..Default::default() };
    let server = tokio::spawn(lth_coordinator::server::serve(store.clone(), artifacts, opts, Duration::from_millis(200), listener, async {
        let _ = stop_rx.await;
    }));

    let url = format!("http://{addr}");
    let channel = loop {
        match Channel::from_shared(url.clone()).unwrap().connect().await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut sweeps = SweepServiceClient::new(channel.clone());
    let mut w = WorkerServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);

    // Health and reflection are served.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let h = health.check(tonic_health::pb::HealthCheckRequest { service: "lth.v1.WorkerService".into() }).await.unwrap().into_inner();
    assert_eq!(h.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    // Dry run, then submit (twice: idempotent).
    let dry = sweeps
        .submit_sweep(pb::SubmitSweepRequest { spec: Some(spec_proto()), client_token: "t".into(), dry_run: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((dry.sweep_id, dry.trials, dry.jobs, dry.dense_jobs), (0, 6, 20, 2));
    let sub = sweeps
        .submit_sweep(pb::SubmitSweepRequest { spec: Some(spec_proto()), client_token: "t".into(), dry_run: false })
        .await
        .unwrap()
        .into_inner();
    assert!(sub.created && sub.sweep_id > 0);
    let again = sweeps
        .submit_sweep(pb::SubmitSweepRequest { spec: Some(spec_proto()), client_token: "t".into(), dry_run: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.sweep_id, again.created), (sub.sweep_id, false));
    let mut bad = spec_proto();
    bad.rates = vec![1.5];
    let err = sweeps.submit_sweep(pb::SubmitSweepRequest { spec: Some(bad), client_token: String::new(), dry_run: false }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("rate 1.5 is outside (0, 1)"), "{}", err.message());

    // Watch from the start, in the background.
    let mut watch = sweeps.clone().watch_sweep(pb::WatchSweepRequest { sweep_id: sub.sweep_id, after_event_id: 0 }).await.unwrap().into_inner();
    let watcher = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(e) = watch.message().await.unwrap() {
            events.push(e);
        }
        events
    });

    let worker_id = "scripted-worker".to_string();
    let reg = w
        .register_worker(pb::RegisterWorkerRequest { worker_id: worker_id.clone(), host: "localhost".into(), cpus: 2, slots: 2, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reg.lease_seconds, reg.heartbeat_seconds), (30, 5));

    let mut done = 0;
    let mut checked_failures = false;
    loop {
        let claimed = w.claim_jobs(pb::ClaimJobsRequest { worker_id: worker_id.clone(), free_slots: 2 }).await.unwrap().into_inner().jobs;
        if claimed.is_empty() {
            break;
        }
        let running: Vec<pb::JobLease> = claimed.iter().map(|a| pb::JobLease { job_id: a.job_id, attempt: a.attempt }).collect();
        let hb = w.heartbeat(pb::HeartbeatRequest { worker_id: worker_id.clone(), running, ..Default::default() }).await.unwrap().into_inner();
        assert!(hb.abort.is_empty());
        for a in &claimed {
            let lease = pb::JobLease { job_id: a.job_id, attempt: a.attempt };
            assert_eq!(a.spec.as_ref().unwrap().name, "test");
            // The submitted spec, its seed list cut to the job's own seed (the whole list made each
            // assignment grow with the grid: ~60 KB a job at 25,000 seeds).
            assert_eq!(a.spec.as_ref().unwrap(), &pb::SweepSpec { seeds: vec![a.seed], ..spec_proto() });
            if a.kind == pb::JobKind::Level as i32 {
                // Inputs: θk from the seed's dense job and the parent's weights, both downloadable and intact.
                let rewind = a.inputs.iter().find(|i| i.name == "rewind").expect("rewind input");
                let weights = a.inputs.iter().find(|i| i.name == "weights").expect("weights input");
                assert_eq!(rewind.job_id, a.dense_job_id);
                assert_eq!(weights.job_id, a.parent_job_id);
                let (data, digest) = download(&mut w, weights.job_id, "weights").await;
                assert_eq!(data, weights_of(a.parent_job_id, "weights"));
                assert_eq!((sha(&data), digest), (weights.sha256.clone(), weights.sha256.clone()));
            } else {
                assert!(a.inputs.is_empty());
                assert_eq!(a.dense_job_id, a.job_id);
            }
            w.report_progress(pb::ReportProgressRequest {
                lease: Some(lease),
                iteration: 30,
                total_iterations: 60,
                epoch: 1.0,
                train_loss: 0.5,
                test_accuracy: f64::NAN,
                images_per_second: 1000.0,
            })
            .await
            .unwrap();

            if !checked_failures {
                checked_failures = true;
                // Completing before uploading is refused; a corrupted upload is refused and discarded.
                let e = w.complete_job(pb::CompleteJobRequest { lease: Some(lease), result: Some(result_for(a)), ..Default::default() }).await.unwrap_err();
                assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
                let data = weights_of(a.job_id, "weights");
                let e = upload(&mut w, a, "weights", &data, &sha(b"something else")).await.unwrap_err();
                assert_eq!(e.code(), tonic::Code::DataLoss, "{e}");
                let stale = pb::JobAssignment { attempt: a.attempt + 1, ..a.clone() };
                let e = upload(&mut w, &stale, "weights", &data, &sha(&data)).await.unwrap_err();
                assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
            }

            let names: &[&str] = if a.kind == pb::JobKind::Dense as i32 { &["rewind", "weights"] } else { &["weights"] };
            for name in names {
                let data = weights_of(a.job_id, name);
                let up = upload(&mut w, a, name, &data, &sha(&data)).await.unwrap();
                assert_eq!(up.artifact.unwrap().sha256, sha(&data));
            }
            w.complete_job(pb::CompleteJobRequest { lease: Some(lease), result: Some(result_for(a)), ..Default::default() }).await.unwrap();
            // A second completion of the same lease is stale.
            let e = w.complete_job(pb::CompleteJobRequest { lease: Some(lease), result: Some(result_for(a)), ..Default::default() }).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::FailedPrecondition);
            done += 1;
        }
    }
    assert_eq!(done, 20);

    let summary = sweeps.get_sweep(pb::GetSweepRequest { sweep_id: sub.sweep_id }).await.unwrap().into_inner();
    assert_eq!(summary.state, pb::SweepState::Succeeded as i32);
    assert_eq!(summary.jobs.unwrap().succeeded, 20);
    assert_eq!(summary.metrics.len(), 3);
    let events = tokio::time::timeout(Duration::from_secs(20), watcher).await.expect("watch ends when the sweep finishes").unwrap();
    let last = events.last().unwrap();
    match &last.event {
        Some(pb::sweep_event::Event::Sweep(s)) => assert_eq!(s.state, pb::SweepState::Succeeded as i32),
        other => panic!("the last event should be the final summary, got {other:?}"),
    }
    let job_events = events.iter().filter(|e| matches!(e.event, Some(pb::sweep_event::Event::Job(_)))).count();
    assert!(job_events >= 60, "claim, progress and success of 20 jobs: {job_events}");
    assert!(events.windows(2).all(|p| p[0].event_id <= p[1].event_id));
    // Resuming a watch after the last event yields only the summary.
    let mut resumed = sweeps.watch_sweep(pb::WatchSweepRequest { sweep_id: sub.sweep_id, after_event_id: last.event_id }).await.unwrap().into_inner();
    let mut n = 0;
    while resumed.message().await.unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 1);

    let results = sweeps.get_results(pb::GetResultsRequest { sweep_id: sub.sweep_id }).await.unwrap().into_inner().rows;
    assert_eq!(results.len(), 6 * 4);
    let r = results.iter().find(|r| r.metric == pb::ImportanceMetric::L2 as i32 && r.seed == 1 && r.level == 2).unwrap();
    let lr = r.result.as_ref().unwrap();
    assert!((lr.test_accuracy - accuracy(1, 2)).abs() < 1e-12);
    assert_eq!(lr.layers.iter().map(|l| (l.layer.as_str(), l.kept, l.total)).collect::<Vec<_>>(), vec![("fc1.weight", 10, 40), ("fc2.weight", 3, 12)]);

    check_views(&store, sub.sweep_id).await;
    let workers = sweeps.list_workers(pb::ListWorkersRequest::default()).await.unwrap().into_inner().workers;
    assert_eq!(workers.len(), 1);
    assert!(workers[0].alive);

    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}

async fn check_views(store: &Store, sweep_id: i64) {
    let Store::Postgres(pg) = store else { unreachable!() };
    let metric_names = [("magnitude", pb::ImportanceMetric::Magnitude as i32), ("l1", pb::ImportanceMetric::L1 as i32), ("l2", pb::ImportanceMetric::L2 as i32)];

    // accuracy_vs_sparsity: per metric and level, the mean and sample std over seeds 0 and 1.
    let rows = sqlx::query("SELECT metric, rate, level, sparsity, mean_accuracy, std_accuracy, seeds FROM accuracy_vs_sparsity WHERE sweep_id = $1 ORDER BY metric, level")
        .bind(sweep_id)
        .fetch_all(pg)
        .await
        .unwrap();
    assert_eq!(rows.len(), 3 * 4);
    for r in &rows {
        let level: i32 = r.get("level");
        let metric: String = r.get("metric");
        let mean: f64 = r.get("mean_accuracy");
        let std: f64 = r.get("std_accuracy");
        assert_eq!(r.get::<i64, _>("seeds"), 2);
        let (a0, a1) = (accuracy(0, level as u32), accuracy(1, level as u32));
        assert!((mean - (a0 + a1) / 2.0).abs() < 1e-12, "{metric} {level}");
        assert!((std - (a0 - a1).abs() / 2f64.sqrt()).abs() < 1e-9, "{metric} {level}: {std}");
        let m = metric_names.iter().find(|(n, _)| *n == metric).unwrap().1;
        let (mut kept, mut total) = (0usize, 0usize);
        for (name, t) in LAYERS {
            total += t;
            kept += if name == "fc2.weight" && collapses(m, level as u32) { 0 } else { kept_at(t, 0.5, level as u32) };
        }
        assert!((r.get::<f64, _>("sparsity") - (1.0 - kept as f64 / total as f64)).abs() < 1e-12);
    }

    // layer_kept_fraction: every (trial, level, layer).
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM layer_kept_fraction WHERE sweep_id = $1").bind(sweep_id).fetch_one(pg).await.unwrap();
    assert_eq!(n, 6 * 4 * 2);
    let f: f64 = sqlx::query_scalar("SELECT kept_fraction FROM layer_kept_fraction WHERE sweep_id = $1 AND metric = 'l1' AND seed = 0 AND level = 2 AND layer = 'fc1.weight'")
        .bind(sweep_id)
        .fetch_one(pg)
        .await
        .unwrap();
    assert!((f - 0.25).abs() < 1e-12);

    // collapsed_layers: magnitude's fc2 at levels 2 and 3, for both seeds; nothing else.
    let rows = sqlx::query("SELECT metric, seed, level, layer, kept FROM collapsed_layers WHERE sweep_id = $1 ORDER BY seed, level")
        .bind(sweep_id)
        .fetch_all(pg)
        .await
        .unwrap();
    let got: Vec<(String, i64, i32, String, i64)> = rows.iter().map(|r| (r.get("metric"), r.get("seed"), r.get("level"), r.get("layer"), r.get("kept"))).collect();
    let want: Vec<(String, i64, i32, String, i64)> = [(0, 2), (0, 3), (1, 2), (1, 3)]
        .iter()
        .map(|&(s, l)| ("magnitude".to_string(), s, l, "fc2.weight".to_string(), 0))
        .collect();
    assert_eq!(got, want);

    // ticket_overlap: for each pair of metrics, the shared kept weights equal the AND of the masks.
    let rows = sqlx::query("SELECT metric_a, metric_b, seed, level, kept_a, kept_b, shared, jaccard FROM ticket_overlap WHERE sweep_id = $1 ORDER BY metric_a, metric_b, seed, level")
        .bind(sweep_id)
        .fetch_all(pg)
        .await
        .unwrap();
    assert_eq!(rows.len(), 3 * 2 * 4, "3 pairs x 2 seeds x 4 levels");
    for r in &rows {
        let (ma, mb): (String, String) = (r.get("metric_a"), r.get("metric_b"));
        let level = r.get::<i32, _>("level") as u32;
        let ia = metric_names.iter().find(|(n, _)| *n == ma).unwrap().1;
        let ib = metric_names.iter().find(|(n, _)| *n == mb).unwrap().1;
        let (mut ka, mut kb, mut shared) = (0i64, 0i64, 0i64);
        for (name, total) in LAYERS {
            let keep = |m: i32| {
                if level == 0 {
                    total // level 0 is the shared dense job: every weight kept
                } else if name == "fc2.weight" && collapses(m, level) {
                    0
                } else {
                    kept_at(total, 0.5, level)
                }
            };
            let salt_of = |m: i32| if level == 0 { 0 } else { salt(m) };
            let a = mask(total, keep(ia), salt_of(ia));
            let b = mask(total, keep(ib), salt_of(ib));
            ka += a.iter().filter(|x| **x).count() as i64;
            kb += b.iter().filter(|x| **x).count() as i64;
            shared += a.iter().zip(&b).filter(|(x, y)| **x && **y).count() as i64;
        }
        assert_eq!((r.get::<i64, _>("kept_a"), r.get::<i64, _>("kept_b"), r.get::<i64, _>("shared")), (ka, kb, shared), "{ma} vs {mb} at level {level}");
        let j: f64 = r.get("jaccard");
        assert!((j - shared as f64 / (ka + kb - shared) as f64).abs() < 1e-12);
    }
    // The partial overlap is real: magnitude vs l1 at level 1 shares fewer weights than either keeps.
    let (ka, shared): (i64, i64) = sqlx::query_as("SELECT kept_a, shared FROM ticket_overlap WHERE sweep_id = $1 AND metric_a = 'l1' AND metric_b = 'magnitude' AND seed = 0 AND level = 1")
        .bind(sweep_id)
        .fetch_one(pg)
        .await
        .unwrap();
    assert!(shared > 0 && shared < ka, "{shared} of {ka}");
}

/// A coordinator on 127.0.0.1:0 over SQLite with `opts`; returns the clients and what stops it.
async fn serve(opts: ServiceOptions) -> (SweepServiceClient<Channel>, WorkerServiceClient<Channel>, Store, impl FnOnce() -> tokio::task::JoinHandle<()>, Vec<tempfile::TempDir>) {
    serve_on(TestDb::sqlite().await, opts).await
}

/// [`serve`] on the given database.
async fn serve_on(
    db: TestDb,
    opts: ServiceOptions,
) -> (SweepServiceClient<Channel>, WorkerServiceClient<Channel>, Store, impl FnOnce() -> tokio::task::JoinHandle<()>, Vec<tempfile::TempDir>) {
    let store = db.store().await;
    let art_dir = tempfile::tempdir().unwrap();
    let artifacts = ArtifactStore::open(art_dir.path().to_str().unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(lth_coordinator::server::serve(store.clone(), artifacts, opts, Duration::from_millis(200), listener, async {
        let _ = stop_rx.await;
    }));
    let channel = loop {
        match Channel::from_shared(format!("http://{addr}")).unwrap().connect().await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let stop = move || {
        let _ = stop_tx.send(());
        tokio::spawn(async move {
            server.await.unwrap().unwrap();
            drop(db);
        })
    };
    (SweepServiceClient::new(channel.clone()), WorkerServiceClient::new(channel), store, stop, vec![art_dir])
}

/// Submits `spec_proto()`, registers worker "w" and claims its first job.
async fn first_claim(sweeps: &mut SweepServiceClient<Channel>, w: &mut WorkerServiceClient<Channel>) -> pb::JobAssignment {
    sweeps.submit_sweep(pb::SubmitSweepRequest { spec: Some(spec_proto()), ..Default::default() }).await.unwrap();
    w.register_worker(pb::RegisterWorkerRequest { worker_id: "w".into(), slots: 1, ..Default::default() }).await.unwrap();
    w.claim_jobs(pb::ClaimJobsRequest { worker_id: "w".into(), free_slots: 1 }).await.unwrap().into_inner().jobs.remove(0)
}

/// The files in the object store folder (under `root`) of one attempt of a job, sorted.
fn objects_of(root: &std::path::Path, job_id: i64, attempt: u32) -> Vec<String> {
    let dir = root.join(format!("jobs/{job_id}/attempt-{attempt}"));
    let mut v: Vec<String> = std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    v.sort();
    v
}

fn reason(s: &tonic::Status) -> Option<pb::ErrorReason> {
    lth_proto::errors::error_reason(s)
}

/// Issue 9, failure 5 over the wire: a result that is not numbers is refused with
/// INVALID_ARGUMENT / INVALID_RESULT (the worker then fails the job without retrying it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_that_is_not_numbers_is_refused_with_invalid_result() {
    let (mut sweeps, mut w, _store, stop, _dirs) = serve(ServiceOptions::default()).await;
    let a = first_claim(&mut sweeps, &mut w).await;
    let mut r = result_for(&a);
    r.train_loss = f64::NAN;
    let e = w.complete_job(pb::CompleteJobRequest { lease: Some(pb::JobLease { job_id: a.job_id, attempt: a.attempt }), result: Some(r), ..Default::default() }).await.unwrap_err();
    assert_eq!((e.code(), reason(&e)), (tonic::Code::InvalidArgument, Some(pb::ErrorReason::InvalidResult)), "{}", e.message());
    assert!(e.message().contains("diverged = true"), "{}", e.message());
    stop().await.unwrap();
}

/// The checkpoints of one attempt over the wire. Each upload is its own object and replaces the
/// one before, which is deleted, so the store holds one checkpoint file per job; an upload refused
/// at its record because its attempt ended while it was in flight (the job process died, and the
/// daemon failed the attempt) deletes only its own object, and the retry downloads the checkpoint
/// recorded before, intact. With one object key per attempt and name, that refused upload deleted
/// the recorded checkpoint and the retry started over (chaos `kill9_of_a_job_process`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_checkpoint_upload_leaves_the_recorded_one_for_the_retry() {
    let (mut sweeps, mut w, _store, stop, dirs) = serve(ServiceOptions::default()).await;
    let a = first_claim(&mut sweeps, &mut w).await;
    let ckpt = |n: u32| weights_of(a.job_id, &format!("checkpoint {n}"));
    let files = |attempt: u32| objects_of(dirs[0].path(), a.job_id, attempt);
    for n in 1..=3 {
        let r = upload(&mut w, &a, "checkpoint", &ckpt(n), &sha(&ckpt(n))).await.unwrap();
        assert_eq!(r.artifact.unwrap().sha256, sha(&ckpt(n)));
        assert_eq!(files(a.attempt).len(), 1, "after checkpoint {n}, only the newest is kept: {:?}", files(a.attempt));
    }

    // Checkpoint 4 is in flight (its first chunk passed the lease check and is being stored: a
    // staging file beside the recorded one) when the attempt fails; the rest arrives after.
    let lease = pb::JobLease { job_id: a.job_id, attempt: a.attempt };
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ArtifactChunk>(4);
    let mut uploader = w.clone();
    let in_flight = tokio::spawn(async move { uploader.upload_artifact(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    let four = ckpt(4);
    let mut parts = four.chunks(1 << 20);
    let head = parts.next().unwrap().to_vec();
    tx.send(pb::ArtifactChunk { lease: Some(lease), name: "checkpoint".into(), data: head, sha256: sha(&four), total_bytes: four.len() as u64 }).await.unwrap();
    let t0 = std::time::Instant::now();
    while files(a.attempt).len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(10), "the upload never started storing: {:?}", files(a.attempt));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    w.fail_job(pb::FailJobRequest { lease: Some(lease), error: "the job process ended with SIGKILL".into(), retryable: true, node_local: false }).await.unwrap();
    for part in parts {
        tx.send(pb::ArtifactChunk { data: part.to_vec(), ..Default::default() }).await.unwrap();
    }
    drop(tx);
    let e = in_flight.await.unwrap().unwrap_err();
    assert_eq!((e.code(), reason(&e)), (tonic::Code::FailedPrecondition, Some(pb::ErrorReason::StaleLease)), "{}", e.message());
    assert_eq!(files(a.attempt).len(), 1, "the refused upload removed only its own object: {:?}", files(a.attempt));
    // One starting after the attempt ended is refused before it stores anything.
    let e = upload(&mut w, &a, "checkpoint", &ckpt(4), &sha(&ckpt(4))).await.unwrap_err();
    assert_eq!(reason(&e), Some(pb::ErrorReason::StaleLease), "{}", e.message());

    let retry = w.claim_jobs(pb::ClaimJobsRequest { worker_id: "w".into(), free_slots: 4 }).await.unwrap().into_inner().jobs;
    let retry = retry.into_iter().find(|j| j.job_id == a.job_id).expect("the failed job is claimable again");
    assert_eq!(retry.attempt, a.attempt + 1);
    let from = retry.resume_checkpoint.as_ref().expect("the retry resumes from a checkpoint");
    assert_eq!(from.sha256, sha(&ckpt(3)), "the last checkpoint recorded before the attempt failed");
    let (data, digest) = download(&mut w, a.job_id, "checkpoint").await;
    assert_eq!((data == ckpt(3), digest), (true, sha(&ckpt(3))), "the checkpoint downloads intact");

    // The retry's first checkpoint replaces (and deletes) the one it resumed from.
    upload(&mut w, &retry, "checkpoint", &ckpt(5), &sha(&ckpt(5))).await.unwrap();
    assert_eq!((files(a.attempt).len(), files(retry.attempt).len()), (0, 1), "{:?} {:?}", files(a.attempt), files(retry.attempt));
    stop().await.unwrap();
}

/// An upload under a lease that ended without its worker's word (here its sweep was cancelled; a
/// reaped lease is the same) is refused, STALE_LEASE, and leaves neither a record nor an object.
/// The coordinator still holds the lease's kind from the claim (`rpc/leased.rs`) and looks
/// nothing up, so it is the record statement that refuses it, after the bytes were stored, and
/// the stored object is then deleted. On both backends: each has its own record statement.
async fn an_upload_under_a_lease_ended_elsewhere_is_refused_and_leaves_nothing(db: TestDb) {
    let (mut sweeps, mut w, store, stop, dirs) = serve_on(db, ServiceOptions::default()).await;
    let a = first_claim(&mut sweeps, &mut w).await;
    assert_eq!(a.kind, pb::JobKind::Dense as i32);
    let data = weights_of(a.job_id, "weights");
    sweeps.cancel_sweep(pb::SweepRef { sweep_id: a.sweep_id }).await.unwrap();
    let e = upload(&mut w, &a, "weights", &data, &sha(&data)).await.unwrap_err();
    assert_eq!((e.code(), reason(&e)), (tonic::Code::FailedPrecondition, Some(pb::ErrorReason::StaleLease)), "{}", e.message());
    assert_eq!(objects_of(dirs[0].path(), a.job_id, a.attempt), Vec::<String>::new(), "the refused upload's object was deleted");
    let recorded = store.find_artifact(a.job_id, "weights").await;
    assert!(matches!(recorded, Err(lth_coordinator::store::StoreError::NotFound(_))), "nothing was recorded: {recorded:?}");
    // A lease that never was (an attempt this coordinator did not hand out) is refused before a
    // byte is stored, by the lookup.
    let made_up = pb::JobAssignment { attempt: a.attempt + 5, ..a.clone() };
    let e = upload(&mut w, &made_up, "weights", &data, &sha(&data)).await.unwrap_err();
    assert_eq!(reason(&e), Some(pb::ErrorReason::StaleLease), "{}", e.message());
    stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_under_a_lease_ended_elsewhere_is_refused_and_leaves_nothing_on_postgres() {
    an_upload_under_a_lease_ended_elsewhere_is_refused_and_leaves_nothing(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_under_a_lease_ended_elsewhere_is_refused_and_leaves_nothing_on_sqlite() {
    an_upload_under_a_lease_ended_elsewhere_is_refused_and_leaves_nothing(TestDb::sqlite().await).await;
}

/// CompleteJob with `claim_next` hands the worker its next job in the same call: leased to it as
/// a ClaimJobs would lease it (its heartbeat keeps it, no other claim gets it, a level job comes
/// with its inputs), and a whole sweep runs on such completions alone. The claim is checked
/// before the completion is applied (a bad worker id refuses the call and leaves the lease for
/// the retry); a claim that fails after it (an unknown worker) leaves the completion acknowledged,
/// with no jobs.
async fn a_completion_can_bring_the_workers_next_job(db: TestDb) {
    let (mut sweeps, mut w, _store, stop, _dirs) = serve_on(db, ServiceOptions::default()).await;
    let first = first_claim(&mut sweeps, &mut w).await;
    let sweep_id = first.sweep_id;
    let c = sweeps.get_sweep(pb::GetSweepRequest { sweep_id }).await.unwrap().into_inner().jobs.unwrap();
    let total = c.blocked + c.ready + c.running + c.succeeded + c.failed + c.cancelled;
    let lease = |a: &pb::JobAssignment| pb::JobLease { job_id: a.job_id, attempt: a.attempt };
    let complete = |a: &pb::JobAssignment, worker: &str, claim_next: u32| pb::CompleteJobRequest {
        lease: Some(lease(a)),
        result: Some(result_for(a)),
        claim_next,
        worker_id: worker.into(),
    };
    let mut current = Some(first);
    let (mut done, mut brought, mut checked) = (0, 0, false);
    while let Some(a) = current.take() {
        upload_outputs(&mut w, &a).await;
        if !checked {
            checked = true;
            // A worker id that could never claim: refused before the completion is applied.
            let e = w.complete_job(complete(&a, "bad\nid", 1)).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        }
        let mut next = w.complete_job(complete(&a, "w", 1)).await.expect("the lease was left for this completion").into_inner().jobs;
        done += 1;
        let e = w.complete_job(complete(&a, "w", 0)).await.unwrap_err();
        assert_eq!(reason(&e), Some(pb::ErrorReason::StaleLease), "the completion was applied once: {}", e.message());
        current = match next.pop() {
            Some(b) => {
                brought += 1;
                assert!(next.is_empty(), "one slot asked for, one job brought");
                assert_ne!(b.job_id, a.job_id);
                assert_eq!(b.spec.as_ref().unwrap().name, "test");
                if b.kind == pb::JobKind::Level as i32 {
                    let inputs: Vec<&str> = b.inputs.iter().map(|i| i.name.as_str()).collect();
                    assert_eq!(inputs, ["rewind", "weights"], "a level job comes with its inputs");
                }
                // Leased to "w": its heartbeat keeps it, and no other worker's claim gets it.
                let hb = w.heartbeat(pb::HeartbeatRequest { worker_id: "w".into(), running: vec![lease(&b)], ..Default::default() }).await.unwrap().into_inner();
                assert!(hb.abort.is_empty(), "{:?}", hb.abort);
                Some(b)
            }
            None => w.claim_jobs(pb::ClaimJobsRequest { worker_id: "w".into(), free_slots: 1 }).await.unwrap().into_inner().jobs.pop(),
        };
        if let Some(b) = &current {
            w.register_worker(pb::RegisterWorkerRequest { worker_id: "other".into(), slots: 8, ..Default::default() }).await.unwrap();
            let others = w.claim_jobs(pb::ClaimJobsRequest { worker_id: "other".into(), free_slots: 8 }).await.unwrap().into_inner().jobs;
            assert!(others.iter().all(|o| o.job_id != b.job_id), "job {} was handed out twice", b.job_id);
            for o in others {
                w.release_job(pb::ReleaseJobRequest { lease: Some(lease(&o)), reason: "test".into() }).await.unwrap();
            }
        }
    }
    assert_eq!(done, total, "every job ran");
    assert!(brought >= total - 3, "nearly every job came with a completion: {brought} of {total}");

    // A claim that fails after the completion (nobody registered "ghost") leaves the completion
    // acknowledged and the reply empty.
    // Another seed: nothing of it can be reused from the first sweep.
    let again = pb::SweepSpec::from(&spec(&["l1"], &[0.5], &[7], 1));
    let sub = sweeps.submit_sweep(pb::SubmitSweepRequest { spec: Some(again), ..Default::default() }).await.unwrap().into_inner();
    let a = w.claim_jobs(pb::ClaimJobsRequest { worker_id: "w".into(), free_slots: 1 }).await.unwrap().into_inner().jobs.remove(0);
    assert_eq!(a.sweep_id, sub.sweep_id);
    upload_outputs(&mut w, &a).await;
    let reply = w.complete_job(complete(&a, "ghost", 1)).await.expect("the completion stands").into_inner();
    assert!(reply.jobs.is_empty(), "{:?}", reply.jobs.iter().map(|j| j.job_id).collect::<Vec<_>>());
    let e = w.complete_job(complete(&a, "w", 0)).await.unwrap_err();
    assert_eq!(reason(&e), Some(pb::ErrorReason::StaleLease), "{}", e.message());
    let summary = sweeps.get_sweep(pb::GetSweepRequest { sweep_id }).await.unwrap().into_inner();
    assert_eq!(summary.state, pb::SweepState::Succeeded as i32);
    stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_can_bring_the_workers_next_job_on_postgres() {
    a_completion_can_bring_the_workers_next_job(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_can_bring_the_workers_next_job_on_sqlite() {
    a_completion_can_bring_the_workers_next_job(TestDb::sqlite().await).await;
}

/// An upload whose client goes away once its last chunk is sent (a daemon stops its uploads when
/// the job process dies) still ends as a whole: recorded, and the checkpoint it replaced deleted.
/// The record is held back by a write lock on the database until the client has gone; run in the
/// cancelled handler, the cleanup never ran and the replaced checkpoint stayed behind, named by
/// no row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_client_leaves_before_the_answer_is_recorded_and_cleaned_up() {
    let (mut sweeps, mut w, store, stop, dirs) = serve(ServiceOptions::default()).await;
    let a = first_claim(&mut sweeps, &mut w).await;
    let ckpt = |n: u32| weights_of(a.job_id, &format!("checkpoint {n}"));
    // Finished objects only: the object store stages an upload in a `#`-suffixed file beside them.
    let stored = || -> Vec<String> { objects_of(dirs[0].path(), a.job_id, a.attempt).into_iter().filter(|n| !n.contains('#')).collect() };
    upload(&mut w, &a, "checkpoint", &ckpt(1), &sha(&ckpt(1))).await.unwrap();
    assert_eq!(stored().len(), 1);

    let Store::Sqlite(pool) = &store else { unreachable!("serve() runs on SQLite") };
    let mut lock = pool.acquire().await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *lock).await.unwrap();
    let (mut leaving, a2, two) = (w.clone(), a.clone(), ckpt(2));
    let client = tokio::spawn(async move { upload(&mut leaving, &a2, "checkpoint", &two, &sha(&two)).await });
    let t0 = std::time::Instant::now();
    while stored().len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(10), "checkpoint 2 was never stored: {:?}", stored());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Stored, its record waiting for the lock: the client goes.
    client.abort();
    let _ = client.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sqlx::query("COMMIT").execute(&mut *lock).await.unwrap();
    drop(lock);

    let t0 = std::time::Instant::now();
    loop {
        let row: Option<String> = sqlx::query_scalar("SELECT sha256 FROM artifacts WHERE job_id = $1 AND name = 'checkpoint'")
            .bind(a.job_id)
            .fetch_optional(pool)
            .await
            .unwrap();
        if row.as_deref() == Some(sha(&ckpt(2)).as_str()) && stored().len() == 1 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "recorded {row:?} (checkpoint 2 is {}), objects {:?}", sha(&ckpt(2)), stored());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (data, _) = download(&mut w, a.job_id, "checkpoint").await;
    assert!(data == ckpt(2), "the recorded checkpoint is the one the departed client sent");
    stop().await.unwrap();
}

/// Issue 9, failure 6: the grid-size cap, worker ids, artifact size and names, and pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_and_listings_come_in_pages() {
    let opts = ServiceOptions { max_jobs_per_sweep: 20, max_artifact_bytes: 1 << 20, ..Default::default() };
    let (mut sweeps, mut w, _store, stop, _dirs) = serve(opts).await;

    // Grid size: spec_proto is 20 jobs; one more seed makes 30.
    let sub = sweeps.submit_sweep(pb::SubmitSweepRequest { spec: Some(spec_proto()), ..Default::default() }).await.unwrap().into_inner();
    let mut big = spec_proto();
    big.seeds.push(2);
    for dry_run in [true, false] {
        let e = sweeps.submit_sweep(pb::SubmitSweepRequest { spec: Some(big.clone()), dry_run, ..Default::default() }).await.unwrap_err();
        assert_eq!((e.code(), reason(&e)), (tonic::Code::InvalidArgument, Some(pb::ErrorReason::LimitExceeded)));
        assert!(e.message().contains("30 jobs") && e.message().contains("--max-jobs-per-sweep"), "{}", e.message());
    }

    // Worker ids.
    for bad in ["x".repeat(129), "a\nb".to_string(), String::new()] {
        let e = w.register_worker(pb::RegisterWorkerRequest { worker_id: bad.clone(), slots: 1, ..Default::default() }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
    }
    for id in ["w-a", "w-b", "w-c"] {
        w.register_worker(pb::RegisterWorkerRequest { worker_id: id.into(), slots: 1, ..Default::default() }).await.unwrap();
    }
    // Daemon-process ids: at most 64 printable characters; a newer process supersedes an older one.
    for bad in ["x".repeat(65), "a b".to_string(), "a\tb".to_string()] {
        let e = w.register_worker(pb::RegisterWorkerRequest { worker_id: "w-a".into(), instance: bad.clone(), slots: 1, ..Default::default() }).await.unwrap_err();
        assert_eq!((e.code(), reason(&e)), (tonic::Code::InvalidArgument, Some(pb::ErrorReason::InvalidArgument)), "{bad:?}");
    }
    for instance in ["p1", "p2"] {
        w.register_worker(pb::RegisterWorkerRequest { worker_id: "w-a".into(), instance: instance.into(), slots: 1, ..Default::default() }).await.unwrap();
    }
    let e = w.heartbeat(pb::HeartbeatRequest { worker_id: "w-a".into(), instance: "p1".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!((e.code(), reason(&e)), (tonic::Code::FailedPrecondition, Some(pb::ErrorReason::WorkerSuperseded)), "{}", e.message());
    w.heartbeat(pb::HeartbeatRequest { worker_id: "w-a".into(), instance: "p2".into(), ..Default::default() }).await.unwrap();

    // Artifacts: at most 1 MiB, and only the names a dense job uploads.
    let a = w.claim_jobs(pb::ClaimJobsRequest { worker_id: "w-a".into(), free_slots: 1 }).await.unwrap().into_inner().jobs.remove(0);
    assert_eq!(a.kind(), pb::JobKind::Dense);
    let big_file = weights_of(a.job_id, "weights"); // 1.5 MiB
    let e = upload(&mut w, &a, "weights", &big_file, &sha(&big_file)).await.unwrap_err();
    assert_eq!(reason(&e), Some(pb::ErrorReason::LimitExceeded), "{}", e.message());
    // Without a declared size the stream is cut at the limit.
    let lease = pb::JobLease { job_id: a.job_id, attempt: a.attempt };
    let chunks: Vec<pb::ArtifactChunk> = big_file
        .chunks(256 << 10)
        .enumerate()
        .map(|(i, part)| if i == 0 {
            pb::ArtifactChunk { lease: Some(lease), name: "weights".into(), data: part.to_vec(), sha256: sha(&big_file), total_bytes: 0 }
        } else {
            pb::ArtifactChunk { data: part.to_vec(), ..Default::default() }
        })
        .collect();
    let e = w.upload_artifact(tokio_stream::iter(chunks)).await.unwrap_err();
    assert_eq!(reason(&e), Some(pb::ErrorReason::LimitExceeded), "{}", e.message());
    let small = b"theta".to_vec();
    let e = upload(&mut w, &a, "notes", &small, &sha(&small)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("uploads only"), "{}", e.message());
    upload(&mut w, &a, "rewind", &small, &sha(&small)).await.unwrap();

    // Pages: 20 jobs in pages of 7, workers in pages of 2, in id order, each once.
    let mut ids = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = sweeps.list_jobs(pb::ListJobsRequest { sweep_id: sub.sweep_id, page_size: 7, page_token: token.clone(), ..Default::default() }).await.unwrap().into_inner();
        assert!(r.jobs.len() <= 7);
        ids.extend(r.jobs.iter().map(|j| j.job_id));
        pages += 1;
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!((ids.len(), pages), (20, 3));
    assert!(ids.windows(2).all(|p| p[0] < p[1]));
    let first = sweeps.list_workers(pb::ListWorkersRequest { page_size: 2, ..Default::default() }).await.unwrap().into_inner();
    let second = sweeps.list_workers(pb::ListWorkersRequest { page_size: 2, page_token: first.next_page_token.clone(), ..Default::default() }).await.unwrap().into_inner();
    let names: Vec<String> = first.workers.iter().chain(&second.workers).map(|w| w.worker_id.clone()).collect();
    assert_eq!(names, ["w-a", "w-b", "w-c"]);
    assert!(second.next_page_token.is_empty());
    let e = sweeps.list_jobs(pb::ListJobsRequest { sweep_id: sub.sweep_id, page_token: "garbage".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    stop().await.unwrap();
}

/// Issue 9, failure 9: a worker that missed its heartbeats (three intervals) is lost: ListWorkers
/// leaves it out unless `all`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_workers_are_listed_only_with_all() {
    let opts = ServiceOptions { heartbeat: Duration::from_millis(100), ..Default::default() };
    let (mut sweeps, mut w, _store, stop, _dirs) = serve(opts).await;
    for id in ["gone", "here"] {
        w.register_worker(pb::RegisterWorkerRequest { worker_id: id.into(), slots: 1, ..Default::default() }).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    w.heartbeat(pb::HeartbeatRequest { worker_id: "here".into(), running: vec![], ..Default::default() }).await.unwrap();
    let alive = sweeps.list_workers(pb::ListWorkersRequest::default()).await.unwrap().into_inner().workers;
    assert_eq!(alive.iter().map(|w| w.worker_id.as_str()).collect::<Vec<_>>(), ["here"]);
    let all = sweeps.list_workers(pb::ListWorkersRequest { all: true, ..Default::default() }).await.unwrap().into_inner().workers;
    assert_eq!(all.iter().map(|w| (w.worker_id.as_str(), w.alive)).collect::<Vec<_>>(), [("gone", false), ("here", true)]);
    stop().await.unwrap();
}
