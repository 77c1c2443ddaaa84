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
