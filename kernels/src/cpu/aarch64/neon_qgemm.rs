//! NEON integer GEMMs (base ARMv8-A, no dot-product instructions).
//!
//! Every output is the dot product of one row of A with one row of B, so the
//! kernels compute a tile of 4 x 4 outputs at a time: each A vector loaded is
//! used four times and each B vector four times, and the 16 accumulators, four
//! B vectors and one A vector fit the 32 vector registers.
//!
//! * u4 x s4: packed rows are split into one code per byte, in scratch buffers
//!   so each row is split once per call instead of once per tile. u4 codes fit
//!   i8, so `smlal`/`smlal2` multiply-accumulate i8 x i8 straight into i16
//!   lanes; each lane gains two products of at most 15 * 8 = 120 in magnitude per
//!   16 codes, and is widened to i32 before it could overflow.
//! * u8 x s8: u8 codes do not fit i8, so A is biased by -128 (flipping the top
//!   bit turns u8 `a` into i8 `a - 128`) and `sum a*b = sum (a-128)*b + 128 * sum b`,
//!   with `sum b` computed once per row of B. `smull`/`smull2` give the i16
//!   products and `sadalp` adds pairs of them into i32 lanes (two products can
//!   reach 2 * 128 * 128, one more than i16 holds, so they are not summed in
//!   i16). This costs one `eor` per A vector instead of widening both operands.
//!
//! The i32 sums are scaled exactly as in the scalar reference, so results are
//! bitwise equal to it.

use super::detect_neon;
pub(super) use crate::cpu::scratch::{as_i8, with_scratch};
use crate::{QGemm, ShapeError};
use std::arch::aarch64::*;

/// Rows of A per register tile.
pub(super) const MR: usize = 4;
/// Rows of B (output columns) per register tile.
pub(super) const NR: usize = 4;
/// Steps of 16 codes summed in i16 before widening: 128 * 2 * 120 = 30720 <= i16::MAX.
const I16_STEPS: usize = 128;
/// B rows are processed in panels of about this many bytes, so a panel stays in
/// the L2 cache while every row tile of A passes over it.
const PANEL_BYTES: usize = 256 << 10;

pub fn qgemm_u4s4(p: &QGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    p.check(c.len())?;
    if !detect_neon() {
        return Err(ShapeError::unsupported("neon"));
    }
    // SAFETY: NEON is present, and `check` guarantees that A, B, col_scale and
    // C hold every row and column the kernel touches.
    unsafe { u4s4(p, c) };
    Ok(())
}

pub fn qgemm_u8s8(p: &QGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    p.check(c.len())?;
    if !detect_neon() {
        return Err(ShapeError::unsupported("neon"));
    }
    // SAFETY: as in `qgemm_u4s4`.
    unsafe { u8s8(p, c) };
    Ok(())
}

/// Output columns per panel for rows of `row_len` bytes, a multiple of [`NR`].
pub(super) fn panel_cols(row_len: usize) -> usize {
    (PANEL_BYTES / row_len.max(1) / NR).max(1) * NR
}

#[target_feature(enable = "neon")]
unsafe fn u4s4(p: &QGemm, c: &mut [f32]) {
    if p.m == 0 || p.n == 0 {
        return;
    }
    let rb = p.row_bytes;
    let kc = 2 * rb; // codes per row, a multiple of 32
    let steps = kc / 16;
    let nb = panel_cols(kc);
    with_scratch([nb.min(p.n) * kc, MR * kc, 0], |[bbuf, abuf, _]| {
        let (bbuf, abuf) = (as_i8(bbuf), as_i8(abuf));
        for j0 in (0..p.n).step_by(nb) {
            let j1 = (j0 + nb).min(p.n);
            for j in j0..j1 {
                unsafe {
                    unpack_s4(
                        &p.b[j * rb..(j + 1) * rb],
                        &mut bbuf[(j - j0) * kc..(j - j0 + 1) * kc],
                    )
                };
            }
            for i0 in (0..p.m).step_by(MR) {
                let rows = MR.min(p.m - i0);
                for r in 0..rows {
                    let i = i0 + r;
                    unsafe {
                        unpack_u4(&p.a[i * rb..(i + 1) * rb], &mut abuf[r * kc..(r + 1) * kc])
                    };
                }
                for jt in (j0..j1).step_by(NR) {
                    let cols = NR.min(j1 - jt);
                    // Missing columns of an edge tile repeat the last one; their sums are dropped.
                    let b: [*const i8; NR] =
                        std::array::from_fn(|j| bbuf[(jt - j0 + j.min(cols - 1)) * kc..].as_ptr());
                    if rows == MR {
                        let a = std::array::from_fn(|r| abuf[r * kc..].as_ptr());
                        let sums = unsafe { tile_u4s4::<MR>(a, b, steps) };
                        store(p, c, i0, jt, cols, &sums);
                    } else {
                        for r in 0..rows {
                            let sums =
                                unsafe { tile_u4s4::<1>([abuf[r * kc..].as_ptr()], b, steps) };
                            store(p, c, i0 + r, jt, cols, &sums);
                        }
                    }
                }
            }
        }
    })
}

#[target_feature(enable = "neon")]
unsafe fn u8s8(p: &QGemm, c: &mut [f32]) {
    if p.m == 0 || p.n == 0 {
        return;
    }
    let rb = p.row_bytes;
    let steps = rb / 16;
    let nb = panel_cols(rb);
    let bias: Vec<i32> = (0..p.n)
        .map(|j| unsafe { sum_s8(&p.b[j * rb..(j + 1) * rb]) }.wrapping_mul(128))
        .collect();
    for j0 in (0..p.n).step_by(nb) {
        let j1 = (j0 + nb).min(p.n);
        for i0 in (0..p.m).step_by(MR) {
            let rows = MR.min(p.m - i0);
            for jt in (j0..j1).step_by(NR) {
                let cols = NR.min(j1 - jt);
                let col = |j: usize| jt + j.min(cols - 1);
                let b: [*const i8; NR] =
                    std::array::from_fn(|j| p.b[col(j) * rb..].as_ptr().cast());
                let fix: [i32; NR] = std::array::from_fn(|j| bias[col(j)]);
                if rows == MR {
                    let a = std::array::from_fn(|r| p.a[(i0 + r) * rb..].as_ptr());
                    let sums = unsafe { tile_u8s8::<MR>(a, b, steps) };
                    store(p, c, i0, jt, cols, &add_bias(sums, fix));
                } else {
                    for r in 0..rows {
                        let sums =
                            unsafe { tile_u8s8::<1>([p.a[(i0 + r) * rb..].as_ptr()], b, steps) };
                        store(p, c, i0 + r, jt, cols, &add_bias(sums, fix));
                    }
                }
            }
        }
    }
}

/// Adds `128 * sum b` of each column to the dot products of biased A rows.
pub(super) fn add_bias<const R: usize>(mut sums: [[i32; NR]; R], fix: [i32; NR]) -> [[i32; NR]; R] {
    for row in &mut sums {
        for (s, f) in row.iter_mut().zip(fix) {
            *s = s.wrapping_add(f);
        }
    }
    sums
}

/// Sum of a row of i8 codes (a multiple of 16 bytes).
///
/// # Safety
/// NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn sum_s8(row: &[u8]) -> i32 {
    let mut sum = 0i32;
    for chunk in row.chunks_exact(16) {
        // 16 codes sum to at most 2048 in magnitude: no i16 overflow.
        sum += i32::from(vaddlvq_s8(unsafe { vld1q_s8(chunk.as_ptr().cast()) }));
    }
    sum
}

/// Dot products of `R` unpacked u4 rows with [`NR`] unpacked s4 rows, each
/// `16 * steps` codes long.
///
/// # Safety
/// NEON; every pointer must be valid for `16 * steps` bytes.
#[target_feature(enable = "neon")]
unsafe fn tile_u4s4<const R: usize>(
    a: [*const i8; R],
    b: [*const i8; NR],
    steps: usize,
) -> [[i32; NR]; R] {
    let mut sums = [[0i32; NR]; R];
    let mut s0 = 0;
    while s0 < steps {
        let s1 = (s0 + I16_STEPS).min(steps);
        let mut acc = [[vdupq_n_s16(0); NR]; R];
        for s in s0..s1 {
            let mut bv = [vdupq_n_s8(0); NR];
            for j in 0..NR {
                bv[j] = unsafe { vld1q_s8(b[j].add(16 * s)) };
            }
            for r in 0..R {
                let av = unsafe { vld1q_s8(a[r].add(16 * s)) };
                for j in 0..NR {
                    acc[r][j] = vmlal_s8(acc[r][j], vget_low_s8(av), vget_low_s8(bv[j]));
                    acc[r][j] = vmlal_high_s8(acc[r][j], av, bv[j]);
                }
            }
        }
        for r in 0..R {
            for j in 0..NR {
                sums[r][j] = sums[r][j].wrapping_add(vaddlvq_s16(acc[r][j]));
            }
        }
        s0 = s1;
    }
    sums
}

/// Dot products of `R` u8 rows, read as `a - 128`, with [`NR`] s8 rows, each
/// `16 * steps` bytes long.
///
/// # Safety
/// NEON; every pointer must be valid for `16 * steps` bytes.
#[target_feature(enable = "neon")]
unsafe fn tile_u8s8<const R: usize>(
    a: [*const u8; R],
    b: [*const i8; NR],
    steps: usize,
) -> [[i32; NR]; R] {
    let mut acc = [[vdupq_n_s32(0); NR]; R];
    let top_bit = vdupq_n_u8(0x80);
    for s in 0..steps {
        let mut bv = [vdupq_n_s8(0); NR];
        for j in 0..NR {
            bv[j] = unsafe { vld1q_s8(b[j].add(16 * s)) };
        }
        for r in 0..R {
            let av = vreinterpretq_s8_u8(veorq_u8(unsafe { vld1q_u8(a[r].add(16 * s)) }, top_bit));
            for j in 0..NR {
                let lo = vmull_s8(vget_low_s8(av), vget_low_s8(bv[j]));
                let hi = vmull_high_s8(av, bv[j]);
                acc[r][j] = vpadalq_s16(vpadalq_s16(acc[r][j], lo), hi);
            }
        }
    }
    let mut sums = [[0i32; NR]; R];
    for r in 0..R {
        for j in 0..NR {
            sums[r][j] = vaddvq_s32(acc[r][j]);
        }
    }
    sums
}

/// Writes the first `cols` sums of each row of a tile whose top left output is
/// `(i0, j0)`: `sum as f32 * alpha * col_scale[j]`, added to C when accumulating.
pub(super) fn store<const R: usize>(
    p: &QGemm,
    c: &mut [f32],
    i0: usize,
    j0: usize,
    cols: usize,
    sums: &[[i32; NR]; R],
) {
    for (r, row) in sums.iter().enumerate() {
        let dst = &mut c[(i0 + r) * p.ldc + j0..(i0 + r) * p.ldc + j0 + cols];
        for ((d, &s), &scale) in dst.iter_mut().zip(row).zip(&p.col_scale[j0..j0 + cols]) {
            let v = s as f32 * p.alpha * scale;
            *d = if p.accumulate { *d + v } else { v };
        }
    }
}

/// Unpacks a packed unsigned 4-bit row (a multiple of 16 bytes) into one code
/// per byte: the low nibbles of each 16 bytes, then their high nibbles. A and B
/// rows are split the same way, and a dot product does not depend on the order
/// of its terms.
#[target_feature(enable = "neon")]
pub(super) unsafe fn unpack_u4(src: &[u8], dst: &mut [i8]) {
    assert!(src.len().is_multiple_of(16) && dst.len() >= 2 * src.len());
    for s in 0..src.len() / 16 {
        unsafe {
            let x = vld1q_u8(src.as_ptr().add(16 * s));
            let d = dst.as_mut_ptr().add(32 * s);
            vst1q_s8(d, vreinterpretq_s8_u8(vandq_u8(x, vdupq_n_u8(0x0f))));
            vst1q_s8(d.add(16), vreinterpretq_s8_u8(vshrq_n_u8::<4>(x)));
        }
    }
}

/// Unpacks a packed signed 4-bit row into one sign-extended code per byte, in
/// the order of [`unpack_u4`]. Arithmetic right shifts do the sign extension.
#[target_feature(enable = "neon")]
pub(super) unsafe fn unpack_s4(src: &[u8], dst: &mut [i8]) {
    assert!(src.len().is_multiple_of(16) && dst.len() >= 2 * src.len());
    for s in 0..src.len() / 16 {
        unsafe {
            let x = vreinterpretq_s8_u8(vld1q_u8(src.as_ptr().add(16 * s)));
            let d = dst.as_mut_ptr().add(32 * s);
            vst1q_s8(d, vshrq_n_s8::<4>(vshlq_n_s8::<4>(x)));
            vst1q_s8(d.add(16), vshrq_n_s8::<4>(x));
        }
    }
}
