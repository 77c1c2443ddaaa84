//! A sweep's results, as GetResults and the dashboard read them.

use crate::store::error::Result;
use crate::store::types::{AccuracyRow, LayerRecord, LayerStatsRow, ResultRecord, ResultRow};
use sqlx::{FromRow, PgPool};
use std::collections::HashMap;

pub(crate) async fn accuracy(pool: &PgPool, sweep_id: i64) -> Result<Vec<AccuracyRow>> {
    let rows = sqlx::query(sql!("accuracy")).bind(sweep_id).fetch_all(pool).await?;
    Ok(rows.iter().map(AccuracyRow::from_row).collect::<Result<_, _>>()?)
}

pub(crate) async fn results(pool: &PgPool, sweep_id: i64) -> Result<Vec<ResultRow>> {
    let rows = sqlx::query(sql!("results")).bind(sweep_id).fetch_all(pool).await?;
    let mut layers: HashMap<i64, Vec<LayerStatsRow>> = HashMap::new();
    for r in &sqlx::query(sql!("result_layers")).bind(sweep_id).fetch_all(pool).await? {
        let m = LayerRecord::from_row(r)?;
        layers.entry(m.job_id).or_default().push(m.into());
    }
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let rec = ResultRecord::from_row(r)?;
        let l = layers.get(&rec.result_job_id).cloned().unwrap_or_default();
        out.push(rec.into_row(l)?);
    }
    Ok(out)
}
