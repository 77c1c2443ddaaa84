//! One job's child process: `lth-worker exec-job` in a process group of its own.
//!
//! The group is what makes an abort reliable: a signal to the group reaches the job and anything
//! it started, and a CUDA OOM or libtorch abort inside it cannot take the daemon down. The child
//! also gets PR_SET_PDEATHSIG(SIGKILL) so that a daemon killed with -9 does not leave orphaned
//! trainings burning a GPU while the job is re-run elsewhere.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::process::{Child, ChildStdout, Command};

pub struct JobChild {
    child: Child,
    pgid: i32,
}

/// Starts `exe exec-job --job <job_file>` with stderr appended to `log`. On a GPU slot the child
/// sees only its GPU (as device 0).
pub fn spawn(exe: &Path, job_file: &Path, log: &Path, gpu: Option<u32>) -> std::io::Result<(JobChild, ChildStdout)> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut cmd = Command::new(exe);
    cmd.arg("exec-job")
        .arg("--job")
        .arg(job_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .process_group(0)
        .kill_on_drop(true);
    if let Some(g) = gpu {
        cmd.env("CUDA_VISIBLE_DEVICES", g.to_string());
    }
    // SAFETY: prctl and getppid are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        let parent = libc::getpid();
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The daemon may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    let stdout = child.stdout.take().expect("stdout is piped");
    Ok((JobChild { child, pgid }, stdout))
}

impl JobChild {
    pub fn pid(&self) -> i32 {
        self.pgid
    }

    /// Sends `signal` to the job's whole process group.
    pub fn signal_group(&self, signal: i32) {
        if self.pgid > 0 {
            // SAFETY: plain syscall; a group that no longer exists yields ESRCH, which is fine.
            unsafe {
                libc::killpg(self.pgid, signal);
            }
        }
    }

    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// SIGTERM to the group, then SIGKILL if it has not exited within `grace`.
    pub async fn terminate(&mut self, grace: Duration) -> std::io::Result<ExitStatus> {
        self.signal_group(libc::SIGTERM);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => {
                // The leader is gone; make sure nothing else of the group survives it.
                self.signal_group(libc::SIGKILL);
                status
            }
            Err(_) => {
                tracing::warn!(pid = self.pgid, "job did not exit {grace:?} after SIGTERM; sending SIGKILL to its process group");
                self.signal_group(libc::SIGKILL);
                self.child.wait().await
            }
        }
    }
}

/// "exit status 1", "killed by signal 9 (SIGKILL)" …
pub fn describe_exit(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    match status.signal() {
        Some(sig) => {
            let name = match sig {
                libc::SIGKILL => " (SIGKILL: out of memory or killed)",
                libc::SIGTERM => " (SIGTERM)",
                libc::SIGABRT => " (SIGABRT: aborted, e.g. a libtorch error)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGBUS => " (SIGBUS)",
                _ => "",
            };
            format!("killed by signal {sig}{name}")
        }
        None => "unknown exit".to_string(),
    }
}
