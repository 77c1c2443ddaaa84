//! The reaper's pass: expired leases, and trials and sweeps that completions left open.

use super::{begin_write, finalize_sweeps, record_lost};
use crate::store::error::Result;
use crate::store::types::Lease;
use sqlx::PgPool;

/// Re-queues jobs whose lease expired (counted as lost) and closes what is done; trials only
/// among those with a job that succeeded after event `since` (None: every running trial).
/// `closed_through`, when given, is recorded as the reaper's mark in the same transaction (see
/// [`crate::store::Store::reap_after`]). Returns the lost leases, the sweeps it closed and the
/// newest event id when it began.
pub(crate) async fn reap(pool: &PgPool, since: Option<i64>, closed_through: Option<i64>) -> Result<(Vec<Lease>, Vec<i64>, i64)> {
    let mut tx = begin_write(pool, "write").await?;
    let watermark: i64 = sqlx::query_scalar(sql!("newest_event_id")).fetch_one(&mut *tx).await?;
    let rows = sqlx::query(sql!("reap_expired")).fetch_all(&mut *tx).await?;
    let lost = record_lost(&mut tx, &rows, "lease expired").await?;
    match since {
        None => {
            sqlx::query(sql!("close_finished_trials")).execute(&mut *tx).await?;
        }
        Some(after) => {
            // Custom plans for this transaction: a generic plan for `e.id > $1` expects a third
            // of all events and scans them.
            sqlx::query(sql!("custom_plans_in_this_transaction")).execute(&mut *tx).await?;
            sqlx::query(sql!("close_finished_trials_since")).bind(after).execute(&mut *tx).await?;
        }
    }
    if let Some(mark) = closed_through {
        sqlx::query(sql!("record_reaper_mark")).bind(mark).execute(&mut *tx).await?;
    }
    let finished = finalize_sweeps(&mut tx, None).await?;
    tx.commit().await?;
    Ok((lost, finished, watermark))
}

/// The reaper's mark: trials with events up to it are closed (None: not known).
pub(crate) async fn mark(pool: &PgPool) -> Result<Option<i64>> {
    let mark: Option<Option<i64>> = sqlx::query_scalar(sql!("reaper_mark")).fetch_optional(pool).await?;
    Ok(mark.flatten())
}
