//! Mini-batch iteration over a [`Dataset`], optionally shuffled and
//! augmented.
//!
//! Reproducibility contract: the batches of an epoch depend only on the
//! data set and `(batch_size, shuffle, augment, seed, epoch)`. The order is
//! a permutation drawn from a stream keyed by `(seed, epoch)`, and each
//! sample's augmentation is drawn from its own stream keyed by `(seed,
//! epoch, sample index)` — so a sample gets the same crop/flip whatever the
//! batch size or order, and a run can resume at any epoch without replaying
//! the earlier ones.

use super::augment::Augment;
use super::dataset::Dataset;
use super::rng::Rng;

/// Stream tags, so that the order and augmentation streams never coincide.
const ORDER_TAG: u64 = 0x004f_5244_4552; // "ORDER"
const AUGMENT_TAG: u64 = 0x4155_474d; // "AUGM"

/// One mini-batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// `len()` images, NHWC, same h, w, c as the data set (augmented if
    /// augmentation was asked for).
    pub images: Vec<u8>,
    /// The label of each image.
    pub labels: Vec<u16>,
    /// The index in the data set of each image.
    pub indices: Vec<usize>,
}

impl Batch {
    /// Number of images in the batch.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// True for a batch with no image (never yielded by [`Batches`]).
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// Iterator over the mini-batches of one epoch. Every index of the data set
/// appears exactly once per epoch; the last batch is kept even if partial.
pub struct Batches<'a> {
    ds: &'a Dataset,
    order: Vec<usize>,
    pos: usize,
    batch_size: usize,
    augment: Option<Augment>,
    seed: u64,
    epoch: u64,
}

/// The visiting order of an epoch: `0..n` if `shuffle` is false, otherwise
/// a permutation determined by `(seed, epoch)`.
pub fn epoch_order(n: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        Rng::from_keys(&[seed, epoch, ORDER_TAG]).shuffle(&mut order);
    }
    order
}

impl<'a> Batches<'a> {
    /// Batches of `batch_size` images for epoch `epoch`. Panics if
    /// `batch_size` is 0 (the caller should reject that setting first).
    pub fn new(
        ds: &'a Dataset,
        batch_size: usize,
        shuffle: bool,
        augment: Option<Augment>,
        seed: u64,
        epoch: u64,
    ) -> Self {
        assert!(batch_size > 0, "batch size must be at least 1");
        Batches {
            ds,
            order: epoch_order(ds.len(), shuffle, seed, epoch),
            pos: 0,
            batch_size,
            augment,
            seed,
            epoch,
        }
    }

    /// Number of batches in the epoch, `ceil(len / batch_size)`.
    pub fn num_batches(&self) -> usize {
        self.ds.len().div_ceil(self.batch_size)
    }
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.pos >= self.order.len() {
            return None;
        }
        let end = (self.pos + self.batch_size).min(self.order.len());
        let indices = self.order[self.pos..end].to_vec();
        self.pos = end;
        let per = self.ds.image_len();
        let mut images = vec![0u8; indices.len() * per];
        let mut labels = Vec::with_capacity(indices.len());
        for (slot, &i) in indices.iter().enumerate() {
            let dst = &mut images[slot * per..(slot + 1) * per];
            let src = self.ds.image(i);
            match self.augment {
                Some(aug) => {
                    let mut rng = Rng::from_keys(&[self.seed, self.epoch, i as u64, AUGMENT_TAG]);
                    aug.apply(src, self.ds.h, self.ds.w, self.ds.c, &mut rng, dst);
                }
                None => dst.copy_from_slice(src),
            }
            labels.push(self.ds.labels[i]);
        }
        Some(Batch {
            images,
            labels,
            indices,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.order.len() - self.pos).div_ceil(self.batch_size);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Batches<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    /// 23 random-looking 6x6x1 images with 4 classes.
    fn ds() -> Dataset {
        let n = 23;
        let mut r = Rng::new(99);
        let images: Vec<u8> = (0..n * 36).map(|_| r.next_u64() as u8).collect();
        let labels: Vec<u16> = (0..n).map(|i| (i % 4) as u16).collect();
        Dataset::new("b", images, labels, n, 6, 6, 1, 4).unwrap()
    }

    #[test]
    fn every_index_once_per_epoch_last_batch_kept() {
        let d = ds();
        for shuffle in [false, true] {
            for epoch in 0..3 {
                let it = Batches::new(&d, 5, shuffle, None, 1, epoch);
                assert_eq!(it.len(), 5);
                assert_eq!(it.num_batches(), 5);
                let batches: Vec<Batch> = it.collect();
                let sizes: Vec<usize> = batches.iter().map(Batch::len).collect();
                assert_eq!(sizes, vec![5, 5, 5, 5, 3]);
                let mut all: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
                if !shuffle {
                    assert_eq!(all, (0..23).collect::<Vec<_>>());
                }
                all.sort_unstable();
                assert_eq!(all, (0..23).collect::<Vec<_>>());
                for b in &batches {
                    for (slot, &i) in b.indices.iter().enumerate() {
                        assert_eq!(b.labels[slot], d.labels[i]);
                        assert_eq!(&b.images[slot * 36..(slot + 1) * 36], d.image(i));
                    }
                }
            }
        }
    }

    #[test]
    fn order_depends_only_on_seed_and_epoch() {
        let d = ds();
        let order = |seed, epoch| -> Vec<usize> {
            Batches::new(&d, 4, true, None, seed, epoch)
                .flat_map(|b| b.indices)
                .collect()
        };
        assert_eq!(order(1, 0), order(1, 0));
        assert_ne!(order(1, 0), order(1, 1));
        assert_ne!(order(1, 0), order(2, 0));
        // Batch size does not change the order.
        let big: Vec<usize> = Batches::new(&d, 100, true, None, 1, 0)
            .flat_map(|b| b.indices)
            .collect();
        assert_eq!(big, order(1, 0));
    }

    #[test]
    fn augmentation_is_per_sample_and_reproducible() {
        let d = ds();
        let aug = Some(Augment::new(2, true));
        let collect = |bs, seed, epoch| {
            let mut per_sample = vec![Vec::new(); d.len()];
            for b in Batches::new(&d, bs, true, aug, seed, epoch) {
                for (slot, &i) in b.indices.iter().enumerate() {
                    per_sample[i] = b.images[slot * 36..(slot + 1) * 36].to_vec();
                }
            }
            per_sample
        };
        let a = collect(4, 7, 0);
        assert_eq!(a, collect(4, 7, 0));
        assert_eq!(a, collect(9, 7, 0), "independent of batch size");
        assert_ne!(a, collect(4, 7, 1), "changes with the epoch");
        // Something was actually changed.
        assert!((0..d.len()).any(|i| a[i] != d.image(i)));
    }

    #[test]
    fn empty_data_set_gives_no_batch() {
        let d = Dataset::new("e", vec![], vec![], 0, 2, 2, 1, 1).unwrap();
        assert_eq!(Batches::new(&d, 3, true, None, 0, 0).count(), 0);
    }
}
