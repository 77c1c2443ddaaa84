//! The statements of a submit on Sqlite (the order and contents of the writes:
//! `store/submit.rs`). One transaction: Sqlite readers and writers do not wait for it.

use super::{finalize_sweeps, insert_sweep_event};
use crate::store::error::Result;
use crate::store::submit::{InsertedJob, InsertedTrial, NewJob, NewTrial, SubmitSql, BIND_ROWS};
use lth_sweep::SweepSpec;
use sqlx::types::Json;
use sqlx::{FromRow, SqliteConnection, SqlitePool, Sqlite, QueryBuilder, Row};
use std::collections::HashMap;

/// The database clock, for a reused job's `finished_at` in a VALUES row.
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// What `insert_jobs.sql` returns of each job.
const JOBS_RETURNING: &str = " RETURNING id, content_hash, state, trial_id, level, parent_job_id";
/// What `insert_trials.sql` returns of each trial.
const TRIALS_RETURNING: &str = " RETURNING id, metric, rate, seed, schedule";

impl SubmitSql for Sqlite {
    async fn insert_sweep(conn: &mut SqliteConnection, spec: &SweepSpec, token: Option<&str>, owner: Option<&str>) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(sql!("insert_sweep"))
            .bind(token)
            .bind(&spec.name)
            .bind(Json(spec))
            .bind(spec.priority)
            .bind(spec.max_attempts as i32)
            .bind(owner)
            .fetch_optional(conn)
            .await?)
    }

    async fn insert_jobs(conn: &mut SqliteConnection, rows: &[NewJob<'_>]) -> Result<Vec<InsertedJob>> {
        let mut qb = QueryBuilder::<Sqlite>::new(sql!("insert_jobs"));
        qb.push(" ");
        qb.push_values(rows, |mut b, j| {
            b.push_bind(j.sweep_id)
                .push_bind(j.trial_id)
                .push_bind(j.kind)
                .push_bind(j.seed)
                .push_bind(j.metric)
                .push_bind(j.rate)
                .push_bind(j.level)
                .push_bind(j.parent_job_id)
                .push_bind(j.dense_job_id)
                .push_bind(j.state)
                .push_bind(j.priority)
                .push_bind(j.max_attempts)
                .push_bind(j.content_hash)
                .push_bind(j.reused_from)
                .push_bind(j.control)
                .push_bind(if j.reused_from.is_some() { 1.0f64 } else { 0.0 })
                .push(if j.reused_from.is_some() { NOW } else { "NULL" });
        });
        qb.push(JOBS_RETURNING);
        let out = qb.build().fetch_all(conn).await?;
        Ok(out.iter().map(InsertedJob::from_row).collect::<Result<_, _>>()?)
    }

    async fn insert_trials(conn: &mut SqliteConnection, rows: &[NewTrial<'_>]) -> Result<Vec<InsertedTrial>> {
        let mut qb = QueryBuilder::<Sqlite>::new(sql!("insert_trials"));
        qb.push(" ");
        qb.push_values(rows, |mut b, t| {
            b.push_bind(t.sweep_id)
                .push_bind(t.metric)
                .push_bind(t.rate)
                .push_bind(t.seed)
                .push_bind(t.levels)
                .push_bind(t.dense_job_id)
                .push_bind(t.state)
                .push_bind(t.schedule.clone());
        });
        qb.push(TRIALS_RETURNING);
        let out = qb.build().fetch_all(conn).await?;
        Ok(out.iter().map(InsertedTrial::from_row).collect::<Result<_, _>>()?)
    }

    async fn make_ready(conn: &mut SqliteConnection, ids: &[i64]) -> Result<()> {
        sqlx::query(sql!("make_ready")).bind(serde_json::to_string(ids).expect("ids serialise")).execute(conn).await?;
        Ok(())
    }

    async fn assign_bundles(conn: &mut SqliteConnection, pairs: &[(i64, i64)]) -> Result<()> {
        let (ids, bundles): (Vec<i64>, Vec<i64>) = pairs.iter().copied().unzip();
        let json = |v: &[i64]| serde_json::to_string(v).expect("ids serialise");
        sqlx::query(sql!("bundle_assign")).bind(json(&ids)).bind(json(&bundles)).execute(conn).await?;
        Ok(())
    }

    async fn open_sweep(conn: &mut SqliteConnection, sweep_id: i64) -> Result<bool> {
        if sqlx::query(sql!("open_sweep")).bind(sweep_id).execute(&mut *conn).await?.rows_affected() != 1 {
            return Ok(false);
        }
        insert_sweep_event(conn, sweep_id, None).await?;
        finalize_sweeps(conn, Some(sweep_id)).await?;
        Ok(true)
    }

    async fn sweep_state(conn: &mut SqliteConnection, sweep_id: i64) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(sql!("sweep_state")).bind(sweep_id).fetch_optional(conn).await?)
    }

    async fn delete_level_jobs(conn: &mut SqliteConnection, sweep_id: i64) -> Result<u64> {
        Ok(sqlx::query(sql!("delete_level_jobs")).bind(sweep_id).execute(conn).await?.rows_affected())
    }

    async fn delete_submitting_sweep(conn: &mut SqliteConnection, sweep_id: i64) -> Result<()> {
        sqlx::query(sql!("delete_submitting_sweep")).bind(sweep_id).execute(conn).await?;
        Ok(())
    }
}

/// Succeeded jobs with these content hashes: hash -> the job holding the results (the oldest).
pub(crate) async fn reusable_hashes(pool: &SqlitePool, hashes: &[&str]) -> Result<HashMap<String, i64>> {
    let mut found: HashMap<String, i64> = HashMap::new();
    let mut conn = pool.acquire().await?;
    for chunk in hashes.chunks(BIND_ROWS) {
        for r in sqlx::query(sql!("reusable_hashes")).bind(serde_json::to_string(chunk).expect("hashes serialise")).fetch_all(&mut *conn).await? {
            found.entry(r.try_get("content_hash")?).or_insert(r.try_get("src")?);
        }
    }
    Ok(found)
}

/// The sweep a submit with this client token created: (id, spec, state).
pub(crate) async fn sweep_by_token(pool: &SqlitePool, token: &str) -> Result<Option<(i64, SweepSpec, String)>> {
    match sqlx::query(sql!("sweep_by_token")).bind(token).fetch_optional(pool).await? {
        None => Ok(None),
        Some(r) => {
            let Json(spec): Json<SweepSpec> = r.try_get("spec")?;
            Ok(Some((r.try_get("id")?, spec, r.try_get("state")?)))
        }
    }
}

/// (jobs, reused jobs, dense jobs, trials) of a sweep.
pub(crate) async fn submitted_counts(pool: &SqlitePool, sweep_id: i64) -> Result<(i64, i64, i64, i64)> {
    let r = sqlx::query(sql!("submitted_counts")).bind(sweep_id).fetch_one(pool).await?;
    Ok((r.try_get("jobs")?, r.try_get("reused")?, r.try_get("dense")?, r.try_get("trials")?))
}

pub(crate) async fn unfinished_submits(pool: &SqlitePool) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar(sql!("unfinished_submits")).fetch_all(pool).await?)
}
