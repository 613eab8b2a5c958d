//! Evaluation of a model on a data set: predictions, probabilities, accuracy.

use crate::data::Dataset;
use qmul_runtime::ops::loss::softmax;
use qmul_runtime::{Model, PassError};

/// Images per forward call during evaluation.
pub const EVAL_BATCH: usize = 500;

/// Softmax probabilities (`n x classes`) of the images `indices` of `ds`
/// (all images when `indices` is `None`), in eval mode.
pub fn probabilities(
    model: &Model,
    ds: &Dataset,
    indices: Option<&[usize]>,
) -> Result<Vec<f32>, PassError> {
    let all: Vec<usize>;
    let idx = match indices {
        Some(i) => i,
        None => {
            all = (0..ds.len()).collect();
            &all
        }
    };
    let k = model.classes();
    let mut out = Vec::with_capacity(idx.len() * k);
    let il = ds.image_len();
    for chunk in idx.chunks(EVAL_BATCH) {
        let mut images = Vec::with_capacity(chunk.len() * il);
        for &i in chunk {
            images.extend_from_slice(ds.image(i));
        }
        let logits = model.forward(&images, chunk.len())?;
        for row in logits.chunks(k) {
            out.extend(softmax(row));
        }
    }
    Ok(out)
}

/// Index of the largest entry of each row.
pub fn argmax_rows(p: &[f32], k: usize) -> Vec<usize> {
    p.chunks(k)
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

/// Accuracy in percent of `model` on the images `indices` of `ds` (all when `None`).
pub fn accuracy(model: &Model, ds: &Dataset, indices: Option<&[usize]>) -> Result<f64, PassError> {
    let p = probabilities(model, ds, indices)?;
    let pred = argmax_rows(&p, model.classes());
    if pred.is_empty() {
        return Ok(0.0);
    }
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
