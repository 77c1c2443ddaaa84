//! What `/metrics` reads from the database at scrape time (coordinator/src/http/metrics.rs): job
//! counts by state and by unfinished sweep in one grouped statement, and live workers.

use super::*;

/// One group of [`ScrapeCounts::jobs`]: jobs in `state`, of the unfinished sweep `sweep_id`
/// (None: the jobs of all finished sweeps together).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCountRow {
    pub state: String,
    pub sweep_id: Option<i64>,
    pub sweep_name: Option<String>,
    pub count: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrapeCounts {
    pub jobs: Vec<JobCountRow>,
    pub workers_live: i64,
    pub workers_registered: i64,
}

/// The connection pool right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

impl Store {
    /// Job counts by (state, unfinished sweep) and worker counts: two statements, both one pass.
    pub async fn scrape_counts(&self, live_within: Duration) -> Result<ScrapeCounts> {
        both!(self, |pool, d, DB| {
            let rows = sqlx::query(
                "SELECT j.state AS state, \
                        CASE WHEN s.state IN ('running', 'paused') THEN s.id END AS sweep_id, \
                        CASE WHEN s.state IN ('running', 'paused') THEN s.name END AS sweep_name, \
                        count(*) AS n \
                   FROM jobs j JOIN sweeps s ON s.id = j.sweep_id \
                  GROUP BY 1, 2, 3",
            )
            .fetch_all(pool)
            .await?;
            let mut jobs = Vec::with_capacity(rows.len());
            for r in rows {
                jobs.push(JobCountRow { state: r.try_get("state")?, sweep_id: r.try_get("sweep_id")?, sweep_name: r.try_get("sweep_name")?, count: r.try_get("n")? });
            }
            let cutoff = d.now_plus("$1");
            let w = sqlx::query(&format!(
                "SELECT count(*) AS registered, coalesce(sum(CASE WHEN last_seen >= {cutoff} THEN 1 ELSE 0 END), 0) AS live FROM workers"
            ))
            .bind(-live_within.as_secs_f64())
            .fetch_one(pool)
            .await?;
            Ok(ScrapeCounts { jobs, workers_registered: w.try_get("registered")?, workers_live: w.try_get("live")? })
        })
    }

    /// The pool's size, idle connections and limit.
    pub fn pool_stats(&self) -> PoolStats {
        both!(self, |pool, d, DB| {
            PoolStats { size: pool.size(), idle: pool.num_idle() as u32, max: pool.options().get_max_connections() }
        })
    }
}
