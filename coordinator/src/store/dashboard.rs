//! Read-only queries for the web dashboard (`http/dashboard`): one page of rows each, aggregated
//! in SQL through the same views SQL users read (docs/sql.md), so a page costs the same for a
//! sweep of 10 jobs and of 10,000.

use super::{JobRow, Result, Store, StoreError, JOB_COLUMNS, PG, SQLITE};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::Row;

/// One row of the Sweeps page.
#[derive(Debug, Clone)]
pub struct SweepListRow {
    pub id: i64,
    pub name: String,
    pub state: String,
    pub owner: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub jobs: i64,
    pub succeeded: i64,
    pub running: i64,
    pub failed: i64,
    /// Training wall-clock seconds of the sweep's succeeded jobs (level_results.wall_seconds).
    pub compute_seconds: f64,
    /// Mean wall seconds of a succeeded job (None before the first).
    pub mean_job_seconds: Option<f64>,
}

/// A layer's mean kept fraction over seeds at one (metric, rate, level): the heatmap's cell.
#[derive(Debug, Clone, PartialEq)]
pub struct KeptCell {
    pub metric: String,
    pub rate: f64,
    pub level: i32,
    pub layer: String,
    pub ordinal: i32,
    pub kept_fraction: f64,
    pub collapsed: bool,
}

/// Mean Jaccard of two metrics' tickets over seeds at one (rate, level).
#[derive(Debug, Clone, PartialEq)]
pub struct OverlapCell {
    pub rate: f64,
    pub metric_a: String,
    pub metric_b: String,
    pub jaccard: f64,
    pub seeds: i64,
}

/// A (metric, rate, seed) whose tickets lose classes or layers, from which level on.
#[derive(Debug, Clone, PartialEq)]
pub struct CollapseWarning {
    pub metric: String,
    pub rate: f64,
    pub seed: i64,
    pub first_level: i32,
    /// "dead classes: N" or "layer L collapsed".
    pub what: String,
}

/// A running job with the last throughput its worker reported.
#[derive(Debug, Clone)]
pub struct RunningJob {
    pub job: JobRow,
    pub images_per_second: Option<f64>,
}

/// One progress report of a job (the events table's detail).
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressPoint {
    pub at: DateTime<Utc>,
    pub attempt: i32,
    pub iteration: f64,
    pub epoch: f64,
    pub train_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    pub images_per_second: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRow {
    pub attempt: i32,
    pub worker_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactInfo {
    pub name: String,
    pub attempt: i32,
    pub uri: String,
    pub sha256: String,
    pub bytes: i64,
    pub created_at: DateTime<Utc>,
}

/// A job's result row, when it has one (its own, or the job it was reused from).
#[derive(Debug, Clone, PartialEq)]
pub struct JobResult {
    pub sparsity: f64,
    pub test_accuracy: f64,
    pub test_loss: f64,
    pub train_loss: f64,
    pub epochs: f64,
    pub wall_seconds: f64,
}

fn f64_of(v: &serde_json::Value, key: &str) -> Option<f64> {
    v.get(key).and_then(|x| x.as_f64())
}

impl Store {
    /// A page of sweeps, newest first, optionally of one state, with their job counts and the
    /// training time of their succeeded jobs. Also returns how many sweeps match.
    pub async fn dashboard_sweeps(&self, state: Option<&str>, limit: i64, offset: i64) -> Result<(Vec<SweepListRow>, i64)> {
        both!(self, |pool, d, DB| {
            let total: i64 = sqlx::query_scalar("SELECT count(*) FROM sweeps WHERE ($1 IS NULL OR state = $1)").bind(state).fetch_one(pool).await?;
            let rows = sqlx::query(
                "SELECT s.id, s.name, s.state, s.owner, s.created_at, s.finished_at, \
                        (SELECT count(*) FROM jobs j WHERE j.sweep_id = s.id) AS jobs, \
                        (SELECT count(*) FROM jobs j WHERE j.sweep_id = s.id AND j.state = 'succeeded') AS succeeded, \
                        (SELECT count(*) FROM jobs j WHERE j.sweep_id = s.id AND j.state = 'running') AS running, \
                        (SELECT count(*) FROM jobs j WHERE j.sweep_id = s.id AND j.state = 'failed') AS failed, \
                        (SELECT CAST(COALESCE(sum(r.wall_seconds), 0) AS DOUBLE PRECISION) FROM jobs j JOIN level_results r ON r.job_id = j.id WHERE j.sweep_id = s.id) AS compute_seconds, \
                        (SELECT CAST(avg(r.wall_seconds) AS DOUBLE PRECISION) FROM jobs j JOIN level_results r ON r.job_id = j.id WHERE j.sweep_id = s.id) AS mean_job_seconds \
                   FROM sweeps s WHERE ($1 IS NULL OR s.state = $1) ORDER BY s.id DESC LIMIT $2 OFFSET $3",
            )
            .bind(state)
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push(SweepListRow {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    state: r.try_get("state")?,
                    owner: r.try_get("owner")?,
                    created_at: r.try_get("created_at")?,
                    finished_at: r.try_get("finished_at")?,
                    jobs: r.try_get("jobs")?,
                    succeeded: r.try_get("succeeded")?,
                    running: r.try_get("running")?,
                    failed: r.try_get("failed")?,
                    compute_seconds: r.try_get("compute_seconds")?,
                    mean_job_seconds: r.try_get("mean_job_seconds")?,
                });
            }
            Ok((out, total))
        })
    }

    /// The layer_kept_fraction view of a sweep's tickets (constant rates), averaged over seeds,
    /// in network order.
    pub async fn dashboard_kept(&self, sweep_id: i64) -> Result<Vec<KeptCell>> {
        both!(self, |pool, d, DB| {
            let rows = sqlx::query(
                "SELECT metric, rate, level, layer, ordinal, CAST(avg(kept_fraction) AS DOUBLE PRECISION) AS kept_fraction, \
                        CAST(max(CASE WHEN collapsed THEN 1 ELSE 0 END) AS INTEGER) AS collapsed \
                   FROM layer_kept_fraction WHERE sweep_id = $1 AND control IS NULL AND schedule IS NULL \
                  GROUP BY metric, rate, level, layer, ordinal ORDER BY metric, rate, ordinal, level",
            )
            .bind(sweep_id)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
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
        })
    }

    /// The ticket_overlap view at one level, averaged over seeds (constant rates).
    pub async fn dashboard_overlap(&self, sweep_id: i64, level: i32) -> Result<Vec<OverlapCell>> {
        both!(self, |pool, d, DB| {
            let rows = sqlx::query(
                "SELECT rate, metric_a, metric_b, CAST(avg(jaccard) AS DOUBLE PRECISION) AS jaccard, count(*) AS seeds \
                   FROM ticket_overlap WHERE sweep_id = $1 AND level = $2 AND schedule IS NULL \
                  GROUP BY rate, metric_a, metric_b ORDER BY rate, metric_a, metric_b",
            )
            .bind(sweep_id)
            .bind(level)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push(OverlapCell {
                    rate: r.try_get("rate")?,
                    metric_a: r.try_get("metric_a")?,
                    metric_b: r.try_get("metric_b")?,
                    jaccard: r.try_get("jaccard")?,
                    seeds: r.try_get("seeds")?,
                });
            }
            Ok(out)
        })
    }

    /// Tickets with dead classes (dead_units) or collapsed layers (collapsed_layers): the first
    /// level per (metric, rate, seed), at most `limit` of each.
    pub async fn dashboard_collapse(&self, sweep_id: i64, limit: i64) -> Result<Vec<CollapseWarning>> {
        both!(self, |pool, d, DB| {
            let mut out = Vec::new();
            for r in sqlx::query(
                "SELECT metric, rate, seed, min(level) AS first_level, max(dead_classes) AS dead FROM dead_units \
                  WHERE sweep_id = $1 AND dead_classes > 0 AND control IS NULL GROUP BY metric, rate, seed ORDER BY metric, rate, seed LIMIT $2",
            )
            .bind(sweep_id)
            .bind(limit)
            .fetch_all(pool)
            .await?
            {
                let dead: i64 = r.try_get("dead")?;
                out.push(CollapseWarning {
                    metric: r.try_get("metric")?,
                    rate: r.try_get("rate")?,
                    seed: r.try_get("seed")?,
                    first_level: r.try_get("first_level")?,
                    what: format!("{dead} dead classes (no kept weight reaches them)"),
                });
            }
            for r in sqlx::query(
                "SELECT metric, rate, seed, layer, min(level) AS first_level FROM collapsed_layers \
                  WHERE sweep_id = $1 AND control IS NULL GROUP BY metric, rate, seed, layer ORDER BY metric, rate, seed, layer LIMIT $2",
            )
            .bind(sweep_id)
            .bind(limit)
            .fetch_all(pool)
            .await?
            {
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
        })
    }

    /// A page of a sweep's jobs, optionally of one state, in id order, and how many match.
    pub async fn dashboard_jobs(&self, sweep_id: i64, state: Option<&str>, limit: i64, offset: i64) -> Result<(Vec<JobRow>, i64)> {
        both!(self, |pool, d, DB| {
            let total: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE sweep_id = $1 AND ($2 IS NULL OR state = $2)")
                .bind(sweep_id)
                .bind(state)
                .fetch_one(pool)
                .await?;
            let rows = sqlx::query(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE sweep_id = $1 AND ($2 IS NULL OR state = $2) ORDER BY id LIMIT $3 OFFSET $4"
            ))
            .bind(sweep_id)
            .bind(state)
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push(job_from_row!(r));
            }
            Ok((out, total))
        })
    }

    /// The sweep's running jobs (at most `limit`) with the images/s of their latest progress report.
    pub async fn dashboard_running(&self, sweep_id: i64, limit: i64) -> Result<Vec<RunningJob>> {
        let (jobs, _) = self.dashboard_jobs(sweep_id, Some("running"), limit, 0).await?;
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            let detail: Option<Json<serde_json::Value>> = both!(self, |pool, d, DB| {
                sqlx::query_scalar("SELECT detail FROM events WHERE job_id = $1 AND kind = 'progress' ORDER BY id DESC LIMIT 1")
                    .bind(job.id)
                    .fetch_optional(pool)
                    .await?
                    .flatten()
            });
            let images_per_second = detail.and_then(|Json(v)| f64_of(&v, "images_per_second"));
            out.push(RunningJob { job, images_per_second });
        }
        Ok(out)
    }

    /// A job's progress reports, oldest first (at most `limit`, the latest kept).
    pub async fn dashboard_progress(&self, job_id: i64, limit: i64) -> Result<Vec<ProgressPoint>> {
        both!(self, |pool, d, DB| {
            let rows = sqlx::query(
                "SELECT at, attempt, detail FROM (SELECT id, at, attempt, detail FROM events WHERE job_id = $1 AND kind = 'progress' \
                  ORDER BY id DESC LIMIT $2) t ORDER BY id",
            )
            .bind(job_id)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let Some(Json(v)): Option<Json<serde_json::Value>> = r.try_get("detail")? else { continue };
                out.push(ProgressPoint {
                    at: r.try_get("at")?,
                    attempt: r.try_get::<Option<i32>, _>("attempt")?.unwrap_or(0),
                    iteration: f64_of(&v, "iteration").unwrap_or(0.0),
                    epoch: f64_of(&v, "epoch").unwrap_or(0.0),
                    train_loss: f64_of(&v, "train_loss"),
                    test_accuracy: f64_of(&v, "test_accuracy"),
                    images_per_second: f64_of(&v, "images_per_second"),
                });
            }
            Ok(out)
        })
    }

    pub async fn dashboard_attempts(&self, job_id: i64) -> Result<Vec<AttemptRow>> {
        both!(self, |pool, d, DB| {
            let rows = sqlx::query("SELECT attempt, worker_id, started_at, finished_at, outcome, error FROM job_attempts WHERE job_id = $1 ORDER BY attempt")
                .bind(job_id)
                .fetch_all(pool)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push(AttemptRow {
                    attempt: r.try_get("attempt")?,
                    worker_id: r.try_get("worker_id")?,
                    started_at: r.try_get("started_at")?,
                    finished_at: r.try_get("finished_at")?,
                    outcome: r.try_get("outcome")?,
                    error: r.try_get("error")?,
                });
            }
            Ok(out)
        })
    }

    pub async fn dashboard_artifacts(&self, job_id: i64) -> Result<Vec<ArtifactInfo>> {
        both!(self, |pool, d, DB| {
            let rows = sqlx::query("SELECT name, attempt, uri, sha256, bytes, created_at FROM artifacts WHERE job_id = $1 ORDER BY name")
                .bind(job_id)
                .fetch_all(pool)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push(ArtifactInfo {
                    name: r.try_get("name")?,
                    attempt: r.try_get("attempt")?,
                    uri: r.try_get("uri")?,
                    sha256: r.try_get("sha256")?,
                    bytes: r.try_get("bytes")?,
                    created_at: r.try_get("created_at")?,
                });
            }
            Ok(out)
        })
    }

    /// The job's result: its own row, or that of the job it was reused from.
    pub async fn dashboard_job_result(&self, job_id: i64) -> Result<Option<JobResult>> {
        both!(self, |pool, d, DB| {
            let r = sqlx::query(
                "SELECT r.sparsity, r.test_accuracy, r.test_loss, r.train_loss, r.epochs, r.wall_seconds \
                   FROM jobs j JOIN level_results r ON r.job_id = COALESCE(j.reused_from, j.id) WHERE j.id = $1",
            )
            .bind(job_id)
            .fetch_optional(pool)
            .await?;
            match r {
                None => Ok(None),
                Some(r) => Ok(Some(JobResult {
                    sparsity: r.try_get("sparsity")?,
                    test_accuracy: r.try_get("test_accuracy")?,
                    test_loss: r.try_get("test_loss")?,
                    train_loss: r.try_get("train_loss")?,
                    epochs: r.try_get("epochs")?,
                    wall_seconds: r.try_get("wall_seconds")?,
                })),
            }
        })
    }

    /// Running jobs per worker: (worker_id, job id, sweep id), at most `limit`.
    pub async fn dashboard_worker_jobs(&self, limit: i64) -> Result<Vec<(String, i64, i64)>> {
        both!(self, |pool, d, DB| {
            let rows = sqlx::query("SELECT worker_id, id, sweep_id FROM jobs WHERE state = 'running' AND worker_id IS NOT NULL ORDER BY worker_id, id LIMIT $1")
                .bind(limit)
                .fetch_all(pool)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                out.push((r.try_get("worker_id")?, r.try_get("id")?, r.try_get("sweep_id")?));
            }
            Ok(out)
        })
    }

    /// The sweep a job belongs to (NotFound when the job does not exist).
    pub async fn dashboard_job_sweep(&self, job_id: i64) -> Result<i64> {
        both!(self, |pool, d, DB| {
            sqlx::query_scalar("SELECT sweep_id FROM jobs WHERE id = $1")
                .bind(job_id)
                .fetch_optional(pool)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("job {job_id} does not exist")))
        })
    }
}
