//! AVX-512 VNNI integer GEMMs.
//!
//! `vpdpbusd` multiplies four u8 x i8 pairs per i32 lane and adds them into the
//! lane without any intermediate saturation, so it is exact for u4 x s4 (codes
//! widened to bytes) and for u8 x s8 alike; both operations share one kernel.
//!
//! Layout: instead of giving each output its own accumulator and reducing it
//! horizontally at the end (which costs about as much as the products when `k`
//! is small, e.g. 144), the sixteen lanes of an accumulator hold sixteen output
//! columns. B is repacked into panels of 16 columns in which each group of four
//! consecutive codes of a column sits in that column's lane; four codes of an A
//! row are broadcast to every lane. A tile of 8 rows x 16 columns then takes 8
//! broadcasts, one panel load and 8 `vpdpbusd` per four codes, and its result is
//! scaled and stored as whole vectors, with the same f32 operations in the same
//! order as the scalar reference (so results are bitwise equal to it).

use super::avx2_qgemm::{self, as_i8, unpack_s4, unpack_u4, with_scratch};
use super::detect_avx512vnni;
use crate::{QGemm, ShapeError};
use std::arch::x86_64::*;

/// Output columns per panel: one i32 lane each.
const LANES: usize = 16;
/// Rows of A per full tile: 8 accumulators, each updated every 8th `vpdpbusd`,
/// which hides the instruction's latency.
///
/// GEMMs with fewer rows go to the AVX2 kernels, which read B in place: with so
/// few rows, repacking B costs more than the wider products save (on Zen 4 a
/// 1 x 1000 x 512 GEMM took twice as long here as with the AVX2 kernels).
const MR: usize = 8;
/// A lone row splits its reduction over this many accumulators instead, for the
/// same reason. Rows hold a multiple of 16 codes, so the number of 4-code groups
/// is a multiple of 4.
const KSPLIT: usize = 4;
/// B panels are packed in blocks of about this many bytes, so a block stays in
/// the L2 cache while every row tile of A passes over it.
const BLOCK_BYTES: usize = 256 << 10;

pub fn qgemm_u4s4(p: &QGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    if p.m < MR {
        return avx2_qgemm::qgemm_u4s4(p, c);
    }
    p.check(c.len())?;
    if !detect_avx512vnni() {
        return Err(ShapeError::unsupported("avx512vnni"));
    }
    // SAFETY: the features are present, and `check` guarantees that A, B,
    // col_scale and C hold every row and column the kernel touches.
    unsafe { gemm(p, c, Codes::Nibbles) };
    Ok(())
}

pub fn qgemm_u8s8(p: &QGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    if p.m < MR {
        return avx2_qgemm::qgemm_u8s8(p, c);
    }
    p.check(c.len())?;
    if !detect_avx512vnni() {
        return Err(ShapeError::unsupported("avx512vnni"));
    }
    // SAFETY: as in `qgemm_u4s4`.
    unsafe { gemm(p, c, Codes::Bytes) };
    Ok(())
}

/// How the rows of A and B hold their codes.
#[derive(Clone, Copy, PartialEq)]
enum Codes {
    /// Two 4-bit codes per byte (u4 activations, s4 weights).
    Nibbles,
    /// One code per byte (u8 activations, s8 weights).
    Bytes,
}

#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn gemm(p: &QGemm, c: &mut [f32], codes: Codes) {
    if p.m == 0 || p.n == 0 {
        return;
    }
    let rb = p.row_bytes;
    // Codes per row, a multiple of 16; every kernel row below has this length.
    let kc = match codes {
        Codes::Nibbles => 2 * rb,
        Codes::Bytes => rb,
    };
    let groups = kc / 4;
    let panel_bytes = LANES * kc;
    let block_cols = (BLOCK_BYTES / panel_bytes.max(1)).max(1) * LANES;
    // Nibble rows of B and A are unpacked into scratch; byte rows are used in place.
    let unpacked = if codes == Codes::Nibbles { kc } else { 0 };
    let panels_len = block_cols.min(p.n.next_multiple_of(LANES)) * kc;
    let lens = [panels_len, LANES * unpacked, MR * unpacked];
    with_scratch(lens, |[panels, b_rows, a_rows]| {
        let b_rows = as_i8(b_rows);
        for j0 in (0..p.n).step_by(block_cols) {
            let j1 = (j0 + block_cols).min(p.n);
            for (t, jt) in (j0..j1).step_by(LANES).enumerate() {
                let panel = &mut panels[t * panel_bytes..(t + 1) * panel_bytes];
                unsafe { pack_panel(p, codes, jt, j1.min(jt + LANES), panel, b_rows) };
            }
            for i0 in (0..p.m).step_by(MR) {
                let rows = MR.min(p.m - i0);
                let (a_base, a_stride) = match codes {
                    Codes::Nibbles => {
                        for r in 0..rows {
                            let src = &p.a[(i0 + r) * rb..(i0 + r + 1) * rb];
                            unsafe { unpack_u4(src, &mut a_rows[r * kc..(r + 1) * kc]) };
                        }
                        (a_rows.as_ptr(), kc)
                    }
                    Codes::Bytes => (p.a[i0 * rb..].as_ptr(), rb),
                };
                for (t, jt) in (j0..j1).step_by(LANES).enumerate() {
                    let panel = panels[t * panel_bytes..].as_ptr();
                    let cols = LANES.min(j1 - jt);
                    if rows == MR {
                        let a = std::array::from_fn(|r| unsafe { a_base.add(r * a_stride) });
                        let acc = unsafe { tile::<MR, 1>(a, panel, groups) };
                        for (r, acc) in acc.into_iter().enumerate() {
                            unsafe { store(p, c, i0 + r, jt, cols, acc) };
                        }
                    } else {
                        for r in 0..rows {
                            let a = [unsafe { a_base.add(r * a_stride) }];
                            let acc = unsafe { tile::<1, KSPLIT>(a, panel, groups) };
                            unsafe { store(p, c, i0 + r, jt, cols, acc[0]) };
                        }
                    }
                }
            }
        }
    })
}

/// Repacks B rows `j0..j1` (at most 16) into a panel: group `g` (codes
/// `4g..4g + 4`) of column `j0 + l` lands at bytes `64 g + 4 l`, and lanes past
/// `j1` are zero. Seen as 4-byte units this is a transpose, done 16 x 16 units
/// at a time in registers: packing B costs as much as the products when A has
/// few rows, so it has to be fast.
///
/// # Safety
/// AVX-512BW; `p.check` passed, `j1 <= p.n`, `panel` holds `16 * kc` bytes and
/// `b_rows` `16 * kc` (`kc`: codes per row).
#[target_feature(enable = "avx2,avx512f,avx512bw")]
unsafe fn pack_panel(
    p: &QGemm,
    codes: Codes,
    j0: usize,
    j1: usize,
    panel: &mut [u8],
    b_rows: &mut [i8],
) {
    let rb = p.row_bytes;
    let (src, stride) = match codes {
        Codes::Nibbles => {
            let kc = 2 * rb;
            for (l, j) in (j0..j1).enumerate() {
                unsafe {
                    unpack_s4(
                        &p.b[j * rb..(j + 1) * rb],
                        &mut b_rows[l * kc..(l + 1) * kc],
                    )
                };
            }
            (b_rows.as_ptr().cast::<u8>(), kc)
        }
        Codes::Bytes => (p.b[j0 * rb..].as_ptr(), rb),
    };
    let kc = stride;
    assert!(panel.len() >= LANES * kc);
    let dst = panel.as_mut_ptr();
    for k0 in (0..kc).step_by(64) {
        let len = (kc - k0).min(64);
        let mask: __mmask64 = if len == 64 { !0 } else { (1u64 << len) - 1 };
        let mut rows = [_mm512_setzero_si512(); LANES];
        for l in 0..j1 - j0 {
            rows[l] = unsafe { _mm512_maskz_loadu_epi8(mask, src.add(l * stride + k0).cast()) };
        }
        let groups = transpose16(rows);
        for (g, v) in groups.iter().take(len / 4).enumerate() {
            unsafe { _mm512_storeu_si512(dst.add(16 * k0 + 64 * g).cast(), *v) };
        }
    }
}

/// Transposes 16 rows of 16 i32 units: unit `u` of row `r` becomes unit `r` of row `u`.
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
    // Within each 128-bit lane, gather units of four rows: u[4i + q] holds unit
    // 4L + q of rows 4i..4i + 4 in lane L.
    let mut u = [_mm512_setzero_si512(); 16];
    for i in 0..4 {
        let t0 = _mm512_unpacklo_epi32(r[4 * i], r[4 * i + 1]);
        let t1 = _mm512_unpackhi_epi32(r[4 * i], r[4 * i + 1]);
        let t2 = _mm512_unpacklo_epi32(r[4 * i + 2], r[4 * i + 3]);
        let t3 = _mm512_unpackhi_epi32(r[4 * i + 2], r[4 * i + 3]);
        u[4 * i] = _mm512_unpacklo_epi64(t0, t2);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t0, t2);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t1, t3);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t1, t3);
    }
    // Then transpose the 4 x 4 grid of lanes: out[4L + q] = lane L of u[q], u[4 + q], u[8 + q], u[12 + q].
    let mut out = [_mm512_setzero_si512(); 16];
    for q in 0..4 {
        let v0 = _mm512_shuffle_i32x4::<0x88>(u[q], u[4 + q]);
        let v1 = _mm512_shuffle_i32x4::<0xdd>(u[q], u[4 + q]);
        let v2 = _mm512_shuffle_i32x4::<0x88>(u[8 + q], u[12 + q]);
        let v3 = _mm512_shuffle_i32x4::<0xdd>(u[8 + q], u[12 + q]);
        out[q] = _mm512_shuffle_i32x4::<0x88>(v0, v2);
        out[4 + q] = _mm512_shuffle_i32x4::<0x88>(v1, v3);
        out[8 + q] = _mm512_shuffle_i32x4::<0xdd>(v0, v2);
        out[12 + q] = _mm512_shuffle_i32x4::<0xdd>(v1, v3);
    }
    out
}

/// One accumulator of 16 column sums per row of A: `R` rows starting at `a`
/// against one packed panel of `groups` 4-code groups, each row's reduction
/// split over `S` accumulators (`groups` must be a multiple of `S`).
///
/// # Safety
/// AVX-512 VNNI; each `a[r]` valid for `4 * groups` bytes, `panel` for `64 * groups`.
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn tile<const R: usize, const S: usize>(
    a: [*const u8; R],
    panel: *const u8,
    groups: usize,
) -> [__m512i; R] {
    let mut acc = [[_mm512_setzero_si512(); S]; R];
    let mut g = 0;
    while g < groups {
        for s in 0..S {
            let bv = unsafe { _mm512_loadu_si512(panel.add(64 * (g + s)).cast()) };
            for r in 0..R {
                let quad = unsafe { a[r].add(4 * (g + s)).cast::<i32>().read_unaligned() };
                acc[r][s] = _mm512_dpbusd_epi32(acc[r][s], _mm512_set1_epi32(quad), bv);
            }
        }
        g += S;
    }
    let mut out = [_mm512_setzero_si512(); R];
    for r in 0..R {
        for s in 0..S {
            out[r] = _mm512_add_epi32(out[r], acc[r][s]);
        }
    }
    out
}

/// Writes `cols` (<= 16) outputs of row `i` from column `j0` on:
/// `acc as f32 * alpha * col_scale[j]`, added to C when accumulating. Masked
/// loads and stores leave everything past `cols` untouched.
///
/// # Safety
/// AVX-512F; `p.check(c.len())` passed and the outputs lie inside `p.m x p.n`.
#[target_feature(enable = "avx512f")]
unsafe fn store(p: &QGemm, c: &mut [f32], i: usize, j0: usize, cols: usize, acc: __m512i) {
    debug_assert!(i < p.m && 0 < cols && cols <= LANES && j0 + cols <= p.n);
    let mask: __mmask16 = (((1u32 << cols) - 1) & 0xffff) as u16;
    let scale = unsafe { _mm512_maskz_loadu_ps(mask, p.col_scale.as_ptr().add(j0)) };
    let v = _mm512_mul_ps(
        _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(p.alpha)),
        scale,
    );
    let dst = unsafe { c.as_mut_ptr().add(i * p.ldc + j0) };
    let v = if p.accumulate {
        _mm512_add_ps(unsafe { _mm512_maskz_loadu_ps(mask, dst) }, v)
    } else {
        v
    };
    unsafe { _mm512_mask_storeu_ps(dst, mask, v) };
}
