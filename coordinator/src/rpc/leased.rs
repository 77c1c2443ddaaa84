//! The kind of each job this coordinator handed out, by lease, so that an upload learns which
//! files its job may upload without a database round trip of its own.
//!
//! Why: that lookup (`running_job_kind.sql`) was the one unbatched statement of a job's life,
//! one of every four Postgres round trips at 100k queued jobs (BENCHMARKS.md, session 14). It is
//! not the fence: the batched record statement (`record_artifacts.sql`) checks the lease again,
//! under the job row's lock, and refuses a stale one (the stored object is then deleted). So an
//! entry here may outlive its lease (a reaped or cancelled attempt) without harm: such an upload
//! is read and stored, then refused as it was before, STALE_LEASE. A lease not here (this
//! coordinator restarted, the table was full) falls back to the lookup, which also refuses a
//! stale lease before any byte is read.

use crate::store::Lease;
use lth_sweep::state::JobKind;
use std::collections::HashMap;
use std::sync::Mutex;

/// Far above the jobs one coordinator has running at once; entries of leases that ended without a
/// completion, failure or release (reaped, cancelled) are dropped when it fills.
const CAPACITY: usize = 1 << 16;

#[derive(Default)]
pub(super) struct LeasedKinds {
    kinds: Mutex<HashMap<Lease, JobKind>>,
}

impl LeasedKinds {
    /// A lease this coordinator just handed out, with its job's kind.
    pub(super) fn handed_out(&self, lease: Lease, kind: JobKind) {
        let mut kinds = self.kinds.lock().unwrap();
        if kinds.len() >= CAPACITY && !kinds.contains_key(&lease) {
            // The leaked entries cannot be told from live ones; live ones fall back to the lookup.
            kinds.clear();
        }
        kinds.insert(lease, kind);
    }

    /// The kind of the job `lease` names, if this coordinator handed it out and it has not ended.
    pub(super) fn kind(&self, lease: Lease) -> Option<JobKind> {
        self.kinds.lock().unwrap().get(&lease).copied()
    }

    /// The lease ended (completed, failed, released): its uploads go to the lookup again.
    pub(super) fn ended(&self, lease: Lease) {
        self.kinds.lock().unwrap().remove(&lease);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.kinds.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(job_id: i64, attempt: i32) -> Lease {
        Lease { job_id, attempt }
    }

    #[test]
    fn a_lease_is_known_until_it_ends_and_only_with_its_own_attempt() {
        let k = LeasedKinds::default();
        k.handed_out(lease(7, 1), JobKind::Level);
        assert_eq!(k.kind(lease(7, 1)), Some(JobKind::Level));
        assert_eq!(k.kind(lease(7, 2)), None, "another attempt of the job is not this lease");
        assert_eq!(k.kind(lease(8, 1)), None);
        k.ended(lease(7, 1));
        assert_eq!(k.kind(lease(7, 1)), None);
    }

    #[test]
    fn a_full_table_starts_again_instead_of_growing() {
        let k = LeasedKinds::default();
        for id in 0..CAPACITY as i64 {
            k.handed_out(lease(id, 1), JobKind::Dense);
        }
        assert_eq!(k.len(), CAPACITY);
        // Handing out a lease already there does not empty it.
        k.handed_out(lease(0, 1), JobKind::Dense);
        assert_eq!(k.len(), CAPACITY);
        k.handed_out(lease(CAPACITY as i64, 1), JobKind::Level);
        assert_eq!(k.len(), 1, "full: the table was emptied, then the new lease kept");
        assert_eq!(k.kind(lease(CAPACITY as i64, 1)), Some(JobKind::Level));
        assert_eq!(k.kind(lease(0, 1)), None, "a dropped entry falls back to the database lookup");
    }
}
