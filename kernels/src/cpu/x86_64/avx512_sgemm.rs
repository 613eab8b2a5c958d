//! AVX-512 f32 GEMM (see [`sgemm_blocking`](super::super::sgemm_blocking) for
//! the loop nest and packing).
//!
//! The register tile is 8 rows x 48 columns (3 zmm per row): 24 accumulators and
//! 3 B vectors of the 32 zmm registers; each reduction step issues 3 vector
//! loads + 8 broadcasts for 24 FMAs, so the FMA units set the pace, and the
//! wide B panel halves how often each packed A value is reloaded compared
//! with a 16-column tile. 8 x 48 also fits qmul's dW shapes exactly: `m = Cout`
//! in 16..=128, `n = 9 * Cin` in 144..=1152. (An 8 x 16 tile, writing one
//! cache line per row, used to be chosen for dX, whose short reduction makes
//! writing C the cost: 20% faster while C was the whole column matrix, out
//! of cache. Since the backward computes dX in tiles that stay in L2, the
//! 48-column tile is faster there too: 7% less CPU time for a whole width-16
//! training step, measured with `qmul bench --child train:16:1`. Results are
//! the same: each element's products are summed in the same order.)

use super::super::sgemm_blocking::{gemm, widen_portable, Blocking, Codes, MicroKernel};
use super::avx2_sgemm::nibbles16;
use crate::{SGemm, ShapeError};
use std::arch::x86_64::*;

/// KC = 256: a wide-tile B panel (256 x 48 floats = 48 KiB) then lives in L2
/// rather than L1, but its 3 loads per 24 FMAs are easily fed from there, and the
/// longer block halves the C tile reloads and per-block packing overhead; measured
/// 0-7% faster than KC = 128 on the dW shapes (most for `m = 16`). MC = 256: the
/// A block (256 KiB) stays in L2. NC = 1152: every `n` qmul uses is packed in one
/// column block (256 x 1152 floats = 1.1 MiB, L2/L3).
const BLOCKING: Blocking = Blocking {
    kc: 256,
    mc: 256,
    nc: 1152,
};

const MR: usize = 8;

/// f32 GEMM, single-threaded, AVX-512F.
pub fn sgemm(p: &SGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    sgemm_with(p, c, BLOCKING)
}

fn sgemm_with(p: &SGemm, c: &mut [f32], bl: Blocking) -> Result<(), ShapeError> {
    if !is_x86_feature_detected!("avx512f") {
        return Err(ShapeError::unsupported("avx512 sgemm (AVX-512F)"));
    }
    // SAFETY: feature checked above.
    unsafe { sgemm_avx512(p, c, bl) }
}

#[target_feature(enable = "avx512f")]
unsafe fn sgemm_avx512(p: &SGemm, c: &mut [f32], bl: Blocking) -> Result<(), ShapeError> {
    // SAFETY: this function only runs where AVX-512F is available.
    unsafe { gemm::<Zmm<3>>(p, c, bl) }
}

/// The 8 x `16 * NV` tile.
struct Zmm<const NV: usize>;

impl<const NV: usize> MicroKernel for Zmm<NV> {
    const MR: usize = MR;
    const LANES: usize = 16;
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
            if NV == 1 || nv == 1 {
                tile::<1>(kc, a, b, c, ldc, alpha, beta)
            } else if nv == 2 {
                tile::<2>(kc, a, b, c, ldc, alpha, beta)
            } else {
                tile::<3>(kc, a, b, c, ldc, alpha, beta)
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

/// One `MR x 16*V` tile (see [`MicroKernel::tile`]).
#[target_feature(enable = "avx512f")]
unsafe fn tile<const V: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    // SAFETY: the caller guarantees kc * MR floats at `a`, kc * 16V at `b`, and a
    // valid MR x 16V tile at `c` with row stride `ldc`.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        let (mut a, mut b) = (a, b);
        for _ in 0..kc {
            let mut bv = [_mm512_setzero_ps(); V];
            for v in 0..V {
                bv[v] = _mm512_loadu_ps(b.add(16 * v));
            }
            for i in 0..MR {
                let ai = _mm512_set1_ps(*a.add(i));
                for v in 0..V {
                    acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
                }
            }
            a = a.add(MR);
            b = b.add(16 * V);
        }
        let va = _mm512_set1_ps(alpha);
        if beta == 0.0 {
            for i in 0..MR {
                for v in 0..V {
                    _mm512_storeu_ps(c.add(i * ldc + 16 * v), _mm512_mul_ps(acc[i][v], va));
                }
            }
        } else {
            let vb = _mm512_set1_ps(beta);
            for i in 0..MR {
                for v in 0..V {
                    let cp = c.add(i * ldc + 16 * v);
                    _mm512_storeu_ps(
                        cp,
                        _mm512_fmadd_ps(vb, _mm512_loadu_ps(cp), _mm512_mul_ps(acc[i][v], va)),
                    );
                }
            }
        }
    }
}

/// [`MicroKernel::widen`] with 16 codes per step (also the bf16 GEMM's).
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn widen(codes: Codes, src: &[u8], dst: &mut [f32]) {
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
            let w = if signed {
                _mm512_cvtepi8_epi32(v)
            } else {
                _mm512_cvtepu8_epi32(v)
            };
            _mm512_storeu_ps(d.add(j), _mm512_cvtepi32_ps(w));
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
        is_x86_feature_detected!("avx512f")
    }

    #[test]
    fn matches_scalar() {
        if supported() {
            check_against_scalar(&sgemm, 400, 21);
        }
    }

    #[test]
    fn matches_scalar_small_blocks() {
        if supported() {
            let bl = Blocking {
                kc: 7,
                mc: 9,
                nc: 60,
            };
            check_against_scalar(&|p, c| sgemm_with(p, c, bl), 300, 22);
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
