//! The `.qmul` model file: a safetensors container, memory-mapped on load.
//!
//! Tensors per layer (`{name}` is the layer name from the graph):
//! * conv / linear, 4-bit: `{name}.codes` U8 `[cout, row_bytes]` packed signed
//!   codes (nibble order in `qmul_kernels::pack`), `{name}.scale` F32 `[cout]`;
//!   8-bit: `{name}.codes` I8 `[cout, row_bytes]`, `{name}.scale`; f32:
//!   `{name}.weight` F32 `[cout, k*k*cin]` with `(ky, kx, cin)` order;
//!   `{name}.wq` F32 quantizer parameters when the quantizer has any;
//!   linear also `{name}.bias`.
//!   Quantized layers may also have `{name}.residual` I16 `[cout, k*k*cin]`:
//!   each weight's position inside its rounding bin in 1/65536 steps (format
//!   version 3; all quantized layers or none; see [`crate::quant::sub_bin`]),
//!   or instead `{name}.latent` F32 `[cout, k*k*cin]`: the exact latent
//!   weights (format version 4, written only for models that keep them, e.g.
//!   converted from PyTorch; they must requantize to the stored codes).
//! * BatchNorm: `{name}.gamma`, `.beta`, `.running_mean`, `.running_var` F32.
//! * Act: `{name}.q` F32 (PACT `[a]`, LSQ `[s]`, DSQ `[u, alpha]`).
//!
//! `__metadata__` holds `format` = `qmul`, `format_version`, `graph` (JSON of
//! [`Graph`]), `scheme`, `nibble_order`, `input` (pixel scaling), `info` (JSON
//! object of free-form facts) and, from format version 2, `data_sha256`: the
//! SHA-256 of the whole tensor-data block, so that a flipped bit anywhere in
//! the weights (flash wear, a truncated download) is an error on open rather
//! than a silently different model. Version-1 files (no checksum) still load;
//! [`Integrity::Unchecked`] says so.
//!
//! Loading trusts nothing (see [`read`]); writing refuses a model that could not
//! be loaded back (see [`write`]); saving replaces the file crash-safely (see
//! [`crate::durable`]).

mod json;
pub mod read;
pub mod write;

use crate::model::Model;
use std::path::Path;

pub use read::{from_bytes, from_bytes_checked, Integrity, Loaded};
pub use write::{to_bytes, to_bytes_with, WriteOptions};

pub const FORMAT: &str = "qmul";
/// The version this build writes. Version 1 (no data checksum) and 2 (no
/// sub-bin residuals) are still read.
pub const FORMAT_VERSION: &str = "3";
/// The version of a file that keeps exact f32 latent weights
/// (`{name}.latent` instead of `{name}.residual`); written only for such files.
pub const FORMAT_VERSION_EXACT: &str = "4";
pub const NIBBLE_ORDER: &str =
    "low-first: byte b of a row holds element 2b in bits 0-3 and element 2b+1 in bits 4-7; \
rows padded with zero codes to a multiple of 32 elements";
pub const INPUT: &str = "u8 pixels NHWC, value = pixel / 255";

/// Why a model file could not be written or read.
#[derive(Debug)]
pub enum ModelFileError {
    Io(std::io::Error),
    /// The file is not a valid qmul model; the message says what is wrong.
    Invalid(String),
    /// The tensor data does not match the file's stored checksum.
    Checksum(String),
    /// The model cannot be saved: a parameter is not finite (training or
    /// unlearning diverged) or out of its quantizer's range.
    Unwritable(String),
}

impl std::fmt::Display for ModelFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelFileError::Io(e) => write!(f, "model file: {e}"),
            ModelFileError::Invalid(m) => write!(f, "invalid model file: {m}"),
            ModelFileError::Checksum(m) => write!(f, "corrupt model file: {m}"),
            ModelFileError::Unwritable(m) => write!(f, "model not saved: {m}"),
        }
    }
}

impl std::error::Error for ModelFileError {}

impl From<std::io::Error> for ModelFileError {
    fn from(e: std::io::Error) -> Self {
        ModelFileError::Io(e)
    }
}

fn invalid<T>(m: impl Into<String>) -> Result<T, ModelFileError> {
    Err(ModelFileError::Invalid(m.into()))
}

/// Writes `model` to `path` without ever leaving a partial file there (see
/// [`crate::durable::replace`]). The bytes are parsed back before they are
/// written, so the file at `path` always loads.
pub fn save(model: &Model, path: &Path) -> Result<(), ModelFileError> {
    let bytes = to_bytes(model)?;
    from_bytes(&bytes).map_err(|e| {
        ModelFileError::Unwritable(format!("the serialized model does not load back: {e}"))
    })?;
    write_atomic(path, &bytes)?;
    Ok(())
}

/// Crash-safe replacement of `path` by `bytes` (any file, not only models).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::durable::replace(path, bytes)
}

/// Largest model file accepted (1 GiB): far above any model this runtime is
/// for, and a bound on what a loader maps.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Memory-maps and loads a model file.
pub fn load(path: &Path) -> Result<Model, ModelFileError> {
    Ok(load_checked(path)?.model)
}

/// Memory-maps, verifies and loads a model file, with what was verified.
pub fn load_checked(path: &Path) -> Result<Loaded, ModelFileError> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > MAX_FILE_BYTES {
        return invalid(format!(
            "{} is {len} bytes, more than the {MAX_FILE_BYTES} a model may have",
            path.display()
        ));
    }
    if !file.metadata()?.is_file() {
        return invalid(format!("{} is not a regular file", path.display()));
    }
    // SAFETY: the map is read-only and dropped before this function returns; a
    // concurrent truncation of the file is outside what qmul defends against
    // (model files are replaced by rename, never rewritten in place).
    let map = unsafe { memmap2::Mmap::map(&file)? };
    from_bytes_checked(&map)
}
