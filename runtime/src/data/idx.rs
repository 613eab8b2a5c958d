//! The idx file format of MNIST and Fashion-MNIST.
//!
//! An idx file is a big-endian header — two zero bytes, an element-type
//! byte (0x08 = unsigned byte, the only one these sets use), a dimension
//! count, then one u32 per dimension — followed by the elements. Images are
//! `0x00000803` with dims (n, rows, cols); labels are `0x00000801` with dims
//! (n). Files may be gzipped (see [`super::file`]).
//!
//! Everything read is checked against the header before use: the body must
//! be exactly as long as the dims say, and a label file must match its image
//! file in count and have every label below the class count.

use std::path::Path;

use super::dataset::Dataset;
use super::error::DataError;
use super::file::{read_maybe_gz, write_maybe_gz};

/// Magic of an idx file of u8 images with 3 dims (n, rows, cols).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic of an idx file of u8 labels with 1 dim (n).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// Grayscale images as read from an idx file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images.
    pub n: usize,
    /// Rows (height) per image.
    pub rows: usize,
    /// Columns (width) per image.
    pub cols: usize,
    /// `n * rows * cols` pixels, image-major, row-major.
    pub pixels: Vec<u8>,
}

/// Parses an idx header, checks its magic is `want` and that the body is
/// exactly as long as the dimensions say; returns the dims and the body.
fn parse<'a>(bytes: &'a [u8], want: u32, path: &Path) -> Result<(Vec<usize>, &'a [u8]), DataError> {
    if bytes.len() < 4 {
        return Err(DataError::format(
            path,
            format!("{} bytes is too short for an idx header", bytes.len()),
        ));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if magic != want {
        let what = match magic {
            IDX_IMAGES_MAGIC => "an idx image file".to_string(),
            IDX_LABELS_MAGIC => "an idx label file".to_string(),
            m if m >> 16 == 0 && (m >> 8) & 0xff != 0x08 => {
                format!(
                    "an idx file with element type 0x{:02x} (only u8, 0x08, is supported)",
                    (m >> 8) & 0xff
                )
            }
            _ if bytes.starts_with(&super::file::GZIP_MAGIC) => "gzip data".to_string(),
            _ => "not an idx file".to_string(),
        };
        let expected = if want == IDX_IMAGES_MAGIC {
            "images"
        } else {
            "labels"
        };
        return Err(DataError::format(
            path,
            format!(
                "bad magic 0x{magic:08x} ({what}); expected idx {expected}, magic 0x{want:08x}"
            ),
        ));
    }
    let ndims = (magic & 0xff) as usize;
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(DataError::format(
            path,
            format!(
                "truncated header: {} bytes, the {ndims} dimensions need {header}",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| DataError::format(path, format!("dimensions {dims:?} overflow")))?;
    let body = &bytes[header..];
    if body.len() != count {
        let kind = if body.len() < count {
            "truncated"
        } else {
            "trailing bytes"
        };
        return Err(DataError::format(
            path,
            format!(
                "{kind}: dimensions {dims:?} need {count} data bytes, the file has {}",
                body.len()
            ),
        ));
    }
    Ok((dims, body))
}

/// Parses an in-memory (already un-gzipped) idx image file. `path` is only
/// used in error messages.
pub fn parse_idx_images(bytes: &[u8], path: &Path) -> Result<IdxImages, DataError> {
    let (dims, body) = parse(bytes, IDX_IMAGES_MAGIC, path)?;
    let (n, rows, cols) = (dims[0], dims[1], dims[2]);
    if rows == 0 || cols == 0 {
        return Err(DataError::format(
            path,
            format!("image size {rows}x{cols} is empty"),
        ));
    }
    Ok(IdxImages {
        n,
        rows,
        cols,
        pixels: body.to_vec(),
    })
}

/// Parses an in-memory (already un-gzipped) idx label file.
pub fn parse_idx_labels(bytes: &[u8], path: &Path) -> Result<Vec<u8>, DataError> {
    let (_, body) = parse(bytes, IDX_LABELS_MAGIC, path)?;
    Ok(body.to_vec())
}

/// Reads an idx image file, gzipped or raw. `hint` tells the user how to
/// get the file if it is missing.
pub fn read_idx_images(path: &Path, hint: &str) -> Result<IdxImages, DataError> {
    parse_idx_images(&read_maybe_gz(path, hint)?, path)
}

/// Reads an idx label file, gzipped or raw.
pub fn read_idx_labels(path: &Path, hint: &str) -> Result<Vec<u8>, DataError> {
    parse_idx_labels(&read_maybe_gz(path, hint)?, path)
}

/// Reads an image file and its label file into a one-channel [`Dataset`],
/// checking that the counts match and that every label is below `classes`.
pub fn load_idx_pair(
    images_path: &Path,
    labels_path: &Path,
    classes: usize,
    name: &str,
    hint: &str,
) -> Result<Dataset, DataError> {
    let images = read_idx_images(images_path, hint)?;
    let labels = read_idx_labels(labels_path, hint)?;
    if labels.len() != images.n {
        return Err(DataError::format(
            labels_path,
            format!(
                "{} labels, but {} has {} images",
                labels.len(),
                images_path.display(),
                images.n
            ),
        ));
    }
    if let Some((index, &label)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= classes)
    {
        return Err(DataError::LabelOutOfRange {
            path: labels_path.to_path_buf(),
            index,
            label: label as u32,
            classes,
        });
    }
    let labels = labels.into_iter().map(u16::from).collect();
    Dataset::new(
        name,
        images.pixels,
        labels,
        images.n,
        images.rows,
        images.cols,
        1,
        classes,
    )
}

/// Encodes images as an idx image file (not gzipped).
pub fn encode_idx_images(
    n: usize,
    rows: usize,
    cols: usize,
    pixels: &[u8],
) -> Result<Vec<u8>, DataError> {
    let dim = |v: usize| {
        u32::try_from(v).map_err(|_| DataError::Invalid(format!("idx dimension {v} exceeds u32")))
    };
    if n.checked_mul(rows).and_then(|p| p.checked_mul(cols)) != Some(pixels.len()) {
        return Err(DataError::Invalid(format!(
            "{} pixels for {n} images of {rows}x{cols}",
            pixels.len()
        )));
    }
    let mut out = Vec::with_capacity(16 + pixels.len());
    out.extend_from_slice(&IDX_IMAGES_MAGIC.to_be_bytes());
    for d in [n, rows, cols] {
        out.extend_from_slice(&dim(d)?.to_be_bytes());
    }
    out.extend_from_slice(pixels);
    Ok(out)
}

/// Encodes labels as an idx label file (not gzipped); labels must fit u8.
pub fn encode_idx_labels(labels: &[u16]) -> Result<Vec<u8>, DataError> {
    let n = u32::try_from(labels.len()).map_err(|_| {
        DataError::Invalid(format!("{} labels exceed the idx u32 count", labels.len()))
    })?;
    let mut out = Vec::with_capacity(8 + labels.len());
    out.extend_from_slice(&IDX_LABELS_MAGIC.to_be_bytes());
    out.extend_from_slice(&n.to_be_bytes());
    for &l in labels {
        out.push(
            u8::try_from(l).map_err(|_| {
                DataError::Invalid(format!("label {l} does not fit an idx u8 label"))
            })?,
        );
    }
    Ok(out)
}

/// Writes a one-channel data set as an idx image file and an idx label
/// file; each is gzipped when its name ends in `.gz`.
pub fn write_idx_pair(
    ds: &Dataset,
    images_path: &Path,
    labels_path: &Path,
) -> Result<(), DataError> {
    if ds.c != 1 {
        return Err(DataError::Invalid(format!(
            "{}: idx image files hold one channel, the data set has {}",
            ds.name, ds.c
        )));
    }
    write_maybe_gz(
        images_path,
        &encode_idx_images(ds.n, ds.h, ds.w, &ds.images)?,
    )?;
    write_maybe_gz(labels_path, &encode_idx_labels(&ds.labels)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Dataset {
        // 3 images of 2x3, pixel = 10*image + position.
        let pixels: Vec<u8> = (0..3)
            .flat_map(|i| (0..6).map(move |p| 10 * i + p))
            .collect();
        Dataset::new("s", pixels, vec![4, 0, 9], 3, 2, 3, 1, 10).unwrap()
    }

    #[test]
    fn round_trip_raw_and_gz() {
        let dir = tempfile::tempdir().unwrap();
        let ds = sample();
        for (img, lab) in [("i.idx", "l.idx"), ("i.idx.gz", "l.idx.gz")] {
            let (ip, lp) = (dir.path().join(img), dir.path().join(lab));
            write_idx_pair(&ds, &ip, &lp).unwrap();
            let raw = std::fs::read(&ip).unwrap();
            assert_eq!(super::super::file::is_gzip(&raw), img.ends_with(".gz"));
            let back = load_idx_pair(&ip, &lp, 10, "s", "").unwrap();
            assert_eq!(back, ds);
        }
        // The gzipped form is reproducible byte for byte.
        let a = std::fs::read(dir.path().join("i.idx.gz")).unwrap();
        write_idx_pair(
            &ds,
            &dir.path().join("i.idx.gz"),
            &dir.path().join("l.idx.gz"),
        )
        .unwrap();
        assert_eq!(a, std::fs::read(dir.path().join("i.idx.gz")).unwrap());
    }

    #[test]
    fn header_layout() {
        let bytes = encode_idx_images(1, 2, 2, &[1, 2, 3, 4]).unwrap();
        assert_eq!(
            &bytes[..16],
            &[0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2]
        );
        assert_eq!(
            encode_idx_labels(&[7, 255]).unwrap(),
            vec![0, 0, 8, 1, 0, 0, 0, 2, 7, 255]
        );
        assert!(encode_idx_labels(&[256]).is_err());
        assert!(encode_idx_images(1, 2, 2, &[1, 2, 3]).is_err());
    }

    fn msg<T: std::fmt::Debug>(r: Result<T, DataError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn malformed_images() {
        let p = Path::new("x");
        let good = encode_idx_images(2, 2, 2, &[0; 8]).unwrap();
        assert!(parse_idx_images(&good, p).is_ok());
        // Bad magic: a label file given as images, garbage, a float idx.
        let labels = encode_idx_labels(&[1, 2]).unwrap();
        assert!(msg(parse_idx_images(&labels, p)).contains("idx label file"));
        assert!(msg(parse_idx_images(b"hello world, no idx", p)).contains("bad magic"));
        let mut float = good.clone();
        float[2] = 0x0d;
        assert!(msg(parse_idx_images(&float, p)).contains("element type 0x0d"));
        // Truncated anywhere: header, dims, body.
        for cut in [0, 3, 4, 10, 15, 16, good.len() - 1] {
            let m = msg(parse_idx_images(&good[..cut], p));
            assert!(
                m.contains("short") || m.contains("truncated"),
                "cut {cut}: {m}"
            );
        }
        // Trailing garbage.
        let mut long = good.clone();
        long.push(0);
        assert!(msg(parse_idx_images(&long, p)).contains("trailing"));
        // Dimensions whose product overflows usize.
        let mut huge = vec![0, 0, 8, 3];
        for _ in 0..3 {
            huge.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        assert!(parse_idx_images(&huge, p).is_err());
        // Zero-size images.
        let empty = encode_idx_images(0, 0, 5, &[]).unwrap();
        assert!(msg(parse_idx_images(&empty, p)).contains("empty"));
    }

    #[test]
    fn no_panic_on_any_truncation_or_header_corruption() {
        let p = Path::new("x");
        let img = encode_idx_images(3, 4, 5, &[9; 60]).unwrap();
        let lab = encode_idx_labels(&[1, 2, 3]).unwrap();
        for cut in 0..img.len() {
            assert!(parse_idx_images(&img[..cut], p).is_err());
        }
        for cut in 0..lab.len() {
            assert!(parse_idx_labels(&lab[..cut], p).is_err());
        }
        let mut rng = super::super::rng::Rng::new(5);
        for _ in 0..2000 {
            let mut bad = img.clone();
            let at = rng.below(16);
            bad[at] = rng.next_u64() as u8;
            let _ = parse_idx_images(&bad, p);
            let _ = parse_idx_labels(&bad, p);
            let mut cifar_imgs = Vec::new();
            let mut cifar_labels = Vec::new();
            let _ = super::super::cifar::parse_cifar(
                &bad,
                super::super::cifar::CifarKind::Cifar10,
                p,
                &mut cifar_imgs,
                &mut cifar_labels,
            );
        }
    }

    #[test]
    fn malformed_pairs_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let ip = dir.path().join("img.gz");
        let lp = dir.path().join("lab");
        let ds = sample();
        write_idx_pair(&ds, &ip, &lp).unwrap();

        // Count mismatch.
        std::fs::write(&lp, encode_idx_labels(&[1, 2]).unwrap()).unwrap();
        let m = msg(load_idx_pair(&ip, &lp, 10, "s", ""));
        assert!(m.contains("2 labels") && m.contains("3 images"), "{m}");

        // Label out of range.
        std::fs::write(&lp, encode_idx_labels(&[1, 10, 2]).unwrap()).unwrap();
        let e = load_idx_pair(&ip, &lp, 10, "s", "").unwrap_err();
        assert!(matches!(
            e,
            DataError::LabelOutOfRange {
                index: 1,
                label: 10,
                classes: 10,
                ..
            }
        ));

        // Truncated gzip stream.
        let gz = std::fs::read(&ip).unwrap();
        std::fs::write(&ip, &gz[..gz.len() / 2]).unwrap();
        assert!(msg(read_idx_images(&ip, "")).contains("gzip"));

        // Missing file names the file and carries the hint.
        let missing = dir.path().join("nope.gz");
        let m = msg(read_idx_labels(&missing, "apt-get install something"));
        assert!(
            m.contains("nope.gz") && m.contains("apt-get install something"),
            "{m}"
        );
    }
}
