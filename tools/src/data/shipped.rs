//! The small Fashion-MNIST subset shipped in the repository, and the code
//! that made it.
//!
//! The full Fashion-MNIST is 30 MB gzipped and is not in the repo; the demo
//! and the tests need real images anyway, so `data/fashion-mnist-subset/`
//! holds a class-balanced, seeded sample of it: [`SUBSET_TRAIN_PER_CLASS`]
//! training and [`SUBSET_TEST_PER_CLASS`] test images per class, in the
//! same four idx files (gzipped) as the full set. It is regenerated, byte
//! for byte, by
//! `cargo run -p qmul-tools --example make_subset -- /usr/share/datasets/fashion-mnist data/fashion-mnist-subset`.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::dataset::Dataset;
use super::error::DataError;
use super::idx::write_idx_pair;
use super::spec::{DataSource, IDX_FILES};

/// Training images per class in the shipped subset (5000 in all).
pub const SUBSET_TRAIN_PER_CLASS: usize = 500;
/// Test images per class in the shipped subset (1000 in all).
pub const SUBSET_TEST_PER_CLASS: usize = 100;
/// Seed of the stratified draw that made the shipped subset.
pub const SUBSET_SEED: u64 = 2017;
/// Directory name of the subset under the data directory.
pub const SUBSET_DIR_NAME: &str = "fashion-mnist-subset";
/// Environment variable that overrides where the data directory is.
pub const DATA_DIR_ENV: &str = "QMUL_DATA_DIR";

pub(crate) const SUBSET_HINT: &str = "the Fashion-MNIST subset ships with the qmul repository in data/fashion-mnist-subset; if the qmul binary runs away from its source tree, set QMUL_DATA_DIR to the data directory (or to the subset directory itself)";

/// Where the shipped subset is: `$QMUL_DATA_DIR/fashion-mnist-subset`, or
/// `$QMUL_DATA_DIR` itself if it directly holds the idx files, when that
/// variable is set; otherwise `data/fashion-mnist-subset` of the source
/// tree this crate was compiled from (the binary records its own source
/// location, so it works from any working directory while the tree is
/// there).
pub fn shipped_subset_dir() -> PathBuf {
    subset_dir_from(std::env::var_os(DATA_DIR_ENV).map(PathBuf::from))
}

/// [`shipped_subset_dir`] given the value of `QMUL_DATA_DIR` (a separate
/// function so tests need not touch the process environment).
fn subset_dir_from(data_dir: Option<PathBuf>) -> PathBuf {
    if let Some(root) = data_dir.filter(|v| !v.as_os_str().is_empty()) {
        let nested = root.join(SUBSET_DIR_NAME);
        let direct = IDX_FILES
            .iter()
            .any(|stem| root.join(format!("{stem}.gz")).is_file() || root.join(stem).is_file());
        return if !nested.is_dir() && direct {
            root
        } else {
            nested
        };
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(manifest)
        .join("data")
        .join(SUBSET_DIR_NAME)
}

/// One file written by [`write_fashion_mnist_subset`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenFile {
    /// Where it was written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its SHA-256, lower-case hex.
    pub sha256: String,
}

/// Reads the full Fashion-MNIST from `src_dir`, draws `train_per_class` /
/// `test_per_class` images per class with `seed`, and writes the four
/// gzipped idx files into `dst_dir` (created if needed).
pub fn write_fashion_mnist_subset(
    src_dir: &Path,
    dst_dir: &Path,
    train_per_class: usize,
    test_per_class: usize,
    seed: u64,
) -> Result<Vec<WrittenFile>, DataError> {
    let (train, test) = DataSource::FashionMnist {
        dir: src_dir.to_path_buf(),
    }
    .load()?;
    let (train, test) = draw_subset(&train, &test, train_per_class, test_per_class, seed)?;
    std::fs::create_dir_all(dst_dir).map_err(|e| DataError::io(dst_dir, e, ""))?;
    let paths: Vec<PathBuf> = IDX_FILES
        .iter()
        .map(|s| dst_dir.join(format!("{s}.gz")))
        .collect();
    write_idx_pair(&train, &paths[0], &paths[1])?;
    write_idx_pair(&test, &paths[2], &paths[3])?;
    paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e, ""))?;
            Ok(WrittenFile {
                bytes: bytes.len() as u64,
                sha256: Sha256::digest(&bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
                path,
            })
        })
        .collect()
}

/// Draws the (train, test) subset from the full sets: `train_per_class`
/// and `test_per_class` images of each class, the train draw seeded with
/// `seed` and the test draw with `seed + 1` (so the two are independent).
pub fn draw_subset(
    train: &Dataset,
    test: &Dataset,
    train_per_class: usize,
    test_per_class: usize,
    seed: u64,
) -> Result<(Dataset, Dataset), DataError> {
    Ok((
        train.stratified_subset(train_per_class, seed)?,
        test.stratified_subset(test_per_class, seed.wrapping_add(1))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_subset_loads_with_expected_counts() {
        let (train, test) = super::super::spec::load("subset").unwrap();
        assert_eq!(train.len(), 10 * SUBSET_TRAIN_PER_CLASS);
        assert_eq!(test.len(), 10 * SUBSET_TEST_PER_CLASS);
        assert_eq!(train.classes, 10);
        assert_eq!(train.class_counts(), vec![SUBSET_TRAIN_PER_CLASS; 10]);
        assert_eq!(test.class_counts(), vec![SUBSET_TEST_PER_CLASS; 10]);
        assert_eq!(train.image_shape(), [28, 28, 1]);
        assert_eq!(test.image_shape(), [28, 28, 1]);
        assert_eq!(train.class_names[0], "T-shirt/top");
        // Real images, not blanks: a decent share of non-zero pixels.
        let nonzero = train.images.iter().filter(|&&p| p != 0).count();
        assert!(nonzero > train.images.len() / 4, "{nonzero}");
        let size: u64 = IDX_FILES
            .iter()
            .map(|s| {
                std::fs::metadata(shipped_subset_dir().join(format!("{s}.gz")))
                    .unwrap()
                    .len()
            })
            .sum();
        assert!(size < 5 << 20, "shipped subset is {size} bytes");
    }

    #[test]
    fn data_dir_override() {
        let default = subset_dir_from(None);
        assert!(
            default.ends_with("data/fashion-mnist-subset"),
            "{}",
            default.display()
        );
        assert_eq!(subset_dir_from(Some(PathBuf::new())), default);
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        // Neither layout present: the nested path, so errors name it.
        assert_eq!(
            subset_dir_from(Some(root.clone())),
            root.join(SUBSET_DIR_NAME)
        );
        // The variable names the subset directory itself.
        std::fs::write(root.join("t10k-labels-idx1-ubyte.gz"), b"").unwrap();
        assert_eq!(subset_dir_from(Some(root.clone())), root);
        // The variable names a data directory holding the subset.
        std::fs::create_dir(root.join(SUBSET_DIR_NAME)).unwrap();
        assert_eq!(
            subset_dir_from(Some(root.clone())),
            root.join(SUBSET_DIR_NAME)
        );
    }

    /// Where the full data set is installed, the shipped files must be
    /// exactly the documented stratified draw from it.
    #[test]
    fn shipped_subset_matches_its_recipe() {
        let full_dir = Path::new(super::super::spec::DEBIAN_FASHION_MNIST_DIR);
        if !full_dir.join("t10k-labels-idx1-ubyte.gz").exists() {
            eprintln!("skipped: full Fashion-MNIST not installed");
            return;
        }
        let (full_train, full_test) = DataSource::FashionMnist {
            dir: full_dir.into(),
        }
        .load()
        .unwrap();
        let (train, test) = super::super::spec::load("subset").unwrap();
        let (want_train, want_test) = draw_subset(
            &full_train,
            &full_test,
            SUBSET_TRAIN_PER_CLASS,
            SUBSET_TEST_PER_CLASS,
            SUBSET_SEED,
        )
        .unwrap();
        assert_eq!(test.images, want_test.images);
        assert_eq!(test.labels, want_test.labels);
        assert_eq!(train.images, want_train.images);
        assert_eq!(train.labels, want_train.labels);
    }
}
