//! The data-set layer: reading MNIST-style idx files and CIFAR binary
//! batches into u8 NHWC [`Dataset`]s, naming data sources with short specs
//! ([`DataSource`], [`load`]), seeded stratified subsets, training-time
//! augmentation ([`Augment`]) and mini-batch iteration ([`Batches`]).
//!
//! Design choices that the rest of the tools rely on:
//!
//! * **Pixels stay u8.** The network takes u8 pixels with an input scale of
//!   1/255 ([`to_unit_f32`]); no mean/std normalisation is applied here,
//!   because the network's first BatchNorm learns (and, once folded, fixes)
//!   exactly that per-channel affine map. Keeping u8 also makes inference
//!   inputs bit-identical between training and the quantized runtime.
//! * **NHWC everywhere**, as in the runtime; CIFAR's planar records are
//!   converted on load.
//! * **Determinism from seeds.** Subsets, shuffles and augmentations come
//!   from a hand-written PRNG ([`Rng`]) whose stream is fixed by this crate,
//!   so a seed means the same thing on every machine and crate version.
//! * **Errors, not panics, for bad input.** Every reader checks lengths,
//!   counts and label ranges and returns a [`DataError`] that names the
//!   file and, when it is missing, how to get it.

pub mod augment;
pub mod batches;
pub mod shipped;
pub mod spec;

// The readers live in the runtime, which the C ABI serves from; re-exported
// here under their old paths.
pub use qmul_runtime::data::{cifar, dataset, error, file, idx, rng};

pub use augment::{Augment, Transform};
pub use batches::{epoch_order, Batch, Batches};
pub use cifar::CifarKind;
pub use dataset::Dataset;
pub use error::DataError;
pub use rng::Rng;
pub use shipped::shipped_subset_dir;
pub use spec::{load, DataSource};

/// The network's view of a pixel: `x / 255`, so 0..=255 maps onto 0..=1.
pub fn to_unit_f32(x: u8) -> f32 {
    f32::from(x) / 255.0
}

/// [`to_unit_f32`] over a slice (e.g. a [`Batch`]'s images).
pub fn images_to_unit_f32(pixels: &[u8]) -> Vec<f32> {
    pixels.iter().map(|&x| to_unit_f32(x)).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn unit_scale() {
        assert_eq!(super::to_unit_f32(0), 0.0);
        assert_eq!(super::to_unit_f32(255), 1.0);
        assert!((super::to_unit_f32(51) - 0.2).abs() < 1e-7);
        assert_eq!(super::images_to_unit_f32(&[0, 255]), vec![0.0, 1.0]);
    }
}
