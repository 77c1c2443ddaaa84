//! What `/metrics` reads at scrape time: two statements, both one pass.

use crate::store::error::Result;
use crate::store::types::{JobCountRow, ScrapeCounts};
use sqlx::{FromRow, SqlitePool, Row};
use std::time::Duration;

pub(crate) async fn counts(pool: &SqlitePool, live_within: Duration) -> Result<ScrapeCounts> {
    let rows = sqlx::query(sql!("scrape_jobs")).fetch_all(pool).await?;
    let jobs = rows.iter().map(JobCountRow::from_row).collect::<Result<_, _>>()?;
    let w = sqlx::query(sql!("scrape_workers")).bind(-live_within.as_secs_f64()).fetch_one(pool).await?;
    Ok(ScrapeCounts { jobs, workers_registered: w.try_get("registered")?, workers_live: w.try_get("live")? })
}
