//! Read-only queries of the web dashboard: one page of rows each, aggregated in SQL through the
//! views SQL users read (docs/sql.md).

use crate::store::error::Result;
use crate::store::types::{ArtifactInfo, AttemptRow, CollapseWarning, JobResult, JobRow, KeptCell, OverlapCell, SweepListRow};
use sqlx::types::Json;
use sqlx::{FromRow, SqlitePool, Row};

pub(crate) async fn sweeps(pool: &SqlitePool, state: Option<&str>, limit: i64, offset: i64) -> Result<(Vec<SweepListRow>, i64)> {
    let total: i64 = sqlx::query_scalar(sql!("dashboard_sweep_count")).bind(state).fetch_one(pool).await?;
    let rows = sqlx::query(sql!("dashboard_sweeps")).bind(state).bind(limit).bind(offset).fetch_all(pool).await?;
    Ok((rows.iter().map(SweepListRow::from_row).collect::<Result<_, _>>()?, total))
}

pub(crate) async fn kept(pool: &SqlitePool, sweep_id: i64) -> Result<Vec<KeptCell>> {
    let rows = sqlx::query(sql!("dashboard_kept")).bind(sweep_id).fetch_all(pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(KeptCell {
            metric: r.try_get("metric")?,
            rate: r.try_get("rate")?,
            level: r.try_get("level")?,
            layer: r.try_get("layer")?,
            ordinal: r.try_get("ordinal")?,
            kept_fraction: r.try_get("kept_fraction")?,
            collapsed: r.try_get::<i32, _>("collapsed")? != 0,
        });
    }
    Ok(out)
}

pub(crate) async fn overlap(pool: &SqlitePool, sweep_id: i64, level: i32) -> Result<Vec<OverlapCell>> {
    let rows = sqlx::query(sql!("dashboard_overlap")).bind(sweep_id).bind(level).fetch_all(pool).await?;
    Ok(rows.iter().map(OverlapCell::from_row).collect::<Result<_, _>>()?)
}

pub(crate) async fn collapse(pool: &SqlitePool, sweep_id: i64, limit: i64) -> Result<Vec<CollapseWarning>> {
    let mut out = Vec::new();
    for r in sqlx::query(sql!("dashboard_dead_classes")).bind(sweep_id).bind(limit).fetch_all(pool).await? {
        let dead: i64 = r.try_get("dead")?;
        out.push(CollapseWarning {
            metric: r.try_get("metric")?,
            rate: r.try_get("rate")?,
            seed: r.try_get("seed")?,
            first_level: r.try_get("first_level")?,
            what: format!("{dead} dead classes (no kept weight reaches them)"),
        });
    }
    for r in sqlx::query(sql!("dashboard_collapsed_layers")).bind(sweep_id).bind(limit).fetch_all(pool).await? {
        let layer: String = r.try_get("layer")?;
        out.push(CollapseWarning {
            metric: r.try_get("metric")?,
            rate: r.try_get("rate")?,
            seed: r.try_get("seed")?,
            first_level: r.try_get("first_level")?,
            what: format!("layer {layer} collapsed (nothing kept)"),
        });
    }
    Ok(out)
}

pub(crate) async fn jobs(pool: &SqlitePool, sweep_id: i64, state: Option<&str>, limit: i64, offset: i64) -> Result<(Vec<JobRow>, i64)> {
    let total: i64 = sqlx::query_scalar(sql!("dashboard_job_count")).bind(sweep_id).bind(state).fetch_one(pool).await?;
    let rows = sqlx::query(sql!("dashboard_jobs")).bind(sweep_id).bind(state).bind(limit).bind(offset).fetch_all(pool).await?;
    Ok((rows.iter().map(JobRow::from_row).collect::<Result<_, _>>()?, total))
}

/// The detail of the job's latest progress report.
pub(crate) async fn last_progress(pool: &SqlitePool, job_id: i64) -> Result<Option<serde_json::Value>> {
    let detail: Option<Option<Json<serde_json::Value>>> = sqlx::query_scalar(sql!("dashboard_last_progress")).bind(job_id).fetch_optional(pool).await?;
    Ok(detail.flatten().map(|Json(v)| v))
}

/// (at, attempt, detail) of the job's latest `limit` progress reports, oldest first.
pub(crate) async fn progress(pool: &SqlitePool, job_id: i64, limit: i64) -> Result<Vec<(chrono::DateTime<chrono::Utc>, Option<i32>, Option<serde_json::Value>)>> {
    let rows = sqlx::query(sql!("dashboard_progress")).bind(job_id).bind(limit).fetch_all(pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let detail: Option<Json<serde_json::Value>> = r.try_get("detail")?;
        out.push((r.try_get("at")?, r.try_get("attempt")?, detail.map(|Json(v)| v)));
    }
    Ok(out)
}

pub(crate) async fn attempts(pool: &SqlitePool, job_id: i64) -> Result<Vec<AttemptRow>> {
    let rows = sqlx::query(sql!("dashboard_attempts")).bind(job_id).fetch_all(pool).await?;
    Ok(rows.iter().map(AttemptRow::from_row).collect::<Result<_, _>>()?)
}

pub(crate) async fn artifacts(pool: &SqlitePool, job_id: i64) -> Result<Vec<ArtifactInfo>> {
    let rows = sqlx::query(sql!("dashboard_artifacts")).bind(job_id).fetch_all(pool).await?;
    Ok(rows.iter().map(ArtifactInfo::from_row).collect::<Result<_, _>>()?)
}

pub(crate) async fn job_result(pool: &SqlitePool, job_id: i64) -> Result<Option<JobResult>> {
    match sqlx::query(sql!("dashboard_job_result")).bind(job_id).fetch_optional(pool).await? {
        Some(r) => Ok(Some(JobResult::from_row(&r)?)),
        None => Ok(None),
    }
}

pub(crate) async fn worker_jobs(pool: &SqlitePool, limit: i64) -> Result<Vec<(String, i64, i64)>> {
    let rows = sqlx::query(sql!("dashboard_worker_jobs")).bind(limit).fetch_all(pool).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push((r.try_get("worker_id")?, r.try_get("id")?, r.try_get("sweep_id")?));
    }
    Ok(out)
}
