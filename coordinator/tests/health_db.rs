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
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn pg_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LTH_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (or set LTH_PG_BIN)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    // The newest major version.
    dirs.sort_by_key(|p| p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0));
    dirs.pop().expect("no initdb under /usr/lib/postgresql/*/bin")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// A PostgreSQL cluster in a temporary directory; stopped (immediately) on drop.
struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Cluster {
    fn pg(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if is_root() {
            // PostgreSQL refuses to run as root.
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn init() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            let out = Command::new("chown").arg("postgres:").arg(dir.path()).status().unwrap();
            assert!(out.success(), "chown the cluster directory to postgres");
        }
        let c = Cluster { dir, bin: pg_bin(), port: free_port() };
        // The superuser is named root, as on the machine's own test cluster, with trust auth.
        let out = c.pg("initdb").arg("-D").arg(c.data()).args(["-A", "trust", "-U", "root", "--no-sync"]).output().unwrap();
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        c
    }

    fn start(&self) {
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.path().display());
        let out = self.pg("pg_ctl").arg("-D").arg(self.data()).args(["-o", &opts, "-w", "-t", "60", "-l"]).arg(self.dir.path().join("pg.log")).arg("start").output().unwrap();
        assert!(out.status.success(), "pg_ctl start failed: {}\n{}", String::from_utf8_lossy(&out.stderr), self.log());
    }

    fn stop(&self) {
        let out = self.pg("pg_ctl").arg("-D").arg(self.data()).args(["-m", "fast", "-w", "stop"]).output().unwrap();
        assert!(out.status.success(), "pg_ctl stop failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pg.log")).unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("postgres://root@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg("pg_ctl").arg("-D").arg(self.data()).args(["-m", "immediate", "stop"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

struct Coordinator {
    child: Child,
    grpc: String,
    http: std::net::SocketAddr,
    log: PathBuf,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("===== coordinator log =====\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

fn start_coordinator(db: &str, dir: &Path) -> Coordinator {
    let port = free_port();
    let log = dir.join("coordinator.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lth-coordinator"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--http-listen", "127.0.0.1:0", "--db", db])
        .arg("--artifacts")
        .arg(dir.join("artifacts"))
        .args(["--reap-interval-seconds", "1"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("start lth-coordinator");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep reading stdout to its end, so the coordinator never writes into a closed pipe.
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut http = None;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        if let Some(a) = line.strip_prefix("lth-coordinator http on ") {
            http = Some(a.trim().parse().unwrap());
        }
        if line.contains("listening on") {
            break;
        }
    }
    let http = http.unwrap_or_else(|| panic!("no `http on` line; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default()));
    Coordinator { child, grpc: format!("http://127.0.0.1:{port}"), http, log }
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
    let t0 = Instant::now();
    let (want_exit, want_word, want_http) = if serving { (0, "SERVING", 200) } else { (1, "NOT_SERVING", 503) };
    loop {
        let (code, word) = healthcheck(&c.grpc);
        let http = healthz(c.http);
        if code == want_exit && word == want_word && http == want_http {
            return;
        }
        assert!(t0.elapsed() < within, "health not {want_word} after {within:?}: healthcheck exit {code} {word:?}, /healthz {http}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_database_down_and_back_up() {
    let cluster = Cluster::init();
    cluster.start();
    let work = tempfile::tempdir().unwrap();
    let c = start_coordinator(&cluster.url(), work.path());

    tokio::task::block_in_place(|| wait_health(&c, true, Duration::from_secs(20)));
    cluster.stop();
    // The probe runs every 2 s with a timeout of twice that.
    tokio::task::block_in_place(|| wait_health(&c, false, Duration::from_secs(20)));
    // Still down a little later (not a flap), and the process is alive.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(healthcheck(&c.grpc).0, 1);
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
    let mut sweeps = pb::sweep_service_client::SweepServiceClient::connect(c.grpc.clone()).await.unwrap();
    let sub = sweeps
        .submit_sweep(pb::SubmitSweepRequest { spec: Some((&spec).into()), client_token: String::new(), dry_run: false })
        .await
        .expect("submit after the database came back")
        .into_inner();
    assert!(sub.created && sub.jobs == 2, "{sub:?}");
    let mut w = pb::worker_service_client::WorkerServiceClient::connect(c.grpc.clone()).await.unwrap();
    w.register_worker(pb::RegisterWorkerRequest { worker_id: "w".into(), host: "h".into(), cpus: 1, slots: 1, ..Default::default() }).await.unwrap();
    let jobs = w.claim_jobs(pb::ClaimJobsRequest { worker_id: "w".into(), free_slots: 1 }).await.unwrap().into_inner().jobs;
    assert_eq!(jobs.len(), 1, "the dense job is claimable");
    assert_eq!(jobs[0].sweep_id, sub.sweep_id);
    let s = sweeps.get_sweep(pb::GetSweepRequest { sweep_id: sub.sweep_id }).await.unwrap().into_inner();
    assert_eq!(s.jobs.unwrap().running, 1);
    drop(c);
    drop(cluster);
}
