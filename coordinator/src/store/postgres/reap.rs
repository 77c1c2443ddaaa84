//! The reaper's pass: expired leases, and trials and sweeps that completions left open.

use super::{begin_write, close_attempt, finalize_sweeps, insert_job_event};
use crate::store::error::Result;
use crate::store::types::Lease;
use sqlx::{PgPool, Row};

/// Re-queues jobs whose lease expired (counted as lost) and closes what is done. Returns the lost
/// leases and the sweeps it closed.
pub(crate) async fn reap(pool: &PgPool) -> Result<(Vec<Lease>, Vec<i64>)> {
    let mut tx = begin_write(pool, "write").await?;
    let rows = sqlx::query(sql!("reap_expired")).fetch_all(&mut *tx).await?;
    let mut lost = Vec::with_capacity(rows.len());
    for r in &rows {
        let l = Lease { job_id: r.try_get("id")?, attempt: r.try_get("attempt")? };
        let sweep_id: i64 = r.try_get("sweep_id")?;
        close_attempt(&mut tx, l, "lost", "lease expired").await?;
        insert_job_event(&mut tx, sweep_id, l.job_id, "ready", l.attempt, None, None).await?;
        lost.push(l);
    }
    sqlx::query(sql!("close_finished_trials")).execute(&mut *tx).await?;
    let finished = finalize_sweeps(&mut tx, None).await?;
    tx.commit().await?;
    Ok((lost, finished))
}
