//! Where finished jobs ran, and the `measured_throughput` view over those rows.

use crate::store::error::Result;
use crate::store::types::{Throughput, ThroughputRecord};
use sqlx::{FromRow, SqlitePool};

pub(crate) async fn measured(pool: &SqlitePool) -> Result<Vec<Throughput>> {
    let rows = sqlx::query(sql!("measured_throughput")).fetch_all(pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(ThroughputRecord::from_row(r)?.into());
    }
    Ok(out)
}
