//! The events table, as WatchSweep and the dashboard read it.

use crate::store::error::Result;
use crate::store::types::{EventRecord, EventRow, JobRow};
use sqlx::{FromRow, SqlitePool};

pub(crate) async fn after(pool: &SqlitePool, sweep_id: i64, after_event_id: i64, limit: i64) -> Result<Vec<EventRow>> {
    let rows = sqlx::query(sql!("events_after")).bind(sweep_id).bind(after_event_id).bind(limit).fetch_all(pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let e = EventRecord::from_row(r)?;
        let job = if e.id.is_some() { Some(JobRow::from_row(r)?) } else { None };
        out.push(e.into_event(job));
    }
    Ok(out)
}

pub(crate) async fn last_id(pool: &SqlitePool, sweep_id: i64) -> Result<i64> {
    let v: Option<i64> = sqlx::query_scalar(sql!("last_event_id")).bind(sweep_id).fetch_one(pool).await?;
    Ok(v.unwrap_or(0))
}
