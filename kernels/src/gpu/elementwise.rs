//! Element-wise kernels of the training step on the GPU: the residual add,
//! global average pooling and its backward, and the SGD update (the
//! runtime's `exec`, `ops::pool` and `optim::Sgd` are the references).

use super::reduce::{cube_index, UNITS};
use cubecl::prelude::*;

/// `y = a + b`.
#[cube(launch)]
pub(super) fn add_kernel(a: &Array<f32>, b: &Array<f32>, y: &mut Array<f32>, n: u32) {
    let i = cube_index() * UNITS + UNIT_POS_X;
    if i < n {
        y[i as usize] = a[i as usize] + b[i as usize];
    }
}

/// `[n, hw, c] -> [n, c]`: one unit per output, summing the positions in
/// order and dividing by `hw`, as the CPU does (the same result).
#[cube(launch)]
pub(super) fn gap_forward_kernel(x: &Array<f32>, y: &mut Array<f32>, n: u32, hw: u32, c: u32) {
    let o = cube_index() * UNITS + UNIT_POS_X;
    if o < n * c {
        let b = o / c;
        let ch = o % c;
        let mut acc = 0.0f32;
        for p in 0..hw {
            acc += x[((b * hw + p) * c + ch) as usize];
        }
        y[o as usize] = acc / f32::cast_from(hw);
    }
}

/// `dy` (`[n, c]`) spread evenly over the `hw` positions.
#[cube(launch)]
pub(super) fn gap_backward_kernel(dy: &Array<f32>, dx: &mut Array<f32>, n: u32, hw: u32, c: u32) {
    let i = cube_index() * UNITS + UNIT_POS_X;
    if i < n * hw * c {
        let ch = i % c;
        let b = i / (hw * c);
        dx[i as usize] = dy[(b * c + ch) as usize] / f32::cast_from(hw);
    }
}

/// SGD with momentum and weight decay, PyTorch's order: `g += wd * p`,
/// `g *= mask` (SalUn, when `masked`), `v = mu * v + g`, `p -= lr * v`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn sgd_kernel(
    p: &mut Array<f32>,
    g: &Array<f32>,
    v: &mut Array<f32>,
    mask: &Array<f32>,
    n: u32,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    #[comptime] masked: bool,
) {
    let i = cube_index() * UNITS + UNIT_POS_X;
    if i < n {
        let j = i as usize;
        let mut gi = g[j] + weight_decay * p[j];
        if masked {
            gi *= mask[j];
        }
        let vi = momentum * v[j] + gi;
        v[j] = vi;
        p[j] -= lr * vi;
    }
}
