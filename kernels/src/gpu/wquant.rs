//! The weight quantizers on the GPU (the runtime's `quant::weight` is the
//! reference): latent f32 weights (`cout x k`) to signed codes in the
//! integer GEMM's packed rows with one scale per output channel, and the
//! straight-through backward. One cube per output channel.
//!
//! Max-abs scales are the CPU's exactly: the channel's largest `|w|`
//! divided by `qmax`, its low mantissa bits cleared (`exact_scale`), 1
//! for an all-zero channel. Codes round half to even as on the CPU.

#![allow(clippy::manual_clamp)] // cube code: the CPU's comparisons, spelled out
use super::dsq;
use super::reduce::{cube_max_abs, cube_sum, UNITS};
use cubecl::prelude::*;

/// The quantizer (the kernels' `comptime` `kind`).
pub(super) const MAXABS: u32 = 0;
pub(super) const LSQ: u32 = 1;
pub(super) const DSQ: u32 = 2;

/// `1.5 * 2^23` (see `act.rs`).
const MAGIC: f32 = 12_582_912.0;
/// The bits of `MAGIC`.
const MAGIC_BITS: u32 = 0x4B40_0000;

/// Codes and scales of channel `CUBE_POS` (one cube each): `codes` rows of
/// `row_words` words (32 / bits codes a word, two's complement, low bits
/// first), `scale[ch]`. LSQ's step is `q[q_off + ch]`, DSQ's `q[q_off + ch] / 7`.
/// Codes are clipped to `[lo, hi]` (`[-qmax, qmax]` for max-abs, `[-8, 7]`
/// otherwise), given by the caller: a negative float assigned inside a
/// `comptime` branch did not reach the generated kernel.
#[cube(launch)]
#[allow(clippy::too_many_arguments, unused_assignments)]
pub(super) fn weight_codes_kernel(
    w: &Array<f32>,
    q: &Array<f32>,
    codes: &mut Array<u32>,
    scale: &mut Array<f32>,
    k: u32,
    row_words: u32,
    q_off: u32,
    lo: f32,
    hi: f32,
    #[comptime] kind: u32,
    #[comptime] bits: u32,
) {
    let mut sh = SharedMemory::<f32>::new(UNITS as usize);
    let ch = CUBE_POS_X;
    let base = ch * k;
    let mut s = 0.0f32;
    if kind == MAXABS {
        let qmax = comptime!(((1u32 << (bits - 1)) - 1) as f32);
        let mut m = 0.0f32;
        let mut i = UNIT_POS_X;
        while i < k {
            let v = w[(base + i) as usize].abs();
            if v > m {
                m = v;
            }
            i += UNITS;
        }
        let mx = cube_max_abs(m, &mut sh);
        s = 1.0;
        if mx > 0.0 {
            // `exact_scale`: 3 low bits cleared for 4-bit, 7 for 8-bit.
            let clear = comptime!(if bits == 4 { 7u32 } else { 127u32 });
            s = f32::reinterpret(u32::reinterpret(mx / qmax) & !clear);
        }
    } else if kind == LSQ {
        s = q[(q_off + ch) as usize];
    } else {
        s = q[(q_off + ch) as usize] / 7.0;
    }
    if UNIT_POS_X == 0 {
        scale[ch as usize] = s;
    }
    let inv = 1.0 / s;
    let per = comptime!(32 / bits);
    let mask = comptime!((1u32 << bits) - 1);
    let mut wd = UNIT_POS_X;
    while wd < row_words {
        let mut word = 0u32;
        #[unroll]
        for j in 0..per {
            let e = wd * per + j;
            if e < k {
                let mut v = w[(base + e) as usize] * inv;
                // `clamp(lo, hi)` as the CPU's `f32::clamp` (NaN stays NaN
                // there and becomes code 0 through the saturating cast).
                if v < lo {
                    v = lo;
                }
                if v > hi {
                    v = hi;
                }
                let mut c = 0u32;
                if !v.is_nan() {
                    // Offset by 256 so that negative codes do not wrap.
                    c = (u32::reinterpret(v + MAGIC) + 256u32 - MAGIC_BITS) & mask;
                }
                word |= c << (j * bits);
            }
        }
        codes[(ch * row_words + wd) as usize] = word;
        wd += UNITS;
    }
}

/// The straight-through backward of LSQ or DSQ weights for channel
/// `CUBE_POS` (one cube each): `dw` from `dwq`, the channel's parameter
/// gradient added to `dq[q_off + ch]`, and (DSQ) the channel's share of
/// `dalpha` in `partials[ch]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn weight_backward_kernel(
    w: &Array<f32>,
    dwq: &Array<f32>,
    q: &Array<f32>,
    dw: &mut Array<f32>,
    dq: &mut Array<f32>,
    partials: &mut Array<f32>,
    k: u32,
    cout: u32,
    q_off: u32,
    #[comptime] kind: u32,
) {
    let mut sh = SharedMemory::<f32>::new(UNITS as usize);
    let ch = CUBE_POS_X;
    let base = ch * k;
    let mut acc = 0.0f32;
    let mut acc_a = 0.0f32;
    let mut i = UNIT_POS_X;
    if kind == LSQ {
        let inv = 1.0 / q[(q_off + ch) as usize];
        while i < k {
            let j = (base + i) as usize;
            let v = w[j] * inv;
            let gq = dwq[j];
            let mut d = 0.0f32;
            if v < -8.0 {
                acc -= 8.0 * gq;
            } else if v > 7.0 {
                acc += 7.0 * gq;
            } else {
                d = gq;
                // round(v) half to even for v in [-8, 7].
                let r = f32::cast_from(
                    i32::cast_from(u32::reinterpret(v + MAGIC) + 256u32 - MAGIC_BITS) - 256i32,
                );
                acc += gq * (r - v);
            }
            dw[j] = d;
            i += UNITS;
        }
    } else {
        let u = q[(q_off + ch) as usize];
        let alpha = q[(q_off + cout) as usize];
        let d = u / 7.0;
        let sharp = dsq::sharpness(alpha);
        while i < k {
            let j = (base + i) as usize;
            let x = w[j];
            let gq = dwq[j];
            let mut g = 0.0f32;
            if x < -8.0 * d {
                acc -= (8.0 / 7.0) * gq;
            } else if x > u {
                acc += gq;
            } else {
                let sg = dsq::soft_grad(sharp, x, d, 8.0);
                g = gq * sg.dx;
                acc += gq * sg.dd / 7.0;
                acc_a += gq * sg.dalpha;
            }
            dw[j] = g;
            i += UNITS;
        }
    }
    let total = cube_sum(acc, &mut sh);
    let total_a = cube_sum(acc_a, &mut sh);
    if UNIT_POS_X == 0 {
        let mut f = 1.0f32;
        if kind == LSQ {
            f = 1.0 / (f32::cast_from(k) * 7.0).sqrt();
        }
        dq[(q_off + ch) as usize] += total * f;
        partials[ch as usize] = total_a;
    }
}
