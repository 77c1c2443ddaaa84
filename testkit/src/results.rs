//! A sweep's stored results read back from Postgres (or SQLite: [`sqlite`]), `lth-worker run-local`'s for the same chain,
//! and the invariants a finished sweep must hold (one result and one set of masks per
//! (trial, level), nothing running).
//!
//! run-local's reports are read as JSON (not through lth-worker's types) so that this crate
//! needs no tch; the f64s are compared bit for bit, which serde_json's `float_roundtrip` feature
//! makes exact (enabled below and by lth-worker itself).

use sqlx::Row;
use std::path::Path;
use std::process::{Command, Stdio};

/// A (metric, seed, level) result as stored: accuracy, sparsity and per-layer (name, kept, bits).
#[derive(Debug, PartialEq, Clone)]
pub struct StoredLevel {
    pub metric: String,
    pub seed: i64,
    pub level: i32,
    pub test_accuracy: f64,
    pub sparsity: f64,
    pub layers: Vec<(String, i64, String)>,
}

/// The sweep's ticket results (controls excluded), ordered by metric, seed and level.
pub async fn stored_results(pool: &sqlx::PgPool, sweep_id: i64) -> Vec<StoredLevel> {
    let rows = sqlx::query(
        "SELECT metric, seed, level, result_job_id, test_accuracy, sparsity FROM trial_results \
          WHERE sweep_id = $1 AND control IS NULL ORDER BY metric, seed, level",
    )
    .bind(sweep_id)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = Vec::new();
    for r in rows {
        let job: i64 = r.get("result_job_id");
        let layers = sqlx::query("SELECT layer, kept, bits::text AS bits FROM masks WHERE job_id = $1 ORDER BY ordinal")
            .bind(job)
            .fetch_all(pool)
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.get::<String, _>("layer"), m.get::<i64, _>("kept"), m.get::<String, _>("bits")))
            .collect();
        out.push(StoredLevel {
            metric: r.get("metric"),
            seed: r.get("seed"),
            level: r.get("level"),
            test_accuracy: r.get("test_accuracy"),
            sparsity: r.get("sparsity"),
            layers,
        });
    }
    out
}

/// MSB-first bits as a '0'/'1' string (Postgres's `bit varying` text form).
pub fn bit_string(bytes: &[u8], total: u64) -> String {
    (0..total as usize).map(|i| if bytes[i / 8] & (0x80 >> (i % 8)) != 0 { '1' } else { '0' }).collect()
}

/// `lth-worker run-local` of one chain of `sweep_file` (rate as run-local takes it: `0.2` or
/// `0.5,0.3`), in `dir/local-{file stem}-{metric}-{seed}`, as StoredLevel rows for levels 0..=levels.
pub fn run_local(dir: &Path, sweep_file: &Path, metric: &str, rate: &str, seed: u64, levels: u32) -> Vec<StoredLevel> {
    let stem = sweep_file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let out = dir.join(format!("local-{stem}-{metric}-{seed}"));
    let status = Command::new(crate::bin("lth-worker"))
        .args(["--threads", "1", "run-local"])
        .arg(sweep_file)
        .args(["--metric", metric, "--rate", rate, "--seed", &seed.to_string(), "--levels", &levels.to_string()])
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "run-local failed");
    (0..=levels)
        .map(|level| {
            let path = out.join(format!("level-{level}")).join("report.json");
            let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let f = |k: &str| report[k].as_f64().unwrap_or_else(|| panic!("{k} in {}", path.display()));
            let layers = report["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| {
                    let bits: Vec<u8> = l["mask_bits"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect();
                    (l["name"].as_str().unwrap().to_string(), l["kept"].as_i64().unwrap(), bit_string(&bits, l["total"].as_u64().unwrap()))
                })
                .collect();
            StoredLevel { metric: metric.into(), seed: seed as i64, level: level as i32, test_accuracy: f("test_accuracy"), sparsity: f("sparsity"), layers }
        })
        .collect()
}

/// Every stored level equals run-local's bit for bit (accuracy, sparsity, masks).
#[track_caller]
pub fn assert_same_results(stored: &[StoredLevel], local: &[StoredLevel]) {
    assert_eq!(stored.len(), local.len(), "levels stored vs run-local");
    for (d, l) in stored.iter().zip(local) {
        assert_eq!((d.metric.as_str(), d.seed, d.level), (l.metric.as_str(), l.seed, l.level));
        assert_eq!(d.test_accuracy.to_bits(), l.test_accuracy.to_bits(), "{} seed {} level {}: accuracy", l.metric, l.seed, l.level);
        assert_eq!(d.sparsity.to_bits(), l.sparsity.to_bits(), "{} seed {} level {}: sparsity", l.metric, l.seed, l.level);
        assert_eq!(d.layers, l.layers, "{} seed {} level {}: masks", l.metric, l.seed, l.level);
    }
}

/// One result row and one set of masks per (trial, level), `expected` of them.
pub async fn assert_one_result_per_trial_level(pool: &sqlx::PgPool, sweep_id: i64, expected: i64) {
    let rows: Vec<(i64, i32, i64)> = sqlx::query_as(
        "SELECT trial_id, level, count(*) FROM trial_results WHERE sweep_id = $1 GROUP BY trial_id, level ORDER BY 1, 2",
    )
    .bind(sweep_id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(rows.len() as i64, expected, "a result row for every (metric, rate, seed, level): {rows:?}");
    assert!(rows.iter().all(|r| r.2 == 1), "no duplicate results: {rows:?}");
    let masks: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT (tl.trial_id, tl.level)) FROM trial_levels tl JOIN masks m ON m.job_id = tl.result_job_id WHERE tl.sweep_id = $1",
    )
    .bind(sweep_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(masks, expected, "masks stored for every (trial, level)");
}

/// Each piece of work was recorded once: no two jobs of the store with the same content hash
/// both hold a result of their own (a re-run after a fault, or a twin in flight, must reuse the
/// first one's result, not write a second), and every succeeded job has exactly one result to
/// read, its own or the one it reuses.
pub async fn assert_no_duplicate_rows(pool: &sqlx::PgPool) {
    let twins: Vec<(String, i64)> = sqlx::query_as(
        "SELECT j.content_hash, count(*) FROM jobs j JOIN level_results r ON r.job_id = j.id \
          GROUP BY j.content_hash HAVING count(*) > 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(twins.is_empty(), "content hashes computed and stored more than once: {twins:?}");
    let without: Vec<(i64,)> = sqlx::query_as(
        "SELECT j.id FROM jobs j LEFT JOIN level_results r ON r.job_id = COALESCE(j.reused_from, j.id) \
          WHERE j.state = 'succeeded' AND r.job_id IS NULL",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(without.is_empty(), "succeeded jobs without a result: {without:?}");
}

/// No job anywhere in the store is running, and no attempt is still open.
pub async fn assert_nothing_running(pool: &sqlx::PgPool) {
    let running: Vec<(i64, Option<String>)> =
        sqlx::query_as("SELECT id, worker_id FROM jobs WHERE state = 'running' ORDER BY id").fetch_all(pool).await.unwrap();
    assert!(running.is_empty(), "jobs still running: {running:?}");
    let open: Vec<(i64, i32)> =
        sqlx::query_as("SELECT job_id, attempt FROM job_attempts WHERE outcome = 'running' ORDER BY 1, 2").fetch_all(pool).await.unwrap();
    assert!(open.is_empty(), "attempts still open: {open:?}");
}

/// The same readers and invariants on a SQLite store (same tables and views; masks' bits are a
/// BLOB there, MSB-first, turned into the '0'/'1' text Postgres gives).
pub mod sqlite {
    use super::{bit_string, StoredLevel};
    use sqlx::{Row, SqlitePool};

    /// [`super::stored_results`] on SQLite.
    pub async fn stored_results(pool: &SqlitePool, sweep_id: i64) -> Vec<StoredLevel> {
        let rows = sqlx::query(
            "SELECT metric, seed, level, result_job_id, test_accuracy, sparsity FROM trial_results \
              WHERE sweep_id = ? AND control IS NULL ORDER BY metric, seed, level",
        )
        .bind(sweep_id)
        .fetch_all(pool)
        .await
        .unwrap();
        let mut out = Vec::new();
        for r in rows {
            let job: i64 = r.get("result_job_id");
            let layers = sqlx::query("SELECT layer, kept, total, bits FROM masks WHERE job_id = ? ORDER BY ordinal")
                .bind(job)
                .fetch_all(pool)
                .await
                .unwrap()
                .into_iter()
                .map(|m| {
                    let bits: Vec<u8> = m.get("bits");
                    (m.get::<String, _>("layer"), m.get::<i64, _>("kept"), bit_string(&bits, m.get::<i64, _>("total") as u64))
                })
                .collect();
            out.push(StoredLevel {
                metric: r.get("metric"),
                seed: r.get("seed"),
                level: r.get::<i64, _>("level") as i32,
                test_accuracy: r.get("test_accuracy"),
                sparsity: r.get("sparsity"),
                layers,
            });
        }
        out
    }

    /// [`super::assert_one_result_per_trial_level`] on SQLite.
    pub async fn assert_one_result_per_trial_level(pool: &SqlitePool, sweep_id: i64, expected: i64) {
        let rows: Vec<(i64, i64, i64)> =
            sqlx::query_as("SELECT trial_id, level, count(*) FROM trial_results WHERE sweep_id = ? GROUP BY trial_id, level ORDER BY 1, 2")
                .bind(sweep_id)
                .fetch_all(pool)
                .await
                .unwrap();
        assert_eq!(rows.len() as i64, expected, "a result row for every (metric, rate, seed, level): {rows:?}");
        assert!(rows.iter().all(|r| r.2 == 1), "no duplicate results: {rows:?}");
        let masks: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT DISTINCT tl.trial_id, tl.level FROM trial_levels tl JOIN masks m ON m.job_id = tl.result_job_id WHERE tl.sweep_id = ?)",
        )
        .bind(sweep_id)
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(masks, expected, "masks stored for every (trial, level)");
    }

    /// [`super::assert_no_duplicate_rows`] on SQLite.
    pub async fn assert_no_duplicate_rows(pool: &SqlitePool) {
        let twins: Vec<(String, i64)> = sqlx::query_as(
            "SELECT j.content_hash, count(*) FROM jobs j JOIN level_results r ON r.job_id = j.id \
              GROUP BY j.content_hash HAVING count(*) > 1",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        assert!(twins.is_empty(), "content hashes computed and stored more than once: {twins:?}");
        let without: Vec<(i64,)> = sqlx::query_as(
            "SELECT j.id FROM jobs j LEFT JOIN level_results r ON r.job_id = COALESCE(j.reused_from, j.id) \
              WHERE j.state = 'succeeded' AND r.job_id IS NULL",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        assert!(without.is_empty(), "succeeded jobs without a result: {without:?}");
    }

    /// [`super::assert_nothing_running`] on SQLite.
    pub async fn assert_nothing_running(pool: &SqlitePool) {
        let running: Vec<(i64, Option<String>)> =
            sqlx::query_as("SELECT id, worker_id FROM jobs WHERE state = 'running' ORDER BY id").fetch_all(pool).await.unwrap();
        assert!(running.is_empty(), "jobs still running: {running:?}");
        let open: Vec<(i64, i64)> =
            sqlx::query_as("SELECT job_id, attempt FROM job_attempts WHERE outcome = 'running' ORDER BY 1, 2").fetch_all(pool).await.unwrap();
        assert!(open.is_empty(), "attempts still open: {open:?}");
    }
}
