//! The lifecycle of sweeps, trials, jobs and attempts as types, and the rules between them.
//!
//! The store keeps these states as TEXT columns (with CHECK constraints naming exactly the values
//! below) and the protocol carries them as strings; this module is the one place that says what
//! the values are and which transitions the scheduler allows, as pure functions that need no
//! database (HyperQueue's `tako` keeps its task states the same way). With the `sqlx` feature the
//! enums decode from and encode to those TEXT columns directly, on either backend.

use std::fmt;
use std::str::FromStr;

/// Defines a string-backed state enum: `as_str`, `Display`, `FromStr` (with the list of values in
/// the error) and, behind the `sqlx` feature, a TEXT column type.
macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $variant),+ }

        // TEXT on both backends (sqlx's derive would declare a Postgres enum type of that name).
        #[cfg(feature = "sqlx")]
        impl<DB: sqlx::Database> sqlx::Type<DB> for $name where str: sqlx::Type<DB> {
            fn type_info() -> DB::TypeInfo {
                <str as sqlx::Type<DB>>::type_info()
            }
            fn compatible(ty: &DB::TypeInfo) -> bool {
                <str as sqlx::Type<DB>>::compatible(ty)
            }
        }

        #[cfg(feature = "sqlx")]
        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $name where &'r str: sqlx::Decode<'r, DB> {
            fn decode(value: <DB as sqlx::Database>::ValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
                Ok(<&'r str as sqlx::Decode<'r, DB>>::decode(value)?.parse::<$name>()?)
            }
        }

        #[cfg(feature = "sqlx")]
        impl<'q, DB: sqlx::Database> sqlx::Encode<'q, DB> for $name where &'q str: sqlx::Encode<'q, DB> {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as sqlx::Database>::ArgumentBuffer<'q>,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&'q str as sqlx::Encode<'q, DB>>::encode_by_ref(&self.as_str(), buf)
            }
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as the store and the protocol spell it.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, UnknownState> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownState { what: stringify!($name), value: s.to_string(), expected: &[$($text),+] }),
                }
            }
        }
    };
}

/// A state string that is none of the type's values (a row written by a newer lth, or a typo).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a {what} (expected one of {expected:?})")]
pub struct UnknownState {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static [&'static str],
}

text_enum! {
    /// A sweep's state (`sweeps.state`).
    SweepState {
        /// Its grid is still being written (in short transactions on SQLite): nothing of it is
        /// claimable yet, and a crash leaves it to be discarded when the coordinator starts.
        Submitting = "submitting",
        /// Jobs are claimed as they become ready.
        Running = "running",
        /// Nothing is claimed; running jobs were handed back and resume from their checkpoints.
        Paused = "paused",
        Succeeded = "succeeded",
        /// Finished, with at least one failed trial.
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

text_enum! {
    /// A trial's state (`trials.state`): one (metric, rate, seed) chain of levels.
    TrialState {
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

text_enum! {
    /// A job's state (`jobs.state`).
    JobState {
        /// Waiting for its parent job to succeed.
        Blocked = "blocked",
        /// Claimable (unless its sweep is paused or an identical job is in flight).
        Ready = "ready",
        /// Leased to a worker: `jobs.attempt` names the current attempt.
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

text_enum! {
    /// What a job computes (`jobs.kind`). A control is a `level` job with `jobs.control` set.
    JobKind {
        /// Level 0 of a seed: trains the dense network and records the rewind point θk.
        Dense = "dense",
        /// Prune the parent's weights, rewind to θk, retrain.
        Level = "level",
    }
}

text_enum! {
    /// How one attempt at a job ended (`job_attempts.outcome`).
    AttemptOutcome {
        /// Not ended: the attempt holds the job's lease.
        Running = "running",
        Succeeded = "succeeded",
        /// The worker reported a failure (counted against `max_attempts` when retryable).
        Failed = "failed",
        /// The lease expired: the worker died or lost contact (counted apart from failures).
        Lost = "lost",
        /// Ended by the scheduler or handed back (pause, cancel, ReleaseJob): counted as neither.
        Aborted = "aborted",
    }
}

/// Why a heartbeat tells a worker to stop a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    Cancelled,
    Paused,
    /// The lease is no longer this attempt's (expired and re-queued, or the job moved on).
    LeaseLost,
}

/// An operation a person (or lthctl) asks of a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepOp {
    Pause,
    Resume,
    Cancel,
    Retry,
}

impl SweepOp {
    pub fn as_str(self) -> &'static str {
        match self {
            SweepOp::Pause => "pause",
            SweepOp::Resume => "resume",
            SweepOp::Cancel => "cancel",
            SweepOp::Retry => "retry",
        }
    }
}

/// What an operation does to a sweep in a given state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Carry it out.
    Proceed,
    /// The sweep is already where the operation would take it: succeed without a change.
    AlreadyDone,
    /// Not allowed in this state; the text says why and what is possible.
    Refused(String),
}

impl SweepState {
    /// No job of the sweep will run again without a retry (a sweep being submitted is not finished).
    pub fn is_finished(self) -> bool {
        matches!(self, SweepState::Succeeded | SweepState::Failed | SweepState::Cancelled)
    }

    /// Whether workers may claim the sweep's ready jobs.
    pub fn claims_allowed(self) -> bool {
        self == SweepState::Running
    }

    /// The rule for each operation in each state. Pausing a paused sweep, resuming a running one
    /// and cancelling a cancelled one are no-ops (so a retried request is harmless); a retry
    /// reopens any sweep but a cancelled one (a paused sweep's retried jobs wait for its resume).
    pub fn allows(self, op: SweepOp, sweep_id: i64) -> Verdict {
        use SweepOp::*;
        use SweepState::*;
        match (op, self) {
            (Pause, Paused) | (Resume, Running) | (Cancel, Cancelled) => Verdict::AlreadyDone,
            (Cancel, Submitting) => Verdict::Refused(format!(
                "sweep {sweep_id} is still being submitted; cancel it once `lthctl status {sweep_id}` shows it running"
            )),
            (Retry, Submitting) => Verdict::Refused(format!("sweep {sweep_id} is still being submitted: nothing of it has run yet")),
            (Pause, Running) | (Resume, Paused) | (Cancel, Running | Paused) => Verdict::Proceed,
            (Retry, Running | Paused | Failed | Succeeded) => Verdict::Proceed,
            (Pause, other) => Verdict::Refused(format!("sweep {sweep_id} is {other}; only a running sweep can be paused")),
            (Resume, other) => Verdict::Refused(format!("sweep {sweep_id} is {other}; only a paused sweep can be resumed")),
            (Cancel, other) => Verdict::Refused(format!("sweep {sweep_id} already finished ({other}); nothing to cancel")),
            (Retry, other) => Verdict::Refused(format!(
                "sweep {sweep_id} is {other}; a cancelled sweep cannot be retried: submit it again (finished jobs are reused)"
            )),
        }
    }
}

impl JobState {
    /// The job will not change again without a retry.
    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }

    /// Not finished: blocked, ready or running (what keeps a sweep open).
    pub fn is_open(self) -> bool {
        !self.is_finished()
    }

    /// The state a job is created in: done already when its result is reused, ready when its
    /// parent is done (or it has none), else blocked until its parent completes.
    pub fn initial(reused: bool, parent_done: bool) -> JobState {
        match (reused, parent_done) {
            (true, _) => JobState::Succeeded,
            (false, true) => JobState::Ready,
            (false, false) => JobState::Blocked,
        }
    }

    /// Where a failed job goes when its sweep is retried: ready when its parent has succeeded
    /// (or it has none), else blocked behind the parent, which is retried too.
    pub fn on_retry(parent_done: bool) -> JobState {
        JobState::initial(false, parent_done)
    }
}

impl JobKind {
    /// The artifacts an attempt must upload before its completion is accepted: what its children
    /// download. A dense job hands on θk (`rewind`) and its trained `weights`; a level job (ticket
    /// or control) its `weights`.
    pub fn uploads_needed(self) -> &'static [&'static str] {
        match self {
            JobKind::Dense => &["rewind", "weights"],
            JobKind::Level => &["weights"],
        }
    }

    /// The names a worker may upload for a job of this kind: the needed ones plus a resume
    /// `checkpoint`. Anything else is refused.
    pub fn uploads_allowed(self) -> &'static [&'static str] {
        match self {
            JobKind::Dense => &["rewind", "weights", "checkpoint"],
            JobKind::Level => &["weights", "checkpoint"],
        }
    }
}

/// Why a worker holding `(job, attempt)` must stop, given the job's and its sweep's states now,
/// once its lease could not be extended. Cancellation wins over a pause.
pub fn abort_reason(job: JobState, sweep: SweepState) -> AbortReason {
    if job == JobState::Cancelled || sweep == SweepState::Cancelled {
        AbortReason::Cancelled
    } else if sweep == SweepState::Paused {
        AbortReason::Paused
    } else {
        AbortReason::LeaseLost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_round_trips_through_its_text() {
        fn check<T: Copy + PartialEq + fmt::Debug + FromStr<Err = UnknownState> + fmt::Display>(all: &[T]) {
            for v in all {
                assert_eq!(v.to_string().parse::<T>().unwrap(), *v);
            }
        }
        check(SweepState::ALL);
        check(TrialState::ALL);
        check(JobState::ALL);
        check(JobKind::ALL);
        check(AttemptOutcome::ALL);
        let e = "done".parse::<JobState>().unwrap_err();
        assert_eq!(e.what, "JobState");
        assert!(e.to_string().contains("\"done\" is not a JobState"), "{e}");
        assert!(e.expected.contains(&"blocked"));
    }

    /// The values must be exactly those the schema's CHECK constraints allow.
    #[test]
    fn values_match_the_schemas_check_constraints() {
        let schema = include_str!("../../migrations/postgres/20261127000001_schema.sql");
        let check_of = |column: &str| -> Vec<String> {
            let line = schema
                .lines()
                .find(|l| l.trim_start().starts_with(column) && l.contains("CHECK"))
                .unwrap_or_else(|| panic!("no CHECK for {column}"));
            let inside = &line[line.find(" IN (").unwrap() + 5..line.rfind("))").unwrap()];
            inside.split(',').map(|s| s.trim().trim_matches('\'').to_string()).collect()
        };
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        let texts = |all: &[&str]| sorted(all.iter().map(|s| s.to_string()).collect());
        // sweeps.state, trials.state and jobs.state appear in that order in the schema file.
        let states: Vec<Vec<String>> = schema
            .lines()
            .filter(|l| l.trim_start().starts_with("state") && l.contains("CHECK"))
            .map(|line| {
                let inside = &line[line.find(" IN (").unwrap() + 5..line.rfind("))").unwrap()];
                sorted(inside.split(',').map(|s| s.trim().trim_matches('\'').to_string()).collect())
            })
            .collect();
        // 'submitting' came with a later migration, which rebuilds the CHECK.
        let later = include_str!("../../migrations/postgres/20261203200000_submitting_sweeps.sql");
        assert!(later.contains("'submitting'"), "the migration that adds the submitting state");
        let mut sweep_states = states[0].clone();
        sweep_states.push("submitting".to_string());
        assert_eq!(sorted(sweep_states), texts(&SweepState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()));
        assert_eq!(states[1], texts(&TrialState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()));
        assert_eq!(states[2], texts(&JobState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()));
        assert_eq!(sorted(check_of("kind")), texts(&JobKind::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()));
        assert_eq!(sorted(check_of("outcome")), texts(&AttemptOutcome::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()));
    }

    #[test]
    fn sweep_operations_follow_the_state_table() {
        use SweepOp::*;
        use SweepState::*;
        let v = |s: SweepState, op| s.allows(op, 7);
        assert_eq!(v(Running, Pause), Verdict::Proceed);
        assert_eq!(v(Paused, Pause), Verdict::AlreadyDone);
        assert_eq!(v(Paused, Resume), Verdict::Proceed);
        assert_eq!(v(Running, Resume), Verdict::AlreadyDone);
        assert_eq!(v(Running, Cancel), Verdict::Proceed);
        assert_eq!(v(Paused, Cancel), Verdict::Proceed);
        assert_eq!(v(Cancelled, Cancel), Verdict::AlreadyDone);
        for s in [Succeeded, Failed] {
            assert!(matches!(v(s, Pause), Verdict::Refused(m) if m.contains("only a running sweep can be paused")));
            assert!(matches!(v(s, Resume), Verdict::Refused(_)));
            assert!(matches!(v(s, Cancel), Verdict::Refused(m) if m.contains("already finished")));
            assert_eq!(v(s, Retry), Verdict::Proceed, "a finished sweep reopens");
        }
        assert_eq!(v(Running, Retry), Verdict::Proceed);
        assert_eq!(v(Paused, Retry), Verdict::Proceed);
        assert!(matches!(v(Cancelled, Retry), Verdict::Refused(m) if m.contains("sweep 7 is cancelled")));
        assert!(matches!(v(Cancelled, Pause), Verdict::Refused(_)));
        assert!(matches!(v(Cancelled, Resume), Verdict::Refused(_)));
        for op in [Pause, Resume, Cancel, Retry] {
            assert!(matches!(v(Submitting, op), Verdict::Refused(_)), "{op:?} of a sweep still being submitted");
        }
        // Only a running sweep hands out work; exactly the three end states are finished.
        assert_eq!(SweepState::ALL.iter().filter(|s| s.claims_allowed()).collect::<Vec<_>>(), [&Running]);
        assert_eq!(SweepState::ALL.iter().filter(|s| s.is_finished()).count(), 3);
    }

    #[test]
    fn jobs_start_where_their_parent_allows_and_finish_in_three_states() {
        assert_eq!(JobState::initial(true, false), JobState::Succeeded);
        assert_eq!(JobState::initial(true, true), JobState::Succeeded);
        assert_eq!(JobState::initial(false, true), JobState::Ready);
        assert_eq!(JobState::initial(false, false), JobState::Blocked);
        assert_eq!(JobState::on_retry(true), JobState::Ready);
        assert_eq!(JobState::on_retry(false), JobState::Blocked);
        let open: Vec<_> = JobState::ALL.iter().filter(|s| s.is_open()).map(|s| s.as_str()).collect();
        assert_eq!(open, ["blocked", "ready", "running"]);
    }

    #[test]
    fn each_kind_uploads_what_its_children_download() {
        assert_eq!(JobKind::Dense.uploads_needed(), ["rewind", "weights"]);
        assert_eq!(JobKind::Level.uploads_needed(), ["weights"]);
        for k in JobKind::ALL {
            for n in k.uploads_needed() {
                assert!(k.uploads_allowed().contains(n), "{k}: a needed upload must be allowed");
            }
            assert!(k.uploads_allowed().contains(&"checkpoint"));
        }
        assert!(!JobKind::Level.uploads_allowed().contains(&"rewind"), "only the dense job records θk");
    }

    #[test]
    fn cancellation_beats_a_pause_and_anything_else_is_a_lost_lease() {
        use JobState as J;
        use SweepState as S;
        assert_eq!(abort_reason(J::Cancelled, S::Running), AbortReason::Cancelled);
        assert_eq!(abort_reason(J::Ready, S::Cancelled), AbortReason::Cancelled);
        assert_eq!(abort_reason(J::Cancelled, S::Paused), AbortReason::Cancelled);
        assert_eq!(abort_reason(J::Ready, S::Paused), AbortReason::Paused);
        assert_eq!(abort_reason(J::Running, S::Running), AbortReason::LeaseLost);
        assert_eq!(abort_reason(J::Succeeded, S::Succeeded), AbortReason::LeaseLost);
    }
}
