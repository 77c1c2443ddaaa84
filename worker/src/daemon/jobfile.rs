//! `job.json`: everything the child process needs to run one job, written by the daemon into the
//! job's working directory. A file rather than arguments so that a failed job can be re-run by
//! hand (`lth-worker exec-job --job DIR/job.json`) exactly as the daemon ran it.

use crate::engine::StepSpec;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct JobFile {
    /// The lease this run belongs to (for logs; the child never talks to the coordinator).
    pub job_id: i64,
    pub attempt: u32,
    /// The chain step to run.
    pub step: StepSpec,
    /// θk from the seed's dense job (artifact "rewind"); levels ≥ 1.
    pub rewind: Option<PathBuf>,
    /// Weights and mask of level L-1 (artifact "weights"); levels ≥ 1.
    pub parent: Option<PathBuf>,
    /// Where the engine writes checkpoints and outputs (`engine::CHECKPOINT_FILE` resumes).
    pub workdir: PathBuf,
    /// Folder with libtorch_cuda.so, for GPU jobs.
    pub torch_lib_dir: Option<PathBuf>,
    /// CUDA device index as the child sees it (the daemon narrows CUDA_VISIBLE_DEVICES), or None
    /// for a CPU job.
    pub cuda_device: Option<usize>,
    /// Torch intra-op threads.
    pub threads: Option<i32>,
}

impl JobFile {
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    pub fn read(path: &Path) -> anyhow::Result<JobFile> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read job file {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| {
            format!("{} is not a job file written by this lth-worker version (re-run the job through the daemon)", path.display())
        })
    }
}

/// `bundle.json`: a ticket bundle's members, trained together by one `exec-job` process
/// (`engine::run_bundle`). Each member is the job file the daemon wrote for it (in its own
/// workdir, where it also lies as `job.json`), so a bundle can be re-run by hand as the daemon ran
/// it, and any member alone with its own `job.json`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct BundleFile {
    /// The coordinator's bundle id (for logs).
    pub bundle_id: i64,
    pub members: Vec<JobFile>,
}

impl BundleFile {
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

/// What `exec-job --job FILE` was given: one job, or a bundle of them (a top-level `members`).
pub enum ExecFile {
    Solo(JobFile),
    Bundle(BundleFile),
}

impl ExecFile {
    pub fn read(path: &Path) -> anyhow::Result<ExecFile> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read job file {}", path.display()))?;
        let bundle = serde_json::from_slice::<serde_json::Value>(&bytes).ok().is_some_and(|v| v.get("members").is_some());
        let unusable = || format!("{} is not a job file written by this lth-worker version (re-run the job through the daemon)", path.display());
        if bundle {
            let b: BundleFile = serde_json::from_slice(&bytes).with_context(unusable)?;
            if b.members.is_empty() {
                anyhow::bail!("{} lists no members", path.display());
            }
            Ok(ExecFile::Bundle(b))
        } else {
            Ok(ExecFile::Solo(serde_json::from_slice(&bytes).with_context(unusable)?))
        }
    }
}
