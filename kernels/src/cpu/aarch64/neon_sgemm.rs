//! NEON f32 GEMM, shared by the `neon` and `dotprod` variants (dotprod only
//! changes the integer kernels). See [`sgemm_blocking`](super::super::sgemm_blocking)
//! for the loop nest and packing.
//!
//! Tile: 8 rows x 12 columns (3 q registers per row): 24 accumulators + 3 B
//! vectors + 2 A vectors = 29 of the 32 q registers. Each reduction step loads
//! 2 + 3 vectors and issues 24 `fmla`s, each multiplying a B vector by one lane of
//! an A vector (`vfmaq_laneq_f32`), so no broadcasts are needed. 12 columns because
//! qmul's dW widths `n = 9 * Cin` (144..=1152) are multiples of 12 and its
//! `m = Cout` (16..=128) are multiples of 8; other widths use the narrowed last panel.

use super::super::sgemm_blocking::{gemm, widen_portable, Blocking, Codes, MicroKernel};
use crate::{SGemm, ShapeError};
use std::arch::aarch64::*;

/// KC = 256: one B panel (256 x 12 floats = 12 KiB) and one A panel (8 KiB) fit
/// together in a 32-64 KiB L1. MC = 128: the A block (128 KiB) stays in L2.
/// NC = 1152: the B block (256 x 1152 floats = 1.1 MiB) stays in L2/L3 and every
/// `n` qmul uses is one column block.
const BLOCKING: Blocking = Blocking {
    kc: 256,
    mc: 128,
    nc: 1152,
};

const MR: usize = 8;
const NV: usize = 3;

/// f32 GEMM, single-threaded, NEON.
pub fn sgemm(p: &SGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    sgemm_with(p, c, BLOCKING)
}

fn sgemm_with(p: &SGemm, c: &mut [f32], bl: Blocking) -> Result<(), ShapeError> {
    if !std::arch::is_aarch64_feature_detected!("neon") {
        return Err(ShapeError::unsupported("neon sgemm"));
    }
    // SAFETY: feature checked above.
    unsafe { sgemm_neon(p, c, bl) }
}

#[target_feature(enable = "neon")]
unsafe fn sgemm_neon(p: &SGemm, c: &mut [f32], bl: Blocking) -> Result<(), ShapeError> {
    // SAFETY: this function only runs where NEON is available.
    unsafe { gemm::<Q>(p, c, bl) }
}

struct Q;

impl MicroKernel for Q {
    const MR: usize = MR;
    const LANES: usize = 4;
    const NV: usize = NV;

    #[inline(always)]
    unsafe fn tile(
        nv: usize,
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
    ) {
        // SAFETY: forwarded from the caller (features and buffer sizes).
        unsafe {
            match nv {
                1 => tile::<1>(kc, a, b, c, ldc, alpha, beta),
                2 => tile::<2>(kc, a, b, c, ldc, alpha, beta),
                _ => tile::<NV>(kc, a, b, c, ldc, alpha, beta),
            }
        }
    }

    #[inline(always)]
    unsafe fn widen(codes: Codes, src: &[u8], dst: &mut [f32]) {
        // SAFETY: forwarded from the caller.
        unsafe { widen(codes, src, dst) }
    }
}

/// One `MR x 4*V` tile (see [`MicroKernel::tile`]).
#[target_feature(enable = "neon")]
unsafe fn tile<const V: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    // SAFETY: the caller guarantees kc * MR floats at `a`, kc * 4V at `b`, and a
    // valid MR x 4V tile at `c` with row stride `ldc`.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); V]; MR];
        let (mut a, mut b) = (a, b);
        for _ in 0..kc {
            let a0 = vld1q_f32(a);
            let a1 = vld1q_f32(a.add(4));
            for v in 0..V {
                let bv = vld1q_f32(b.add(4 * v));
                acc[0][v] = vfmaq_laneq_f32::<0>(acc[0][v], bv, a0);
                acc[1][v] = vfmaq_laneq_f32::<1>(acc[1][v], bv, a0);
                acc[2][v] = vfmaq_laneq_f32::<2>(acc[2][v], bv, a0);
                acc[3][v] = vfmaq_laneq_f32::<3>(acc[3][v], bv, a0);
                acc[4][v] = vfmaq_laneq_f32::<0>(acc[4][v], bv, a1);
                acc[5][v] = vfmaq_laneq_f32::<1>(acc[5][v], bv, a1);
                acc[6][v] = vfmaq_laneq_f32::<2>(acc[6][v], bv, a1);
                acc[7][v] = vfmaq_laneq_f32::<3>(acc[7][v], bv, a1);
            }
            a = a.add(MR);
            b = b.add(4 * V);
        }
        if beta == 0.0 {
            for i in 0..MR {
                for v in 0..V {
                    vst1q_f32(c.add(i * ldc + 4 * v), vmulq_n_f32(acc[i][v], alpha));
                }
            }
        } else {
            for i in 0..MR {
                for v in 0..V {
                    let cp = c.add(i * ldc + 4 * v);
                    vst1q_f32(
                        cp,
                        vfmaq_n_f32(vmulq_n_f32(acc[i][v], alpha), vld1q_f32(cp), beta),
                    );
                }
            }
        }
    }
}

/// [`MicroKernel::widen`] with 16 codes per step for the 4-bit encodings (the
/// 8-bit ones are left to the auto-vectorised portable loop).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn widen(codes: Codes, src: &[u8], dst: &mut [f32]) {
    let n = dst.len();
    let mut j = 0;
    if matches!(codes, Codes::S4 | Codes::U4) {
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        // SAFETY: every step reads bytes j/2 .. j/2 + 8 <= n/2 of `src` and
        // writes floats j..j + 16 <= n of `dst`.
        unsafe {
            while j + 16 <= n {
                let x = vld1_u8(s.add(j / 2));
                // Low nibble = even element, high nibble = odd element.
                let z = vzip_u8(vand_u8(x, vdup_n_u8(0x0f)), vshr_n_u8::<4>(x));
                let bytes = vcombine_u8(z.0, z.1);
                if codes == Codes::S4 {
                    let s8 = vshrq_n_s8::<4>(vshlq_n_s8::<4>(vreinterpretq_s8_u8(bytes)));
                    let lo = vmovl_s8(vget_low_s8(s8));
                    let hi = vmovl_high_s8(s8);
                    vst1q_f32(d.add(j), vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))));
                    vst1q_f32(d.add(j + 4), vcvtq_f32_s32(vmovl_high_s16(lo)));
                    vst1q_f32(d.add(j + 8), vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))));
                    vst1q_f32(d.add(j + 12), vcvtq_f32_s32(vmovl_high_s16(hi)));
                } else {
                    let lo = vmovl_u8(vget_low_u8(bytes));
                    let hi = vmovl_high_u8(bytes);
                    vst1q_f32(d.add(j), vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo))));
                    vst1q_f32(d.add(j + 4), vcvtq_f32_u32(vmovl_high_u16(lo)));
                    vst1q_f32(d.add(j + 8), vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi))));
                    vst1q_f32(d.add(j + 12), vcvtq_f32_u32(vmovl_high_u16(hi)));
                }
                j += 16;
            }
        }
        widen_portable(codes, &src[j / 2..], &mut dst[j..]);
    } else {
        widen_portable(codes, src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::sgemm_blocking::testing::check_against_scalar;
    use super::*;

    #[test]
    fn matches_scalar() {
        check_against_scalar(&sgemm, 400, 31);
    }

    #[test]
    fn matches_scalar_small_blocks() {
        let bl = Blocking {
            kc: 7,
            mc: 9,
            nc: 30,
        };
        check_against_scalar(&|p, c| sgemm_with(p, c, bl), 300, 32);
    }

    #[test]
    fn widen_matches_portable() {
        let bytes: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
        for codes in [Codes::S4, Codes::U4, Codes::S8, Codes::U8] {
            for n in [0usize, 1, 15, 16, 17, 31, 48, 255] {
                let nb = if matches!(codes, Codes::S4 | Codes::U4) {
                    n.div_ceil(2)
                } else {
                    n
                };
                let (mut want, mut got) = (vec![0.0; n], vec![1.0; n]);
                widen_portable(codes, &bytes[3..3 + nb], &mut want);
                // SAFETY: NEON is baseline on aarch64.
                unsafe { widen(codes, &bytes[3..3 + nb], &mut got) };
                assert_eq!(want, got, "{codes:?} n={n}");
            }
        }
    }
}
