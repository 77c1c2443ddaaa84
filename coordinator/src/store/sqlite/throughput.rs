//! Where finished jobs ran, and the `measured_throughput` view over those rows.

use super::begin_write;
use crate::store::error::Result;
use crate::store::types::{Throughput, ThroughputRecord};
use sqlx::{FromRow, SqlitePool};

/// Records where jobs that just completed ran (`(job id, device)`), in one write transaction.
pub(crate) async fn record_devices(pool: &SqlitePool, devices: &[(i64, &str)]) -> Result<()> {
    let mut tx = begin_write(pool, "write").await?;
    for (id, device) in devices {
        sqlx::query(sql!("record_device")).bind(id).bind(device).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}
pub(crate) async fn measured(pool: &SqlitePool) -> Result<Vec<Throughput>> {
    let rows = sqlx::query(sql!("measured_throughput")).fetch_all(pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(ThroughputRecord::from_row(r)?.into());
    }
    Ok(out)
}
