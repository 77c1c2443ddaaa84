//! A write made of many statements that must not hold SQLite's single write lock for long: a
//! series of transactions, each committed once it has held the lock for `hold` (Postgres: `hold`
//! None, one transaction). Used by big submits and their cleanup (`submit.rs`), and on SQLite by
//! the pause, resume, cancel and retry of a sweep (`sqlite/sweeps.rs`).

use super::error::Result;
use super::pool_wait;
use std::time::{Duration, Instant};

/// The pause after each of those commits: waiting writers retry every millisecond
/// (`sqlite_busy.rs`).
const PAUSE: Duration = Duration::from_millis(3);

pub(crate) struct PacedTx<'p, DB: sqlx::Database> {
    pool: &'p sqlx::Pool<DB>,
    /// The statement that opens a write transaction (SQLite: `BEGIN IMMEDIATE`).
    begin: Option<&'static str>,
    tx: Option<sqlx::Transaction<'static, DB>>,
    opened: Instant,
    hold: Option<Duration>,
}

impl<'p, DB: sqlx::Database> PacedTx<'p, DB> {
    pub(crate) fn new(pool: &'p sqlx::Pool<DB>, begin: Option<&'static str>, hold: Option<Duration>) -> Self {
        PacedTx { pool, begin, tx: None, opened: Instant::now(), hold }
    }

    /// The open transaction's connection, opening one if none is.
    pub(crate) async fn conn(&mut self) -> Result<&mut DB::Connection> {
        if self.tx.is_none() {
            self.tx = Some(pool_wait::begin(self.pool, "write", self.begin).await?);
            self.opened = Instant::now();
        }
        Ok(&mut **self.tx.as_mut().expect("opened above"))
    }

    /// Between statements: on SQLite, commits once the transaction has held the lock long
    /// enough, and pauses so that others get it.
    pub(crate) async fn pace(&mut self) -> Result<()> {
        if let Some(hold) = self.hold {
            if self.tx.is_some() && self.opened.elapsed() >= hold {
                self.commit_now().await?;
            }
        }
        Ok(())
    }

    /// On SQLite, commits what is written so far (so the next transaction starts with the lock
    /// fresh); on Postgres nothing: everything commits at [`PacedTx::finish`].
    pub(crate) async fn commit_now(&mut self) -> Result<()> {
        if self.hold.is_some() {
            if let Some(tx) = self.tx.take() {
                tx.commit().await?;
                tokio::time::sleep(PAUSE).await;
            }
        }
        Ok(())
    }

    pub(crate) async fn finish(mut self) -> Result<()> {
        if let Some(tx) = self.tx.take() {
            tx.commit().await?;
        }
        Ok(())
    }

    pub(crate) async fn rollback(mut self) -> Result<()> {
        if let Some(tx) = self.tx.take() {
            tx.rollback().await?;
        }
        Ok(())
    }
}
