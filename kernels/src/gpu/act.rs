//! The activation quantizers on the GPU (ReLU + unsigned 4-bit codes; the
//! runtime's `quant::act` is the reference): the forward's codes, packed
//! eight to a `u32` word exactly as the CPU packs them two to a byte (low
//! nibble first), and the straight-through backward (`dx` and the
//! quantizer parameters' gradient sums). The quantizer is `comptime`; its
//! parameters are read from a device buffer, so a step never brings them
//! back to the host.
//!
//! Codes are computed as on the CPU, without a float-to-int conversion:
//! the clamped `x / scale` plus `1.5 * 2^23` rounds half to even and leaves
//! the code in the low bits, so the codes equal the CPU's wherever the
//! device divides correctly rounded (the inverse scale is `1 / scale`).

#![allow(clippy::manual_div_ceil, clippy::manual_clamp)] // cube code: written in the kernel language's integer and comparison operations, as the CPU reference spells them
use super::dsq;
use super::reduce::{cube_index, cube_max_abs, cube_sum, UNITS};
use cubecl::prelude::*;

/// The quantizer of an activation (the kernels' `comptime` `scheme`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActQuant {
    /// A float model's ReLU (no codes).
    Relu,
    /// PACT: parameter `[a]`, scale `a / 15`.
    Pact,
    /// LSQ: parameter `[s]`, scale `s`.
    Lsq,
    /// DSQ: parameters `[u, alpha]`, scale `u / 15`.
    Dsq,
}

impl ActQuant {
    pub(super) fn code(self) -> u32 {
        match self {
            ActQuant::Relu => RELU,
            ActQuant::Pact => PACT,
            ActQuant::Lsq => LSQ,
            ActQuant::Dsq => DSQ,
        }
    }

    /// Parameters it reads.
    pub fn params(self) -> usize {
        match self {
            ActQuant::Relu => 0,
            ActQuant::Pact | ActQuant::Lsq => 1,
            ActQuant::Dsq => 2,
        }
    }
}

const RELU: u32 = 0;
const PACT: u32 = 1;
const LSQ: u32 = 2;
const DSQ: u32 = 3;

/// `1.5 * 2^23`: added to a value in `[0, 2^22)`, it rounds it to an
/// integer (half to even) held in the low mantissa bits.
const MAGIC: f32 = 12_582_912.0;

/// The code of `x`: `round(clamp(x * inv, 0, 15))`, NaN to 0.
#[cube]
fn code_of(x: f32, inv: f32) -> u32 {
    let v = x * inv;
    let mut c = 0.0f32;
    if v > 0.0 {
        c = v;
    }
    if c > 15.0 {
        c = 15.0;
    }
    u32::reinterpret(c + MAGIC) & 255u32
}

/// `round(v)`, half to even, for `v` in `[0, 15]`.
#[cube]
fn round_code(v: f32) -> f32 {
    f32::cast_from(u32::reinterpret(v + MAGIC) & 255u32)
}

/// `1 / scale` of the quantizer whose parameters start at `q[q_off]`.
#[cube]
fn inverse_scale(q: &Array<f32>, q_off: u32, #[comptime] scheme: u32) -> f32 {
    let q0 = q[q_off as usize];
    let mut scale = q0;
    if scheme != LSQ {
        scale = q0 / 15.0;
    }
    1.0 / scale
}

/// Word `w` of the packed codes: elements `8w .. 8w + 8` (past `n`: 0).
#[cube(launch)]
pub(super) fn act_codes_kernel(
    x: &Array<f32>,
    q: &Array<f32>,
    out: &mut Array<u32>,
    n: u32,
    q_off: u32,
    #[comptime] scheme: u32,
) {
    let w = cube_index() * UNITS + UNIT_POS_X;
    if w < (n + 7) / 8 {
        let inv = inverse_scale(q, q_off, scheme);
        let mut word = 0u32;
        #[unroll]
        for j in 0..8u32 {
            let e = w * 8 + j;
            if e < n {
                word |= code_of(x[e as usize], inv) << (j * 4);
            }
        }
        out[w as usize] = word;
    }
}

/// The straight-through backward of one element per unit: `dx`, and per
/// cube the sums of the parameter terms (PACT `da`; LSQ `ds` before its
/// gradient scale; DSQ `du`, `dalpha`) in `partials[2 * cube ..]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn act_backward_kernel(
    x: &Array<f32>,
    dy: &Array<f32>,
    q: &Array<f32>,
    dx: &mut Array<f32>,
    partials: &mut Array<f32>,
    n: u32,
    q_off: u32,
    #[comptime] scheme: u32,
) {
    let mut sh = SharedMemory::<f32>::new(UNITS as usize);
    let cube = cube_index();
    let i = cube * UNITS + UNIT_POS_X;
    let mut d = 0.0f32;
    let mut t0 = 0.0f32;
    let mut t1 = 0.0f32;
    if i < n {
        let xv = x[i as usize];
        let g = dy[i as usize];
        if scheme == RELU {
            if xv > 0.0 {
                d = g;
            }
        } else if scheme == PACT {
            let a = q[q_off as usize];
            if xv >= 0.0 && xv <= a {
                d = g;
            }
            if xv >= a {
                t0 = g;
            }
        } else if scheme == LSQ {
            let inv = 1.0 / q[q_off as usize];
            let v = xv * inv;
            if v < 0.0 {
            } else if v > 15.0 {
                t0 = g * 15.0;
            } else {
                d = g;
                t0 = g * (round_code(v) - v);
            }
        } else {
            let u = q[q_off as usize];
            let alpha = q[(q_off + 1) as usize];
            if xv < 0.0 {
            } else if xv > u {
                t0 = g;
            } else {
                let dstep = u / 15.0;
                let sg = dsq::soft_grad(dsq::sharpness(alpha), xv, dstep, 0.0);
                d = g * sg.dx;
                t0 = g * sg.dd / 15.0;
                t1 = g * sg.dalpha;
            }
        }
        dx[i as usize] = d;
    }
    if scheme != RELU {
        let s0 = cube_sum(t0, &mut sh);
        let s1 = cube_sum(t1, &mut sh);
        if UNIT_POS_X == 0 {
            partials[(2 * cube) as usize] = s0;
            partials[(2 * cube + 1) as usize] = s1;
        }
    }
}

/// The 8-bit classifier's input (the runtime's `linear::quantize_rows`):
/// row `CUBE_POS_X` of `x` (`cin` floats) as unsigned codes in the integer
/// GEMM's rows of `row_words` words with scale `max(row, 0) / 255` (1 for a
/// row without a positive value) in `scales`.
#[cube(launch)]
pub(super) fn quantize_rows_kernel(
    x: &Array<f32>,
    codes: &mut Array<u32>,
    scales: &mut Array<f32>,
    cin: u32,
    row_words: u32,
) {
    let mut sh = SharedMemory::<f32>::new(UNITS as usize);
    let row = CUBE_POS_X;
    let base = row * cin;
    let mut m = 0.0f32;
    let mut i = UNIT_POS_X;
    while i < cin {
        let v = x[(base + i) as usize];
        if v > m {
            m = v;
        }
        i += UNITS;
    }
    // The values are at least 0 here, so the largest |v| is the largest v.
    let mx = cube_max_abs(m, &mut sh);
    let mut s = 1.0f32;
    if mx > 0.0 {
        s = mx / 255.0;
    }
    if UNIT_POS_X == 0 {
        scales[row as usize] = s;
    }
    let mut wd = UNIT_POS_X;
    while wd < row_words {
        let mut word = 0u32;
        #[unroll]
        for j in 0..4u32 {
            let e = wd * 4 + j;
            if e < cin {
                let v = x[(base + e) as usize] / s;
                let mut c = 0.0f32;
                if v > 0.0 {
                    c = v;
                }
                if c > 255.0 {
                    c = 255.0;
                }
                word |= (u32::reinterpret(c + MAGIC) & 255u32) << (j * 8);
            }
        }
        codes[(row * row_words + wd) as usize] = word;
        wd += UNITS;
    }
}
