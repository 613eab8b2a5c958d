//! Writes the Fashion-MNIST subset shipped in `data/fashion-mnist-subset`.
//!
//! Usage: `make_subset [SRC_DIR] [DST_DIR]`, defaults
//! `/usr/share/datasets/fashion-mnist` (Debian's `dataset-fashion-mnist`)
//! and `data/fashion-mnist-subset` of this repository. The draw is fixed by
//! the constants in `qmul_tools::data::shipped`, so rerunning reproduces the
//! shipped files byte for byte.

use std::path::PathBuf;
use std::process::ExitCode;

use qmul_tools::data::shipped::{
    shipped_subset_dir, write_fashion_mnist_subset, SUBSET_SEED, SUBSET_TEST_PER_CLASS,
    SUBSET_TRAIN_PER_CLASS,
};
use qmul_tools::data::spec::DEBIAN_FASHION_MNIST_DIR;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let src = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| DEBIAN_FASHION_MNIST_DIR.into());
    let dst = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(shipped_subset_dir);
    match write_fashion_mnist_subset(
        &src,
        &dst,
        SUBSET_TRAIN_PER_CLASS,
        SUBSET_TEST_PER_CLASS,
        SUBSET_SEED,
    ) {
        Ok(files) => {
            let total: u64 = files.iter().map(|f| f.bytes).sum();
            for f in &files {
                println!("{}  {}  ({} bytes)", f.sha256, f.path.display(), f.bytes);
            }
            println!("total {total} bytes");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("make_subset: {e}");
            ExitCode::FAILURE
        }
    }
}
