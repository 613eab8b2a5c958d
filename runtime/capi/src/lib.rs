//! The C ABI of qmul (`libqmul.a`, `libqmul.so`): a thin layer over
//! [`qmul_runtime::session`], for apps in C, Swift, Kotlin/JNI or Python ctypes.
//! `include/qmul.h` is generated from this crate
//! by cbindgen (`QMUL_BLESS=1 cargo test -p qmul-tests --test header`) and a
//! test fails when it is stale. `docs/c-api.md` is the guide.
//!
//! Conventions, the same for every function:
//! * every call returns an `int32_t` status ([`qmul_status`]; 0 is OK, the
//!   hundreds digit is the group) and never aborts: each entry point catches
//!   panics and reports them as `QMUL_ERR_INTERNAL`;
//! * the message of the last failure on the calling thread is
//!   [`qmul_last_error`], valid until that thread's next qmul call; writing it
//!   does not allocate (a fixed 1 KiB buffer, longer messages are cut);
//! * handles are opaque, created through `T **out` and released with
//!   `*_free(T **)`, which accepts NULL and sets `*p` to NULL;
//! * every pointer argument is checked for NULL; every buffer comes with its
//!   length, checked against what the call needs;
//! * parameter and result structs start with `struct_size` (set it to
//!   `sizeof` the struct, as `qmul_*_default_params` do), so fields can be
//!   added without breaking callers built against an older header.

#![allow(non_camel_case_types)]

pub mod data;
pub mod model;
pub mod receipts;
pub mod session;

use qmul_runtime::error::{Error, ErrorKind};
use std::cell::RefCell;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Status codes. The hundreds digit is the group: 1 caller input, 2 file
/// contents, 3 unsupported, 4 memory budget, 5 cancelled, 6 operating
/// system, 9 bug.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum qmul_status {
    QMUL_OK = 0,
    /// An argument is wrong: a shape, a label, a setting, an empty set.
    QMUL_ERR_INVALID_ARGUMENT = 100,
    /// A required pointer was NULL.
    QMUL_ERR_NULL_POINTER = 101,
    /// A buffer's length does not match what the call needs.
    QMUL_ERR_BUFFER_SIZE = 102,
    /// Unlearning diverged with these settings; nothing changed.
    QMUL_ERR_DIVERGED = 103,
    /// The unlearned model failed the deletion check; nothing was written
    /// (`qmul_commit_params.force` commits it anyway).
    QMUL_ERR_NOT_FORGOTTEN = 104,
    /// A model, data or receipt file is malformed or not what it claims.
    QMUL_ERR_BAD_FILE = 200,
    /// A model file's data checksum does not match (the file is damaged).
    QMUL_ERR_CHECKSUM = 201,
    /// A valid request this build or model cannot serve.
    QMUL_ERR_UNSUPPORTED = 300,
    /// The work would need more memory than the session's budget.
    QMUL_ERR_BUDGET_EXCEEDED = 400,
    /// Cancelled by the progress callback or `qmul_session_cancel`; nothing changed.
    QMUL_ERR_CANCELLED = 500,
    /// The operating system refused a read or write.
    QMUL_ERR_IO = 600,
    /// A bug in qmul (a caught panic, a broken invariant).
    QMUL_ERR_INTERNAL = 900,
}

impl From<ErrorKind> for qmul_status {
    fn from(k: ErrorKind) -> Self {
        use qmul_status::*;
        match k {
            ErrorKind::InvalidArgument => QMUL_ERR_INVALID_ARGUMENT,
            ErrorKind::NullPointer => QMUL_ERR_NULL_POINTER,
            ErrorKind::BufferSize => QMUL_ERR_BUFFER_SIZE,
            ErrorKind::Diverged => QMUL_ERR_DIVERGED,
            ErrorKind::NotForgotten => QMUL_ERR_NOT_FORGOTTEN,
            ErrorKind::BadFile => QMUL_ERR_BAD_FILE,
            ErrorKind::Checksum => QMUL_ERR_CHECKSUM,
            ErrorKind::Unsupported => QMUL_ERR_UNSUPPORTED,
            ErrorKind::BudgetExceeded => QMUL_ERR_BUDGET_EXCEEDED,
            ErrorKind::Cancelled => QMUL_ERR_CANCELLED,
            ErrorKind::Io => QMUL_ERR_IO,
            ErrorKind::Internal => QMUL_ERR_INTERNAL,
        }
    }
}

/// Capacity of the per-thread error message, NUL included.
const ERROR_CAPACITY: usize = 1024;

thread_local! {
    static LAST_ERROR: RefCell<heapless::Vec<u8, ERROR_CAPACITY>> =
        const { RefCell::new(heapless::Vec::new()) };
}

/// Stores `msg` (cut at a character boundary to fit) as this thread's last
/// error. Copies into the fixed buffer only: no allocation.
fn set_last_error(msg: &str) {
    LAST_ERROR.with(|b| {
        let Ok(mut b) = b.try_borrow_mut() else {
            return;
        };
        b.clear();
        let mut end = msg.len().min(ERROR_CAPACITY - 1);
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        for &c in &msg.as_bytes()[..end] {
            // Interior NULs would cut the C string short; show them as '?'.
            let _ = b.push(if c == 0 { b'?' } else { c });
        }
        let _ = b.push(0);
    });
}

/// Runs an entry point's body: clears the last error, catches panics, turns
/// errors into a status and a message.
fn guard(f: impl FnOnce() -> Result<(), Error>) -> i32 {
    set_last_error("");
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => qmul_status::QMUL_OK as i32,
        Ok(Err(e)) => {
            set_last_error(&e.message);
            qmul_status::from(e.kind) as i32
        }
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| p.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("unknown panic");
            set_last_error(&format!("internal error (a bug in qmul): {what}"));
            qmul_status::QMUL_ERR_INTERNAL as i32
        }
    }
}

fn null(what: &str) -> Error {
    Error::new(ErrorKind::NullPointer, format!("{what} is NULL"))
}

/// A shared reference from a pointer that must not be NULL.
///
/// # Safety
/// A non-NULL `p` points to a valid `T` for the call's duration.
unsafe fn arg<'a, T>(p: *const T, what: &str) -> Result<&'a T, Error> {
    // SAFETY: the caller's contract; NULL is checked here.
    unsafe { p.as_ref() }.ok_or_else(|| null(what))
}

/// A mutable reference from an out-pointer that must not be NULL.
///
/// # Safety
/// A non-NULL `p` points to a valid, writable `T`.
unsafe fn out<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, Error> {
    // SAFETY: the caller's contract; NULL is checked here.
    unsafe { p.as_mut() }.ok_or_else(|| null(what))
}

/// A buffer of `len` elements at `p` may be formed: NULL only for length 0,
/// and no more bytes than a slice may span. `Ok(false)`: the empty slice.
fn check_buffer<T>(is_null: bool, len: usize, what: &str) -> Result<bool, Error> {
    if len == 0 {
        return Ok(false);
    }
    if is_null {
        return Err(null(what));
    }
    if len
        .checked_mul(std::mem::size_of::<T>())
        .is_none_or(|b| b > isize::MAX as usize)
    {
        return Err(Error::new(
            ErrorKind::BufferSize,
            format!("{what}: length {len} is impossible"),
        ));
    }
    Ok(true)
}

/// A slice from a pointer and a length; NULL is allowed only for length 0.
///
/// # Safety
/// A non-NULL `p` points to `len` valid elements.
unsafe fn slice<'a, T>(p: *const T, len: usize, what: &str) -> Result<&'a [T], Error> {
    if !check_buffer::<T>(p.is_null(), len, what)? {
        return Ok(&[]);
    }
    // SAFETY: the caller's contract; NULL and the size bound are checked above.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// A mutable slice from a pointer and a length; NULL only for length 0.
///
/// # Safety
/// A non-NULL `p` points to `len` writable elements.
unsafe fn slice_mut<'a, T>(p: *mut T, len: usize, what: &str) -> Result<&'a mut [T], Error> {
    if !check_buffer::<T>(p.is_null(), len, what)? {
        return Ok(&mut []);
    }
    // SAFETY: the caller's contract; NULL and the size bound are checked above.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, len) })
}

/// A UTF-8 string from a NUL-terminated C string that must not be NULL.
///
/// # Safety
/// A non-NULL `p` points to a NUL-terminated string.
unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: the caller's contract; NULL is checked here.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| Error::invalid(format!("{what} is not UTF-8")))
}

/// Reads a caller's parameter struct: the first `struct_size` bytes of it over
/// the defaults, so an older caller's shorter struct keeps the newer fields'
/// defaults. `struct_size` must cover at least the first version's fields.
///
/// # Safety
/// A non-NULL `p` points to at least `struct_size` readable bytes (its first
/// field, a `u32`, is that size).
unsafe fn read_params<T: Copy>(
    p: *const T,
    defaults: T,
    min_size: usize,
    what: &str,
) -> Result<T, Error> {
    if p.is_null() {
        return Ok(defaults);
    }
    // SAFETY: every parameter struct starts with its u32 size.
    let size = unsafe { *(p as *const u32) } as usize;
    if size < min_size {
        return Err(Error::invalid(format!(
            "{what}.struct_size is {size}; set it to sizeof the struct (at least {min_size})"
        )));
    }
    let mut v = defaults;
    let n = size.min(std::mem::size_of::<T>());
    // SAFETY: the caller provides `size` readable bytes; `v` has room for `n`.
    unsafe { std::ptr::copy_nonoverlapping(p as *const u8, &mut v as *mut T as *mut u8, n) };
    Ok(v)
}

/// Writes a result struct into the caller's, up to its `struct_size` (which
/// the caller set), and keeps that size.
///
/// # Safety
/// A non-NULL `p` points to at least its `struct_size` writable bytes.
unsafe fn write_result<T: Copy>(p: *mut T, v: T, min_size: usize, what: &str) -> Result<(), Error> {
    if p.is_null() {
        return Ok(());
    }
    // SAFETY: every result struct starts with its u32 size.
    let size = unsafe { *(p as *const u32) } as usize;
    if size < min_size {
        return Err(Error::invalid(format!(
            "{what}.struct_size is {size}; set it to sizeof the struct (at least {min_size})"
        )));
    }
    let n = size.min(std::mem::size_of::<T>());
    // SAFETY: the caller provides `size` writable bytes; we write `n <= size`.
    unsafe {
        std::ptr::copy_nonoverlapping(&v as *const T as *const u8, p as *mut u8, n);
        *(p as *mut u32) = size as u32;
    }
    Ok(())
}

/// Copies `s` and a NUL into a fixed char array, cut to fit.
fn fill_text(dst: &mut [c_char], s: &str) {
    let n = s.len().min(dst.len().saturating_sub(1));
    for (d, &c) in dst.iter_mut().zip(&s.as_bytes()[..n]) {
        *d = c as c_char;
    }
    if let Some(d) = dst.get_mut(n) {
        *d = 0;
    }
}

/// Size-query-then-copy of a string: `*needed` gets its length plus the NUL;
/// with a buffer of at least that many bytes it is copied, NUL-terminated.
///
/// # Safety
/// `buf` points to `buf_len` writable bytes (or is NULL with `buf_len` 0);
/// `needed` is NULL or writable.
unsafe fn copy_out(
    s: &str,
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
) -> Result<(), Error> {
    // SAFETY: the caller's contract.
    if let Some(n) = unsafe { needed.as_mut() } {
        *n = s.len() + 1;
    }
    if buf.is_null() && buf_len == 0 {
        return Ok(());
    }
    // SAFETY: the caller's contract.
    let dst = unsafe { slice_mut(buf, buf_len, "buf")? };
    if dst.len() < s.len() + 1 {
        return Err(Error::new(
            ErrorKind::BufferSize,
            format!(
                "the buffer holds {} bytes, {} are needed",
                dst.len(),
                s.len() + 1
            ),
        ));
    }
    fill_text(dst, s);
    Ok(())
}

static VERSION: &[u8] = concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes();

/// The library version (`"MAJOR.MINOR.PATCH"`), a static string.
#[no_mangle]
pub extern "C" fn qmul_version() -> *const c_char {
    VERSION.as_ptr() as *const c_char
}

/// The message of the last failed call on this thread ("" after a success).
/// The pointer stays valid until this thread's next qmul call.
#[no_mangle]
pub extern "C" fn qmul_last_error() -> *const c_char {
    LAST_ERROR.with(|b| match b.try_borrow() {
        Ok(v) if !v.is_empty() => v.as_ptr() as *const c_char,
        _ => c"".as_ptr(),
    })
}

/// Precisions of the straight-through backward's gradient GEMMs.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum qmul_backward {
    /// f32 operands and sums: the exact reference.
    QMUL_BACKWARD_F32 = 1,
    /// dY rounded to bf16, f32 sums, where the CPU has bf16 dot products
    /// (AVX-512 BF16; f32 elsewhere). The default: its unlearning results are
    /// within the seed spread of f32's (docs/performance.md).
    QMUL_BACKWARD_BF16 = 2,
}

/// Chooses the gradient GEMMs' precision (a `qmul_backward`) for every
/// session of the process, from the next batch on. Without a call the
/// environment variable `QMUL_BACKWARD` (`f32` or `bf16`) decides, else bf16.
#[no_mangle]
pub extern "C" fn qmul_set_backward(precision: i32) -> i32 {
    use qmul_runtime::GradPrecision;
    guard(|| {
        let p = match precision {
            x if x == qmul_backward::QMUL_BACKWARD_F32 as i32 => GradPrecision::F32,
            x if x == qmul_backward::QMUL_BACKWARD_BF16 as i32 => GradPrecision::Bf16,
            x => {
                return Err(Error::invalid(format!(
                    "unknown backward precision {x} (see qmul_backward)"
                )))
            }
        };
        qmul_runtime::set_grad_precision(p);
        Ok(())
    })
}

/// The precision the gradient GEMMs run in (a `qmul_backward`): bf16 only
/// where it was asked for and this CPU has bf16 dot products.
#[no_mangle]
pub extern "C" fn qmul_get_backward() -> i32 {
    match qmul_runtime::grad_precision() {
        qmul_runtime::GradPrecision::F32 => qmul_backward::QMUL_BACKWARD_F32 as i32,
        qmul_runtime::GradPrecision::Bf16 => qmul_backward::QMUL_BACKWARD_BF16 as i32,
    }
}

/// Every status with its name, for `qmul_status_name`.
const STATUS_NAMES: [(qmul_status, &CStr); 13] = {
    use qmul_status::*;
    [
        (QMUL_OK, c"QMUL_OK"),
        (QMUL_ERR_INVALID_ARGUMENT, c"QMUL_ERR_INVALID_ARGUMENT"),
        (QMUL_ERR_NULL_POINTER, c"QMUL_ERR_NULL_POINTER"),
        (QMUL_ERR_BUFFER_SIZE, c"QMUL_ERR_BUFFER_SIZE"),
        (QMUL_ERR_DIVERGED, c"QMUL_ERR_DIVERGED"),
        (QMUL_ERR_NOT_FORGOTTEN, c"QMUL_ERR_NOT_FORGOTTEN"),
        (QMUL_ERR_BAD_FILE, c"QMUL_ERR_BAD_FILE"),
        (QMUL_ERR_CHECKSUM, c"QMUL_ERR_CHECKSUM"),
        (QMUL_ERR_UNSUPPORTED, c"QMUL_ERR_UNSUPPORTED"),
        (QMUL_ERR_BUDGET_EXCEEDED, c"QMUL_ERR_BUDGET_EXCEEDED"),
        (QMUL_ERR_CANCELLED, c"QMUL_ERR_CANCELLED"),
        (QMUL_ERR_IO, c"QMUL_ERR_IO"),
        (QMUL_ERR_INTERNAL, c"QMUL_ERR_INTERNAL"),
    ]
};

/// A static name for a status code (`"QMUL_ERR_CANCELLED"`, ...).
#[no_mangle]
pub extern "C" fn qmul_status_name(status: i32) -> *const c_char {
    STATUS_NAMES
        .iter()
        .find(|(s, _)| *s as i32 == status)
        .map_or(c"unknown status", |(_, n)| n)
        .as_ptr()
}

/// Frees a handle made by `Box::into_raw` and sets the caller's pointer to NULL.
///
/// # Safety
/// `p` is NULL or points to NULL or to a pointer this library returned.
unsafe fn free_handle<T>(p: *mut *mut T) {
    // SAFETY: the caller's contract.
    if let Some(slot) = unsafe { p.as_mut() } {
        if !slot.is_null() {
            // SAFETY: `*slot` came from Box::into_raw and is freed once: it is
            // set to NULL here.
            drop(unsafe { Box::from_raw(*slot) });
            *slot = std::ptr::null_mut();
        }
    }
}

/// Hands a new handle to the caller through `out`.
fn give<T>(out_ptr: &mut *mut T, v: T) {
    *out_ptr = Box::into_raw(Box::new(v));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last() -> String {
        // SAFETY: qmul_last_error returns a NUL-terminated string.
        unsafe { CStr::from_ptr(qmul_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn panics_become_internal_errors_and_messages_are_kept_per_thread() {
        let code = guard(|| panic!("boom"));
        assert_eq!(code, qmul_status::QMUL_ERR_INTERNAL as i32);
        assert!(last().contains("boom"), "{}", last());
        let code = guard(|| Err(Error::new(ErrorKind::BudgetExceeded, "too big")));
        assert_eq!(code, 400);
        assert_eq!(last(), "too big");
        // Another thread has its own message.
        std::thread::spawn(|| assert_eq!(last(), ""))
            .join()
            .unwrap();
        assert_eq!(guard(|| Ok(())), 0);
        assert_eq!(last(), "", "a success clears the message");
        // Long messages are cut to the buffer, at a character boundary.
        let long = "é".repeat(2000);
        guard(|| Err(Error::invalid(long)));
        assert!(last().len() < ERROR_CAPACITY && last().starts_with("éé"));
    }

    #[test]
    fn params_are_read_up_to_their_struct_size() {
        #[derive(Clone, Copy, PartialEq, Debug)]
        #[repr(C)]
        struct P {
            struct_size: u32,
            a: u32,
            b: u64,
        }
        let d = P {
            struct_size: 16,
            a: 1,
            b: 2,
        };
        // An older caller's struct without `b`: `b` keeps its default.
        let old = P {
            struct_size: 8,
            a: 7,
            b: 99,
        };
        // SAFETY: `old` is a valid P.
        let got = unsafe { read_params(&old, d, 8, "p") }.unwrap();
        assert_eq!((got.a, got.b), (7, 2));
        let bad = P {
            struct_size: 3,
            ..old
        };
        // SAFETY: as above.
        assert!(unsafe { read_params(&bad, d, 8, "p") }.is_err());
        // SAFETY: NULL means the defaults.
        assert_eq!(
            unsafe { read_params(std::ptr::null(), d, 8, "p") }.unwrap(),
            d
        );
    }
}
