//! A coordinator, its Postgres database and CPU worker daemons, all in one temporary folder: the
//! distributed path with real processes and real sockets.
//!
//! The coordinator binds port 0; its address is read from its output once and reused by
//! restarts, so every daemon keeps one `--coordinator` URL. When a test fails, each process's
//! drop prints its log, and the folder is kept (its path is printed) for a closer look.

use crate::coordinator::{Coordinator, CoordinatorOptions};
use crate::process::{bin, Proc};
use crate::TestDb;
use lth_proto::v1 as pb;
use lth_proto::v1::sweep_service_client::SweepServiceClient;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Cluster {
    pub db: TestDb,
    pub lease_seconds: u32,
    /// Extra coordinator flags for every (re)start.
    pub coordinator_args: Vec<String>,
    pub coordinator: Option<Coordinator>,
    pub workers: Vec<Proc>,
    /// The gRPC address of the first start, kept for restarts.
    addr: Option<SocketAddr>,
    starts: usize,
    // Declared last: fields drop in order, so the processes are gone (and have printed their logs,
    // when the test failed) before the folder holding the logs is removed.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// A coordinator on a fresh Postgres database with leases of `lease_seconds`.
    pub async fn new(lease_seconds: u32) -> Cluster {
        Self::on(TestDb::create("lth_e2e").await, lease_seconds, &[])
    }

    /// A coordinator on `db` with extra flags, started.
    pub fn on(db: TestDb, lease_seconds: u32, coordinator_args: &[&str]) -> Cluster {
        let mut c = Cluster {
            db,
            lease_seconds,
            coordinator_args: coordinator_args.iter().map(|s| s.to_string()).collect(),
            coordinator: None,
            workers: Vec::new(),
            addr: None,
            starts: 0,
            dir: tempfile::tempdir().unwrap(),
        };
        c.start_coordinator();
        c
    }

    /// The folder's path as text (what every process of this cluster mentions on its command line).
    pub fn dir_text(&self) -> String {
        self.dir.path().to_string_lossy().into_owned()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr.expect("the coordinator has started once"))
    }

    /// Starts the coordinator: on port 0 the first time, on the same address afterwards.
    pub fn start_coordinator(&mut self) {
        let log = self.dir.path().join(format!("coordinator-{}.log", self.starts));
        self.starts += 1;
        let mut opts = CoordinatorOptions::new(&self.db.url, &self.dir.path().join("artifacts")).args([
            "--lease-seconds".to_string(),
            self.lease_seconds.to_string(),
            "--heartbeat-seconds".into(),
            "1".into(),
            "--reap-interval-seconds".into(),
            "1".into(),
        ]);
        opts.args.extend(self.coordinator_args.iter().cloned());
        opts.listen = self.addr;
        let c = Coordinator::start("coordinator", &log, &opts);
        self.addr = Some(c.addr);
        self.coordinator = Some(c);
    }

    /// The HTTP address of the running coordinator.
    pub fn http_addr(&self) -> SocketAddr {
        self.coordinator.as_ref().and_then(|c| c.http).expect("a running coordinator with an HTTP port")
    }

    /// `kill -9` of the coordinator (it is gone when this returns).
    pub fn kill9_coordinator(&mut self) {
        let mut c = self.coordinator.take().expect("a running coordinator");
        c.proc.kill9();
    }

    pub fn start_worker(&mut self, id: &str) {
        self.start_worker_with(id, &[]);
    }

    /// `lth-worker daemon` on CPU, one slot, one thread, polling fast; `extra` flags appended.
    pub fn start_worker_with(&mut self, id: &str, extra: &[&str]) {
        self.start_worker_in(id, None, extra);
    }

    /// [`Cluster::start_worker_with`] in folder `cwd` (its jobs resolve relative dataset paths there).
    pub fn start_worker_in(&mut self, id: &str, cwd: Option<&std::path::Path>, extra: &[&str]) {
        self.start_worker_process(id, id, cwd, extra);
    }

    /// A daemon process named `name` here (its log is `{name}.log`, [`Cluster::worker`] finds it
    /// by that name) that registers as worker `id` with `id`'s cache folder: several processes
    /// may share one worker id, as a restarted daemon, or a second daemon started by mistake.
    pub fn start_worker_process(&mut self, name: &str, id: &str, cwd: Option<&std::path::Path>, extra: &[&str]) {
        let log = self.dir.path().join(format!("{name}.log"));
        let mut cmd = Command::new(bin("lth-worker"));
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        cmd.args(["daemon", "--coordinator", &self.url(), "--worker-id", id, "--gpus", "none"])
            .args(extra)
            .arg("--cache-dir")
            .arg(self.cache_dir(id))
            .args(["--job-threads", "1", "--poll-seconds", "0.2", "--progress-seconds", "0.5", "--kill-grace-seconds", "1"])
            .env("LTH_LOG", "info,lth_worker=debug");
        self.workers.push(Proc::spawn(name, &mut cmd, &log));
    }

    /// The daemon `id`'s cache folder.
    pub fn cache_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join(format!("cache-{id}"))
    }

    pub fn worker(&mut self, id: &str) -> &mut Proc {
        self.workers.iter_mut().find(|w| w.name == id).unwrap_or_else(|| panic!("no worker {id}"))
    }

    /// Writes `text` as `name` in the cluster's folder and returns its path.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub async fn client(&self) -> SweepServiceClient<tonic::transport::Channel> {
        SweepServiceClient::connect(self.url()).await.expect("connect to the coordinator")
    }

    /// Submits a sweep file's text; returns the new sweep's id.
    pub async fn submit(&self, toml_text: &str) -> i64 {
        let reply = self.submit_reply(toml_text).await;
        assert!(reply.created, "a new sweep: {reply:?}");
        reply.sweep_id
    }

    pub async fn submit_reply(&self, toml_text: &str) -> pb::SubmitSweepResponse {
        let spec = lth_sweep::SweepSpec::from_toml_str(toml_text).expect("a valid sweep file");
        self.client()
            .await
            .submit_sweep(pb::SubmitSweepRequest { spec: Some((&spec).into()), client_token: String::new(), dry_run: false })
            .await
            .expect("submit the sweep")
            .into_inner()
    }

    pub async fn sweep_state(&self, sweep_id: i64) -> pb::SweepState {
        let s = self.client().await.get_sweep(pb::GetSweepRequest { sweep_id }).await.unwrap().into_inner();
        pb::SweepState::try_from(s.state).unwrap()
    }

    /// Polls until the sweep is `want` (failing at once if it ends otherwise, or after `within`).
    /// An unreachable coordinator (mid-restart) counts as "not yet".
    pub async fn wait_for_state(&self, sweep_id: i64, want: pb::SweepState, within: Duration) {
        let t0 = Instant::now();
        loop {
            let state = match SweepServiceClient::connect(self.url()).await {
                Ok(mut c) => match c.get_sweep(pb::GetSweepRequest { sweep_id }).await {
                    Ok(s) => pb::SweepState::try_from(s.into_inner().state).unwrap(),
                    Err(_) => pb::SweepState::Unspecified,
                },
                Err(_) => pb::SweepState::Unspecified,
            };
            if state == want {
                return;
            }
            assert!(
                !matches!(state, pb::SweepState::Failed | pb::SweepState::Cancelled | pb::SweepState::Succeeded),
                "sweep {sweep_id} ended {state:?}, expected {want:?}"
            );
            assert!(t0.elapsed() < within, "sweep {sweep_id} not {want:?} after {within:?} (state {state:?})");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Live processes that mention this cluster's folder (daemons, job processes, coordinator).
    pub fn processes(&self) -> Vec<(i32, String)> {
        crate::process::processes_mentioning(&self.dir_text())
    }

    /// Stops every daemon with SIGTERM (they must exit cleanly within `within`), then checks that
    /// no process of this cluster but the coordinator is left: no job process outlived its daemon.
    pub fn stop_workers_and_check_none_left(&mut self, within: Duration) {
        for w in &mut self.workers {
            if w.is_running() {
                let status = w.terminate(within).unwrap_or_else(|| panic!("daemon {} did not stop within {within:?} of SIGTERM", w.name));
                assert!(status.success(), "daemon {} exited {status:?} on SIGTERM", w.name);
            }
        }
        let coordinator = self.coordinator.as_ref().map(|c| c.proc.pid());
        let t0 = Instant::now();
        loop {
            let left: Vec<(i32, String)> = self.processes().into_iter().filter(|(p, _)| Some(*p) != coordinator).collect();
            if left.is_empty() {
                return;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "processes left running after the daemons stopped: {left:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep the logs, job folders and caches of a failed test for a closer look.
            let path: &Path = self.dir.path();
            eprintln!("===== the failed test's folder is kept: {} =====", path.display());
            self.dir.disable_cleanup(true);
        }
        // Workers first: a daemon whose coordinator vanished keeps retrying its address.
        self.workers.clear();
        self.coordinator.take();
    }
}
