//! `lth-worker exec-job`, the daemon's child process, run as a real process on CPU with the bundled
//! digits: its JSON-line event stream, its result (bit-identical to calling the engine directly
//! with the same thread count), and its answer to an unusable job file.

use lth_sweep::{ImportanceMetric, ModelKind, PrunePolicy, Recipe};
use lth_worker::daemon::events::ChildEvent;
use lth_worker::daemon::jobfile::JobFile;
use lth_worker::engine::{self, StepInputs, StepSpec};
use std::path::{Path, PathBuf};
use std::process::Command;

fn recipe() -> Recipe {
    toml::from_str(
        "length = \"2ep\"\nbatch_size = 64\nlr = 0.05\nmomentum = 0.9\nrewind = \"0it\"\ncheckpoint_every = \"10it\"",
    )
    .unwrap()
}

fn step(level: u32) -> StepSpec {
    StepSpec {
        model: ModelKind::Lenet300100.into(),
        dataset: toml::from_str("name = \"digits\"").unwrap(),
        recipe: recipe(),
        pruning: PrunePolicy::default(),
        seed: 7,
        metric: (level > 0).then_some(ImportanceMetric::L2),
        rate: if level > 0 { 0.2 } else { 0.0 },
        level,
        control: None,
    }
}

fn exec_job(job: &JobFile, dir: &Path) -> (Vec<ChildEvent>, std::process::ExitStatus) {
    let path = dir.join("job.json");
    job.write(&path).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lth-worker")).args(["exec-job", "--job"]).arg(&path).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let events: Vec<ChildEvent> = stdout
        .lines()
        .map(|l| ChildEvent::parse(l).unwrap_or_else(|| panic!("stdout carries only events, got {l:?}")))
        .collect();
    (events, out.status)
}

fn job_file(step: StepSpec, workdir: PathBuf, rewind: Option<PathBuf>, parent: Option<PathBuf>) -> JobFile {
    JobFile { job_id: 1, attempt: 1, step, rewind, parent, workdir, torch_lib_dir: None, cuda_device: None, threads: Some(1) }
}

#[test]
fn exec_job_streams_events_and_matches_the_engine_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dense_out = None;
    for level in [0u32, 1] {
        let workdir = tmp.path().join(format!("child-{level}"));
        std::fs::create_dir_all(&workdir).unwrap();
        let (rewind, parent) = match &dense_out {
            None => (None, None),
            Some((r, w)) => (Some(PathBuf::from(r)), Some(PathBuf::from(w))),
        };
        let (events, status) = exec_job(&job_file(step(level), workdir.clone(), rewind.clone(), parent.clone()), &workdir);
        assert!(status.success(), "exec-job failed: {events:?}");
        assert!(matches!(events.first(), Some(ChildEvent::Started { resumed: false, .. })), "{:?}", events.first());
        let progress = events.iter().filter(|e| matches!(e, ChildEvent::Progress { .. })).count();
        assert!(progress >= 2, "at least one progress event per epoch, got {progress}");
        assert!(events.iter().any(|e| matches!(e, ChildEvent::Checkpoint { .. })), "checkpoints every 10 iterations");
        let Some(ChildEvent::Finished { output }) = events.last() else { panic!("last event is the result: {:?}", events.last()) };
        let names: Vec<&str> = output.artifacts.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, if level == 0 { vec!["weights", "rewind"] } else { vec!["weights"] });
        for (_, p) in &output.artifacts {
            assert!(p.exists(), "{} exists", p.display());
        }
        assert!(!output.report.layers.is_empty());

        // The same step through the engine in this process, same threads: identical numbers and masks.
        engine::configure_threads(Some(1));
        let direct_dir = tmp.path().join(format!("direct-{level}"));
        let direct = engine::run_step(&step(level), &StepInputs { rewind, parent }, &direct_dir, tch::Device::Cpu, &mut |_| {}).unwrap();
        assert_eq!(direct.report.test_accuracy.to_bits(), output.report.test_accuracy.to_bits());
        assert_eq!(direct.report.train_loss.to_bits(), output.report.train_loss.to_bits());
        assert_eq!(direct.report.sparsity, output.report.sparsity);
        for (a, b) in direct.report.layers.iter().zip(&output.report.layers) {
            assert_eq!((a.name.as_str(), a.kept, &a.bits), (b.name.as_str(), b.kept, &b.bits));
        }
        if level == 0 {
            let path = |n: &str| output.artifacts.iter().find(|(a, _)| a == n).unwrap().1.display().to_string();
            dense_out = Some((path("rewind"), path("weights")));
        } else {
            assert!(output.report.sparsity > 0.19 && output.report.sparsity < 0.21, "{}", output.report.sparsity);
        }
    }
}

#[test]
fn an_unusable_job_file_fails_without_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("job.json");
    std::fs::write(&path, b"{\"not\": \"a job\"}").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lth-worker")).args(["exec-job", "--job"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let line = String::from_utf8(out.stdout).unwrap();
    match ChildEvent::parse(line.lines().next().unwrap_or("")) {
        Some(ChildEvent::Failed { error, retryable, .. }) => {
            assert!(!retryable);
            assert!(error.contains("job.json") && error.contains("not a job file"), "{error}");
        }
        other => panic!("expected a Failed event, got {other:?}"),
    }
}

#[test]
fn a_level_without_its_inputs_is_refused_as_not_retryable() {
    let tmp = tempfile::tempdir().unwrap();
    let workdir = tmp.path().join("w");
    std::fs::create_dir_all(&workdir).unwrap();
    let missing = tmp.path().join("missing.safetensors");
    let (events, status) = exec_job(&job_file(step(1), workdir.clone(), Some(missing.clone()), Some(missing)), &workdir);
    assert_eq!(status.code(), Some(1));
    match events.last() {
        Some(ChildEvent::Failed { error, .. }) => assert!(error.contains("missing.safetensors"), "{error}"),
        other => panic!("expected a Failed event, got {other:?}"),
    }
}

/// Issue 9, failure 4: a dataset path missing on this machine is reported as node-local (the job
/// may run on a worker that has the files), retryable, naming the absolute path looked for.
/// Before, it was a not-retryable failure of the job, which failed it (and its sweep) for good.
#[test]
fn a_missing_dataset_is_a_node_local_failure_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let workdir = tmp.path().join("w");
    std::fs::create_dir_all(&workdir).unwrap();
    let missing = tmp.path().join("not-on-this-node").join("data.safetensors");
    let mut s = step(0);
    s.dataset = toml::from_str(&format!("name = \"safetensors\"\npath = {:?}", missing.display().to_string())).unwrap();
    let (events, status) = exec_job(&job_file(s, workdir.clone(), None, None), &workdir);
    assert_eq!(status.code(), Some(1));
    match events.last() {
        Some(ChildEvent::Failed { error, retryable, node_local }) => {
            assert!(*node_local && *retryable, "{error}");
            assert!(error.contains(&missing.display().to_string()) && error.contains("does not exist on this machine"), "{error}");
        }
        other => panic!("expected a Failed event, got {other:?}"),
    }
}
