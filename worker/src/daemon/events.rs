//! The child → daemon event stream: one JSON object per line on the child's stdout.
//!
//! The child moves everything else it (or libtorch) might print to stderr before it starts, so
//! stdout carries only these lines; the daemon still skips lines that do not parse, rather than
//! failing a job because of a stray print.

use crate::engine::StepOutput;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ChildEvent {
    /// The device is initialised and training starts (resumed: a checkpoint was found).
    Started { device: String, resumed: bool },
    Progress {
        iteration: u64,
        total_iterations: u64,
        epoch: f64,
        train_loss: f64,
        test_accuracy: Option<f64>,
        images_per_second: f64,
    },
    /// A resumable checkpoint was written (atomically) at `path`.
    Checkpoint { path: PathBuf },
    /// The step finished; its outputs are on disk.
    Finished { output: StepOutput },
    /// The step failed. `retryable: false` for deterministic failures (bad spec or data);
    /// `node_local`: the failure is this machine's (see `daemon::failure`).
    Failed {
        error: String,
        retryable: bool,
        #[serde(default)]
        node_local: bool,
    },
}

/// A bundle child's line: member `member`'s (its index in `bundle.json`) event.
#[derive(Serialize, Deserialize, Debug)]
pub struct MemberEvent {
    pub member: usize,
    pub event: ChildEvent,
}

impl MemberEvent {
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("member events always serialize");
        s.push('\n');
        s
    }

    pub fn parse(line: &str) -> Option<MemberEvent> {
        serde_json::from_str(line.trim()).ok()
    }
}

impl ChildEvent {
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("child events always serialize");
        s.push('\n');
        s
    }

    pub fn parse(line: &str) -> Option<ChildEvent> {
        serde_json::from_str(line.trim()).ok()
    }
}
