//! A throwaway PostgreSQL cluster in a temporary folder: initdb, then pg_ctl start / stop, and
//! `kill -9` of its postmaster, as the `postgres` user when the test runs as root (PostgreSQL
//! refuses to run as root). For tests that take the database away; the machine's cluster is never
//! touched. Needs PostgreSQL's server binaries (/usr/lib/postgresql/*/bin, or LTH_PG_BIN).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The newest PostgreSQL server binaries' folder (or LTH_PG_BIN).
pub fn pg_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LTH_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (or set LTH_PG_BIN)")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|p| p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0));
    dirs.pop().expect("no initdb under /usr/lib/postgresql/*/bin")
}

pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// A cluster in a temporary folder; stopped (immediately) on drop.
pub struct PgCluster {
    bin: PathBuf,
    /// PostgreSQL takes a port number, not port 0: a free one is picked and start() retries with
    /// another while it is taken (the cluster keeps its port across stop/start and kill -9).
    pub port: u16,
    dir: tempfile::TempDir,
}

impl PgCluster {
    /// initdb with superuser `root` and trust auth, as on the machine's own test cluster.
    pub fn init() -> PgCluster {
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            let out = Command::new("chown").arg("postgres:").arg(dir.path()).status().unwrap();
            assert!(out.success(), "chown the cluster directory to postgres");
        }
        let c = PgCluster { bin: pg_bin(), port: crate::free_port(), dir };
        let out = c.pg("initdb").arg("-D").arg(c.data()).args(["-A", "trust", "-U", "root", "--no-sync"]).output().unwrap();
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        c
    }

    /// init and start.
    pub fn start_new() -> PgCluster {
        let mut c = Self::init();
        c.start_first();
        c
    }

    fn pg(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if is_root() {
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

    fn try_start(&self) -> Result<(), String> {
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", self.port, self.dir.path().display());
        let out = self
            .pg("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-o", &opts, "-w", "-t", "60", "-l"])
            .arg(self.dir.path().join("pg.log"))
            .arg("start")
            .output()
            .unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{}\n{}", String::from_utf8_lossy(&out.stderr), self.log()))
        }
    }

    /// The first start: a port someone took since it was picked is replaced by another.
    fn start_first(&mut self) {
        for _ in 0..5 {
            match self.try_start() {
                Ok(()) => return,
                Err(e) if e.contains("already in use") => self.port = crate::free_port(),
                Err(e) => panic!("pg_ctl start failed: {e}"),
            }
        }
        panic!("pg_ctl start failed: no free port after 5 tries\n{}", self.log());
    }

    /// Starts the cluster again on its port (after stop or kill9).
    pub fn start(&self) {
        // After kill -9 the old postmaster's shared memory may linger a moment.
        let t0 = Instant::now();
        loop {
            match self.try_start() {
                Ok(()) => return,
                Err(e) if t0.elapsed() < Duration::from_secs(20) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(300));
                }
                Err(e) => panic!("pg_ctl start failed: {e}"),
            }
        }
    }

    /// A clean, fast shutdown (pg_ctl -m fast).
    pub fn stop(&self) {
        let out = self.pg("pg_ctl").arg("-D").arg(self.data()).args(["-m", "fast", "-w", "stop"]).output().unwrap();
        assert!(out.status.success(), "pg_ctl stop failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The postmaster's pid (first line of postmaster.pid), while it runs.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// `kill -9` of the postmaster and every backend: the database vanishes mid-transaction, as
    /// when its machine dies. Returns once no process of the cluster is left.
    pub fn kill9(&self) {
        let pid = self.postmaster_pid().expect("the cluster is running");
        let data = self.data().to_string_lossy().into_owned();
        // The backends are the postmaster's children; kill them with it, or they keep serving
        // their connections for a while.
        let mut victims = crate::process::children_of(pid);
        victims.push(pid);
        for p in &victims {
            unsafe {
                libc::kill(*p, libc::SIGKILL);
            }
        }
        let t0 = Instant::now();
        while victims.iter().any(|p| crate::process::is_alive(*p)) {
            assert!(t0.elapsed() < Duration::from_secs(10), "the cluster's processes survived kill -9 ({data})");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pg.log")).unwrap_or_default()
    }

    /// The superuser's URL on the `postgres` database (an admin URL for [`crate::TestDb::postgres_on`]).
    pub fn url(&self) -> String {
        format!("postgres://root@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.pg("pg_ctl").arg("-D").arg(self.data()).args(["-m", "immediate", "stop"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}
