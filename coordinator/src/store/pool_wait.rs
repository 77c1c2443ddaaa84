//! How long the hot paths wait for a database connection: `lth_db_pool_wait_seconds{op}`.
//!
//! sqlx times nothing of its pool's acquire, so the store takes the connection itself on the hot
//! paths (claim, complete, heartbeat; every write transaction: each backend's `begin_write`, and `paced.rs`) and records
//! the wait. When the pool is too small for the load (`--db-max-connections`), this is where it
//! shows first: claims and completions queue for a connection before any SQL runs, and
//! `lth_db_errors_total{kind="pool_timed_out"}` only counts the waits that gave up (10 s).

use std::time::Instant;

/// The histogram's name (described and given its buckets in `http/metrics.rs`).
pub const POOL_WAIT_SECONDS: &str = "lth_db_pool_wait_seconds";

/// A connection from `pool`, with the time spent waiting for it recorded under `op`. A wait that
/// fails (the pool timed out or is closed) is recorded too: it is the longest wait there is.
pub async fn acquire<DB: sqlx::Database>(pool: &sqlx::Pool<DB>, op: &'static str) -> Result<sqlx::pool::PoolConnection<DB>, sqlx::Error> {
    let started = Instant::now();
    let conn = pool.acquire().await;
    metrics::histogram!(POOL_WAIT_SECONDS, "op" => op).record(started.elapsed().as_secs_f64());
    conn
}

/// A transaction begun with `statement` (None: the backend's plain BEGIN) on a connection from
/// [`acquire`], so the wait is timed apart from the BEGIN round trip.
pub async fn begin<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    op: &'static str,
    statement: Option<&'static str>,
) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    let conn = acquire(pool, op).await?;
    // What Pool::begin / begin_with do after their own (untimed) acquire.
    sqlx::Transaction::begin(conn, statement.map(Into::into)).await
}
