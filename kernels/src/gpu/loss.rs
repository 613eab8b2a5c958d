//! The loss and the per-sample reductions of unlearning on the GPU:
//! weighted softmax cross-entropy and its gradient, softmax probabilities,
//! and Similar Labels (the runtime's `ops::loss` and `unlearn` are the
//! references). One unit per sample: a row holds the class count (10 or
//! 100), small enough for one unit.

use super::reduce::{cube_index, UNITS};
use cubecl::prelude::*;

/// The row's largest logit.
#[cube]
fn row_max(logits: &Array<f32>, base: u32, classes: u32) -> f32 {
    let mut m = logits[base as usize];
    for j in 1..classes {
        let v = logits[(base + j) as usize];
        if v > m {
            m = v;
        }
    }
    m
}

/// The row's `sum_j exp(logit_j - max)`.
#[cube]
fn row_exp_sum(logits: &Array<f32>, base: u32, classes: u32, m: f32) -> f32 {
    let mut s = 0.0f32;
    for j in 0..classes {
        s += (logits[(base + j) as usize] - m).exp();
    }
    s
}

/// Per row `i`: `loss[i] = -w_i ln max(p_y, 1e-30)` and the gradient
/// `w_i (p_j - [j = y]) / n` (the mean over the batch is the caller's sum
/// of `loss` divided by `n`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn weighted_ce_kernel(
    logits: &Array<f32>,
    targets: &Array<u32>,
    weights: &Array<f32>,
    grad: &mut Array<f32>,
    loss: &mut Array<f32>,
    n: u32,
    classes: u32,
) {
    let i = cube_index() * UNITS + UNIT_POS_X;
    if i < n {
        let base = i * classes;
        let m = row_max(logits, base, classes);
        let s = row_exp_sum(logits, base, classes, m);
        let y = targets[i as usize];
        let w = weights[i as usize];
        let nf = f32::cast_from(n);
        for j in 0..classes {
            let p = (logits[(base + j) as usize] - m).exp() / s;
            let mut t = 0.0f32;
            if j == y {
                t = 1.0;
                let mut py = p;
                if py < 1e-30 {
                    py = 1e-30;
                }
                loss[i as usize] = -w * py.ln();
            }
            grad[(base + j) as usize] = w * (p - t) / nf;
        }
    }
}

/// Softmax of every row.
#[cube(launch)]
pub(super) fn softmax_kernel(logits: &Array<f32>, probs: &mut Array<f32>, n: u32, classes: u32) {
    let i = cube_index() * UNITS + UNIT_POS_X;
    if i < n {
        let base = i * classes;
        let m = row_max(logits, base, classes);
        let s = row_exp_sum(logits, base, classes, m);
        for j in 0..classes {
            let k = (base + j) as usize;
            probs[k] = (logits[k] - m).exp() / s;
        }
    }
}

/// Similar Labels: per row with true label `y`, the first class `j != y`
/// with the least `|p_j - p_y|`. Only comparisons of the given
/// probabilities, so the same labels as the CPU from the same `probs`.
#[cube(launch)]
pub(super) fn similar_labels_kernel(
    probs: &Array<f32>,
    labels: &Array<u32>,
    out: &mut Array<u32>,
    n: u32,
    classes: u32,
) {
    let i = cube_index() * UNITS + UNIT_POS_X;
    if i < n {
        let base = i * classes;
        let y = labels[i as usize];
        let mut py = 0.0f32;
        if y < classes {
            py = probs[(base + y) as usize];
        }
        let mut best = 0u32;
        let mut best_d = 0.0f32;
        let mut found = false;
        for j in 0..classes {
            if j != y {
                let d = (probs[(base + j) as usize] - py).abs();
                if !found || d < best_d {
                    best = j;
                    best_d = d;
                    found = true;
                }
            }
        }
        out[i as usize] = best;
    }
}
