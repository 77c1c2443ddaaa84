//! Pure decisions the store makes the same way on both backends: no database, unit-tested here.

use super::error::{Result, StoreError};
use super::types::Failure;
use lth_sweep::state::{JobKind, JobState, SweepOp, SweepState, Verdict};

/// Distinct workers a job may fail on node-locally before it fails for good.
pub const MAX_EXCLUDED_WORKERS: i64 = 16;

/// A failing job's counts, and the rule for what its failure does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailRule {
    pub errors: i32,
    pub max_attempts: i32,
    /// Workers already excluded from the job (earlier node-local failures).
    pub excluded: i64,
}

impl FailRule {
    /// (whether this failure counts against the job's attempts, whether the job is retried).
    pub fn apply(&self, how: Failure) -> (bool, bool) {
        if how.node_local {
            // Counted once (so later failures of the job itself have one attempt less), but never
            // the end of the job: it goes to another machine, until MAX_EXCLUDED_WORKERS have
            // failed it this way (then the cause is hardly those machines).
            (self.excluded == 0, self.excluded + 1 < MAX_EXCLUDED_WORKERS)
        } else {
            (true, how.retryable && self.errors + 1 < self.max_attempts)
        }
    }
}

/// Applies the state table (`SweepState::allows`): Ok(true) to go on, Ok(false) when the sweep is
/// already where `op` would take it, the refusal otherwise.
pub(crate) fn proceed(state: SweepState, op: SweepOp, sweep_id: i64) -> Result<bool> {
    match state.allows(op, sweep_id) {
        Verdict::Proceed => Ok(true),
        Verdict::AlreadyDone => Ok(false),
        Verdict::Refused(why) => Err(StoreError::FailedPrecondition(why)),
    }
}

/// The state a job is created in (`JobState::initial`), as stored.
pub(crate) fn initial_job_state(reused: bool, parent_done: bool) -> &'static str {
    JobState::initial(reused, parent_done).as_str()
}

/// The artifacts an attempt of a `kind` job must upload before it may complete: a dense job's
/// children rewind to θk and start from its weights; a level job's children start from its
/// weights and mask.
pub fn uploads_needed(kind: &str) -> &'static [&'static str] {
    kind.parse::<JobKind>().map(JobKind::uploads_needed).unwrap_or(&[])
}

pub use lth_sweep::result::layers_match;

/// A trial's `schedule` column (a JSON array of rates) as numbers.
pub(crate) fn schedule_from_db(text: Option<String>) -> Result<Option<Vec<f64>>> {
    text.map(|t| serde_json::from_str::<Vec<f64>>(&t).map_err(|e| StoreError::Db(sqlx::Error::Decode(format!("trials.schedule {t:?}: {e}").into()))))
        .transpose()
}

/// A trial's schedule as stored in `trials.schedule`; None for a constant rate.
pub(crate) fn schedule_to_db(schedule: &Option<Vec<f64>>) -> Option<String> {
    schedule.as_ref().map(|v| serde_json::to_string(v).expect("rates serialise"))
}

/// Why a completion changed nothing.
#[derive(Debug)]
pub(crate) enum Refusal {
    NoSuchJob,
    /// The lease is not the job's current running attempt.
    Stale { state: String, attempt: i32 },
    /// The attempt did not upload these artifacts.
    MissingUploads(Vec<String>),
    /// The result's layers are not its model's, which are these (the layers the job's dense job
    /// reported, in network order).
    WrongLayers(Vec<String>),
}

impl Refusal {
    /// What a completion that found the job `state` at `attempt` (None: no such job) lacking
    /// `missing` uploads, with layers that differ from `model` (None: they match, or the model
    /// is not known), was refused for. A stale lease is stale whatever its result says.
    pub(crate) fn of(lease: super::Lease, state: Option<String>, attempt: i32, missing: Vec<String>, model: Option<Vec<String>>) -> Refusal {
        match state {
            None => Refusal::NoSuchJob,
            Some(state) if state == "running" && attempt == lease.attempt => match model {
                Some(model) => Refusal::WrongLayers(model),
                None if !missing.is_empty() => Refusal::MissingUploads(missing),
                None => Refusal::Stale { state, attempt },
            },
            Some(state) => Refusal::Stale { state, attempt },
        }
    }

    /// The error a completion of `lease` reporting the layers `reported` gets for this refusal.
    pub(crate) fn into_error(self, lease: super::Lease, reported: &[&str]) -> StoreError {
        match self {
            Refusal::NoSuchJob => StoreError::NotFound(format!("job {} does not exist: check the lease the claim returned", lease.job_id)),
            // The row changed between the statement's snapshot and its update (a concurrent
            // expiry or cancel): nothing more specific to say.
            Refusal::Stale { state, attempt } if state == "running" && attempt == lease.attempt => super::error::stale(lease),
            Refusal::Stale { state, attempt } => StoreError::StaleLease(format!(
                "lease {lease} is not current (job is {state} at attempt {attempt}): stop this attempt, its result was not recorded"
            )),
            Refusal::MissingUploads(names) => StoreError::MissingUploads(format!(
                "job {} completed without uploading {names:?} in attempt {}: upload them with UploadArtifact, then complete",
                lease.job_id, lease.attempt
            )),
            Refusal::WrongLayers(model) => {
                let why = layers_match(reported, &model).err().unwrap_or_else(|| format!("its layers are not the model's ({})", model.join(", ")));
                StoreError::InvalidResult(format!("invalid result of job {}: {why}", lease.job_id))
            }
        }
    }
}

/// Whether a registration by daemon process `instance` replaces the process that registered the
/// worker id before (`previous`), so that the jobs still leased to the id belong to no running
/// process. A process that does not say ('' or NULL, older daemons) never replaces one and is
/// never replaced: nothing can tell its restart from its retry.
pub(crate) fn replaces_process(previous: Option<&str>, instance: &str) -> bool {
    matches!(previous, Some(p) if !p.is_empty() && !instance.is_empty() && p != instance)
}

#[cfg(test)]
mod tests {
    use super::super::types::{check_loss, stored_number};
    use super::*;

    #[test]
    fn node_local_failures_count_once_and_move_the_job_elsewhere() {
        let rule = |errors, excluded| FailRule { errors, max_attempts: 3, excluded };
        let local = Failure { retryable: false, node_local: true };
        let job = Failure { retryable: true, node_local: false };
        assert_eq!(rule(0, 0).apply(local), (true, true), "the first counts, and the job is retried although not retryable");
        assert_eq!(rule(1, 1).apply(local), (false, true), "later ones do not count");
        assert_eq!(rule(2, 5).apply(local), (false, true), "nor end the job, whatever its attempts");
        assert_eq!(rule(1, MAX_EXCLUDED_WORKERS - 1).apply(local), (false, false), "until too many machines failed it");
        assert_eq!(rule(1, 1).apply(job), (true, true));
        assert_eq!(rule(2, 1).apply(job), (true, false), "the job's own failures use up its attempts as before");
        assert_eq!(rule(0, 0).apply(Failure { retryable: false, node_local: false }), (true, false));
    }

    #[test]
    fn layers_must_be_the_models() {
        let model = vec!["fc1.weight".to_string(), "fc2.weight".to_string()];
        assert!(layers_match(&["fc2.weight", "fc1.weight"], &model).is_ok());
        assert!(layers_match(&["fc1.weight", "fc9.weight"], &model).unwrap_err().contains("\"fc9.weight\" is not a layer"));
        assert!(layers_match(&["fc1.weight"], &model).unwrap_err().contains("lacks"));
    }

    #[test]
    fn losses_are_numbers_unless_the_run_diverged() {
        assert!(check_loss("l", 0.3, false).is_ok());
        assert!(check_loss("l", f64::NAN, false).unwrap_err().contains("diverged = true"));
        assert!(check_loss("l", f64::INFINITY, false).is_err());
        assert!(check_loss("l", -0.1, false).unwrap_err().contains("negative"));
        assert!(check_loss("l", -0.1, true).is_err(), "a negative loss is wrong even in a diverged run");
        assert!(check_loss("l", f64::NAN, true).is_ok());
        assert_eq!(stored_number(f64::NAN), f64::INFINITY);
        assert_eq!(stored_number(f64::NEG_INFINITY), f64::INFINITY);
        assert_eq!(stored_number(0.25), 0.25);
    }

    #[test]
    fn a_refusal_names_its_cause() {
        let lease = super::super::Lease { job_id: 7, attempt: 2 };
        let model = || Some(vec!["fc1.weight".to_string(), "fc2.weight".to_string()]);
        assert!(matches!(Refusal::of(lease, None, 0, vec![], None), Refusal::NoSuchJob));
        assert!(matches!(Refusal::of(lease, Some("running".into()), 2, vec!["weights".into()], None), Refusal::MissingUploads(_)));
        assert!(matches!(Refusal::of(lease, Some("running".into()), 3, vec!["weights".into()], None), Refusal::Stale { .. }));
        assert!(matches!(Refusal::of(lease, Some("ready".into()), 2, vec![], None), Refusal::Stale { .. }));
        assert!(matches!(Refusal::of(lease, Some("running".into()), 3, vec![], None).into_error(lease, &[]), StoreError::StaleLease(_)));
        // Wrong layers on the current attempt: the result is invalid (whatever else it lacks);
        // on a stale lease the staleness is what the worker must act on.
        assert!(matches!(Refusal::of(lease, Some("running".into()), 2, vec!["weights".into()], model()), Refusal::WrongLayers(_)));
        assert!(matches!(Refusal::of(lease, Some("running".into()), 3, vec![], model()), Refusal::Stale { .. }));
        match Refusal::of(lease, Some("running".into()), 2, vec![], model()).into_error(lease, &["fc1.weight", "fc9.weight"]) {
            StoreError::InvalidResult(m) => assert!(m.contains("job 7") && m.contains("\"fc9.weight\" is not a layer"), "{m}"),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn only_another_known_process_replaces_a_worker_ids_process() {
        assert!(replaces_process(Some("a"), "b"), "a restart or a second daemon");
        assert!(!replaces_process(Some("a"), "a"), "the same process registering again (a retry, a store reset)");
        assert!(!replaces_process(None, "b"), "first registration, or the last one did not say");
        assert!(!replaces_process(Some(""), "b"));
        assert!(!replaces_process(Some("a"), ""), "an older daemon that does not say");
    }
}
