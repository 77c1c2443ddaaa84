//! `lth-coordinator` as a process, on the addresses it bound itself.
//!
//! The coordinator binds `--listen 127.0.0.1:0` and `--http-listen 127.0.0.1:0` and prints
//! `lth-coordinator http on ADDR` and then `lth-coordinator listening on ADDR` on stdout; the
//! harness reads the addresses from there. Picking a free port first and passing it (what the
//! tests did before) leaves a window in which another test's process can take the port, and a
//! daemon of one test then talks to another test's coordinator.
//!
//! A restart must come back on the same address (the daemons keep their `--coordinator` URL), so
//! [`Coordinator::start`] with `listen: Some(addr)` binds that one, retrying while it is taken.

use crate::process::{bin, Proc};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct CoordinatorOptions {
    /// `--db`.
    pub db: String,
    /// `--artifacts`.
    pub artifacts: PathBuf,
    /// None: port 0 (the usual); Some: this address (a restart on the address of before).
    pub listen: Option<SocketAddr>,
    /// Serve the HTTP port (on port 0).
    pub http: bool,
    /// More flags (`--lease-seconds 10`, `--auth-file F`, ...).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl CoordinatorOptions {
    pub fn new(db: &str, artifacts: &Path) -> CoordinatorOptions {
        CoordinatorOptions { db: db.into(), artifacts: artifacts.into(), listen: None, http: true, args: Vec::new(), env: Vec::new() }
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

pub struct Coordinator {
    pub proc: Proc,
    /// The gRPC address it bound.
    pub addr: SocketAddr,
    /// The HTTP address it bound, if it serves HTTP.
    pub http: Option<SocketAddr>,
}

impl Coordinator {
    /// Starts `lth-coordinator` with its log at `log` (stdout copied to `log`.stdout) and waits
    /// for its readiness line. Panics with its log when it exits or stays silent for 60 s.
    pub fn start(name: &str, log: &Path, opts: &CoordinatorOptions) -> Coordinator {
        let t0 = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let mut cmd = Command::new(bin("lth-coordinator"));
            let listen = opts.listen.map(|a| a.to_string()).unwrap_or_else(|| "127.0.0.1:0".into());
            cmd.args(["--listen", &listen, "--http-listen", if opts.http { "127.0.0.1:0" } else { "off" }])
                .args(["--db", &opts.db])
                .arg("--artifacts")
                .arg(&opts.artifacts)
                .args(&opts.args);
            if !opts.env.iter().any(|(k, _)| k == "RUST_LOG") {
                cmd.env("RUST_LOG", "info");
            }
            for (k, v) in &opts.env {
                cmd.env(k, v);
            }
            let mut proc = Proc::spawn_watched(name, &mut cmd, log);
            let mut http = None;
            let ready = loop {
                // Lines come in order: "http on" (when serving HTTP) before "listening on".
                match proc.wait_line("lth-coordinator ", Duration::from_secs(60)) {
                    Ok(rest) => {
                        if let Some(a) = rest.strip_prefix("http on ") {
                            http = Some(a.trim().parse::<SocketAddr>().expect("the HTTP address"));
                        } else if let Some(a) = rest.strip_prefix("listening on ") {
                            break Ok(a.trim().parse::<SocketAddr>().expect("the gRPC address"));
                        }
                    }
                    Err(e) => break Err(e),
                }
            };
            match ready {
                Ok(addr) => return Coordinator { proc, addr, http },
                Err(e) => {
                    let text = proc.log_text();
                    // A fixed address (a restart) that another process holds for a moment.
                    if opts.listen.is_some() && text.contains("cannot listen on") && t0.elapsed() < Duration::from_secs(20) {
                        drop(proc);
                        std::thread::sleep(Duration::from_millis(250 * tries.min(8)));
                        continue;
                    }
                    // The Proc's drop prints its log while this panic unwinds.
                    panic!("lth-coordinator did not start: {e} (its log follows)");
                }
            }
        }
    }

    /// `http://ADDR` for gRPC clients and `--coordinator`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
