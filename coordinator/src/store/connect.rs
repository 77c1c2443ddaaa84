//! Opening the database: the URL decides the backend; migrations run before the pool serves.

use super::error::{Result, StoreError};
use super::{sqlite_busy, sqlite_fns, Store};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::str::FromStr;
use std::time::Duration;

/// Connection settings beyond the URL.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_connections: u32,
    /// Postgres: plan every prepared statement once per connection (`plan_cache_mode =
    /// force_generic_plan`) instead of letting Postgres re-plan it for each call's parameters.
    /// The batched claim is a dozen-part statement whose planning costs more than its execution
    /// (2-3 ms against 0.7 ms), and Postgres keeps choosing custom plans for it; the store's other
    /// statements are keyed lookups for which the generic plan is the custom plan.
    pub generic_plans: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { max_connections: 16, generic_plans: true }
    }
}

/// Hides a password in a database URL before it goes into an error message or a log.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    url.to_string()
}

impl Store {
    /// Connects and applies the embedded migrations. `url` is `postgres://...` or `sqlite://PATH`
    /// (`sqlite://lth.db` creates the file when missing).
    pub async fn connect(url: &str, opts: &StoreOptions) -> Result<Store> {
        let shown = redact_url(url);
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let conn = PgConnectOptions::from_str(url).map_err(|e| {
                StoreError::Connect(format!(
                    "{shown} is not a valid Postgres URL ({e}); write postgres://USER[:PASSWORD]@HOST:PORT/DATABASE"
                ))
            })?;
            // JIT compiles a statement whose estimated cost is high, and a generic plan's
            // estimates (thousands of rows for a claim batch of 17) often are: Postgres then
            // compiled ~100 functions with inlining for every claim, about 1 s each
            // (BENCHMARKS.md). The coordinator only runs short statements; JIT never pays.
            let conn = conn.options([("jit", "off")]);
            let conn = if opts.generic_plans { conn.options([("plan_cache_mode", "force_generic_plan")]) } else { conn };
            let pool = PgPoolOptions::new()
                .max_connections(opts.max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(conn)
                .await
                .map_err(|e| {
                    StoreError::Connect(format!(
                        "cannot connect to Postgres at {shown}: {e}. Check that the server is running, the database exists and the user may log in"
                    ))
                })?;
            sqlx::migrate!("../migrations/postgres").run(&pool).await.map_err(|e| {
                StoreError::Migrate(format!(
                    "{e} (database {shown}). The schema was left as it was; if this database belongs to another program use a fresh one, or fix the failing migration and restart"
                ))
            })?;
            Ok(Store::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let conn = SqliteConnectOptions::from_str(url)
                .map_err(|e| {
                    StoreError::Connect(format!("{shown} is not a valid SQLite URL ({e}); write sqlite://PATH, e.g. sqlite://lth.db"))
                })?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(sqlite_busy::BUSY_TIMEOUT);
            // Migrations run on a connection of their own with foreign keys off: rebuilding a
            // table (SQLite's way to change a constraint) drops the old one, which with foreign
            // keys on would cascade-delete its children. The keys are checked once migrated.
            {
                use sqlx::ConnectOptions;
                let mut mc = conn.clone().foreign_keys(false).connect().await.map_err(|e| {
                    StoreError::Connect(format!(
                        "cannot open SQLite database {shown}: {e}. Check that the directory exists and is writable"
                    ))
                })?;
                sqlite_fns::register(&mut mc).await?;
                sqlx::migrate!("../migrations/sqlite").run(&mut mc).await.map_err(|e| {
                    StoreError::Migrate(format!(
                        "{e} (database {shown}). The schema was left as it was; move this file away to start fresh, or fix the failing migration"
                    ))
                })?;
                let broken = sqlx::query("PRAGMA foreign_key_check").fetch_all(&mut mc).await?;
                if !broken.is_empty() {
                    return Err(StoreError::Migrate(format!(
                        "database {shown}: {} rows violate foreign keys after migrating (PRAGMA foreign_key_check lists them)",
                        broken.len()
                    )));
                }
                use sqlx::Connection;
                mc.close().await?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(opts.max_connections.min(8))
                .after_connect(|conn, _meta| {
                    Box::pin(async move {
                        sqlite_fns::register(conn).await?;
                        sqlite_busy::install(conn).await
                    })
                })
                .connect_with(conn)
                .await
                .map_err(|e| {
                    StoreError::Connect(format!(
                        "cannot open SQLite database {shown}: {e}. Check that the directory exists and is writable"
                    ))
                })?;
            Ok(Store::Sqlite(pool))
        } else {
            Err(StoreError::Connect(format!(
                "unsupported database URL {shown}: use sqlite://PATH (embedded, one machine) or postgres://USER@HOST:PORT/DATABASE"
            )))
        }
    }
}
