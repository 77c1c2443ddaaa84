//! A ticket bundle on this worker: the jobs one claim brought with the same `bundle_id`, trained
//! by one `exec-job` process (`bundle.json`, `engine::run_bundle`) in one slot.
//!
//! Every member is still an ordinary job of `job.rs`, with its own task, lease, heartbeat entry,
//! inputs, workdir, progress reports, checkpoint uploads and CompleteJob / FailJob / ReleaseJob.
//! What they share is the process: each member prepares itself and takes its [`Seat`]; the
//! [`drive`] task waits until every member has joined or left, starts the process for those that
//! joined, and hands each a [`MemberProc`]: its own stream of the process's events (the bundle
//! child tags each line with the member's index), the process's exit status, and a way to leave.
//!
//! - A member that fails to prepare (a lost input, a bad spec) reports alone and leaves; the
//!   others train without it. If only one member joins, it runs as a plain solo `exec-job`.
//! - A member aborted by the coordinator (its sweep cancelled or paused, its lease lost) or whose
//!   write was fenced leaves the bundle: nothing more of it is reported. The engine cannot drop a
//!   member mid-run, so the process goes on training it with the others, and its result is
//!   discarded here (a completion would be refused by the coordinator's fencing anyway). When
//!   every member has left, the process is killed.
//! - A shutdown reaches every member at once: each signals the process (SIGTERM), which stops at
//!   once (checkpoints are written atomically), and each member uploads its own last checkpoint
//!   and hands itself back with ReleaseJob.

use super::child::{self, JobChild};
use super::events::{ChildEvent, MemberEvent};
use super::host::Slot;
use super::job::JobContext;
use super::jobfile::{BundleFile, JobFile};
use lth_proto::v1 as pb;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch};

/// The exit status of the shared process, once it has exited (Err: it could not be waited for).
type Status = Option<Result<ExitStatus, String>>;

/// A member's place in its bundle, taken by `job.rs` once the member is prepared. Dropped
/// unused, it tells the bundle that the member left before the process started.
pub struct Seat {
    index: usize,
    join: Option<oneshot::Sender<Option<PathBuf>>>,
    proc: oneshot::Receiver<Result<MemberProc, String>>,
}

impl Seat {
    /// Joins with the member's job file; returns its view of the process once every member has
    /// joined or left and the process has started (Err: it could not be started).
    pub async fn join(mut self, job_file: PathBuf) -> Result<MemberProc, String> {
        if let Some(tx) = self.join.take() {
            let _ = tx.send(Some(job_file));
        }
        match (&mut self.proc).await {
            Ok(r) => r,
            Err(_) => Err("the bundle's process was not started (its driver ended)".into()),
        }
    }

    pub fn index(&self) -> usize {
        self.index
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(tx) = self.join.take() {
            let _ = tx.send(None);
        }
    }
}

enum Control {
    /// The member stops following the process (aborted, fenced): drop its events.
    Leave(usize),
    Signal(i32),
}

/// One member's view of the shared process.
pub struct MemberProc {
    index: usize,
    pid: i32,
    events: mpsc::UnboundedReceiver<ChildEvent>,
    status: watch::Receiver<Status>,
    control: mpsc::UnboundedSender<Control>,
    log: PathBuf,
    left: bool,
}

impl MemberProc {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The member's next event; None once the process's output has ended.
    pub async fn next_event(&mut self) -> Option<ChildEvent> {
        self.events.recv().await
    }

    /// The shared process's exit status (after its output ended).
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self.status.wait_for(|s| s.is_some()).await {
            Ok(s) => match s.as_ref().expect("waited for Some") {
                Ok(status) => Ok(*status),
                Err(e) => Err(std::io::Error::other(e.clone())),
            },
            Err(_) => Err(std::io::Error::other("the bundle's driver ended before the process")),
        }
    }

    /// Leaves the bundle: the others train on (see the top of this file).
    pub fn leave(&mut self) {
        if !self.left {
            self.left = true;
            let _ = self.control.send(Control::Leave(self.index));
        }
    }

    /// Signals the shared process's group (a shutdown: every member does the same).
    pub fn signal_group(&self, signal: i32) {
        let _ = self.control.send(Control::Signal(signal));
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for MemberProc {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Starts the driver of one bundle (`members`: one claim's jobs of one bundle id, at least
/// two) on `slot`; returns each member's seat, in the order given.
pub fn start(ctx: &Arc<JobContext>, members: &[pb::JobAssignment], slot: Slot) -> Vec<Seat> {
    let mut seats = Vec::new();
    let mut joins = Vec::new();
    let mut procs = Vec::new();
    for index in 0..members.len() {
        let (join_tx, join_rx) = oneshot::channel();
        let (proc_tx, proc_rx) = oneshot::channel();
        seats.push(Seat { index, join: Some(join_tx), proc: proc_rx });
        joins.push(join_rx);
        procs.push(proc_tx);
    }
    let bundle_id = members[0].bundle_id;
    let name = format!("bundle-{bundle_id}-{}", members.iter().map(|m| format!("{}a{}", m.job_id, m.attempt)).collect::<Vec<_>>().join("-"));
    let dir = ctx.jobs_dir.join(name);
    tokio::spawn(drive(ctx.clone(), bundle_id, dir, slot, joins, procs));
    seats
}

/// Waits for the members, runs the process, routes its events (see the top of this file).
async fn drive(
    ctx: Arc<JobContext>,
    bundle_id: i64,
    dir: PathBuf,
    slot: Slot,
    joins: Vec<oneshot::Receiver<Option<PathBuf>>>,
    procs: Vec<oneshot::Sender<Result<MemberProc, String>>>,
) {
    let mut joined: Vec<(usize, PathBuf)> = Vec::new();
    for (i, j) in joins.into_iter().enumerate() {
        if let Ok(Some(file)) = j.await {
            joined.push((i, file));
        }
    }
    if joined.is_empty() {
        return;
    }
    let n = procs.len();
    let mut procs: Vec<Option<oneshot::Sender<Result<MemberProc, String>>>> = procs.into_iter().map(Some).collect();
    let mut give = |i: usize, r: Result<MemberProc, String>| {
        if let Some(tx) = procs[i].take() {
            let _ = tx.send(r);
        }
    };
    // One member left: it runs as a plain job, the process's lines untagged.
    let solo = joined.len() == 1;
    let spawned = (|| -> Result<(JobChild, tokio::process::ChildStdout, PathBuf), String> {
        if solo {
            let (_, file) = &joined[0];
            let log = file.with_file_name("exec-job.log");
            let (c, out) = child::spawn(&ctx.exe, file, &log, slot.gpu).map_err(|e| format!("cannot start {} exec-job: {e}", ctx.exe.display()))?;
            return Ok((c, out, log));
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut members = Vec::new();
        for (_, file) in &joined {
            members.push(JobFile::read(file).map_err(|e| format!("{e:#}"))?);
        }
        let path = dir.join("bundle.json");
        BundleFile { bundle_id, members }.write(&path).map_err(|e| format!("{e:#}"))?;
        let log = dir.join("exec-job.log");
        let (c, out) = child::spawn(&ctx.exe, &path, &log, slot.gpu).map_err(|e| format!("cannot start {} exec-job: {e}", ctx.exe.display()))?;
        Ok((c, out, log))
    })();
    let (mut child, stdout, log) = match spawned {
        Ok(s) => s,
        Err(e) => {
            for (i, _) in &joined {
                give(*i, Err(e.clone()));
            }
            remove_dir(&ctx, &dir);
            return;
        }
    };
    tracing::info!(bundle = bundle_id, members = joined.len(), pid = child.pid(), "bundle process started");
    let (status_tx, status_rx) = watch::channel::<Status>(None);
    let (control_tx, mut control_rx) = mpsc::unbounded_channel();
    // Bundle position (index in bundle.json) -> (member index, its event sender).
    let mut routes: Vec<Option<mpsc::UnboundedSender<ChildEvent>>> = Vec::new();
    let mut position_of = vec![None; n];
    for (pos, (i, _)) in joined.iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        routes.push(Some(tx));
        position_of[*i] = Some(pos);
        give(
            *i,
            Ok(MemberProc {
                index: *i,
                pid: child.pid(),
                events: rx,
                status: status_rx.clone(),
                control: control_tx.clone(),
                log: log.clone(),
                left: false,
            }),
        );
    }
    // Only the members hold these now: the control channel closes when the last member is gone,
    // and the status's receivers with them (see the end).
    drop(control_tx);
    drop(status_rx);
    let mut lines = BufReader::new(stdout).lines();
    let mut killed = false;
    let mut control_open = true;
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    let routed = if solo {
                        ChildEvent::parse(&line).map(|e| (0, e))
                    } else {
                        MemberEvent::parse(&line).map(|m| (m.member, m.event))
                    };
                    match routed {
                        Some((pos, event)) => {
                            if let Some(Some(tx)) = routes.get(pos) {
                                let _ = tx.send(event);
                            }
                        }
                        None => tracing::debug!(bundle = bundle_id, line = %line, "ignoring non-event output of the bundle"),
                    }
                }
                Ok(None) | Err(_) => break,
            },
            c = control_rx.recv(), if control_open => match c {
                Some(Control::Leave(i)) => {
                    if let Some(pos) = position_of.get(i).copied().flatten() {
                        routes[pos] = None;
                    }
                    if routes.iter().all(Option::is_none) && !killed {
                        tracing::info!(bundle = bundle_id, "every member left the bundle; stopping its process");
                        killed = true;
                        let _ = child.terminate(ctx.kill_grace).await;
                    }
                }
                Some(Control::Signal(sig)) => child.signal_group(sig),
                // Every member is gone (their tasks ended): nobody reads on.
                None => {
                    control_open = false;
                    if !killed {
                        killed = true;
                        let _ = child.terminate(ctx.kill_grace).await;
                    }
                }
            },
        }
    }
    // The output ended: members see the end of their streams, then the exit status.
    routes.clear();
    let status = child.wait().await.map_err(|e| format!("lost track of the bundle process: {e}"));
    child.signal_group(libc::SIGKILL);
    let _ = status_tx.send(Some(status));
    // The members read the log tail for their errors before they finish; the folder goes when
    // they have all let go of the status (each holds a receiver until its task ends).
    status_tx.closed().await;
    remove_dir(&ctx, &dir);
}

fn remove_dir(ctx: &JobContext, dir: &Path) {
    if !ctx.keep_workdirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}
