//! SQL functions the SQLite views need but the bundled SQLite lacks.
//!
//! sqlx's bundled SQLite is built without the math functions, and `accuracy_vs_sparsity` needs
//! `sqrt()` for the standard deviation. The sqlite3 shell has it built in, so the view works there
//! too; here it is registered on every connection the coordinator opens.

use libsqlite3_sys as ffi;
use sqlx::SqliteConnection;
use std::os::raw::c_int;

unsafe extern "C" fn sqrt_fn(ctx: *mut ffi::sqlite3_context, argc: c_int, argv: *mut *mut ffi::sqlite3_value) {
    // SAFETY: SQLite calls this with `argc` valid values (we registered arity 1).
    unsafe {
        if argc != 1 || ffi::sqlite3_value_type(*argv) == ffi::SQLITE_NULL {
            ffi::sqlite3_result_null(ctx);
            return;
        }
        let v = ffi::sqlite3_value_double(*argv);
        if v < 0.0 {
            ffi::sqlite3_result_null(ctx);
        } else {
            ffi::sqlite3_result_double(ctx, v.sqrt());
        }
    }
}

/// Registers `sqrt(x)` on one connection.
pub async fn register(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    // SAFETY: `db` is a live connection held locked by `handle`; the name is a static C string and
    // the function has no user data to free.
    let rc = unsafe {
        ffi::sqlite3_create_function_v2(
            db,
            c"sqrt".as_ptr(),
            1,
            ffi::SQLITE_UTF8 | ffi::SQLITE_DETERMINISTIC,
            std::ptr::null_mut(),
            Some(sqrt_fn),
            None,
            None,
            None,
        )
    };
    if rc != ffi::SQLITE_OK {
        return Err(sqlx::Error::Protocol(format!("cannot register sqrt() on SQLite (code {rc})")));
    }
    Ok(())
}
