//! Data-source specs: the strings a user passes to `--data`, and loading
//! the train/test pair they name.
//!
//! | spec | meaning |
//! | --- | --- |
//! | `fashion-mnist` | Fashion-MNIST where Debian's `dataset-fashion-mnist` puts it, [`DEBIAN_FASHION_MNIST_DIR`] |
//! | `fashion-mnist:DIR` | Fashion-MNIST idx files in DIR |
//! | `mnist:DIR` | MNIST idx files in DIR |
//! | `cifar10:DIR` | CIFAR-10 binary batches (`data_batch_1.bin`..`5`, `test_batch.bin`) in DIR or DIR/cifar-10-batches-bin |
//! | `cifar100:DIR` | CIFAR-100 binary (`train.bin`, `test.bin`) in DIR or DIR/cifar-100-binary |
//! | `subset`, `fashion-mnist-subset` | the small Fashion-MNIST subset shipped in the repo (see [`super::shipped`]) |
//!
//! idx files are looked up as `NAME.gz` first, then as the uncompressed
//! `NAME`; either is read whatever its content (gzip is detected by magic).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::augment::Augment;
use super::cifar::{load_cifar_files, CifarKind};
use super::dataset::Dataset;
use super::error::DataError;
use super::idx::load_idx_pair;
use super::shipped::{shipped_subset_dir, SUBSET_HINT};

/// Where Debian's `dataset-fashion-mnist` package installs the data.
pub const DEBIAN_FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The ten Fashion-MNIST classes, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// The ten CIFAR-10 classes, in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The file stems of an MNIST-layout directory: train images, train
/// labels, test images, test labels.
pub const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

const ACCEPTED: &str = "accepted: fashion-mnist, fashion-mnist:DIR, mnist:DIR, cifar10:DIR, cifar100:DIR, subset (= fashion-mnist-subset)";

/// A parsed data-source spec: which data set, and where its files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// Fashion-MNIST idx files in `dir`.
    FashionMnist {
        /// Directory holding the four idx files.
        dir: PathBuf,
    },
    /// The Fashion-MNIST subset shipped with the repo (same layout as
    /// [`DataSource::FashionMnist`], resolved to a directory at parse time).
    FashionMnistSubset {
        /// Directory holding the four idx files.
        dir: PathBuf,
    },
    /// MNIST idx files in `dir`.
    Mnist {
        /// Directory holding the four idx files.
        dir: PathBuf,
    },
    /// CIFAR-10 binary batches in `dir`.
    Cifar10 {
        /// Directory holding `data_batch_*.bin` and `test_batch.bin`.
        dir: PathBuf,
    },
    /// CIFAR-100 binary files in `dir`.
    Cifar100 {
        /// Directory holding `train.bin` and `test.bin`.
        dir: PathBuf,
    },
}

impl DataSource {
    /// Parses a spec (see the module docs for the forms accepted).
    pub fn parse(spec: &str) -> Result<Self, DataError> {
        let bad = |reason: String| DataError::Spec {
            spec: spec.to_string(),
            reason,
        };
        let s = spec.trim();
        let (kind, dir) = match s.split_once(':') {
            Some((k, d)) => (k.trim(), Some(d.trim())),
            None => (s, None),
        };
        let dir = match dir {
            Some("") => return Err(bad(format!("the directory after {kind:?}: is empty"))),
            Some(d) => Some(PathBuf::from(d)),
            None => None,
        };
        let need_dir = |dir: Option<PathBuf>, what: &str| {
            dir.ok_or_else(|| {
                bad(format!(
                    "{kind} needs a directory: {kind}:DIR, DIR holding {what}"
                ))
            })
        };
        Ok(match kind.to_ascii_lowercase().as_str() {
            "fashion-mnist" | "fashion_mnist" | "fashionmnist" => DataSource::FashionMnist {
                dir: dir.unwrap_or_else(|| PathBuf::from(DEBIAN_FASHION_MNIST_DIR)),
            },
            "subset" | "fashion-mnist-subset" => {
                if dir.is_some() {
                    return Err(bad(format!(
                        "{kind} takes no directory (set QMUL_DATA_DIR to move it, or use fashion-mnist:DIR)"
                    )));
                }
                DataSource::FashionMnistSubset {
                    dir: shipped_subset_dir(),
                }
            }
            "mnist" => DataSource::Mnist {
                dir: need_dir(dir, "the MNIST idx files")?,
            },
            "cifar10" | "cifar-10" => DataSource::Cifar10 {
                dir: need_dir(dir, "the CIFAR-10 binary batches")?,
            },
            "cifar100" | "cifar-100" => DataSource::Cifar100 {
                dir: need_dir(dir, "the CIFAR-100 binary files")?,
            },
            _ => return Err(bad(format!("unknown data set {kind:?}; {ACCEPTED}"))),
        })
    }

    /// The data set's short name, used to name the loaded sets.
    pub fn name(&self) -> &'static str {
        match self {
            DataSource::FashionMnist { .. } => "fashion-mnist",
            DataSource::FashionMnistSubset { .. } => "fashion-mnist-subset",
            DataSource::Mnist { .. } => "mnist",
            DataSource::Cifar10 { .. } => "cifar10",
            DataSource::Cifar100 { .. } => "cifar100",
        }
    }

    /// The directory the files are read from (as given or resolved).
    pub fn dir(&self) -> &Path {
        match self {
            DataSource::FashionMnist { dir }
            | DataSource::FashionMnistSubset { dir }
            | DataSource::Mnist { dir }
            | DataSource::Cifar10 { dir }
            | DataSource::Cifar100 { dir } => dir,
        }
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        match self {
            DataSource::Cifar100 { .. } => 100,
            _ => 10,
        }
    }

    /// The image shape `[h, w, c]` the data set has by definition (the
    /// idx readers take whatever the file header says; this is what the
    /// standard files contain).
    pub fn image_shape(&self) -> [usize; 3] {
        match self {
            DataSource::Cifar10 { .. } | DataSource::Cifar100 { .. } => [32, 32, 3],
            _ => [28, 28, 1],
        }
    }

    /// The training augmentation that suits this data set: pad-2 crop and
    /// flip for Fashion-MNIST, pad-2 crop without flip for MNIST (mirrored
    /// digits are not digits), pad-4 crop and flip for CIFAR.
    pub fn default_augment(&self) -> Augment {
        let [h, w, _] = self.image_shape();
        let aug = Augment::for_size(h, w);
        match self {
            DataSource::Mnist { .. } => Augment { flip: false, ..aug },
            _ => aug,
        }
    }

    /// Loads the (train, test) pair.
    pub fn load(&self) -> Result<(Dataset, Dataset), DataError> {
        let name = self.name();
        let (train, test) = match self {
            DataSource::FashionMnist { dir } => {
                let hint = if dir == Path::new(DEBIAN_FASHION_MNIST_DIR) {
                    "install it with `apt-get install dataset-fashion-mnist`, or give fashion-mnist:DIR for a copy elsewhere".to_string()
                } else {
                    format!("a Fashion-MNIST directory holds {}; `apt-get install dataset-fashion-mnist` puts them in {DEBIAN_FASHION_MNIST_DIR}", idx_listing())
                };
                load_idx_dir(dir, name, &hint, &FASHION_MNIST_CLASSES)?
            }
            DataSource::FashionMnistSubset { dir } => {
                load_idx_dir(dir, name, SUBSET_HINT, &FASHION_MNIST_CLASSES)?
            }
            DataSource::Mnist { dir } => {
                let hint = format!(
                    "an MNIST directory holds the four files of the MNIST database, {}",
                    idx_listing()
                );
                let digits: Vec<String> = (0..10).map(|d| d.to_string()).collect();
                load_idx_dir(dir, name, &hint, &digits)?
            }
            DataSource::Cifar10 { dir } => {
                let dir = locate_cifar_dir(dir, "cifar-10-batches-bin", "data_batch_1.bin");
                let hint = "expected the extracted CIFAR-10 binary version (cifar-10-binary.tar.gz from the CIFAR web site); DIR may be its cifar-10-batches-bin folder or the folder above it";
                let train_files: Vec<PathBuf> = (1..=5)
                    .map(|i| dir.join(format!("data_batch_{i}.bin")))
                    .collect();
                let train_refs: Vec<&Path> = train_files.iter().map(PathBuf::as_path).collect();
                let train = load_cifar_files(
                    &train_refs,
                    CifarKind::Cifar10,
                    &format!("{name}/train"),
                    hint,
                )?;
                let test = load_cifar_files(
                    &[&dir.join("test_batch.bin")],
                    CifarKind::Cifar10,
                    &format!("{name}/test"),
                    hint,
                )?;
                (
                    train.with_class_names(CIFAR10_CLASSES)?,
                    test.with_class_names(CIFAR10_CLASSES)?,
                )
            }
            DataSource::Cifar100 { dir } => {
                let dir = locate_cifar_dir(dir, "cifar-100-binary", "train.bin");
                let hint = "expected the extracted CIFAR-100 binary version (cifar-100-binary.tar.gz from the CIFAR web site); DIR may be its cifar-100-binary folder or the folder above it";
                let train = load_cifar_files(
                    &[&dir.join("train.bin")],
                    CifarKind::Cifar100,
                    &format!("{name}/train"),
                    hint,
                )?;
                let test = load_cifar_files(
                    &[&dir.join("test.bin")],
                    CifarKind::Cifar100,
                    &format!("{name}/test"),
                    hint,
                )?;
                match read_class_names(&dir.join("fine_label_names.txt"), 100) {
                    Some(names) => (
                        train.with_class_names(names.clone())?,
                        test.with_class_names(names)?,
                    ),
                    None => (train, test),
                }
            }
        };
        if train.image_shape() != test.image_shape() {
            return Err(DataError::format(
                self.dir(),
                format!(
                    "training images are {:?} (h, w, c) but test images are {:?}",
                    train.image_shape(),
                    test.image_shape()
                ),
            ));
        }
        Ok((train, test))
    }
}

impl FromStr for DataSource {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, DataError> {
        DataSource::parse(s)
    }
}

/// The canonical spec: `parse(&source.to_string())` gives back the source
/// (for the subset, as long as QMUL_DATA_DIR is unchanged).
impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSource::FashionMnistSubset { .. } => f.write_str("fashion-mnist-subset"),
            DataSource::FashionMnist { dir } if dir == Path::new(DEBIAN_FASHION_MNIST_DIR) => {
                f.write_str("fashion-mnist")
            }
            other => write!(f, "{}:{}", other.name(), other.dir().display()),
        }
    }
}

/// Parses `spec` and loads its (train, test) pair.
pub fn load(spec: &str) -> Result<(Dataset, Dataset), DataError> {
    DataSource::parse(spec)?.load()
}

fn idx_listing() -> String {
    IDX_FILES.map(|f| format!("{f}.gz")).join(", ") + " (or the same names uncompressed)"
}

/// `dir/stem.gz` if it exists, else `dir/stem` if it exists; otherwise a
/// [`DataError::Missing`] naming both.
fn find_idx(dir: &Path, stem: &str, hint: &str) -> Result<PathBuf, DataError> {
    let gz = dir.join(format!("{stem}.gz"));
    let raw = dir.join(stem);
    if gz.is_file() {
        Ok(gz)
    } else if raw.is_file() {
        Ok(raw)
    } else {
        Err(DataError::Missing {
            path: dir.join(format!("{stem}[.gz]")),
            hint: hint.to_string(),
        })
    }
}

fn load_idx_dir<S: AsRef<str>>(
    dir: &Path,
    name: &str,
    hint: &str,
    class_names: &[S],
) -> Result<(Dataset, Dataset), DataError> {
    let [ti, tl, vi, vl] = IDX_FILES.map(|stem| find_idx(dir, stem, hint));
    let names = || class_names.iter().map(|s| s.as_ref().to_string());
    let classes = class_names.len();
    let train = load_idx_pair(&ti?, &tl?, classes, &format!("{name}/train"), hint)?;
    let test = load_idx_pair(&vi?, &vl?, classes, &format!("{name}/test"), hint)?;
    Ok((
        train.with_class_names(names())?,
        test.with_class_names(names())?,
    ))
}

/// `dir` itself if it holds `probe`, else `dir/sub` if that does, else
/// `dir` (so the not-found error names the file in the directory given).
fn locate_cifar_dir(dir: &Path, sub: &str, probe: &str) -> PathBuf {
    if !dir.join(probe).exists() && dir.join(sub).join(probe).exists() {
        dir.join(sub)
    } else {
        dir.to_path_buf()
    }
}

/// Class names from a one-per-line file, if it exists and has exactly
/// `classes` non-empty lines; names are cosmetic, so anything else falls
/// back to numbers rather than failing the load.
fn read_class_names(path: &Path, classes: usize) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    (names.len() == classes).then_some(names)
}

#[cfg(test)]
mod tests {
    use super::super::cifar::synthetic_record as record;
    use super::super::idx::write_idx_pair;
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(
            DataSource::parse("fashion-mnist").unwrap(),
            DataSource::FashionMnist {
                dir: DEBIAN_FASHION_MNIST_DIR.into()
            }
        );
        assert_eq!(
            DataSource::parse(" mnist:/x/y ").unwrap(),
            DataSource::Mnist { dir: "/x/y".into() }
        );
        assert_eq!(
            "cifar10:d".parse::<DataSource>().unwrap(),
            DataSource::Cifar10 { dir: "d".into() }
        );
        assert_eq!(
            DataSource::parse("cifar100:d").unwrap(),
            DataSource::Cifar100 { dir: "d".into() }
        );
        assert!(matches!(
            DataSource::parse("subset").unwrap(),
            DataSource::FashionMnistSubset { .. }
        ));
        assert_eq!(
            DataSource::parse("subset").unwrap(),
            DataSource::parse("fashion-mnist-subset").unwrap()
        );
        for bad in ["", "imagenet", "mnist", "cifar10", "cifar100:", "subset:/x"] {
            let e = DataSource::parse(bad).unwrap_err();
            assert!(matches!(e, DataError::Spec { .. }), "{bad}: {e}");
        }
        assert!(DataSource::parse("imagenet")
            .unwrap_err()
            .to_string()
            .contains("accepted"));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "fashion-mnist",
            "fashion-mnist:/a",
            "mnist:b",
            "cifar10:c",
            "cifar100:/d/e",
            "fashion-mnist-subset",
        ] {
            let src = DataSource::parse(s).unwrap();
            assert_eq!(src.to_string(), s);
            assert_eq!(DataSource::parse(&src.to_string()).unwrap(), src);
        }
    }

    #[test]
    fn augment_defaults() {
        let fm = DataSource::parse("fashion-mnist")
            .unwrap()
            .default_augment();
        assert_eq!(fm, Augment::new(2, true));
        let m = DataSource::parse("mnist:x").unwrap().default_augment();
        assert_eq!(m, Augment::new(2, false));
        let c = DataSource::parse("cifar10:x").unwrap().default_augment();
        assert_eq!(c, Augment::new(4, true));
    }

    #[test]
    fn loads_idx_dir_mixing_raw_and_gz() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let train = Dataset::new(
            "t",
            (0..5 * 4).map(|v| v as u8).collect(),
            vec![0, 1, 2, 9, 3],
            5,
            2,
            2,
            1,
            10,
        )
        .unwrap();
        let test = Dataset::new("v", vec![7; 2 * 4], vec![5, 6], 2, 2, 2, 1, 10).unwrap();
        write_idx_pair(
            &train,
            &d.join("train-images-idx3-ubyte.gz"),
            &d.join("train-labels-idx1-ubyte"),
        )
        .unwrap();
        write_idx_pair(
            &test,
            &d.join("t10k-images-idx3-ubyte"),
            &d.join("t10k-labels-idx1-ubyte.gz"),
        )
        .unwrap();
        let (tr, te) = load(&format!("mnist:{}", d.display())).unwrap();
        assert_eq!(
            (tr.name.as_str(), te.name.as_str()),
            ("mnist/train", "mnist/test")
        );
        assert_eq!(tr.images, train.images);
        assert_eq!(tr.labels, train.labels);
        assert_eq!(te.labels, vec![5, 6]);
        assert_eq!(tr.class_names[3], "3");
        let (tr, _) = load(&format!("fashion-mnist:{}", d.display())).unwrap();
        assert_eq!(tr.class_names[9], "Ankle boot");

        // A missing file is named, with its .gz alternative, and a hint.
        std::fs::remove_file(d.join("t10k-labels-idx1-ubyte.gz")).unwrap();
        let m = load(&format!("fashion-mnist:{}", d.display()))
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("t10k-labels-idx1-ubyte[.gz]")
                && m.contains("apt-get install dataset-fashion-mnist"),
            "{m}"
        );

        // Train and test shapes must agree.
        let odd = Dataset::new("v", vec![7; 2 * 6], vec![5, 6], 2, 2, 3, 1, 10).unwrap();
        write_idx_pair(
            &odd,
            &d.join("t10k-images-idx3-ubyte"),
            &d.join("t10k-labels-idx1-ubyte.gz"),
        )
        .unwrap();
        let m = load(&format!("mnist:{}", d.display()))
            .unwrap_err()
            .to_string();
        assert!(m.contains("test images are [2, 3, 1]"), "{m}");
    }

    #[test]
    fn loads_cifar_dirs() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&d).unwrap();
        for i in 1..=5u8 {
            std::fs::write(
                d.join(format!("data_batch_{i}.bin")),
                [record(&[i]), record(&[i + 1])].concat(),
            )
            .unwrap();
        }
        std::fs::write(d.join("test_batch.bin"), record(&[0])).unwrap();
        // DIR may be the batches folder or its parent.
        for dir in [root.path(), d.as_path()] {
            let (tr, te) = load(&format!("cifar10:{}", dir.display())).unwrap();
            assert_eq!(tr.len(), 10);
            assert_eq!(tr.labels, vec![1, 2, 2, 3, 3, 4, 4, 5, 5, 6]);
            assert_eq!(te.labels, vec![0]);
            assert_eq!(tr.class_names[0], "airplane");
            assert_eq!(tr.image_shape(), [32, 32, 3]);
        }
        std::fs::remove_file(d.join("data_batch_4.bin")).unwrap();
        let m = load(&format!("cifar10:{}", d.display()))
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("data_batch_4.bin") && m.contains("cifar-10-binary.tar.gz"),
            "{m}"
        );

        let c = root.path().join("c100");
        std::fs::create_dir(&c).unwrap();
        std::fs::write(
            c.join("train.bin"),
            [record(&[1, 77]), record(&[2, 3])].concat(),
        )
        .unwrap();
        std::fs::write(c.join("test.bin"), record(&[0, 99])).unwrap();
        let (tr, te) = load(&format!("cifar100:{}", c.display())).unwrap();
        assert_eq!(
            (tr.labels.clone(), te.labels.clone(), tr.classes),
            (vec![77, 3], vec![99], 100)
        );
        assert_eq!(tr.class_names[5], "5");
        let names: String = (0..100).map(|i| format!("name{i}\n")).collect();
        std::fs::write(c.join("fine_label_names.txt"), names).unwrap();
        let (tr, _) = load(&format!("cifar100:{}", c.display())).unwrap();
        assert_eq!(tr.class_names[5], "name5");
    }
}
