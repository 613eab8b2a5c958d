//! Deletion receipts: verify a log and read its records (size query, then copy).

use super::{copy_out, guard, out, text, write_result};
use qmul_runtime::error::{Error, ErrorKind};
use qmul_runtime::session::receipt;
use std::ffi::c_char;
use std::path::Path;

/// What verifying a receipt log found. Set `struct_size` before the call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct qmul_receipt_log_info {
    pub struct_size: u32,
    /// 1 when every checksum and the chain verify.
    pub valid: i32,
    /// Complete records.
    pub records: u64,
    /// Bytes of a torn last record (an interrupted write), ignored.
    pub torn_tail_bytes: u64,
    /// Problems found (edited, removed or reordered records).
    pub problems: u64,
}

/// Verifies the receipt log at `path` (a missing file is an empty, valid log).
/// A log that fails verification returns `QMUL_ERR_BAD_FILE`, with `info`
/// filled and the problems in `qmul_last_error()`.
///
/// # Safety
/// `path` is a NUL-terminated string; `info` points to a struct of its `struct_size`.
#[no_mangle]
pub unsafe extern "C" fn qmul_receipts_verify(
    path: *const c_char,
    info: *mut qmul_receipt_log_info,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let p = unsafe { text(path, "path")? };
        // SAFETY: the caller's contract.
        unsafe { out(info, "info")? };
        let log = receipt::read_log(Path::new(p))?;
        let v = qmul_receipt_log_info {
            struct_size: std::mem::size_of::<qmul_receipt_log_info>() as u32,
            valid: log.is_valid() as i32,
            records: log.records.len() as u64,
            torn_tail_bytes: log.torn_tail as u64,
            problems: log.problems.len() as u64,
        };
        // SAFETY: the caller's contract.
        unsafe { write_result(info, v, 8, "info")? };
        if !log.is_valid() {
            return Err(Error::new(
                ErrorKind::BadFile,
                format!("{p}: {}", log.problems.join("; ")),
            ));
        }
        Ok(())
    })
}

/// Copies record `index` (0-based) of the log at `path`, as its JSON line,
/// NUL-terminated, into `buf`. `*needed` (may be NULL) receives the size the
/// record needs, NUL included; call with `buf` NULL and `buf_len` 0 to ask.
///
/// # Safety
/// `path` is a NUL-terminated string; `buf` holds `buf_len` bytes or is NULL
/// with `buf_len` 0; `needed` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn qmul_receipts_get(
    path: *const c_char,
    index: u64,
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let p = unsafe { text(path, "path")? };
        let log = receipt::read_log(Path::new(p))?;
        let line = usize::try_from(index)
            .ok()
            .and_then(|i| log.lines.get(i))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "record {index} does not exist ({} records)",
                    log.lines.len()
                ))
            })?;
        // SAFETY: the caller's contract.
        unsafe { copy_out(line, buf, buf_len, needed) }
    })
}
