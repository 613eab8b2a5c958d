//! Evaluation of a model on a data set: predictions, probabilities, accuracy,
//! through the runtime's batched eval-mode pass.

use crate::data::Dataset;
use qmul_runtime::samples::{self, Forward};
use qmul_runtime::PassError;

pub use qmul_runtime::samples::argmax_rows;

/// Images per forward call during evaluation.
pub const EVAL_BATCH: usize = samples::EVAL_BATCH;

/// Softmax probabilities (`n x classes`) of the images `indices` of `ds`
/// (all images when `None`), in eval mode.
pub fn probabilities(
    model: &dyn Forward,
    ds: &Dataset,
    indices: Option<&[usize]>,
) -> Result<Vec<f32>, PassError> {
    let gathered;
    let (images, n) = match indices {
        None => (&ds.images[..], ds.len()),
        Some(idx) => {
            let mut v = Vec::with_capacity(idx.len() * ds.image_len());
            for &i in idx {
                v.extend_from_slice(ds.image(i));
            }
            gathered = v;
            (&gathered[..], idx.len())
        }
    };
    samples::probabilities(model, images, n, EVAL_BATCH, &mut |_| true)
        .map(|p| p.unwrap_or_default())
}

/// Accuracy in percent of `model` on the images `indices` of `ds` (all when
/// `None`); an empty set is an error, not 0%.
pub fn accuracy(
    model: &dyn Forward,
    ds: &Dataset,
    indices: Option<&[usize]>,
) -> Result<f64, PassError> {
    let n = indices.map_or(ds.len(), <[usize]>::len);
    if n == 0 {
        return Err(PassError(format!("{}: no images to evaluate", ds.name)));
    }
    let p = probabilities(model, ds, indices)?;
    let pred = argmax_rows(&p, model.classes());
    let correct = pred
        .iter()
        .enumerate()
        .filter(|&(j, &c)| {
            let i = indices.map_or(j, |ix| ix[j]);
            c == ds.label(i) as usize
        })
        .count();
    Ok(100.0 * correct as f64 / pred.len() as f64)
}
