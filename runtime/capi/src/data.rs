//! Data sets read from files, to choose forget, retain and test sets by index:
//! MNIST-style idx files (gzipped or raw) and CIFAR-10/100 binary batches.

use super::{arg, free_handle, give, guard, out, slice, text};
use qmul_runtime::data::{cifar, idx, CifarKind, Dataset};
use qmul_runtime::error::{Error, ErrorKind};
use std::ffi::c_char;
use std::path::Path;

/// A data set in memory (opaque). Immutable: threads may share it.
pub struct qmul_dataset(pub Dataset);

/// Reads an idx image file and its label file (`classes` classes; labels
/// outside are an error).
///
/// # Safety
/// The paths are NUL-terminated strings; `out_ds` is writable.
#[no_mangle]
pub unsafe extern "C" fn qmul_dataset_open_idx(
    images_path: *const c_char,
    labels_path: *const c_char,
    classes: u32,
    out_ds: *mut *mut qmul_dataset,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let slot = unsafe { out(out_ds, "out_ds")? };
        *slot = std::ptr::null_mut();
        // SAFETY: the caller's contract.
        let (ip, lp) = unsafe {
            (
                text(images_path, "images_path")?,
                text(labels_path, "labels_path")?,
            )
        };
        if classes < 2 {
            return Err(Error::invalid("classes must be at least 2"));
        }
        let ds = idx::load_idx_pair(Path::new(ip), Path::new(lp), classes as usize, ip, "")?;
        give(slot, qmul_dataset(ds));
        Ok(())
    })
}

/// Reads CIFAR binary batch files (`kind` 10 or 100) into one data set.
///
/// # Safety
/// `paths` points to `n_paths` NUL-terminated strings; `out_ds` is writable.
#[no_mangle]
pub unsafe extern "C" fn qmul_dataset_open_cifar(
    paths: *const *const c_char,
    n_paths: usize,
    kind: u32,
    out_ds: *mut *mut qmul_dataset,
) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let slot = unsafe { out(out_ds, "out_ds")? };
        *slot = std::ptr::null_mut();
        // SAFETY: the caller's contract.
        let ps = unsafe { slice(paths, n_paths, "paths")? };
        if ps.is_empty() {
            return Err(Error::invalid("no CIFAR batch files given"));
        }
        let kind = match kind {
            10 => CifarKind::Cifar10,
            100 => CifarKind::Cifar100,
            k => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("CIFAR kind {k}: use 10 or 100"),
                ))
            }
        };
        let mut owned = Vec::with_capacity(ps.len());
        for (i, &p) in ps.iter().enumerate() {
            // SAFETY: the caller's contract.
            owned.push(unsafe { text(p, &format!("paths[{i}]"))? });
        }
        let paths: Vec<&Path> = owned.iter().map(Path::new).collect();
        let ds = cifar::load_cifar_files(&paths, kind, "cifar", "")?;
        give(slot, qmul_dataset(ds));
        Ok(())
    })
}

/// The number of samples of a data set.
///
/// # Safety
/// `ds` is a live handle; `out_len` is writable.
#[no_mangle]
pub unsafe extern "C" fn qmul_dataset_len(ds: *const qmul_dataset, out_len: *mut usize) -> i32 {
    guard(|| {
        // SAFETY: the caller's contract.
        let (d, o) = unsafe { (arg(ds, "ds")?, out(out_len, "out_len")?) };
        *o = d.0.len();
        Ok(())
    })
}

/// Releases a data set and sets `*ds` to NULL. NULL is fine.
///
/// # Safety
/// `ds` is NULL, or points to NULL or to a handle from `qmul_dataset_open_*`.
#[no_mangle]
pub unsafe extern "C" fn qmul_dataset_free(ds: *mut *mut qmul_dataset) {
    // SAFETY: the caller's contract.
    let _ = std::panic::catch_unwind(|| unsafe { free_handle(ds) });
}
