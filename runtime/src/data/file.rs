//! Reading whole data files, transparently un-gzipping them.
//!
//! MNIST-style sets are distributed gzipped (Debian ships them that way)
//! but are often unpacked by hand, so every reader accepts both: a file is
//! treated as gzip exactly when it starts with the gzip magic `1f 8b`,
//! whatever its name says.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::error::DataError;

/// The two bytes every gzip member starts with.
pub const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Largest file accepted, raw or after decompression (512 MiB). The biggest
/// files read in practice, CIFAR-100's training batch (155 MB) and the
/// Fashion-MNIST training images (47 MB), fit with room to spare; the cap
/// keeps a corrupt or hostile archive, or a raw "file" that never ends (a
/// link to `/dev/zero`), from exhausting memory, which would abort the
/// process instead of returning an error.
pub const MAX_DECODED_BYTES: u64 = 512 << 20;

/// True if `bytes` start with the gzip magic.
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&GZIP_MAGIC)
}

/// Reads `path` whole, decompressing it if it is gzip. `hint` is attached
/// to a not-found error to tell the user how to get the file.
pub fn read_maybe_gz(path: &Path, hint: &str) -> Result<Vec<u8>, DataError> {
    let raw = read_capped(path, hint)?;
    if !is_gzip(&raw) {
        return Ok(raw);
    }
    gunzip(&raw, path)
}

/// Reads at most [`MAX_DECODED_BYTES`] of `path`; a longer file (or a device
/// that never ends) is an error, found without reading more than the cap.
fn read_capped(path: &Path, hint: &str) -> Result<Vec<u8>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e, hint))?;
    let mut out = Vec::new();
    file.take(MAX_DECODED_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| DataError::io(path, e, hint))?;
    if out.len() as u64 > MAX_DECODED_BYTES {
        return Err(DataError::format(
            path,
            format!("larger than {MAX_DECODED_BYTES} bytes; refusing"),
        ));
    }
    Ok(out)
}

/// Decompresses an in-memory gzip stream (possibly several members).
/// `path` is used in error messages only.
pub fn gunzip(compressed: &[u8], path: &Path) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::new();
    MultiGzDecoder::new(compressed)
        .take(MAX_DECODED_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| DataError::format(path, format!("corrupt gzip data: {e}")))?;
    if out.len() as u64 > MAX_DECODED_BYTES {
        return Err(DataError::format(
            path,
            format!("decompresses to more than {MAX_DECODED_BYTES} bytes; refusing"),
        ));
    }
    Ok(out)
}

/// Writes `bytes` to `path`, gzip-compressed (best level) when the name
/// ends in `.gz`. The gzip header carries no time stamp or file name, so
/// the same input always gives the same file (the shipped subset's
/// checksums depend on that).
pub fn write_maybe_gz(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let io_err = |e: io::Error| DataError::io(path, e, "");
    let file = File::create(path).map_err(io_err)?;
    let gz = path.extension().is_some_and(|e| e == "gz");
    if gz {
        let mut enc = GzEncoder::new(file, Compression::best());
        enc.write_all(bytes).map_err(io_err)?;
        enc.finish().map_err(io_err)?.sync_all().map_err(io_err)?;
    } else {
        let mut file = file;
        file.write_all(bytes).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_file_is_an_error_after_the_cap() {
        // /dev/zero never ends; reading it must stop at the cap, not exhaust memory.
        let zero = Path::new("/dev/zero");
        if !zero.exists() {
            return;
        }
        let err = read_maybe_gz(zero, "").unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
    }

    #[test]
    fn raw_and_gzip_files_read_back() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.bin", "a.bin.gz"] {
            let p = dir.path().join(name);
            write_maybe_gz(&p, b"hello").unwrap();
            assert_eq!(read_maybe_gz(&p, "").unwrap(), b"hello");
        }
    }
}
