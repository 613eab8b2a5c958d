//! Sums on the GPU in a fixed order: a tree over one cube's units in shared
//! memory, then one cube adding the cubes' partial sums. No atomics, so a
//! result is the same on every run (the CPU sums in f64; these sum in f32,
//! which is what the float budgets of `runtime/tests/gpu_ops.rs` allow for).
//!
//! Element kernels use cubes of [`UNITS`] units on a 2-D grid of cubes
//! (`grid_1d`), so a tensor may have more than 65,535 cubes' worth of
//! elements; [`cube_index`] is a cube's place in that grid.

use cubecl::prelude::*;

/// Units per cube of the element and reduction kernels (a power of two).
pub const UNITS: u32 = 256;

/// The cube's linear index in a 2-D grid of cubes.
#[cube]
pub(super) fn cube_index() -> u32 {
    CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X
}

/// The sum of every unit's `v` over the cube (a tree in `sh`, which holds
/// [`UNITS`] floats); every unit gets the sum, and `sh` is free again on
/// return. Every unit of the cube must call it.
#[cube]
pub(super) fn cube_sum(v: f32, sh: &mut SharedMemory<f32>) -> f32 {
    let tid = UNIT_POS_X;
    sh[tid as usize] = v;
    sync_cube();
    let mut stride = (UNITS / 2).runtime();
    while stride > 0 {
        if tid < stride {
            sh[tid as usize] = sh[tid as usize] + sh[(tid + stride) as usize];
        }
        sync_cube();
        stride /= 2;
    }
    let s = sh[0];
    sync_cube();
    s
}

/// One cube: `out[out_off + l] += factor_l * sum_i partials[i * stride + l]`
/// for `l < lanes` (1 or 2, at most `stride`), the partials of `count` cubes.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn finish_sums_kernel(
    partials: &Array<f32>,
    out: &mut Array<f32>,
    count: u32,
    out_off: u32,
    factor0: f32,
    factor1: f32,
    #[comptime] stride: u32,
    #[comptime] lanes: u32,
) {
    let mut sh = SharedMemory::<f32>::new(UNITS as usize);
    #[unroll]
    for l in 0..lanes {
        let mut acc = 0.0f32;
        let mut i = UNIT_POS_X;
        while i < count {
            acc += partials[(i * stride + l) as usize];
            i += UNITS;
        }
        let s = cube_sum(acc, &mut sh);
        if UNIT_POS_X == 0 {
            let mut f = factor0;
            if l == 1 {
                f = factor1;
            }
            out[(out_off + l) as usize] += s * f;
        }
    }
}

/// Per cube: the sum of the squares of its [`UNITS`] elements of `x`.
#[cube(launch)]
pub(super) fn sum_squares_kernel(x: &Array<f32>, partials: &mut Array<f32>, n: u32) {
    let mut sh = SharedMemory::<f32>::new(UNITS as usize);
    let cube = cube_index();
    let i = cube * UNITS + UNIT_POS_X;
    let mut v = 0.0f32;
    if i < n {
        let x = x[i as usize];
        v = x * x;
    }
    let s = cube_sum(v, &mut sh);
    if UNIT_POS_X == 0 {
        partials[cube as usize] = s;
    }
}

/// `out[i] = value` for `i < n`.
#[cube(launch)]
pub(super) fn fill_kernel(out: &mut Array<f32>, n: u32, value: f32) {
    let i = cube_index() * UNITS + UNIT_POS_X;
    if i < n {
        out[i as usize] = value;
    }
}

/// The largest `|v|` over the cube's units (a tree in `sh`), to every unit.
#[cube]
pub(super) fn cube_max_abs(v: f32, sh: &mut SharedMemory<f32>) -> f32 {
    let tid = UNIT_POS_X;
    sh[tid as usize] = v.abs();
    sync_cube();
    let mut stride = (UNITS / 2).runtime();
    while stride > 0 {
        if tid < stride {
            let o = sh[(tid + stride) as usize];
            if o > sh[tid as usize] {
                sh[tid as usize] = o;
            }
        }
        sync_cube();
        stride /= 2;
    }
    let m = sh[0];
    sync_cube();
    m
}

/// `dst[i] = src[i]` for `i < n`.
#[cube(launch)]
pub(super) fn copy_kernel(src: &Array<f32>, dst: &mut Array<f32>, n: u32) {
    let i = cube_index() * UNITS + UNIT_POS_X;
    if i < n {
        dst[i as usize] = src[i as usize];
    }
}

/// The integer multiply-add ceiling of the device (the instruction the
/// integer GEMM's unpacked dot products use; cubecl 0.10 has no dp4a): 8
/// independent `i32` accumulators per unit, `iters` rounds of 8 multiply-adds
/// each, one result per unit so nothing is optimised away.
#[cube(launch)]
pub(super) fn imad_peak_kernel(out: &mut Array<i32>, iters: u32) {
    let i = cube_index() * UNITS + UNIT_POS_X;
    let seed = i32::cast_from(i);
    let mut a = Array::<i32>::new(8usize);
    #[unroll]
    for l in 0..8u32 {
        a[l as usize] = seed + i32::cast_from(l);
    }
    let b = seed | 1i32;
    for _ in 0..iters {
        #[unroll]
        for l in 0..8u32 {
            a[l as usize] = a[l as usize] * b + 7i32;
        }
    }
    let mut s = 0i32;
    #[unroll]
    for l in 0..8u32 {
        s += a[l as usize];
    }
    out[i as usize] = s;
}
