//! `lth-worker exec-job --job FILE`: the child process that runs one job's chain step.
//!
//! It reads job.json, initialises the device, calls `engine::run_step` and reports through JSON
//! lines on stdout (see `events`). It never talks to the coordinator: the daemon owns the lease.
//!
//! SIGTERM (the daemon shutting down, or aborting the job): the default action ends the process.
//! Checkpoints are written atomically (tmp + rename), so dying at any moment leaves the last
//! complete checkpoint in the workdir, which the daemon uploads as the resume point.

use super::events::ChildEvent;
use super::events::MemberEvent;
use super::jobfile::{BundleFile, ExecFile};
use crate::engine::{self, StepEvent, StepInputs};
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::Path;

/// Exit codes: 0 done, 1 the step failed, 2 the job file is unusable.
pub fn run(job_path: &Path) -> i32 {
    let mut events = take_over_stdout();
    let mut emit = |e: ChildEvent| {
        // If the daemon is gone the write fails; PDEATHSIG ends us shortly anyway.
        let _ = events.write_all(e.to_line().as_bytes());
        let _ = events.flush();
    };
    let job = match ExecFile::read(job_path) {
        Ok(ExecFile::Solo(j)) => j,
        Ok(ExecFile::Bundle(b)) => {
            drop(emit);
            return run_bundle(b, events);
        }
        Err(e) => {
            emit(ChildEvent::Failed { error: format!("{e:#}"), retryable: false, node_local: false });
            return 2;
        }
    };
    eprintln!(
        "exec-job: job {} attempt {} level {} seed {} metric {:?} in {}",
        job.job_id,
        job.attempt,
        job.step.level,
        job.step.seed,
        job.step.metric,
        job.workdir.display()
    );
    let device = match engine::init_device(job.torch_lib_dir.as_deref(), job.cuda_device) {
        Ok(d) => d,
        Err(e) => {
            // A device problem belongs to this machine, not the job: another worker may run it.
            emit(ChildEvent::Failed { error: format!("device initialisation failed: {e:#}"), retryable: true, node_local: true });
            return 1;
        }
    };
    if job.cuda_device.is_some() && device == tch::Device::Cpu {
        // A GPU slot without a usable CUDA device (driver, libtorch_cuda, a GPU gone): training on
        // the CPU here would take days and be reported as a GPU run.
        emit(ChildEvent::Failed {
            error: "this GPU slot has no usable CUDA device (libtorch_cuda did not load or sees no GPU; see the lines above)".into(),
            retryable: true,
            node_local: true,
        });
        return 1;
    }
    // A fixed thread count keeps CPU runs bit-reproducible (same result as run-local --threads N).
    engine::configure_threads(job.threads.filter(|t| *t > 0).map(|t| t as usize));
    let resumed = job.workdir.join(engine::CHECKPOINT_FILE).exists();
    emit(ChildEvent::Started { device: format!("{device:?}"), resumed });
    let inputs = StepInputs { rewind: job.rewind.clone(), parent: job.parent.clone() };
    let mut on_event = |e: StepEvent| match e {
        StepEvent::Progress { iteration, total_iterations, epoch, train_loss, test_accuracy, images_per_second } => {
            emit(ChildEvent::Progress { iteration, total_iterations, epoch, train_loss, test_accuracy, images_per_second })
        }
        StepEvent::Checkpoint { path } => emit(ChildEvent::Checkpoint { path }),
        #[allow(unreachable_patterns)]
        _ => {}
    };
    let result = engine::run_step(&job.step, &inputs, &job.workdir, device, &mut on_event);
    match result {
        Ok(output) => {
            emit(ChildEvent::Finished { output });
            0
        }
        Err(e) => {
            let node_local = super::failure::is_node_local(&e);
            let retryable = node_local || is_retryable(&e);
            emit(ChildEvent::Failed { error: format!("{e:#}"), retryable, node_local });
            1
        }
    }
}

/// Fault injection for the bundle tests (`worker/tests/bundle_fault.rs`): a bundled member of this
/// importance metric, on its first attempt, reads its parent weights from a path that does not
/// exist, so that the engine's own set-up failure is what isolates it. Unset in production.
pub const FAULT_MISSING_PARENT: &str = "LTH_FAULT_BUNDLE_MISSING_PARENT";

/// A ticket bundle (`bundle.json`): every member's events as [`MemberEvent`] lines, one result
/// (Finished or Failed) per member. Exit 0 once the bundle ran, whatever its members' outcomes
/// (each is in its own line); 1 when it could not run at all (every member then got a Failed).
fn run_bundle(bundle: BundleFile, mut out: std::fs::File) -> i32 {
    let mut emit = |member: usize, event: ChildEvent| {
        let _ = out.write_all(MemberEvent { member, event }.to_line().as_bytes());
        let _ = out.flush();
    };
    let n = bundle.members.len();
    let lead = &bundle.members[0];
    eprintln!(
        "exec-job: bundle {} of {n} members (jobs {:?}), level {} seed {} in {}",
        bundle.bundle_id,
        bundle.members.iter().map(|m| (m.job_id, m.attempt)).collect::<Vec<_>>(),
        lead.step.level,
        lead.step.seed,
        lead.workdir.display()
    );
    let fail_all = |emit: &mut dyn FnMut(usize, ChildEvent), error: String, retryable: bool, node_local: bool| {
        for i in 0..n {
            emit(i, ChildEvent::Failed { error: error.clone(), retryable, node_local });
        }
        1
    };
    let device = match engine::init_device(lead.torch_lib_dir.as_deref(), lead.cuda_device) {
        Ok(d) => d,
        Err(e) => return fail_all(&mut emit, format!("device initialisation failed: {e:#}"), true, true),
    };
    if lead.cuda_device.is_some() && device == tch::Device::Cpu {
        return fail_all(&mut emit, "this GPU slot has no usable CUDA device (libtorch_cuda did not load or sees no GPU; see the lines above)".into(), true, true);
    }
    engine::configure_threads(lead.threads.filter(|t| *t > 0).map(|t| t as usize));
    for (i, m) in bundle.members.iter().enumerate() {
        let resumed = m.workdir.join(engine::CHECKPOINT_FILE).exists();
        emit(i, ChildEvent::Started { device: format!("{device:?}"), resumed });
    }
    let fault = std::env::var(FAULT_MISSING_PARENT).ok();
    let members: Vec<engine::BundleMember> = bundle
        .members
        .iter()
        .map(|m| {
            let mut parent = m.parent.clone();
            if m.attempt == 1 && fault.is_some() && m.step.metric.map(|x| x.as_str()) == fault.as_deref() {
                eprintln!("exec-job: {FAULT_MISSING_PARENT}: job {} reads its parent from a path that does not exist", m.job_id);
                parent = Some(m.workdir.join("fault-injected-missing-parent.safetensors"));
            }
            engine::BundleMember { spec: m.step.clone(), inputs: StepInputs { rewind: m.rewind.clone(), parent }, workdir: m.workdir.clone() }
        })
        .collect();
    let mut on_event = |i: usize, e: StepEvent| match e {
        StepEvent::Progress { iteration, total_iterations, epoch, train_loss, test_accuracy, images_per_second } => {
            emit(i, ChildEvent::Progress { iteration, total_iterations, epoch, train_loss, test_accuracy, images_per_second })
        }
        StepEvent::Checkpoint { path } => emit(i, ChildEvent::Checkpoint { path }),
        #[allow(unreachable_patterns)]
        _ => {}
    };
    let results = engine::run_bundle(&members, device, &mut on_event);
    drop(on_event);
    match results {
        Ok(results) => {
            for (i, r) in results.into_iter().enumerate() {
                match r {
                    Ok(output) => emit(i, ChildEvent::Finished { output }),
                    Err(e) => {
                        let node_local = super::failure::is_node_local(&e);
                        let retryable = node_local || is_retryable(&e);
                        emit(i, ChildEvent::Failed { error: format!("{e:#}"), retryable, node_local });
                    }
                }
            }
            0
        }
        Err(e) => {
            let node_local = super::failure::is_node_local(&e);
            let retryable = node_local || is_retryable(&e);
            fail_all(&mut emit, format!("the bundle could not train: {e:#}"), retryable, node_local)
        }
    }
}

/// A failure is deterministic (not worth retrying elsewhere) when the spec or the data is
/// invalid: missing or malformed dataset files, or an invalid step spec. Anything else (a libtorch
/// error, a device problem) may pass on another attempt.
fn is_retryable(e: &anyhow::Error) -> bool {
    for cause in e.chain() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if matches!(io.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData) {
                return false;
            }
        }
        if cause.downcast_ref::<serde_json::Error>().is_some() {
            return false;
        }
    }
    true
}

/// Keeps the real stdout for events and points fd 1 at stderr, so that anything else printing to
/// stdout (libtorch warnings, a stray println!) cannot corrupt the event stream.
fn take_over_stdout() -> std::fs::File {
    // SAFETY: dup/dup2 on the process's own standard descriptors; the returned fd is owned by the
    // File from here on.
    unsafe {
        let fd = libc::dup(1);
        if fd < 0 {
            panic!("exec-job: cannot duplicate stdout: {}", std::io::Error::last_os_error());
        }
        libc::dup2(2, 1);
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        std::fs::File::from_raw_fd(fd)
    }
}
