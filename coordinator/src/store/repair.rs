//! Files lost from the object store, and their repair.
//!
//! A file the store holds a row for can still vanish or rot in the object store (a lifecycle
//! rule, someone cleaning a folder, a bad disk). No retry brings it back, and before this a
//! dependent either hung "running 0%" or burned its attempts on it. So when a dependent's
//! download finds the file missing, or not matching its recorded size and sha256, the
//! coordinator calls [`Store::artifact_lost`], which in one transaction
//! - re-queues the job that made the file (the *producer*: the dependent's parent for
//!   "weights", its dense job for "rewind"): ready again with a fresh attempt, the lost file's
//!   row forgotten, `reused_from` cleared (a job reused from another sweep's job runs itself,
//!   so the repair never touches another sweep), its old results kept until the re-run's
//!   completion replaces them (other sweeps may be reusing them);
//! - re-blocks the dependents that were waiting for the file (ready children; for a lost θk, the
//!   ready jobs that rewind to it) and hands the calling dependent back the same way, counted
//!   neither as failed nor as lost;
//! - writes a `state` event on the producer whose detail names the artifact, the job that held
//!   it and what was wrong (`{"repair": …}`), and sets the producer's `last_error` to say so.
//!
//! The producer's row is locked first: of two dependents that find the loss at once, the first
//! repairs and the second finds the producer no longer succeeded (or its file replaced) and only
//! hands itself back. Children are unblocked by the re-run's completion as usual; the jobs that
//! only rewind to a re-run dense job are unblocked by the reaper ([`Store::unblock_repaired`])
//! through the `artifact_repairs` table.

use super::error::{Result, StoreError};
use super::types::Lease;

/// Which job makes the file a dependent downloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Producer {
    /// "weights": the dependent's parent.
    Parent,
    /// "rewind" (θk): the dependent's dense job.
    DenseJob,
    /// "checkpoint": the dependent's own earlier attempt.
    Itself,
}

impl Producer {
    pub(crate) fn of(name: &str) -> Result<Producer> {
        match name {
            "weights" => Ok(Producer::Parent),
            "rewind" => Ok(Producer::DenseJob),
            "checkpoint" => Ok(Producer::Itself),
            other => Err(StoreError::InvalidArgument(format!("jobs download \"rewind\", \"weights\" or \"checkpoint\", not {other:?}"))),
        }
    }
}

/// Lost now: the producer still counts as done and its row still names the object that was
/// found bad (`lost_uri`; None: the claim found no row), or no row is left. Anything else:
/// someone repaired it already.
pub(crate) fn lost_now(producer_state: &str, lost_uri: Option<&str>, current_uri: Option<&str>) -> bool {
    producer_state == "succeeded"
        && match (lost_uri, current_uri) {
            (_, None) => true,
            (Some(lost), Some(current)) => lost == current,
            (None, Some(_)) => false,
        }
}

/// Where the dependent goes: back to wait for the producer, to claim its new file at once, or
/// failed with it.
pub(crate) fn back_to(producer_state: &str) -> &'static str {
    match producer_state {
        "succeeded" => "ready",
        "failed" | "cancelled" => "failed",
        _ => "blocked",
    }
}

/// The re-run producer's `last_error`: what was lost, where, and who found it.
pub(crate) fn repair_reason(name: &str, producer: i64, holder: i64, problem: &str, found_by: Lease) -> String {
    let held = if holder == producer { String::new() } else { format!(" (held by job {holder}, whose result it reused)") };
    format!(
        "re-running to repair a lost artifact: its {name:?}{held} {problem} (found by job {} attempt {}); the jobs that need it wait for this run",
        found_by.job_id, found_by.attempt
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loss_is_repaired_once() {
        assert!(lost_now("succeeded", Some("s3://a"), Some("s3://a")), "the row still names the bad object");
        assert!(lost_now("succeeded", None, None), "no row at all");
        assert!(!lost_now("succeeded", Some("s3://a"), Some("s3://b")), "replaced since");
        assert!(!lost_now("succeeded", None, Some("s3://b")));
        assert!(!lost_now("ready", Some("s3://a"), Some("s3://a")), "already running again");
        assert_eq!(back_to("succeeded"), "ready");
        assert_eq!(back_to("cancelled"), "failed");
        assert_eq!(back_to("running"), "blocked");
        assert!(Producer::of("masks").is_err());
        let why = repair_reason("weights", 4, 2, "is missing", Lease { job_id: 9, attempt: 1 });
        assert!(why.contains("held by job 2") && why.contains("found by job 9 attempt 1"), "{why}");
    }
}
