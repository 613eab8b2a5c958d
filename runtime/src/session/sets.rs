//! The sample sets a session owns: the forget set, the retain data and the
//! test set, each copied from a caller's buffers or selected by index from a
//! data set read from an idx or CIFAR file, and checked against the model.

use crate::data::Dataset;
use crate::error::{Error, ErrorKind, Result};
use crate::graph::Shape;
use crate::samples::Samples;
use sha2::{Digest, Sha256};

/// Owned images (NHWC u8) and labels, with where they came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleSet {
    images: Vec<u8>,
    labels: Vec<u32>,
    /// Indices into the data set they were selected from, when they were.
    indices: Option<Vec<usize>>,
    /// A short description for receipts and messages (never the data).
    source: String,
}

/// What a set must fit: the model's input shape and class count.
#[derive(Clone, Copy, Debug)]
pub struct SetShape {
    pub input: Shape,
    pub classes: usize,
}

fn bad(kind: ErrorKind, m: String) -> Error {
    Error::new(kind, m)
}

impl SampleSet {
    /// Copies `n = labels.len()` images and labels from a caller's buffers.
    pub fn from_buffers(
        what: &str,
        images: &[u8],
        labels: &[u32],
        shape: SetShape,
    ) -> Result<SampleSet> {
        let len = shape.input.len();
        if labels.is_empty() {
            return Err(Error::invalid(format!("{what}: the set is empty")));
        }
        if labels.len().checked_mul(len) != Some(images.len()) {
            return Err(bad(
                ErrorKind::BufferSize,
                format!(
                    "{what}: {} labels need {} image bytes ({}x{}x{} each), the buffer has {}",
                    labels.len(),
                    labels.len().saturating_mul(len),
                    shape.input.h,
                    shape.input.w,
                    shape.input.c,
                    images.len()
                ),
            ));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= shape.classes)
        {
            return Err(Error::invalid(format!(
                "{what}: label {l} of sample {i} is out of range for {} classes",
                shape.classes
            )));
        }
        Ok(SampleSet {
            images: images.to_vec(),
            labels: labels.to_vec(),
            indices: None,
            source: format!("{} samples from caller buffers", labels.len()),
        })
    }

    /// Selects samples `indices` (all of them when `None`) of `ds`. Indices
    /// must be in range and distinct.
    pub fn from_dataset(
        what: &str,
        ds: &Dataset,
        indices: Option<&[usize]>,
        shape: SetShape,
    ) -> Result<SampleSet> {
        check_dataset(what, ds, shape)?;
        let all: Vec<usize>;
        let idx = match indices {
            Some(i) => {
                check_indices(what, i, ds.len())?;
                i
            }
            None => {
                all = (0..ds.len()).collect();
                &all
            }
        };
        if idx.is_empty() {
            return Err(Error::invalid(format!("{what}: the set is empty")));
        }
        let mut images = Vec::with_capacity(idx.len() * ds.image_len());
        let mut labels = Vec::with_capacity(idx.len());
        for &i in idx {
            images.extend_from_slice(ds.image(i));
            labels.push(ds.label(i) as u32);
        }
        Ok(SampleSet {
            images,
            labels,
            indices: Some(idx.to_vec()),
            source: format!("{} samples of {}", idx.len(), ds.name),
        })
    }

    pub fn samples(&self) -> Samples<'_> {
        Samples {
            images: &self.images,
            labels: &self.labels,
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn indices(&self) -> Option<&[usize]> {
        self.indices.as_deref()
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Bytes this set holds.
    pub fn bytes(&self) -> u64 {
        (self.images.len()
            + 4 * self.labels.len()
            + 8 * self.indices.as_ref().map_or(0, Vec::len)
            + self.source.len()) as u64
    }

    /// SHA-256 over the samples' contents, each sample's image bytes then its
    /// label as a little-endian u32, in order: identifies what was forgotten
    /// without revealing it (the same hash the `qmul` command has always written).
    pub fn content_sha256(&self) -> String {
        let len = self.images.len() / self.labels.len().max(1);
        let mut h = Sha256::new();
        for (img, &l) in self.images.chunks(len.max(1)).zip(&self.labels) {
            h.update(img);
            h.update(l.to_le_bytes());
        }
        crate::model_file::write::hex(&h.finalize())
    }
}

/// The data set's images and classes must be what the model takes.
pub fn check_dataset(what: &str, ds: &Dataset, shape: SetShape) -> Result<()> {
    let s = shape.input;
    if ds.image_shape() != [s.h, s.w, s.c] || ds.classes != shape.classes {
        return Err(Error::invalid(format!(
            "{what}: the model takes {}x{}x{} images of {} classes; {} has {:?} and {}",
            s.h,
            s.w,
            s.c,
            shape.classes,
            ds.name,
            ds.image_shape(),
            ds.classes
        )));
    }
    Ok(())
}

/// Indices must be below `n` and appear once each.
pub fn check_indices(what: &str, idx: &[usize], n: usize) -> Result<()> {
    if let Some((k, &i)) = idx.iter().enumerate().find(|(_, &i)| i >= n) {
        return Err(Error::invalid(format!(
            "{what}: index {i} (position {k}) is out of range for {n} samples"
        )));
    }
    let mut sorted = idx.to_vec();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::invalid(format!(
            "{what}: index {} appears more than once",
            w[0]
        )));
    }
    Ok(())
}

/// `0..n` without the indices in `remove`.
pub fn complement(n: usize, remove: &[usize]) -> Vec<usize> {
    let mut out_of = vec![false; n];
    for &i in remove {
        if i < n {
            out_of[i] = true;
        }
    }
    (0..n).filter(|&i| !out_of[i]).collect()
}
