//! BatchNorm on the GPU over the channel (last) axis of NHWC rows (the
//! runtime's `ops::bn` is the reference): batch statistics, the running
//! statistics' update, the normalisation, and the training-mode backward.
//!
//! The statistics and the backward's channel sums take one cube per
//! channel, its units striding over the rows; the sums are in f32 (the CPU
//! sums in f64), the reason these are compared within a budget.

#![allow(clippy::collapsible_if)] // cube code: a `comptime` condition stays apart from a runtime one
use super::reduce::{cube_index, cube_sum, UNITS};
use cubecl::prelude::*;

/// Per channel (one cube each): the mean and biased variance of `x` (`rows x c`),
/// two passes as on the CPU, and `invstd = 1 / sqrt(var + eps)`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn bn_stats_kernel(
    x: &Array<f32>,
    mean: &mut Array<f32>,
    var: &mut Array<f32>,
    invstd: &mut Array<f32>,
    rows: u32,
    c: u32,
    eps: f32,
) {
    let mut sh = SharedMemory::<f32>::new(UNITS as usize);
    let ch = cube_index();
    if ch < c {
        let mut acc = 0.0f32;
        let mut r = UNIT_POS_X;
        while r < rows {
            acc += x[(r * c + ch) as usize];
            r += UNITS;
        }
        let m = cube_sum(acc, &mut sh) / f32::cast_from(rows);
        let mut acc2 = 0.0f32;
        let mut r2 = UNIT_POS_X;
        while r2 < rows {
            let d = x[(r2 * c + ch) as usize] - m;
            acc2 += d * d;
            r2 += UNITS;
        }
        let v = cube_sum(acc2, &mut sh) / f32::cast_from(rows);
        if UNIT_POS_X == 0 {
            mean[ch as usize] = m;
            var[ch as usize] = v;
            invstd[ch as usize] = 1.0 / (v + eps).sqrt();
        }
    }
}

/// The running statistics move towards the batch's (PyTorch semantics;
/// `unbias = rows / (rows - 1)`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn bn_running_kernel(
    mean: &Array<f32>,
    var: &Array<f32>,
    running_mean: &mut Array<f32>,
    running_var: &mut Array<f32>,
    c: u32,
    momentum: f32,
    unbias: f32,
) {
    let ch = cube_index() * UNITS + UNIT_POS_X;
    if ch < c {
        let i = ch as usize;
        running_mean[i] = (1.0 - momentum) * running_mean[i] + momentum * mean[i];
        running_var[i] = (1.0 - momentum) * running_var[i] + momentum * var[i] * unbias;
    }
}

/// `y = x * a + b` per element with `a = gamma * invstd`, `b = beta - mean * a`
/// (the CPU's `bn::affine`), and `max(y, 0)` when `relu`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn bn_apply_kernel(
    x: &Array<f32>,
    gamma: &Array<f32>,
    beta: &Array<f32>,
    mean: &Array<f32>,
    invstd: &Array<f32>,
    y: &mut Array<f32>,
    n: u32,
    c: u32,
    #[comptime] relu: bool,
) {
    let i = cube_index() * UNITS + UNIT_POS_X;
    if i < n {
        let ch = (i % c) as usize;
        let a = gamma[ch] * invstd[ch];
        let b = beta[ch] - mean[ch] * a;
        let mut v = x[i as usize] * a + b;
        if relu {
            // max(v, 0) with NaN to 0, as the CPU's `f32::max`.
            let mut r = 0.0f32;
            if v > 0.0 {
                r = v;
            }
            v = r;
        }
        y[i as usize] = v;
    }
}

/// Per channel (one cube each): the backward's sums `sum dy` and
/// `sum dy * xhat` into `sums[ch]`, `sums[c + ch]`, and added to `dbeta`,
/// `dgamma`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn bn_backward_sums_kernel(
    x: &Array<f32>,
    dy: &Array<f32>,
    mean: &Array<f32>,
    invstd: &Array<f32>,
    sums: &mut Array<f32>,
    dgamma: &mut Array<f32>,
    dbeta: &mut Array<f32>,
    rows: u32,
    c: u32,
) {
    let mut sh = SharedMemory::<f32>::new(UNITS as usize);
    let ch = cube_index();
    if ch < c {
        let m = mean[ch as usize];
        let is = invstd[ch as usize];
        let mut a1 = 0.0f32;
        let mut a2 = 0.0f32;
        let mut r = UNIT_POS_X;
        while r < rows {
            let j = (r * c + ch) as usize;
            let d = dy[j];
            a1 += d;
            a2 += d * (x[j] - m) * is;
            r += UNITS;
        }
        let sdy = cube_sum(a1, &mut sh);
        let sdyx = cube_sum(a2, &mut sh);
        if UNIT_POS_X == 0 {
            sums[ch as usize] = sdy;
            sums[(c + ch) as usize] = sdyx;
            dgamma[ch as usize] += sdyx;
            dbeta[ch as usize] += sdy;
        }
    }
}

/// `dx = gamma * invstd * (dy - mean dy - xhat * mean(dy * xhat))` per element.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn bn_backward_dx_kernel(
    x: &Array<f32>,
    dy: &Array<f32>,
    gamma: &Array<f32>,
    mean: &Array<f32>,
    invstd: &Array<f32>,
    sums: &Array<f32>,
    dx: &mut Array<f32>,
    n: u32,
    c: u32,
    rows: f32,
) {
    let i = cube_index() * UNITS + UNIT_POS_X;
    if i < n {
        let chu = i % c;
        let ch = chu as usize;
        let k = gamma[ch] * invstd[ch];
        let mdy = sums[ch] / rows;
        let mdyx = sums[(c + chu) as usize] / rows;
        let xhat = (x[i as usize] - mean[ch]) * invstd[ch];
        dx[i as usize] = k * (dy[i as usize] - mdy - xhat * mdyx);
    }
}

/// Eval-mode statistics: `invstd = 1 / sqrt(running_var + eps)`.
#[cube(launch)]
pub(super) fn bn_invstd_kernel(var: &Array<f32>, invstd: &mut Array<f32>, c: u32, eps: f32) {
    let ch = cube_index() * UNITS + UNIT_POS_X;
    if ch < c {
        invstd[ch as usize] = 1.0 / (var[ch as usize] + eps).sqrt();
    }
}
