//! Models: open from a path (memory-mapped) or a caller's buffer, inspect, free.
//! A model is immutable: any number of threads and sessions may use one handle
//! at once, and sessions keep their own reference, so the handle may be freed
//! while they live.

use super::{arg, fill_text, free_handle, give, guard, out, slice, text, write_result};
use qmul_runtime::graph::QuantScheme;
use qmul_runtime::model_file::Integrity;
use qmul_runtime::session::OpenModel;
use std::ffi::c_char;
use std::sync::Arc;

/// An opened, validated model (opaque).
pub struct qmul_model(pub Arc<OpenModel>);

/// What a model is. Set `struct_size` before the call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct qmul_model_info {
    pub struct_size: u32,
    pub classes: u32,
    pub input_h: u32,
    pub input_w: u32,
    pub input_c: u32,
    /// Bits of the body's weights and activations (4), or 32 for a float model.
    pub bits: u32,
    /// Bits of the first convolution and the classifier (8 or 32).
    pub edge_bits: u32,
    /// 0 none (float), 1 PACT, 2 LSQ, 3 DSQ.
    pub scheme: i32,
    pub parameters: u64,
    /// 1 when the file's data checksum was verified, 0 for a version-1 file without one.
    pub checksum_verified: i32,
    pub file_bytes: u64,
    /// Architecture name (`"resnet18"`, ...), NUL-terminated.
    pub arch: [c_char; 32],
    /// SHA-256 of the model file, hex, NUL-terminated.
    pub file_sha256: [c_char; 65],
}

const INFO_V1: usize = std::mem::size_of::<qmul_model_info>();

fn scheme_code(s: QuantScheme) -> i32 {
    match s {
        QuantScheme::None => 0,
        QuantScheme::Pact => 1,
        QuantScheme::Lsq => 2,
        QuantScheme::Dsq => 3,
    }
}

/// Opens and validates the model at `path` (memory-mapped; every tensor and
/// the data checksum are checked). Temporary files an interrupted commit left
/// beside it are removed. Thread-safe.
///
/// # Safety
/// `path` is a NUL-terminated string; `out_model` is writable.
#[no_mangle]
pub unsafe extern "C" fn qmul_model_open(
    path: *const c_char,
    out_model: *mut *mut qmul_model,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let slot = unsafe { out(out_model, "out_model")? };
        *slot = std::ptr::null_mut();
        // SAFETY: the caller's contract.
        let path = unsafe { text(path, "path")? };
        let m = OpenModel::open(std::path::Path::new(path))?;
        give(slot, qmul_model(m));
        Ok(())
    })
}

/// Validates a model held in the caller's buffer (copied: the buffer may be
/// freed afterwards). Such a model has no path; commits need one.
///
/// # Safety
/// `data` points to `len` readable bytes; `out_model` is writable.
#[no_mangle]
pub unsafe extern "C" fn qmul_model_open_buffer(
    data: *const u8,
    len: usize,
    out_model: *mut *mut qmul_model,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let slot = unsafe { out(out_model, "out_model")? };
        *slot = std::ptr::null_mut();
        // SAFETY: the caller's contract.
        let bytes = unsafe { slice(data, len, "data")? };
        let m = OpenModel::from_bytes(bytes)?;
        give(slot, qmul_model(m));
        Ok(())
    })
}

/// Fills `info` (whose `struct_size` the caller set).
///
/// # Safety
/// `model` is a live handle; `info` points to a struct of `info->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn qmul_model_get_info(
    model: *const qmul_model,
    info: *mut qmul_model_info,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let m = unsafe { arg(model, "model")? };
        if info.is_null() {
            return Err(super::null("info"));
        }
        let i = m.0.info();
        let mut v = qmul_model_info {
            struct_size: INFO_V1 as u32,
            classes: i.classes as u32,
            input_h: i.input.h as u32,
            input_w: i.input.w as u32,
            input_c: i.input.c as u32,
            bits: i.bits,
            edge_bits: i.edge_bits,
            scheme: scheme_code(i.scheme),
            parameters: i.parameters as u64,
            checksum_verified: (i.integrity == Integrity::Verified) as i32,
            file_bytes: i.file_bytes as u64,
            arch: [0; 32],
            file_sha256: [0; 65],
        };
        fill_text(&mut v.arch, &i.arch);
        fill_text(&mut v.file_sha256, &i.file_sha256);
        // SAFETY: the caller's contract.
        unsafe { write_result(info, v, 8, "info") }
    })
}

/// Releases a model handle and sets `*model` to NULL. NULL is fine.
///
/// # Safety
/// `model` is NULL, or points to NULL or to a handle from `qmul_model_open*`.
#[no_mangle]
pub unsafe extern "C" fn qmul_model_free(model: *mut *mut qmul_model) {
    // SAFETY: the caller's contract.
    let _ = std::panic::catch_unwind(|| unsafe { free_handle(model) });
}
