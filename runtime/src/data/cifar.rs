//! The CIFAR-10 / CIFAR-100 binary formats ("binary version" archives).
//!
//! A batch file is a plain sequence of fixed-size records: the label
//! byte(s), then a 32x32 colour image stored channel-planar — 1024 red
//! bytes, 1024 green, 1024 blue, each plane row-major. CIFAR-10 records have
//! one label byte (10 classes); CIFAR-100 records have two, coarse (20
//! super-classes) then fine (100 classes), and we keep the fine label.
//! The files have no header, so the only integrity check available is that
//! the length is a whole number of records and the labels are in range.
//!
//! Images are converted to NHWC on load because the whole runtime works in
//! NHWC (a pixel's channels are adjacent, matching the conv kernels).

use std::path::Path;

use super::dataset::Dataset;
use super::error::DataError;
use super::file::read_maybe_gz;

/// Side of a CIFAR image.
pub const CIFAR_SIDE: usize = 32;
/// Pixel bytes per CIFAR image (3 planes of 32x32).
pub const CIFAR_IMAGE_BYTES: usize = 3 * CIFAR_SIDE * CIFAR_SIDE;

/// Which of the two CIFAR record layouts a file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CifarKind {
    /// 1 label byte per record, 10 classes.
    Cifar10,
    /// 2 label bytes (coarse, fine) per record; fine labels, 100 classes.
    Cifar100,
}

impl CifarKind {
    /// Label bytes before the pixels of each record.
    pub fn label_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1,
            CifarKind::Cifar100 => 2,
        }
    }

    /// Bytes per record (3073 or 3074).
    pub fn record_bytes(self) -> usize {
        self.label_bytes() + CIFAR_IMAGE_BYTES
    }

    /// Number of classes of the label we keep.
    pub fn classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100 => 100,
        }
    }
}

/// Parses the records of one in-memory batch file, appending NHWC pixels
/// and labels. `path` is used in error messages only.
pub fn parse_cifar(
    bytes: &[u8],
    kind: CifarKind,
    path: &Path,
    images: &mut Vec<u8>,
    labels: &mut Vec<u16>,
) -> Result<usize, DataError> {
    let rec = kind.record_bytes();
    if bytes.is_empty() {
        return Err(DataError::format(path, "empty CIFAR batch file"));
    }
    let leftover = bytes.len() % rec;
    if leftover != 0 {
        return Err(DataError::format(
            path,
            format!(
                "truncated or not a {kind:?} batch: {} bytes is not a multiple of the {rec}-byte record ({} whole records and {leftover} bytes left over)",
                bytes.len(),
                bytes.len() / rec,
            ),
        ));
    }
    let plane = CIFAR_SIDE * CIFAR_SIDE;
    let count = bytes.len() / rec;
    images.reserve(count * CIFAR_IMAGE_BYTES);
    labels.reserve(count);
    for (i, record) in bytes.chunks_exact(rec).enumerate() {
        if kind == CifarKind::Cifar100 && record[0] >= 20 {
            return Err(DataError::format(
                path,
                format!(
                    "record {i}: coarse label {} is not below 20; not a CIFAR-100 file?",
                    record[0]
                ),
            ));
        }
        let label = record[kind.label_bytes() - 1];
        if label as usize >= kind.classes() {
            return Err(DataError::LabelOutOfRange {
                path: path.to_path_buf(),
                index: i,
                label: label as u32,
                classes: kind.classes(),
            });
        }
        labels.push(label as u16);
        let px = &record[kind.label_bytes()..];
        // Planar R..., G..., B... to interleaved RGB per pixel.
        for p in 0..plane {
            images.extend_from_slice(&[px[p], px[plane + p], px[2 * plane + p]]);
        }
    }
    Ok(count)
}

/// Reads and concatenates the given batch files into one data set.
/// `hint` tells the user how to obtain a missing file.
pub fn load_cifar_files(
    paths: &[&Path],
    kind: CifarKind,
    name: &str,
    hint: &str,
) -> Result<Dataset, DataError> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for path in paths {
        let bytes = read_maybe_gz(path, hint)?;
        parse_cifar(&bytes, kind, path, &mut images, &mut labels)?;
    }
    let n = labels.len();
    Dataset::new(
        name,
        images,
        labels,
        n,
        CIFAR_SIDE,
        CIFAR_SIDE,
        3,
        kind.classes(),
    )
}

/// A synthetic record for tests that write small CIFAR files: the pixel at
/// (y, x) has R = y, G = x, B = last label byte + 100 (planar, as on disk).
pub fn synthetic_record(labels: &[u8]) -> Vec<u8> {
    let mut r = labels.to_vec();
    let plane = CIFAR_SIDE * CIFAR_SIDE;
    let mut px = vec![0u8; 3 * plane];
    let b = labels.last().copied().unwrap_or(0).wrapping_add(100);
    for y in 0..CIFAR_SIDE {
        for x in 0..CIFAR_SIDE {
            px[y * CIFAR_SIDE + x] = y as u8;
            px[plane + y * CIFAR_SIDE + x] = x as u8;
            px[2 * plane + y * CIFAR_SIDE + x] = b;
        }
    }
    r.extend_from_slice(&px);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(labels: &[u8]) -> Vec<u8> {
        synthetic_record(labels)
    }

    #[test]
    fn cifar10_nhwc_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.bin");
        let b = dir.path().join("b.bin");
        std::fs::write(&a, [record(&[3]), record(&[9])].concat()).unwrap();
        std::fs::write(&b, record(&[0])).unwrap();
        let ds = load_cifar_files(&[&a, &b], CifarKind::Cifar10, "c10", "").unwrap();
        assert_eq!((ds.n, ds.h, ds.w, ds.c, ds.classes), (3, 32, 32, 3, 10));
        assert_eq!(ds.labels, vec![3, 9, 0]);
        // Pixel (y=5, x=17) of image 1 is at ((5*32)+17)*3 in NHWC.
        let img = ds.image(1);
        let at = (5 * 32 + 17) * 3;
        assert_eq!(&img[at..at + 3], &[5, 17, 109]);
        assert_eq!(&ds.image(2)[..3], &[0, 0, 100]);
    }

    #[test]
    fn cifar100_uses_fine_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train.bin");
        std::fs::write(&p, [record(&[19, 99]), record(&[4, 42])].concat()).unwrap();
        let ds = load_cifar_files(&[&p], CifarKind::Cifar100, "c100", "").unwrap();
        assert_eq!(ds.classes, 100);
        assert_eq!(ds.labels, vec![99, 42]);
        let at = (31 * 32 + 2) * 3;
        assert_eq!(&ds.image(1)[at..at + 3], &[31, 2, 142]);
    }

    #[test]
    fn malformed_cifar() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.bin");
        let load = |kind| {
            load_cifar_files(&[&p], kind, "x", "get it somewhere")
                .unwrap_err()
                .to_string()
        };

        let mut two = [record(&[1]), record(&[2])].concat();
        two.pop();
        std::fs::write(&p, &two).unwrap();
        let m = load(CifarKind::Cifar10);
        assert!(m.contains("truncated") && m.contains("3073"), "{m}");

        // A CIFAR-10 file read as CIFAR-100 is caught by the length check.
        std::fs::write(&p, [record(&[1]), record(&[2])].concat()).unwrap();
        assert!(load(CifarKind::Cifar100).contains("3074"));

        std::fs::write(&p, record(&[10])).unwrap();
        assert!(load(CifarKind::Cifar10).contains("label 10"));
        std::fs::write(&p, record(&[20, 5])).unwrap();
        assert!(load(CifarKind::Cifar100).contains("coarse label 20"));
        std::fs::write(&p, record(&[2, 100])).unwrap();
        assert!(load(CifarKind::Cifar100).contains("label 100"));

        std::fs::write(&p, b"").unwrap();
        assert!(load(CifarKind::Cifar10).contains("empty"));

        std::fs::remove_file(&p).unwrap();
        let m = load(CifarKind::Cifar10);
        assert!(
            m.contains("bad.bin") && m.contains("get it somewhere"),
            "{m}"
        );
    }
}
