//! Where finished jobs ran, and the `measured_throughput` view over those rows.

use crate::store::error::Result;
use crate::store::types::{Throughput, ThroughputRecord};
use sqlx::{FromRow, PgPool};

/// Records where jobs that just completed ran (`(job id, device)`), in one statement.
pub(crate) async fn record_devices(pool: &PgPool, devices: &[(i64, &str)]) -> Result<()> {
    let ids: Vec<i64> = devices.iter().map(|d| d.0).collect();
    let names: Vec<&str> = devices.iter().map(|d| d.1).collect();
    sqlx::query(sql!("record_devices")).bind(&ids).bind(&names).execute(pool).await?;
    Ok(())
}

pub(crate) async fn measured(pool: &PgPool) -> Result<Vec<Throughput>> {
    let rows = sqlx::query(sql!("measured_throughput")).fetch_all(pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(ThroughputRecord::from_row(r)?.into());
    }
    Ok(out)
}
