//! AVX2 + FMA f32 GEMM (see [`sgemm_blocking`](super::super::sgemm_blocking) for
//! the loop nest and packing).
//!
//! Tile: 6 rows x 16 columns (2 ymm per row): 12 accumulators + 2 B vectors + a
//! broadcast register, leaving one of the 16 ymm registers spare so the compiler
//! never spills. Twelve independent FMA chains cover the FMA latency x throughput
//! product (4 cycles x 2 per cycle), and each reduction step issues 2 vector loads
//! and 6 broadcasts for 12 FMAs. A 4 x 24 tile (fits qmul's `m`, `n` exactly) needs
//! all 16 registers, and the compiler spilled one accumulator through the stack
//! every step, halving throughput. The 16-column panel also writes exactly one
//! cache line per tile row, which suits dX, whose short reduction (`k = Cout`)
//! makes writing C the bottleneck.

use super::super::sgemm_blocking::{gemm, widen_portable, Blocking, Codes, MicroKernel};
use crate::{SGemm, ShapeError};
use std::arch::x86_64::*;

/// KC = 256: one B panel (256 x 16 floats = 16 KiB) and one A panel (6 KiB)
/// share a 32 KiB L1. MC = 192: the A block (192 KiB) stays in L2 next to the B
/// block. NC = 768: the B block (256 x 768 floats = 768 KiB) fits in L2 with it on
/// cores with >= 1 MiB; qmul's widest `n` (1152) takes two. (128..512 for KC and
/// 768 vs 1152 for NC measured within noise of each other on the dW shapes.)
const BLOCKING: Blocking = Blocking {
    kc: 256,
    mc: 192,
    nc: 768,
};

const MR: usize = 6;
const NV: usize = 2;

/// f32 GEMM, single-threaded, AVX2 + FMA.
pub fn sgemm(p: &SGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    sgemm_with(p, c, BLOCKING)
}

pub(super) fn sgemm_with(p: &SGemm, c: &mut [f32], bl: Blocking) -> Result<(), ShapeError> {
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
        return Err(ShapeError::unsupported("avx2 sgemm (AVX2 and FMA)"));
    }
    // SAFETY: features checked above.
    unsafe { sgemm_avx2(p, c, bl) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn sgemm_avx2(p: &SGemm, c: &mut [f32], bl: Blocking) -> Result<(), ShapeError> {
    // SAFETY: this function only runs where AVX2 and FMA are available.
    unsafe { gemm::<Ymm>(p, c, bl) }
}

struct Ymm;

impl MicroKernel for Ymm {
    const MR: usize = MR;
    const LANES: usize = 8;
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
    unsafe fn prefetch_c(c: *const f32, ldc: usize, n: usize) {
        for i in 0..MR {
            for j in (0..n).step_by(16) {
                // SAFETY: SSE is baseline on x86_64; a prefetch never faults.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(i * ldc + j) as *const i8) };
            }
        }
    }

    #[inline(always)]
    unsafe fn widen(codes: Codes, src: &[u8], dst: &mut [f32]) {
        // SAFETY: forwarded from the caller.
        unsafe { widen(codes, src, dst) }
    }
}

/// One `MR x 8*V` tile (see [`MicroKernel::tile`]).
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const V: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    // SAFETY: the caller guarantees kc * MR floats at `a`, kc * 8V at `b`, and a
    // valid MR x 8V tile at `c` with row stride `ldc`.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); V]; MR];
        let (mut a, mut b) = (a, b);
        for _ in 0..kc {
            let mut bv = [_mm256_setzero_ps(); V];
            for v in 0..V {
                bv[v] = _mm256_loadu_ps(b.add(8 * v));
            }
            for i in 0..MR {
                let ai = _mm256_broadcast_ss(&*a.add(i));
                for v in 0..V {
                    acc[i][v] = _mm256_fmadd_ps(ai, bv[v], acc[i][v]);
                }
            }
            a = a.add(MR);
            b = b.add(8 * V);
        }
        let va = _mm256_set1_ps(alpha);
        if beta == 0.0 {
            for i in 0..MR {
                for v in 0..V {
                    _mm256_storeu_ps(c.add(i * ldc + 8 * v), _mm256_mul_ps(acc[i][v], va));
                }
            }
        } else {
            let vb = _mm256_set1_ps(beta);
            for i in 0..MR {
                for v in 0..V {
                    let cp = c.add(i * ldc + 8 * v);
                    _mm256_storeu_ps(
                        cp,
                        _mm256_fmadd_ps(vb, _mm256_loadu_ps(cp), _mm256_mul_ps(acc[i][v], va)),
                    );
                }
            }
        }
    }
}

/// Sixteen 4-bit codes (8 bytes at `src`) as sixteen bytes in element order,
/// sign-extended to i8 if `signed` (SSE2, baseline on x86_64).
///
/// # Safety
/// 8 bytes readable at `src`.
#[inline(always)]
pub(super) unsafe fn nibbles16(src: *const u8, signed: bool) -> __m128i {
    // SAFETY: the caller guarantees 8 readable bytes; SSE2 is baseline on x86_64.
    unsafe {
        let x = _mm_loadl_epi64(src as *const __m128i);
        let mask = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(x, mask);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(x), mask);
        let v = _mm_unpacklo_epi8(lo, hi);
        if signed {
            // (x ^ 8) - 8 sign-extends a nibble held in a byte.
            let eight = _mm_set1_epi8(8);
            _mm_sub_epi8(_mm_xor_si128(v, eight), eight)
        } else {
            v
        }
    }
}

/// [`MicroKernel::widen`] with 16 codes per step.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn widen(codes: Codes, src: &[u8], dst: &mut [f32]) {
    let n = dst.len();
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut j = 0;
    let signed = matches!(codes, Codes::S4 | Codes::S8);
    // SAFETY: every step reads bytes below (j + 16) / 2 (4-bit) or j + 16 (8-bit),
    // within `src`, and writes floats j..j + 16 < n of `dst`.
    unsafe {
        while j + 16 <= n {
            let v = match codes {
                Codes::S4 | Codes::U4 => nibbles16(s.add(j / 2), signed),
                Codes::S8 | Codes::U8 => _mm_loadu_si128(s.add(j) as *const __m128i),
            };
            let (lo, hi) = if signed {
                (
                    _mm256_cvtepi8_epi32(v),
                    _mm256_cvtepi8_epi32(_mm_unpackhi_epi64(v, v)),
                )
            } else {
                (
                    _mm256_cvtepu8_epi32(v),
                    _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(v, v)),
                )
            };
            _mm256_storeu_ps(d.add(j), _mm256_cvtepi32_ps(lo));
            _mm256_storeu_ps(d.add(j + 8), _mm256_cvtepi32_ps(hi));
            j += 16;
        }
    }
    let s0 = if matches!(codes, Codes::S4 | Codes::U4) {
        j / 2
    } else {
        j
    };
    widen_portable(codes, &src[s0..], &mut dst[j..]);
}

#[cfg(test)]
mod tests {
    use super::super::super::sgemm_blocking::testing::check_against_scalar;
    use super::*;

    fn supported() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    #[test]
    fn matches_scalar() {
        if supported() {
            check_against_scalar(&sgemm, 400, 11);
        }
    }

    #[test]
    fn matches_scalar_small_blocks() {
        if supported() {
            let bl = Blocking {
                kc: 7,
                mc: 9,
                nc: 30,
            };
            check_against_scalar(&|p, c| sgemm_with(p, c, bl), 300, 12);
        }
    }

    #[test]
    fn widen_matches_portable() {
        if !supported() {
            return;
        }
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
                // SAFETY: supported() checked.
                unsafe { widen(codes, &bytes[3..3 + nb], &mut got) };
                assert_eq!(want, got, "{codes:?} n={n}");
            }
        }
    }
}
