//! Vacuuming the jobs table when claims have left many dead row versions (see
//! [`crate::store::Store::vacuum_jobs_if_needed`] for why the coordinator does it itself).

use crate::store::error::Result;
use crate::store::types::VacuumReport;
use sqlx::{PgPool, Row};

/// Dead row versions in `jobs` before the coordinator vacuums it (plus 2% of the live rows).
const VACUUM_MIN_DEAD: i64 = 20_000;

pub(crate) async fn vacuum_jobs_if_needed(pool: &PgPool) -> Result<Option<VacuumReport>> {
    let Some(row) = sqlx::query(sql!("jobs_dead_rows")).fetch_optional(pool).await? else { return Ok(None) };
    let (dead, live): (i64, i64) = (row.try_get("n_dead_tup")?, row.try_get("n_live_tup")?);
    if dead < VACUUM_MIN_DEAD + live / 50 {
        return Ok(None);
    }
    let t = std::time::Instant::now();
    sqlx::query(sql!("vacuum_jobs")).execute(pool).await?;
    Ok(Some(VacuumReport { dead_rows: dead, took: t.elapsed() }))
}
