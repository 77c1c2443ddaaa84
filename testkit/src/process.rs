//! Real binaries as processes: where the workspace's binaries are, a process with its log in a
//! file ([`Proc`]), signals to it or its process group, and the process table.
//!
//! A [`Proc`] runs in a process group of its own, so `kill_group9` takes everything it started
//! with it (and a Ctrl-C at the terminal does not reach it). When the test fails, its drop prints
//! the tail of its logs; the logs must therefore outlive it (the [`crate::Cluster`] declares its
//! folder last, so the folder is removed after the processes).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1, released before it is returned: another process may take it
/// before it is used. Only for programs that cannot bind port 0 and report what they got
/// (PostgreSQL, chromedriver) or for an address that must refuse connections; the coordinator
/// binds port 0 ([`crate::coordinator`]).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The latest modification time of any file under `dir`.
pub fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let t = if p.is_dir() { newest_mtime(&p) } else { e.metadata().and_then(|m| m.modified()).ok() };
        newest = newest.max(t);
    }
    newest
}

/// The workspace's root folder.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The profile folder the running test was built into (target/debug, target/release, ...): the
/// test executable is `<profile>/deps/<name>-<hash>`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the test executable's folder");
    if deps.file_name().map(|n| n == "deps").unwrap_or(false) {
        deps.parent().unwrap().to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// (package, environment override, source folders it is built from) per workspace binary.
fn known(name: &str) -> (&'static str, &'static str, &'static [&'static str]) {
    match name {
        "lth-coordinator" => ("lth-coordinator", "LTH_COORDINATOR_BIN", &["proto", "sweep/src", "coordinator/src", "coordinator/queries", "migrations"]),
        "lth-worker" => ("lth-worker", "LTH_WORKER_BIN", &["proto", "sweep/src", "worker/src", "worker/shim"]),
        "lthctl" => ("lthctl", "LTHCTL_BIN", &["proto", "sweep/src", "lthctl/src"]),
        other => panic!("lth-testkit does not know the binary {other:?}"),
    }
}

/// A workspace binary (`lth-coordinator`, `lth-worker`, `lthctl`) from the running test's profile
/// folder, or from its environment override (LTH_COORDINATOR_BIN, LTH_WORKER_BIN, LTHCTL_BIN).
///
/// `cargo nextest run --workspace` builds every binary first. A test run with `-p PACKAGE` builds
/// only that package's, so a binary that is missing or older than a source it is built from (one
/// left from before a proto change speaks an older protocol) is built here with cargo. Not
/// unconditionally: `cargo build -p` alone unifies features differently from a workspace build and
/// would rebuild a fresh binary for minutes.
pub fn bin(name: &str) -> PathBuf {
    let (package, env, sources) = known(name);
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let dir = profile_dir();
    let path = dir.join(name);
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let root = workspace_root();
    let newest = sources.iter().filter_map(|d| newest_mtime(&root.join(d))).max();
    if matches!((built, newest), (Some(b), Some(n)) if b >= n) {
        return path;
    }
    let profile = dir.file_name().unwrap().to_string_lossy().to_string();
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&root).args(["build", "--quiet", "-p", package, "--bin", name]);
    if profile != "debug" {
        cmd.args(["--profile", &profile]);
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("run cargo to build {name}: {e}"));
    assert!(status.success(), "building {name} failed");
    path
}

/// A process with its log file(s); killed (with its group) on drop, and its logs printed when the
/// test is failing.
pub struct Proc {
    pub name: String,
    child: Child,
    /// Its stderr (and stdout, unless [`Proc::spawn_watched`] took stdout).
    pub log: PathBuf,
    /// A copy of stdout, for watched processes.
    pub stdout_log: Option<PathBuf>,
    lines: Option<mpsc::Receiver<String>>,
}

impl Proc {
    /// Starts `cmd` in a process group of its own, stdout and stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Proc {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", cmd.get_program()));
        Proc { name: name.into(), child, log: log.to_path_buf(), stdout_log: None, lines: None }
    }

    /// Like [`Proc::spawn`], but stdout is read line by line (see [`Proc::wait_line`]) and copied
    /// to `log` with the extension `.stdout`; stderr goes to `log`.
    pub fn spawn_watched(name: &str, cmd: &mut Command, log: &Path) -> Proc {
        let err = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({:?}): {e}", cmd.get_program()));
        let stdout = child.stdout.take().unwrap();
        let copy = log.with_extension("stdout");
        let (tx, rx) = mpsc::channel();
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&copy).unwrap();
        // Reads stdout to its end, so the process never writes into a closed pipe.
        std::thread::spawn(move || {
            let mut f = file;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(f, "{line}");
                let _ = tx.send(line);
            }
        });
        Proc { name: name.into(), child, log: log.to_path_buf(), stdout_log: Some(copy), lines: Some(rx) }
    }

    /// The rest of the first stdout line (of a watched process) that starts with `prefix`,
    /// waiting up to `within`. Err: the process ended first, or the time ran out.
    pub fn wait_line(&mut self, prefix: &str, within: Duration) -> Result<String, String> {
        let rx = self.lines.as_ref().expect("wait_line needs a process started with spawn_watched");
        let deadline = Instant::now() + within;
        let ended = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.trim().to_string());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break true,
                Err(mpsc::RecvTimeoutError::Timeout) => break false,
            }
        };
        if ended {
            let status = self.wait_exit(Duration::from_secs(2));
            Err(format!("{} ended ({status:?}) before printing {prefix:?}", self.name))
        } else {
            Err(format!("{} did not print {prefix:?} within {within:?}", self.name))
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Sends `sig` to the process's group (everything it started that stayed in its group).
    pub fn signal_group(&self, sig: i32) {
        unsafe {
            libc::kill(-self.pid(), sig);
        }
    }

    /// `kill -9` of the process alone; returns once it is gone.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| panic!("{} survived SIGKILL", self.name))
    }

    /// `kill -9` of the process's whole group; returns once the process is gone.
    pub fn kill_group9(&mut self) -> ExitStatus {
        self.signal_group(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| panic!("{} survived SIGKILL", self.name))
    }

    /// SIGTERM, then up to `within` for a clean exit (None: still running).
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        self.wait_exit(within)
    }

    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if t0.elapsed() >= within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its log (stderr, and stdout when not watched).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its stdout copy (watched processes), else empty.
    pub fn stdout_text(&self) -> String {
        self.stdout_log.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
    }

    fn dump(&self) {
        let tail = |text: String| -> String { text.chars().rev().take(8000).collect::<Vec<_>>().into_iter().rev().collect() };
        let log = self.log_text();
        let shown = if log.is_empty() && !self.log.exists() { "(the log file is gone)".to_string() } else { tail(log) };
        eprintln!("===== log of {} ({}) =====\n{shown}", self.name, self.log.display());
        if self.stdout_log.is_some() {
            eprintln!("===== stdout of {} =====\n{}", self.name, tail(self.stdout_text()));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal_group(libc::SIGKILL);
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            self.dump();
        }
    }
}

/// The fields of /proc/PID/stat after the command name: (state, ppid).
fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses; split after the last ')'.
    let rest = text.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc").map(|d| d.flatten().filter_map(|e| e.file_name().to_string_lossy().parse().ok()).collect()).unwrap_or_default()
}

/// Live (not zombie) direct children of `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    all_pids().into_iter().filter(|p| matches!(stat(*p), Some((s, pp)) if pp == pid && s != 'Z')).collect()
}

pub fn is_zombie(pid: i32) -> bool {
    stat(pid).map(|(s, _)| s == 'Z').unwrap_or(true)
}

/// Running and not a zombie.
pub fn is_alive(pid: i32) -> bool {
    !is_zombie(pid)
}

/// Live processes whose command line mentions `needle` (a test's temporary folder: every process
/// the test started names it in an argument, a job process by its job file). "Nothing left
/// running" is this being empty.
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for p in all_pids() {
        if p == me || !is_alive(p) {
            continue;
        }
        let Ok(raw) = std::fs::read(format!("/proc/{p}/cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(needle) {
            out.push((p, cmd.trim().to_string()));
        }
    }
    out
}
