//! Data-set readers the runtime (and so the C ABI) needs: MNIST-style idx
//! files (gzipped or raw) and CIFAR-10/100 binary batches, read into u8 NHWC
//! [`Dataset`]s with every length, count and label checked.
//!
//! * **Pixels stay u8.** The network takes u8 pixels with an input scale of
//!   1/255; no mean/std normalisation is applied here, because the network's
//!   first BatchNorm learns exactly that per-channel affine map.
//! * **NHWC everywhere**, as in the runtime; CIFAR's planar records are
//!   converted on load.
//! * **Errors, not panics, for bad input.** Every reader checks lengths,
//!   counts and label ranges and returns a [`DataError`] that names the file
//!   and, when it is missing, how to get it; file sizes are capped before
//!   anything is read into memory.
//!
//! The host-side layer (data-set specs, subsets, augmentation, batching)
//! lives in `qmul-tools` and builds on these readers.

pub mod cifar;
pub mod dataset;
pub mod error;
pub mod file;
pub mod idx;
pub mod rng;

pub use cifar::CifarKind;
pub use dataset::Dataset;
pub use error::DataError;
