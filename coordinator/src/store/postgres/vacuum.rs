//! Vacuuming the jobs table when claims have left many dead row versions (see
//! [`crate::store::Store::vacuum_jobs_if_needed`] for why the coordinator does it itself).

use crate::store::error::Result;
use crate::store::types::VacuumReport;
use sqlx::{PgPool, Row};

/// Dead row versions in `jobs` before the coordinator vacuums it (plus 2% of the live rows).
const VACUUM_MIN_DEAD: i64 = 20_000;

/// Also analyzes the table when a tenth of its rows changed since the last analyze. The job
/// states shift wholesale while a sweep runs (a submit writes a million blocked jobs, the dense
/// jobs then unblock them), and the completion's plan depends on them: with the statistics of the
/// submit, a completion at 1M jobs bitmap-scanned every open job of the sweep (988 ms for 13
/// completions, measured); analyzed, 24 ms. Autoanalyze gets there too, a minute or more later.
pub(crate) async fn vacuum_jobs_if_needed(pool: &PgPool) -> Result<Option<VacuumReport>> {
    let Some(row) = sqlx::query(sql!("jobs_dead_rows")).fetch_optional(pool).await? else { return Ok(None) };
    let (dead, live, modified): (i64, i64, i64) = (row.try_get("n_dead_tup")?, row.try_get("n_live_tup")?, row.try_get("n_mod_since_analyze")?);
    let vacuum = dead >= VACUUM_MIN_DEAD + live / 50;
    let analyze = modified >= VACUUM_MIN_DEAD + live / 10;
    let t = std::time::Instant::now();
    let statement = match (vacuum, analyze) {
        (false, false) => return Ok(None),
        (true, false) => sql!("vacuum_jobs"),
        (true, true) => sql!("vacuum_analyze_jobs"),
        (false, true) => sql!("analyze_jobs"),
    };
    sqlx::query(statement).execute(pool).await?;
    Ok(Some(VacuumReport { dead_rows: dead, vacuumed: vacuum, analyzed: analyze, took: t.elapsed() }))
}
