//! SQL functions the SQLite views need but the bundled SQLite lacks, registered on every connection
//! the coordinator opens.
//!
//! - `sqrt(x)`: sqlx's bundled SQLite is built without the math functions, and
//!   `accuracy_vs_sparsity` needs it for the standard deviation (the sqlite3 shell has it built in).
//! - `shared_bits(a, b [, c ...])`: the number of bits set in every one of the mask BLOBs (popcount
//!   of their AND); `differing_bits(a, b)`: the number set in exactly one (popcount of the XOR).
//!   Postgres has the same functions over `bit varying` (migration 20261201300100), so
//!   `ticket_overlap` and the queries of docs/sql.md read the same on both backends. Masks of
//!   different lengths are an error, as on Postgres; a NULL argument gives NULL.

use libsqlite3_sys as ffi;
use sqlx::SqliteConnection;
use std::os::raw::{c_char, c_int, c_void};

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

/// How the mask bytes of several blobs combine into the counted byte.
#[derive(Clone, Copy)]
enum Combine {
    And,
    Xor,
}

/// The popcount of the byte-wise combination of equally long blobs; `Err` names the problem.
fn count_combined(blobs: &[&[u8]], op: Combine) -> Result<u64, String> {
    let Some(first) = blobs.first() else { return Ok(0) };
    if let Some(b) = blobs.iter().find(|b| b.len() != first.len()) {
        return Err(format!("masks of different lengths ({} and {} bytes): compare masks of the same layer", first.len(), b.len()));
    }
    let mut n = 0u64;
    for i in 0..first.len() {
        let mut byte = first[i];
        for b in &blobs[1..] {
            byte = match op {
                Combine::And => byte & b[i],
                Combine::Xor => byte ^ b[i],
            };
        }
        n += u64::from(byte.count_ones());
    }
    Ok(n)
}

/// Reads the arguments as blobs, or sets NULL (a NULL argument) or an error result and returns None.
///
/// SAFETY: `argv` holds `argc` values valid for the duration of the call, and the returned slices
/// do not outlive it.
unsafe fn blob_args<'a>(ctx: *mut ffi::sqlite3_context, argc: c_int, argv: *mut *mut ffi::sqlite3_value) -> Option<Vec<&'a [u8]>> {
    let mut out = Vec::with_capacity(argc.max(0) as usize);
    for i in 0..argc.max(0) as usize {
        // SAFETY: see the function's contract.
        unsafe {
            let v = *argv.add(i);
            match ffi::sqlite3_value_type(v) {
                ffi::SQLITE_NULL => {
                    ffi::sqlite3_result_null(ctx);
                    return None;
                }
                ffi::SQLITE_BLOB => {
                    let p = ffi::sqlite3_value_blob(v) as *const u8;
                    let n = ffi::sqlite3_value_bytes(v).max(0) as usize;
                    out.push(if p.is_null() || n == 0 { &[][..] } else { std::slice::from_raw_parts(p, n) });
                }
                _ => {
                    set_error(ctx, "mask functions take mask BLOBs (masks.bits)");
                    return None;
                }
            }
        }
    }
    Some(out)
}

fn set_error(ctx: *mut ffi::sqlite3_context, msg: &str) {
    // SAFETY: SQLite copies the message (length given explicitly).
    unsafe { ffi::sqlite3_result_error(ctx, msg.as_ptr() as *const c_char, msg.len() as c_int) }
}

unsafe fn combined(ctx: *mut ffi::sqlite3_context, argc: c_int, argv: *mut *mut ffi::sqlite3_value, op: Combine, min_args: c_int) {
    if argc < min_args {
        set_error(ctx, "shared_bits needs at least two masks");
        return;
    }
    // SAFETY: forwarded from SQLite's call.
    let Some(blobs) = (unsafe { blob_args(ctx, argc, argv) }) else { return };
    match count_combined(&blobs, op) {
        // SAFETY: ctx is the live context of this call.
        Ok(n) => unsafe { ffi::sqlite3_result_int64(ctx, n as i64) },
        Err(e) => set_error(ctx, &e),
    }
}

unsafe extern "C" fn shared_bits_fn(ctx: *mut ffi::sqlite3_context, argc: c_int, argv: *mut *mut ffi::sqlite3_value) {
    // SAFETY: SQLite's arguments, passed on.
    unsafe { combined(ctx, argc, argv, Combine::And, 2) }
}

unsafe extern "C" fn differing_bits_fn(ctx: *mut ffi::sqlite3_context, argc: c_int, argv: *mut *mut ffi::sqlite3_value) {
    // SAFETY: SQLite's arguments, passed on (arity 2).
    unsafe { combined(ctx, argc, argv, Combine::Xor, 2) }
}

type ScalarFn = unsafe extern "C" fn(*mut ffi::sqlite3_context, c_int, *mut *mut ffi::sqlite3_value);

/// Registers `sqrt`, `shared_bits` and `differing_bits` on one connection.
pub async fn register(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let mut handle = conn.lock_handle().await?;
    let db = handle.as_raw_handle().as_ptr();
    let fns: [(&std::ffi::CStr, c_int, ScalarFn); 3] =
        [(c"sqrt", 1, sqrt_fn), (c"shared_bits", -1, shared_bits_fn), (c"differing_bits", 2, differing_bits_fn)];
    for (name, arity, f) in fns {
        // SAFETY: `db` is a live connection held locked by `handle`; the name is a static C string
        // and the function has no user data to free.
        let rc = unsafe {
            ffi::sqlite3_create_function_v2(
                db,
                name.as_ptr(),
                arity,
                ffi::SQLITE_UTF8 | ffi::SQLITE_DETERMINISTIC,
                std::ptr::null_mut::<c_void>(),
                Some(f),
                None,
                None,
                None,
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(sqlx::Error::Protocol(format!("cannot register {}() on SQLite (code {rc})", name.to_string_lossy())));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_and_xor_of_known_bytes() {
        let a = [0b1111_0000u8, 0b1010_1010];
        let b = [0b1100_1100u8, 0b1111_0000];
        let c = [0b1000_0001u8, 0b0010_0000];
        assert_eq!(count_combined(&[&a, &b], Combine::And), Ok(2 + 2));
        assert_eq!(count_combined(&[&a, &b, &c], Combine::And), Ok(1 + 1));
        assert_eq!(count_combined(&[&a, &b], Combine::Xor), Ok(4 + 4));
        assert!(count_combined(&[&a, &b[..1]], Combine::And).unwrap_err().contains("different lengths"));
    }
}
