//! Health that tells the truth when the database goes away: a throwaway PostgreSQL cluster of this
//! test's own (initdb + pg_ctl on a free port, as the `postgres` user when the test runs as root),
//! the real `lth-coordinator` binary on it, and the probes a deployment uses: `lth-coordinator
//! healthcheck` (gRPC health, its exit code) and `GET /healthz` on the HTTP port.
//!
//! SERVING / 200 → cluster stopped → NOT_SERVING (exit 1) / 503 → cluster started again → SERVING
//! / 200, and a sweep submitted afterwards is stored and its jobs can be claimed.
//!
//! Needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin, or LTH_PG_BIN). The machine's own
//! cluster is never touched.

use lth_proto::v1 as pb;
use lth_testkit::{Coordinator, CoordinatorOptions, PgCluster};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The coordinator on `db`, on ports it picks itself (lth-testkit reads them from its output).
fn start_coordinator(db: &str, dir: &Path) -> Coordinator {
    let opts = CoordinatorOptions::new(db, &dir.join("artifacts")).args(["--reap-interval-seconds", "1"]);
    Coordinator::start("coordinator", &dir.join("coordinator.log"), &opts)
}

/// `lth-coordinator healthcheck`: (exit code, stdout).
fn healthcheck(url: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lth-coordinator")).args(["healthcheck", "--coordinator", url]).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn healthz(addr: std::net::SocketAddr) -> u16 {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return 0 };
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = write!(s, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Polls until both probes say `want` (exit 0 / 200 for serving, exit 1 / 503 otherwise).
fn wait_health(c: &Coordinator, serving: bool, within: Duration) {
    let (grpc, http_addr) = (c.url(), c.http.expect("the HTTP port"));
    let t0 = Instant::now();
    let (want_exit, want_word, want_http) = if serving { (0, "SERVING", 200) } else { (1, "NOT_SERVING", 503) };
    loop {
        let (code, word) = healthcheck(&grpc);
        let http = healthz(http_addr);
        if code == want_exit && word == want_word && http == want_http {
            return;
        }
        assert!(t0.elapsed() < within, "health not {want_word} after {within:?}: healthcheck exit {code} {word:?}, /healthz {http}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_database_down_and_back_up() {
    let cluster = PgCluster::start_new();
    let work = tempfile::tempdir().unwrap();
    let c = start_coordinator(&cluster.url(), work.path());

    tokio::task::block_in_place(|| wait_health(&c, true, Duration::from_secs(20)));
    cluster.stop();
    // The probe runs every 2 s with a timeout of twice that.
    tokio::task::block_in_place(|| wait_health(&c, false, Duration::from_secs(20)));
    // Still down a little later (not a flap), and the process is alive.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(healthcheck(&c.url()).0, 1);
    cluster.start();
    tokio::task::block_in_place(|| wait_health(&c, true, Duration::from_secs(30)));

    // The coordinator works again: a sweep is stored and its jobs can be claimed.
    let spec_toml = r#"
name = "after-restart"
model = "lenet300100"
metrics = ["magnitude"]
rates = [0.5]
seeds = [0]
levels = 1
[dataset]
name = "digits"
[recipe]
length = "2ep"
lr = 0.1
"#;
    let spec = lth_sweep::SweepSpec::from_toml_str(spec_toml).unwrap();
    let mut sweeps = pb::sweep_service_client::SweepServiceClient::connect(c.url()).await.unwrap();
    let sub = sweeps
        .submit_sweep(pb::SubmitSweepRequest { spec: Some((&spec).into()), client_token: String::new(), dry_run: false })
        .await
        .expect("submit after the database came back")
        .into_inner();
    assert!(sub.created && sub.jobs == 2, "{sub:?}");
    let mut w = pb::worker_service_client::WorkerServiceClient::connect(c.url()).await.unwrap();
    w.register_worker(pb::RegisterWorkerRequest { worker_id: "w".into(), host: "h".into(), cpus: 1, slots: 1, ..Default::default() }).await.unwrap();
    let jobs = w.claim_jobs(pb::ClaimJobsRequest { worker_id: "w".into(), free_slots: 1 }).await.unwrap().into_inner().jobs;
    assert_eq!(jobs.len(), 1, "the dense job is claimable");
    assert_eq!(jobs[0].sweep_id, sub.sweep_id);
    let s = sweeps.get_sweep(pb::GetSweepRequest { sweep_id: sub.sweep_id }).await.unwrap().into_inner();
    assert_eq!(s.jobs.unwrap().running, 1);
    drop(c);
    drop(cluster);
}
