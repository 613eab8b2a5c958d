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

/// `out[e] = code_e * scale`: packed unsigned codes (`bits` 4 or 8, `32 / bits`
/// to a word, the CPU's order) as values, as the CPU's `to_f32` gives them.
#[cube(launch)]
pub(super) fn dequantize_kernel(
    codes: &Array<u32>,
    out: &mut Array<f32>,
    n: u32,
    scale: f32,
    #[comptime] bits: u32,
) {
    let e = cube_index() * UNITS + UNIT_POS_X;
    if e < n {
        let per = comptime!(32 / bits);
        let c = (codes[(e / per) as usize] >> ((e % per) * bits)) & comptime!((1u32 << bits) - 1);
        out[e as usize] = f32::cast_from(c) * scale;
    }
}

/// `y[i][j] = y[i][j] * row_scale[i] + bias[j]` (the 8-bit classifier's
/// epilogue: the input rows' scales, then the bias).
#[cube(launch)]
pub(super) fn row_scale_bias_kernel(
    y: &mut Array<f32>,
    row_scale: &Array<f32>,
    bias: &Array<f32>,
    n: u32,
    out: u32,
) {
    let i = cube_index() * UNITS + UNIT_POS_X;
    if i < n * out {
        let v = y[i as usize] * row_scale[(i / out) as usize];
        y[i as usize] = v + bias[(i % out) as usize];
    }
}

/// `out[i][j] = x[i][j] * s[j]` over `n x c` (the backward's `dY` times the
/// weight scales).
#[cube(launch)]
pub(super) fn scale_cols_kernel(
    x: &Array<f32>,
    s: &Array<f32>,
    out: &mut Array<f32>,
    n: u32,
    c: u32,
) {
    let i = cube_index() * UNITS + UNIT_POS_X;
    if i < n * c {
        out[i as usize] = x[i as usize] * s[(i % c) as usize];
    }
}

/// `out[j] += sum_i x[i][j]` over the `n` rows in order (a bias gradient).
#[cube(launch)]
pub(super) fn col_sums_kernel(x: &Array<f32>, out: &mut Array<f32>, n: u32, c: u32) {
    let j = cube_index() * UNITS + UNIT_POS_X;
    if j < c {
        let mut acc = 0.0f32;
        for i in 0..n {
            acc += x[(i * c + j) as usize];
        }
        out[j as usize] += acc;
    }
}

/// `out[b][c] = code[b][c] * row_scale[b]`: 8-bit rows of `row_words` words
/// as the values the classifier multiplied (`n x cin`).
#[cube(launch)]
pub(super) fn dequantize_rows_kernel(
    codes: &Array<u32>,
    row_scale: &Array<f32>,
    out: &mut Array<f32>,
    n: u32,
    cin: u32,
    row_words: u32,
) {
    let i = cube_index() * UNITS + UNIT_POS_X;
    if i < n * cin {
        let b = i / cin;
        let c = i % cin;
        let w = codes[(b * row_words + c / 4) as usize];
        let code = (w >> ((c % 4) * 8)) & 255u32;
        out[i as usize] = f32::cast_from(code) * row_scale[b as usize];
    }
}

/// `x[start + i] = min(max(x[start + i], lo), hi)` for `i < count` (the
/// quantizer parameters' valid ranges after an update).
#[cube(launch)]
pub(super) fn clamp_kernel(x: &mut Array<f32>, start: u32, count: u32, lo: f32, hi: f32) {
    let i = cube_index() * UNITS + UNIT_POS_X;
    if i < count {
        let j = (start + i) as usize;
        let mut v = x[j];
        if v < lo {
            v = lo;
        }
        if v > hi {
            v = hi;
        }
        x[j] = v;
    }
}

/// `g[i] += gamma * signum(w[i])` (l1-sparse's penalty; `signum` of 0 is
/// 1, of -0 is -1, as Rust's).
#[cube(launch)]
pub(super) fn add_sign_kernel(g: &mut Array<f32>, w: &Array<f32>, n: u32, gamma: f32) {
    let i = cube_index() * UNITS + UNIT_POS_X;
    if i < n {
        let wv = w[i as usize];
        let mut s = 1.0f32;
        if (u32::reinterpret(wv) >> 31u32) == 1u32 {
            s = -1.0;
        }
        g[i as usize] += gamma * s;
    }
}
