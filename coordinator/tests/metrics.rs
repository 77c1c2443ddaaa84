//! `GET /metrics` on the coordinator's HTTP port, over real sockets: a coordinator served with
//! `serve_with` on 127.0.0.1:0 (gRPC and HTTP) over a fresh Postgres database, with tokens; a
//! scripted worker (tonic client, worker token) drives a small sweep through ClaimJobs, uploads,
//! downloads, one retryable FailJob and CompleteJob; /metrics is scraped during and after.
//!
//! The recorder is process-wide, so this file holds one test (nextest runs each test in its own
//! process; under `cargo test` the counts would still be this test's alone).

mod common;

use common::*;
use lth_coordinator::artifacts::ArtifactStore;
use lth_coordinator::auth::{auth_line, new_token, AuthPolicy, Role, Tokens};
use lth_coordinator::server::Security;
use lth_coordinator::rpc::ServiceOptions;
use lth_proto::client::ClientOptions;
use lth_proto::v1 as pb;
use pb::sweep_service_client::SweepServiceClient;
use pb::worker_service_client::WorkerServiceClient;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

/// A plain HTTP/1.1 GET (no client library): (status code, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, body.to_string())
}

/// One sample of the text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        for kv in labels.split("\",").filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap();
            map.insert(k.to_string(), v.trim_matches('"').to_string());
        }
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        out.push(Sample { name: name.to_string(), labels: map, value });
    }
    out
}

/// The sum of the samples named `name` whose labels include `labels`; None when there is none.
fn get(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let hits: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .collect();
    (!hits.is_empty()).then(|| hits.iter().sum())
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

type Workers = WorkerServiceClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, lth_proto::client::TokenInterceptor>>;

async fn upload(w: &mut Workers, a: &pb::JobAssignment, name: &str, data: &[u8]) -> pb::ArtifactRef {
    let chunk = pb::ArtifactChunk {
        lease: Some(pb::JobLease { job_id: a.job_id, attempt: a.attempt }),
        name: name.into(),
        data: data.to_vec(),
        sha256: sha(data),
        total_bytes: data.len() as u64,
    };
    w.upload_artifact(tokio_stream::iter(vec![chunk])).await.unwrap().into_inner().artifact.unwrap()
}

fn result_for(a: &pb::JobAssignment) -> pb::LevelResult {
    let total = 16usize;
    let kept = ((total as f64) * (1.0 - a.rate).powi(a.level as i32)).round() as usize;
    let bits: Vec<bool> = (0..total).map(|i| i < kept).collect();
    pb::LevelResult {
        sparsity: 1.0 - kept as f64 / total as f64,
        test_accuracy: 0.9,
        test_loss: 0.3,
        train_loss: 0.2,
        epochs: 2.0,
        wall_seconds: 0.1,
        iterations: 10,
        layers: vec![pb::LayerStats { layer: "fc1.weight".into(), kept: kept as u64, total: total as u64, mask_bits: pack(&bits), ..Default::default() }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_a_sweep_and_need_a_viewer_token() {
    let t: BTreeMap<&str, String> = ["viewer", "worker", "admin"].into_iter().map(|n| (n, new_token())).collect();
    let file = [auth_line(Role::Viewer, "viewer", &t["viewer"]), auth_line(Role::Worker, "pool", &t["worker"]), auth_line(Role::Admin, "admin", &t["admin"])].join("\n");
    let auth = AuthPolicy { tokens: Some(Tokens::parse(&file, "test").unwrap()), require_worker_cert: false };

    let db = TestDb::postgres().await;
    let store = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    let artifacts = ArtifactStore::open(dir.path().to_str().unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http.local_addr().unwrap();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let opts = ServiceOptions { heartbeat: Duration::from_secs(1), ..Default::default() };
    let security = Security { auth, http: Some(http), ..Default::default() };
    let server = tokio::spawn(lth_coordinator::server::serve_with(store, artifacts, opts, Duration::from_millis(200), listener, security, async {
        let _ = stop_rx.await;
    }));
    let url = format!("http://{addr}");
    let connect = |token: &str| {
        let o = ClientOptions { token: Some(token.to_string()), ..Default::default() };
        let url = url.clone();
        async move {
            loop {
                if let Ok(c) = o.endpoint(&url).unwrap().connect().await {
                    break (c, o.interceptor().unwrap());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let (ch, i) = connect(&t["admin"]).await;
    let mut sweeps = SweepServiceClient::with_interceptor(ch, i);
    let (ch, i) = connect(&t["worker"]).await;
    let mut w: Workers = WorkerServiceClient::with_interceptor(ch, i);

    // Who may scrape: viewer (or higher) yes; a worker token, no token and an unknown token no.
    let scrape = |token: Option<String>| tokio::task::spawn_blocking(move || http_get(http_addr, "/metrics", token.as_deref()));
    let (code, body) = scrape(None).await.unwrap();
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("needs a token"), "{body}");
    assert_eq!(scrape(Some("lth_not-a-token".into())).await.unwrap().0, 401);
    let (code, body) = scrape(Some(t["worker"].clone())).await.unwrap();
    assert_eq!(code, 403, "a worker-only token may not read metrics: {body}");
    let (code, body) = scrape(Some(t["viewer"].clone())).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let before = parse(&body);
    assert_eq!(get(&before, "lth_database_up", &[]), Some(1.0));
    assert_eq!(get(&before, "lth_jobs", &[("state", "ready")]), Some(0.0));

    // 2 seeds x 2 levels: 2 dense jobs and 4 level jobs.
    let spec = pb::SweepSpec::from(&spec(&["magnitude"], &[0.5], &[0, 1], 2));
    let sub = sweeps.submit_sweep(pb::SubmitSweepRequest { spec: Some(spec), client_token: "m".into(), dry_run: false }).await.unwrap().into_inner();
    assert_eq!(sub.jobs, 6);
    w.register_worker(pb::RegisterWorkerRequest { worker_id: "w1".into(), host: "h".into(), cpus: 1, slots: 2, ..Default::default() }).await.unwrap();

    let (mut uploaded, mut downloaded, mut claims, mut failed_once, mut completed) = (0u64, 0u64, 0u64, false, 0u64);
    let mut mid_checked = false;
    let mut heartbeats = 0u64;
    loop {
        let jobs = w.claim_jobs(pb::ClaimJobsRequest { worker_id: "w1".into(), free_slots: 2 }).await.unwrap().into_inner().jobs;
        if jobs.is_empty() {
            break;
        }
        claims += jobs.len() as u64;
        if !mid_checked {
            // During the sweep: running jobs, per-sweep series, a live worker.
            mid_checked = true;
            let m = parse(&scrape(Some(t["viewer"].clone())).await.unwrap().1);
            assert_eq!(get(&m, "lth_jobs", &[("state", "running")]), Some(jobs.len() as f64));
            let sid = sub.sweep_id.to_string();
            assert_eq!(get(&m, "lth_sweep_jobs", &[("sweep_id", &sid), ("state", "running")]), Some(jobs.len() as f64));
            assert_eq!(get(&m, "lth_sweep_jobs", &[("sweep_id", &sid)]), Some(6.0), "the sweep's jobs add up");
            assert_eq!(get(&m, "lth_workers_live", &[]), Some(1.0));
            assert_eq!(get(&m, "lth_jobs_claimed_total", &[]), Some(jobs.len() as f64));
        }
        for a in jobs {
            for input in &a.inputs {
                let mut s = w.download_artifact(pb::DownloadArtifactRequest { job_id: input.job_id, name: input.name.clone(), lease: None }).await.unwrap().into_inner();
                while let Some(c) = s.message().await.unwrap() {
                    downloaded += c.data.len() as u64;
                }
            }
            let lease = pb::JobLease { job_id: a.job_id, attempt: a.attempt };
            // A heartbeat for each running job (the daemon sends them every few seconds).
            w.heartbeat(pb::HeartbeatRequest { worker_id: "w1".into(), running: vec![pb::JobLease { job_id: a.job_id, attempt: a.attempt }], ..Default::default() }).await.unwrap();
            heartbeats += 1;
            if !failed_once {
                failed_once = true;
                w.fail_job(pb::FailJobRequest { lease: Some(lease), error: "flaky".into(), retryable: true, node_local: false }).await.unwrap();
                continue;
            }
            let names: &[&str] = if a.kind == pb::JobKind::Dense as i32 { &["rewind", "weights"] } else { &["weights"] };
            for name in names {
                let data = format!("{name} of {}", a.job_id).repeat(1000).into_bytes();
                uploaded += data.len() as u64;
                upload(&mut w, &a, name, &data).await;
            }
            w.complete_job(pb::CompleteJobRequest { lease: Some(lease), result: Some(result_for(&a)), ..Default::default() }).await.unwrap();
            completed += 1;
        }
    }
    assert_eq!(completed, 6);
    assert_eq!(claims, 7, "six jobs and one retry");
    let state = sweeps.get_sweep(pb::GetSweepRequest { sweep_id: sub.sweep_id }).await.unwrap().into_inner().state();
    assert_eq!(state, pb::SweepState::Succeeded);

    let (code, body) = scrape(Some(t["admin"].clone())).await.unwrap();
    assert_eq!(code, 200);
    let m = parse(&body);
    // The counters add up to the jobs that ran.
    assert_eq!(get(&m, "lth_jobs_claimed_total", &[]), Some(claims as f64));
    assert_eq!(get(&m, "lth_jobs_completed_total", &[]), Some(6.0));
    assert_eq!(get(&m, "lth_job_failures_total", &[("retryable", "true")]), Some(1.0));
    assert_eq!(get(&m, "lth_job_failures_total", &[("retryable", "false")]), None);
    assert_eq!(get(&m, "lth_jobs", &[("state", "succeeded")]), Some(6.0));
    assert_eq!(get(&m, "lth_jobs", &[("state", "running")]), Some(0.0));
    assert_eq!(get(&m, "lth_sweep_jobs", &[("sweep_id", &sub.sweep_id.to_string())]), None, "a finished sweep has no per-sweep series");
    assert_eq!(get(&m, "lth_artifact_bytes_total", &[("direction", "in")]), Some(uploaded as f64));
    assert_eq!(get(&m, "lth_artifact_bytes_total", &[("direction", "out")]), Some(downloaded as f64));
    assert!(downloaded > 0 && uploaded > 0);
    // Histograms: one claim observation per ClaimJobs call (the last, empty one included), one
    // completion per CompleteJob, in real buckets that add up to the count.
    let claim_calls = get(&m, "lth_claim_duration_seconds_count", &[("outcome", "ok")]).unwrap();
    assert!(claim_calls >= 5.0, "{claim_calls}");
    assert_eq!(get(&m, "lth_claim_duration_seconds_bucket", &[("outcome", "ok"), ("le", "+Inf")]), Some(claim_calls));
    assert!(get(&m, "lth_claim_duration_seconds_bucket", &[("outcome", "ok"), ("le", "0.0005")]).is_some(), "latency buckets from 0.5 ms");
    assert!(get(&m, "lth_claim_duration_seconds_sum", &[("outcome", "ok")]).unwrap() > 0.0);
    assert_eq!(get(&m, "lth_complete_duration_seconds_count", &[("outcome", "ok")]), Some(6.0));
    let batches = get(&m, "lth_group_commit_batch_size_count", &[("kind", "claim")]).unwrap();
    assert!(batches >= 1.0 && batches <= claim_calls);
    assert_eq!(get(&m, "lth_group_commit_batch_size_sum", &[("kind", "complete")]), Some(6.0), "six completions went through batches");
    assert!(get(&m, "lth_group_commit_batch_size_bucket", &[("kind", "claim"), ("le", "64")]).is_some());
    assert!(get(&m, "lth_group_commit_batch_duration_seconds_count", &[("kind", "record")]).unwrap() >= 1.0);
    // Waits for a pooled connection, timed by the store on the hot paths: one per claim and per
    // completion batch statement, one per heartbeat transaction, in buckets from 10 µs.
    assert_eq!(get(&m, "lth_db_pool_wait_seconds_count", &[("op", "claim")]), Some(batches), "one connection wait per claim batch");
    let complete_batches = get(&m, "lth_group_commit_batch_size_count", &[("kind", "complete")]).unwrap();
    assert_eq!(get(&m, "lth_db_pool_wait_seconds_count", &[("op", "complete")]), Some(complete_batches), "one per completion batch");
    assert_eq!(get(&m, "lth_db_pool_wait_seconds_count", &[("op", "heartbeat")]), Some(heartbeats as f64), "one per heartbeat");
    assert!(get(&m, "lth_db_pool_wait_seconds_count", &[("op", "record")]).unwrap() >= 1.0, "artifact records wait too");
    for op in ["claim", "complete", "heartbeat"] {
        let count = get(&m, "lth_db_pool_wait_seconds_count", &[("op", op)]).unwrap();
        assert_eq!(get(&m, "lth_db_pool_wait_seconds_bucket", &[("op", op), ("le", "+Inf")]), Some(count), "{op}");
        assert!(get(&m, "lth_db_pool_wait_seconds_bucket", &[("op", op), ("le", "0.00001")]).is_some(), "{op}: pool-wait buckets from 10 µs");
        assert!(get(&m, "lth_db_pool_wait_seconds_sum", &[("op", op)]).unwrap() > 0.0, "{op}: an acquire takes some time");
    }
    assert!(body.contains("# TYPE lth_db_pool_wait_seconds histogram"), "{body}");
    assert_eq!(get(&m, "lth_db_errors_total", &[]), None, "no database errors");
    assert!(get(&m, "lth_db_pool_max_connections", &[]).unwrap() >= 1.0);
    assert!(body.contains("# TYPE lth_claim_duration_seconds histogram"), "{body}");
    assert!(body.contains("# TYPE lth_jobs_claimed_total counter"), "{body}");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
