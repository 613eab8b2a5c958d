//! Borrowed sets of samples as the runtime takes them (u8 NHWC images and
//! labels), and the eval-mode pass over such a set in batches that the
//! metrics, Similar Labels and predictions share.

use crate::exec::PassError;
use crate::graph::Shape;
use crate::model::Model;
use crate::ops::loss::softmax;

/// Whatever computes a model's eval-mode logits: the model on the CPU
/// ([`Model`]), or the same model resident on a GPU (`gpu::DeviceModel`).
/// The metrics, predictions and evaluation take this, so every device runs
/// the same evaluation code.
pub trait Forward {
    /// Eval-mode logits (`n x classes`) of `n` NHWC u8 images.
    fn logits(&self, images: &[u8], n: usize) -> Result<Vec<f32>, PassError>;
    fn classes(&self) -> usize;
    /// One image's shape.
    fn input_shape(&self) -> Shape;
}

impl Forward for Model {
    fn logits(&self, images: &[u8], n: usize) -> Result<Vec<f32>, PassError> {
        self.forward(images, n)
    }

    fn classes(&self) -> usize {
        Model::classes(self)
    }

    fn input_shape(&self) -> Shape {
        self.graph.input_shape()
    }
}

/// Images (NHWC u8, as the model's input) and labels of a set of samples.
#[derive(Clone, Copy, Debug)]
pub struct Samples<'a> {
    pub images: &'a [u8],
    pub labels: &'a [u32],
}

impl Samples<'_> {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Checks the set against `model`: one image of the input size per label,
    /// every label a class of the model.
    pub fn check(&self, model: &dyn Forward, what: &str) -> Result<(), PassError> {
        let image_len = model.input_shape().len();
        if self.len().checked_mul(image_len) != Some(self.images.len()) {
            return Err(PassError(format!(
                "{what}: {} labels but {} image bytes ({image_len} per image)",
                self.len(),
                self.images.len(),
            )));
        }
        if let Some((i, &l)) = self
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= model.classes())
        {
            return Err(PassError(format!(
                "{what}: label {l} of sample {i} is out of range for {} classes",
                model.classes()
            )));
        }
        Ok(())
    }

    /// The images of samples `idx`, concatenated.
    pub fn gather(&self, idx: &[usize], image_len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(idx.len() * image_len);
        for &i in idx {
            out.extend_from_slice(&self.images[i * image_len..(i + 1) * image_len]);
        }
        out
    }
}

/// Images per forward call when nothing else sets a batch.
pub const EVAL_BATCH: usize = 256;

/// Eval-mode softmax probabilities (`n x classes`) of every image of `images`
/// (`n` of them), `batch` at a time. `keep_going` is asked after every batch;
/// `false` stops the pass and returns `Ok(None)`.
pub fn probabilities(
    model: &dyn Forward,
    images: &[u8],
    n: usize,
    batch: usize,
    keep_going: &mut dyn FnMut(usize) -> bool,
) -> Result<Option<Vec<f32>>, PassError> {
    let image_len = model.input_shape().len();
    if n.checked_mul(image_len) != Some(images.len()) {
        return Err(PassError(format!(
            "{n} images need {} bytes, got {}",
            n.saturating_mul(image_len),
            images.len()
        )));
    }
    let k = model.classes();
    let batch = batch.max(1);
    let mut out = Vec::with_capacity(n * k);
    for (b, chunk) in images.chunks(batch * image_len).enumerate() {
        let logits = model.logits(chunk, chunk.len() / image_len)?;
        for row in logits.chunks(k) {
            out.extend(softmax(row));
        }
        if !keep_going(b + 1) {
            return Ok(None);
        }
    }
    Ok(Some(out))
}

/// Index of the largest entry of each row of `k` values (the first on ties).
pub fn argmax_rows(p: &[f32], k: usize) -> Vec<usize> {
    p.chunks(k.max(1))
        .map(|r| {
            r.iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                )
                .0
        })
        .collect()
}
