//! Integer GEMMs with the ARMv8.2 dot-product instructions: `sdot` adds four
//! i8 x i8 products into each i32 lane, so one instruction does the work of
//! four widening multiply-accumulates and nothing is ever summed in i16.
//!
//! The tiling is the one of the NEON kernels (4 x 4 outputs per tile, A and B
//! rows of 4-bit codes unpacked to bytes once per call); only the products differ.
//!
//! * u4 x s4: u4 codes (0..=15) fit i8, so `sdot` applies directly.
//! * u8 x s8: u8 codes do not fit i8. With i8mm (ARMv8.6) `usdot` multiplies u8
//!   by i8 directly. Without it, A is biased by -128 (flipping the top bit turns
//!   u8 `a` into i8 `a - 128`) and `sum a*b = sum (a-128)*b + 128 * sum b`, with
//!   `sum b` computed once per column of B: one extra `eor` per A vector instead
//!   of widening both operands.
//!
//! `vdotq_s32` and `vusdotq_s32` are still unstable in Rust 1.95 (features
//! `stdarch_neon_dotprod`, `stdarch_neon_i8mm`), so the two instructions are
//! issued with inline assembly, in functions compiled with the matching target
//! feature so the assembler accepts them. The i32 sums are scaled exactly as in
//! the scalar reference, so results are bitwise equal to it.

use super::detect_dotprod;
use super::neon_qgemm::{
    add_bias, as_i8, panel_cols, store, sum_s8, unpack_s4, unpack_u4, with_scratch, MR, NR,
};
use crate::{QGemm, ShapeError};
use std::arch::aarch64::*;
use std::arch::asm;

pub fn qgemm_u4s4(p: &QGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    p.check(c.len())?;
    if !detect_dotprod() {
        return Err(ShapeError::unsupported("dotprod"));
    }
    // SAFETY: the features are present, and `check` guarantees that A, B,
    // col_scale and C hold every row and column the kernel touches.
    unsafe { u4s4(p, c) };
    Ok(())
}

pub fn qgemm_u8s8(p: &QGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    p.check(c.len())?;
    if !detect_dotprod() {
        return Err(ShapeError::unsupported("dotprod"));
    }
    // SAFETY: as in `qgemm_u4s4`; the `usdot` path runs only where i8mm was detected.
    unsafe {
        if std::arch::is_aarch64_feature_detected!("i8mm") {
            u8s8_usdot(p, c)
        } else {
            u8s8_biased(p, c)
        }
    }
    Ok(())
}

#[target_feature(enable = "neon,dotprod")]
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
                        let sums = unsafe { tile_sdot::<MR, false>(a, b, steps) };
                        store(p, c, i0, jt, cols, &sums);
                    } else {
                        for r in 0..rows {
                            let sums = unsafe {
                                tile_sdot::<1, false>([abuf[r * kc..].as_ptr()], b, steps)
                            };
                            store(p, c, i0 + r, jt, cols, &sums);
                        }
                    }
                }
            }
        }
    })
}

/// u8 x s8 with `usdot` (i8mm).
#[target_feature(enable = "neon,dotprod,i8mm")]
unsafe fn u8s8_usdot(p: &QGemm, c: &mut [f32]) {
    let rb = p.row_bytes;
    for_each_u8s8_tile(p, |i0, rows, jt, cols, b| {
        let a = |r: usize| p.a[(i0 + r) * rb..].as_ptr();
        if rows == MR {
            let sums = unsafe { tile_usdot::<MR>(std::array::from_fn(a), b, rb / 16) };
            store(p, c, i0, jt, cols, &sums);
        } else {
            for r in 0..rows {
                let sums = unsafe { tile_usdot::<1>([a(r)], b, rb / 16) };
                store(p, c, i0 + r, jt, cols, &sums);
            }
        }
    });
}

/// u8 x s8 with `sdot` on A biased by -128, corrected with the column sums of B.
#[target_feature(enable = "neon,dotprod")]
unsafe fn u8s8_biased(p: &QGemm, c: &mut [f32]) {
    let rb = p.row_bytes;
    let bias: Vec<i32> = (0..p.n)
        .map(|j| unsafe { sum_s8(&p.b[j * rb..(j + 1) * rb]) }.wrapping_mul(128))
        .collect();
    for_each_u8s8_tile(p, |i0, rows, jt, cols, b| {
        let a = |r: usize| p.a[(i0 + r) * rb..].as_ptr().cast::<i8>();
        let b = b.map(|ptr| ptr.cast::<i8>());
        let fix: [i32; NR] = std::array::from_fn(|j| bias[jt + j.min(cols - 1)]);
        if rows == MR {
            let sums = unsafe { tile_sdot::<MR, true>(std::array::from_fn(a), b, rb / 16) };
            store(p, c, i0, jt, cols, &add_bias(sums, fix));
        } else {
            for r in 0..rows {
                let sums = unsafe { tile_sdot::<1, true>([a(r)], b, rb / 16) };
                store(p, c, i0 + r, jt, cols, &add_bias(sums, fix));
            }
        }
    });
}

/// Calls `f(i0, rows, j0, cols, b)` for every tile of a u8 x s8 GEMM: `rows`
/// (<= [`MR`]) rows of A from `i0`, `cols` (<= [`NR`]) rows of B from `j0`, whose
/// row pointers are `b` (missing columns of an edge tile repeat the last one).
/// B is walked in panels that stay in the L2 cache while all of A passes by.
fn for_each_u8s8_tile(p: &QGemm, mut f: impl FnMut(usize, usize, usize, usize, [*const u8; NR])) {
    if p.m == 0 || p.n == 0 {
        return;
    }
    let rb = p.row_bytes;
    let nb = panel_cols(rb);
    for j0 in (0..p.n).step_by(nb) {
        let j1 = (j0 + nb).min(p.n);
        for i0 in (0..p.m).step_by(MR) {
            let rows = MR.min(p.m - i0);
            for jt in (j0..j1).step_by(NR) {
                let cols = NR.min(j1 - jt);
                let b = std::array::from_fn(|j| p.b[(jt + j.min(cols - 1)) * rb..].as_ptr());
                f(i0, rows, jt, cols, b);
            }
        }
    }
}

/// Dot products of `R` i8 rows with [`NR`] i8 rows, each `16 * steps` bytes
/// long. With `BIAS_A` the A bytes are u8 codes and are read as `a - 128`.
///
/// # Safety
/// dotprod; every pointer must be valid for `16 * steps` bytes.
#[target_feature(enable = "neon,dotprod")]
unsafe fn tile_sdot<const R: usize, const BIAS_A: bool>(
    a: [*const i8; R],
    b: [*const i8; NR],
    steps: usize,
) -> [[i32; NR]; R] {
    let mut acc = [[vdupq_n_s32(0); NR]; R];
    let top_bit = vdupq_n_s8(i8::MIN);
    for s in 0..steps {
        let mut bv = [vdupq_n_s8(0); NR];
        for j in 0..NR {
            bv[j] = unsafe { vld1q_s8(b[j].add(16 * s)) };
        }
        for r in 0..R {
            let mut av = unsafe { vld1q_s8(a[r].add(16 * s)) };
            if BIAS_A {
                av = veorq_s8(av, top_bit);
            }
            for j in 0..NR {
                acc[r][j] = unsafe { sdot(acc[r][j], av, bv[j]) };
            }
        }
    }
    reduce(acc)
}

/// Dot products of `R` u8 rows with [`NR`] i8 rows, each `16 * steps` bytes long.
///
/// # Safety
/// i8mm; every pointer must be valid for `16 * steps` bytes.
#[target_feature(enable = "neon,i8mm")]
unsafe fn tile_usdot<const R: usize>(
    a: [*const u8; R],
    b: [*const u8; NR],
    steps: usize,
) -> [[i32; NR]; R] {
    let mut acc = [[vdupq_n_s32(0); NR]; R];
    for s in 0..steps {
        let mut bv = [vdupq_n_s8(0); NR];
        for j in 0..NR {
            bv[j] = unsafe { vld1q_s8(b[j].add(16 * s).cast()) };
        }
        for r in 0..R {
            let av = unsafe { vld1q_u8(a[r].add(16 * s)) };
            for j in 0..NR {
                acc[r][j] = unsafe { usdot(acc[r][j], av, bv[j]) };
            }
        }
    }
    reduce(acc)
}

#[target_feature(enable = "neon")]
fn reduce<const R: usize>(acc: [[int32x4_t; NR]; R]) -> [[i32; NR]; R] {
    let mut sums = [[0i32; NR]; R];
    for r in 0..R {
        for j in 0..NR {
            sums[r][j] = vaddvq_s32(acc[r][j]);
        }
    }
    sums
}

/// `acc + sdot(a, b)`: each i32 lane adds the four products of its i8 lanes.
///
/// # Safety
/// dotprod.
#[inline]
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        )
    };
    acc
}

/// `acc + usdot(a, b)`: each i32 lane adds the four products of u8 lanes of `a`
/// with i8 lanes of `b`.
///
/// # Safety
/// i8mm.
#[inline]
#[target_feature(enable = "neon,i8mm")]
unsafe fn usdot(mut acc: int32x4_t, a: uint8x16_t, b: int8x16_t) -> int32x4_t {
    unsafe {
        asm!(
            "usdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        )
    };
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness reaches only the u8 x s8 path this CPU selects; check both
    /// against the scalar reference here, on extreme and mixed codes.
    #[test]
    fn u8s8_paths_match_scalar() {
        if !detect_dotprod() {
            return;
        }
        let (m, n, k) = (6, 7, 50);
        let rb = crate::pack::row_bytes_8bit(k);
        for extreme in [false, true] {
            let mut a = vec![0u8; m * rb];
            let mut b = vec![0u8; n * rb];
            for i in 0..m {
                for t in 0..k {
                    a[i * rb + t] = if extreme {
                        255
                    } else {
                        (i * 37 + t * 11) as u8
                    };
                }
            }
            for j in 0..n {
                for t in 0..k {
                    b[j * rb + t] = if extreme {
                        0x80
                    } else {
                        (j * 53 + t * 29) as u8
                    };
                }
            }
            let scale: Vec<f32> = (0..n).map(|j| 0.5 + j as f32 * 0.25).collect();
            let p = QGemm {
                m,
                n,
                row_bytes: rb,
                a: &a,
                b: &b,
                alpha: 0.01,
                col_scale: &scale,
                ldc: n,
                accumulate: false,
            };
            let mut want = vec![0.0; m * n];
            crate::cpu::scalar::qgemm_u8s8(&p, &mut want).expect("operands match the sizes");
            let mut got = vec![0.0; m * n];
            unsafe { u8s8_biased(&p, &mut got) };
            assert_eq!(got, want, "sdot with biased A");
            if std::arch::is_aarch64_feature_detected!("i8mm") {
                let mut got = vec![0.0; m * n];
                unsafe { u8s8_usdot(&p, &mut got) };
                assert_eq!(got, want, "usdot");
            }
        }
    }
}
