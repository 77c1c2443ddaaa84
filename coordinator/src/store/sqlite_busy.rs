//! The busy handler of the coordinator's SQLite connections: retry the lock every millisecond.
//!
//! SQLite lets one writer in at a time. A writer that finds the lock taken calls the connection's
//! busy handler; the one `busy_timeout` installs sleeps 1, 2, 5, 10, … and then 100 ms between
//! tries. A heartbeat asleep for 100 ms misses the short gaps a large submit leaves between its
//! transactions (store/submit.rs) and can wait out the whole submit. Retrying every millisecond
//! takes the lock in the first gap. The limit is the same as before: after [`BUSY_TIMEOUT`] the
//! statement fails with SQLITE_BUSY ("database is locked").

use libsqlite3_sys as ffi;
use sqlx::SqliteConnection;
use std::cell::Cell;
use std::os::raw::{c_int, c_void};
use std::time::{Duration, Instant};

/// How long a statement waits for the write lock before it fails.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Between tries.
const RETRY_EVERY: Duration = Duration::from_millis(1);

thread_local! {
    /// When the current wait for the lock began. SQLite calls the handler on the thread that
    /// runs the statement (each sqlx SQLite connection has its own), with `count` = 0 first.
    static WAITING_SINCE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// SQLite's busy callback: 1 = try again, 0 = give up (the statement returns SQLITE_BUSY).
unsafe extern "C" fn retry_soon(_arg: *mut c_void, count: c_int) -> c_int {
    let now = Instant::now();
    let since = WAITING_SINCE.with(|w| {
        let since = match w.get() {
            Some(t) if count > 0 => t,
            _ => now,
        };
        w.set(Some(since));
        since
    });
    if now.duration_since(since) >= BUSY_TIMEOUT {
        return 0;
    }
    std::thread::sleep(RETRY_EVERY);
    1
}

/// Replaces the connection's busy handler with [`retry_soon`].
pub async fn install(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: `db` is a live connection held locked by `handle`; the handler keeps no user data.
    let rc = unsafe { ffi::sqlite3_busy_handler(db, Some(retry_soon), std::ptr::null_mut()) };
    if rc != ffi::SQLITE_OK {
        return Err(sqlx::Error::Protocol(format!("cannot set the SQLite busy handler (code {rc})")));
    }
    Ok(())
}
