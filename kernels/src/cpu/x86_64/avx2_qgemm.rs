//! AVX2 integer GEMMs, in two shapes.
//!
//! **Column lanes** (the usual case): the eight i32 lanes of an accumulator hold
//! eight output columns. B is repacked into panels of 16 columns in which each
//! 4-byte unit of a column's row sits in that column's lane; a unit of an A row
//! is broadcast to every lane. A tile of 4 rows x 16 columns takes 4 broadcasts,
//! 2 panel loads and 8 multiply-adds per unit and is scaled and stored as whole
//! vectors: no horizontal sums, which otherwise cost about as much as the
//! products when `k` is small (144 for a 3x3 convolution over 16 channels).
//!
//! **Row dots** (GEMMs with few rows, where repacking B would cost more than
//! it saves): B rows are read in place, a tile of 2 x 4 outputs
//! at a time (each A vector used four times, each B vector twice), and the four
//! dot products of an A row are reduced horizontally together.
//!
//! Products, the same in both shapes:
//! * u4 x s4: packed rows are split into one code per byte (once per call, in
//!   scratch buffers). `vpmaddubsw` (u8 x i8, adjacent pairs summed into i16) is
//!   exact here because a pair of 4-bit products is at most 2 * 15 * 8 = 240 in
//!   magnitude; the i16 sums are widened to i32 before they could overflow.
//! * u8 x s8: `vpmaddubsw` would saturate (2 * 255 * 127 > i16::MAX), so both
//!   operands are widened to i16 and multiplied with `vpmaddwd`, which sums
//!   pairs straight into i32. In column lanes a unit is then two codes.
//!
//! The i32 sums are scaled with the same f32 operations, in the same order, as
//! the scalar reference, so results are bitwise equal to it.

use super::detect_avx2;
pub(super) use crate::cpu::scratch::{as_i8, with_scratch};
use crate::{QGemm, ShapeError};
use std::arch::x86_64::*;

/// Fewest rows of A for column lanes with u4 x s4 codes. With fewer, repacking
/// B costs more than it saves (crossovers measured on Zen 4).
const LANES_MIN_ROWS_U4S4: usize = 8;
/// The same for u8 x s8, whose panels hold i16 codes: twice the bytes to pack.
const LANES_MIN_ROWS_U8S8: usize = 24;
/// Rows of A per column-lanes tile: 4 x 2 accumulators, two B vectors and a
/// broadcast A unit leave room in the 16 ymm registers for the i32 totals of
/// the u4 x s4 kernel.
const PR: usize = 4;
/// Output columns per panel: two vectors of eight i32 lanes.
const PANEL_COLS: usize = 16;
/// B panels are packed in blocks of about this many bytes, so a block stays in
/// the L2 cache while every row tile of A passes over it.
const BLOCK_BYTES: usize = 256 << 10;
/// Units (four u4 codes) summed in i16 before widening: each adds at most 240
/// to an i16 lane, and 128 * 240 = 30720 <= i16::MAX.
const I16_UNITS: usize = 128;

/// Rows of A per row-dots tile.
const MR: usize = 2;
/// Rows of B (output columns) per row-dots tile. 2 x 4 i16 accumulators, four
/// B vectors and one A vector fit the 16 ymm registers.
const NR: usize = 4;
/// Steps of 32 codes summed in i16 before widening: 128 * 240 = 30720 <= i16::MAX.
const I16_STEPS: usize = 128;
/// In row dots, B rows are processed in panels of about this many bytes.
const PANEL_BYTES: usize = 256 << 10;

pub fn qgemm_u4s4(p: &QGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    p.check(c.len())?;
    if !detect_avx2() {
        return Err(ShapeError::unsupported("avx2"));
    }
    // SAFETY: AVX2 is present, and `check` guarantees that A, B, col_scale and C
    // hold every row and column the kernel touches.
    unsafe {
        if p.m >= LANES_MIN_ROWS_U4S4 {
            lanes(p, c, Codes::Nibbles)
        } else {
            dots_u4s4(p, c)
        }
    }
    Ok(())
}

pub fn qgemm_u8s8(p: &QGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    p.check(c.len())?;
    if !detect_avx2() {
        return Err(ShapeError::unsupported("avx2"));
    }
    // SAFETY: as in `qgemm_u4s4`.
    unsafe {
        if p.m >= LANES_MIN_ROWS_U8S8 {
            lanes(p, c, Codes::Bytes)
        } else {
            dots_u8s8(p, c)
        }
    }
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

// ------------------------------------------------------------- column lanes

#[target_feature(enable = "avx2")]
unsafe fn lanes(p: &QGemm, c: &mut [f32], codes: Codes) {
    if p.m == 0 || p.n == 0 {
        return;
    }
    let rb = p.row_bytes;
    // Rows expand to 2 * rb bytes either way: one byte per 4-bit code, or one
    // i16 per 8-bit code. Units are 4 bytes, a multiple of 8 per row.
    let row_len = 2 * rb;
    let units = row_len / 4;
    let panel_bytes = PANEL_COLS * row_len;
    let block_cols = (BLOCK_BYTES / panel_bytes.max(1)).max(1) * PANEL_COLS;
    let panels_len = block_cols.min(p.n.next_multiple_of(PANEL_COLS)) * row_len;
    let lens = [panels_len, PANEL_COLS * row_len, PR * row_len];
    with_scratch(lens, |[panels, b_rows, a_rows]| {
        for j0 in (0..p.n).step_by(block_cols) {
            let j1 = (j0 + block_cols).min(p.n);
            for (t, jt) in (j0..j1).step_by(PANEL_COLS).enumerate() {
                let panel = &mut panels[t * panel_bytes..(t + 1) * panel_bytes];
                unsafe { pack_panel(p, codes, jt, j1.min(jt + PANEL_COLS), panel, b_rows) };
            }
            for i0 in (0..p.m).step_by(PR) {
                let rows = PR.min(p.m - i0);
                for r in 0..rows {
                    let src = &p.a[(i0 + r) * rb..(i0 + r + 1) * rb];
                    let dst = &mut a_rows[r * row_len..(r + 1) * row_len];
                    unsafe { expand_row(codes, src, dst, false) };
                }
                for (t, jt) in (j0..j1).step_by(PANEL_COLS).enumerate() {
                    let panel = panels[t * panel_bytes..].as_ptr();
                    let cols = PANEL_COLS.min(j1 - jt);
                    if rows == PR {
                        let a = std::array::from_fn(|r| a_rows[r * row_len..].as_ptr());
                        let acc = unsafe { lane_tile::<PR>(codes, a, panel, units) };
                        for (r, acc) in acc.into_iter().enumerate() {
                            unsafe { store16(p, c, i0 + r, jt, cols, acc) };
                        }
                    } else {
                        for r in 0..rows {
                            let a = [a_rows[r * row_len..].as_ptr()];
                            let acc = unsafe { lane_tile::<1>(codes, a, panel, units) };
                            unsafe { store16(p, c, i0 + r, jt, cols, acc[0]) };
                        }
                    }
                }
            }
        }
    })
}

/// Expands a row of A (`signed == false`) or B into 4-byte units: 4-bit codes
/// to one byte each, 8-bit codes to one i16 each.
///
/// # Safety
/// AVX2; `dst` holds `2 * src.len()` bytes.
#[target_feature(enable = "avx2")]
unsafe fn expand_row(codes: Codes, src: &[u8], dst: &mut [u8], signed: bool) {
    match (codes, signed) {
        (Codes::Nibbles, false) => unsafe { unpack_u4(src, dst) },
        (Codes::Nibbles, true) => unsafe { unpack_s4(src, as_i8(dst)) },
        (Codes::Bytes, _) => {
            assert!(src.len().is_multiple_of(16) && dst.len() >= 2 * src.len());
            for s in 0..src.len() / 16 {
                unsafe {
                    let x = _mm_loadu_si128(src.as_ptr().add(16 * s).cast());
                    let v = if signed {
                        _mm256_cvtepi8_epi16(x)
                    } else {
                        _mm256_cvtepu8_epi16(x)
                    };
                    _mm256_storeu_si256(dst.as_mut_ptr().add(32 * s).cast(), v);
                }
            }
        }
    }
}

/// Repacks B rows `j0..j1` (at most 16), expanded, into a panel: unit `u` of
/// column `j0 + l` lands at bytes `64 u + 4 l`, and lanes past `j1` are zero.
/// Seen as units this is a transpose, done 8 x 8 units at a time in registers.
///
/// # Safety
/// AVX2; `p.check` passed, `j1 <= p.n`, and `panel` and `b_rows` hold 16
/// expanded rows (`32 * row_bytes` bytes).
#[target_feature(enable = "avx2")]
unsafe fn pack_panel(
    p: &QGemm,
    codes: Codes,
    j0: usize,
    j1: usize,
    panel: &mut [u8],
    b_rows: &mut [u8],
) {
    let rb = p.row_bytes;
    let row_len = 2 * rb;
    assert!(panel.len() >= PANEL_COLS * row_len && b_rows.len() >= PANEL_COLS * row_len);
    for (l, j) in (j0..j1).enumerate() {
        unsafe {
            expand_row(
                codes,
                &p.b[j * rb..(j + 1) * rb],
                &mut b_rows[l * row_len..(l + 1) * row_len],
                true,
            )
        };
    }
    let src = b_rows.as_ptr();
    let dst = panel.as_mut_ptr();
    // Rows hold a multiple of 8 units (32 bytes).
    for u0 in (0..row_len / 4).step_by(8) {
        for half in 0..2 {
            let mut rows = [_mm256_setzero_si256(); 8];
            for (l, row) in rows.iter_mut().enumerate() {
                if 8 * half + l < j1 - j0 {
                    *row = unsafe {
                        _mm256_loadu_si256(src.add((8 * half + l) * row_len + 4 * u0).cast())
                    };
                }
            }
            for (u, v) in transpose8(rows).into_iter().enumerate() {
                unsafe { _mm256_storeu_si256(dst.add(64 * (u0 + u) + 32 * half).cast(), v) };
            }
        }
    }
}

/// Transposes 8 rows of 8 i32 units: unit `u` of row `r` becomes unit `r` of row `u`.
#[target_feature(enable = "avx2")]
fn transpose8(r: [__m256i; 8]) -> [__m256i; 8] {
    // Within each 128-bit lane, gather units of four rows: s[4i + q] holds unit
    // q (low lane) and unit 4 + q (high lane) of rows 4i..4i + 4.
    let mut s = [_mm256_setzero_si256(); 8];
    for i in 0..2 {
        let t0 = _mm256_unpacklo_epi32(r[4 * i], r[4 * i + 1]);
        let t1 = _mm256_unpackhi_epi32(r[4 * i], r[4 * i + 1]);
        let t2 = _mm256_unpacklo_epi32(r[4 * i + 2], r[4 * i + 3]);
        let t3 = _mm256_unpackhi_epi32(r[4 * i + 2], r[4 * i + 3]);
        s[4 * i] = _mm256_unpacklo_epi64(t0, t2);
        s[4 * i + 1] = _mm256_unpackhi_epi64(t0, t2);
        s[4 * i + 2] = _mm256_unpacklo_epi64(t1, t3);
        s[4 * i + 3] = _mm256_unpackhi_epi64(t1, t3);
    }
    let mut out = [_mm256_setzero_si256(); 8];
    for q in 0..4 {
        out[q] = _mm256_permute2x128_si256::<0x20>(s[q], s[4 + q]);
        out[4 + q] = _mm256_permute2x128_si256::<0x31>(s[q], s[4 + q]);
    }
    out
}

/// Column sums of `R` expanded A rows against one panel of `units` units: per
/// row, two vectors of eight i32 columns.
///
/// # Safety
/// AVX2; each `a[r]` valid for `4 * units` bytes, `panel` for `64 * units`.
#[target_feature(enable = "avx2")]
unsafe fn lane_tile<const R: usize>(
    codes: Codes,
    a: [*const u8; R],
    panel: *const u8,
    units: usize,
) -> [[__m256i; 2]; R] {
    let mut tot = [[_mm256_setzero_si256(); 2]; R];
    match codes {
        Codes::Nibbles => {
            let ones = _mm256_set1_epi16(1);
            let mut u0 = 0;
            while u0 < units {
                let u1 = (u0 + I16_UNITS).min(units);
                let mut acc = [[_mm256_setzero_si256(); 2]; R];
                for u in u0..u1 {
                    let b0 = unsafe { _mm256_loadu_si256(panel.add(64 * u).cast()) };
                    let b1 = unsafe { _mm256_loadu_si256(panel.add(64 * u + 32).cast()) };
                    for r in 0..R {
                        let av = _mm256_set1_epi32(unsafe {
                            a[r].add(4 * u).cast::<i32>().read_unaligned()
                        });
                        acc[r][0] = _mm256_add_epi16(acc[r][0], _mm256_maddubs_epi16(av, b0));
                        acc[r][1] = _mm256_add_epi16(acc[r][1], _mm256_maddubs_epi16(av, b1));
                    }
                }
                // The two i16 lanes of a column are adjacent: vpmaddwd by one
                // adds them into the column's i32 lane.
                for r in 0..R {
                    for h in 0..2 {
                        tot[r][h] = _mm256_add_epi32(tot[r][h], _mm256_madd_epi16(acc[r][h], ones));
                    }
                }
                u0 = u1;
            }
        }
        Codes::Bytes => {
            for u in 0..units {
                let b0 = unsafe { _mm256_loadu_si256(panel.add(64 * u).cast()) };
                let b1 = unsafe { _mm256_loadu_si256(panel.add(64 * u + 32).cast()) };
                for r in 0..R {
                    let av = _mm256_set1_epi32(unsafe {
                        a[r].add(4 * u).cast::<i32>().read_unaligned()
                    });
                    tot[r][0] = _mm256_add_epi32(tot[r][0], _mm256_madd_epi16(av, b0));
                    tot[r][1] = _mm256_add_epi32(tot[r][1], _mm256_madd_epi16(av, b1));
                }
            }
        }
    }
    tot
}

/// Writes `cols` (<= 16) outputs of row `i` from column `j0` on:
/// `acc as f32 * alpha * col_scale[j]`, added to C when accumulating. Masked
/// loads and stores leave everything past `cols` untouched.
///
/// # Safety
/// AVX2; `p.check(c.len())` passed and the outputs lie inside `p.m x p.n`.
#[target_feature(enable = "avx2")]
unsafe fn store16(p: &QGemm, c: &mut [f32], i: usize, j0: usize, cols: usize, acc: [__m256i; 2]) {
    debug_assert!(i < p.m && 0 < cols && cols <= PANEL_COLS && j0 + cols <= p.n);
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (h, acc) in acc.into_iter().enumerate() {
        if 8 * h >= cols {
            break;
        }
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((cols - 8 * h) as i32), lane);
        let j = j0 + 8 * h;
        let scale = unsafe { _mm256_maskload_ps(p.col_scale.as_ptr().add(j), mask) };
        let v = _mm256_mul_ps(
            _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(p.alpha)),
            scale,
        );
        let dst = unsafe { c.as_mut_ptr().add(i * p.ldc + j) };
        let v = if p.accumulate {
            _mm256_add_ps(unsafe { _mm256_maskload_ps(dst, mask) }, v)
        } else {
            v
        };
        unsafe { _mm256_maskstore_ps(dst, mask, v) };
    }
}

// ----------------------------------------------------------------- row dots

/// Row dots: output columns per panel for rows of `row_len` bytes, a multiple of [`NR`].
fn panel_cols(row_len: usize) -> usize {
    (PANEL_BYTES / row_len.max(1) / NR).max(1) * NR
}

#[target_feature(enable = "avx2")]
unsafe fn dots_u4s4(p: &QGemm, c: &mut [f32]) {
    if p.m == 0 || p.n == 0 {
        return;
    }
    let rb = p.row_bytes;
    let kc = 2 * rb; // codes per row, a multiple of 32
    let steps = rb / 16;
    let nb = panel_cols(kc);
    with_scratch([nb.min(p.n) * kc, MR * kc, 0], |[bbuf, abuf, _]| {
        let bbuf = as_i8(bbuf);
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
                        for (r, s) in sums.into_iter().enumerate() {
                            unsafe { store(p, c, i0 + r, jt, cols, s) };
                        }
                    } else {
                        for r in 0..rows {
                            let sums =
                                unsafe { tile_u4s4::<1>([abuf[r * kc..].as_ptr()], b, steps) };
                            unsafe { store(p, c, i0 + r, jt, cols, sums[0]) };
                        }
                    }
                }
            }
        }
    })
}

#[target_feature(enable = "avx2")]
unsafe fn dots_u8s8(p: &QGemm, c: &mut [f32]) {
    if p.m == 0 || p.n == 0 {
        return;
    }
    let rb = p.row_bytes;
    let steps = rb / 16;
    let nb = panel_cols(rb);
    for j0 in (0..p.n).step_by(nb) {
        let j1 = (j0 + nb).min(p.n);
        for i0 in (0..p.m).step_by(MR) {
            let rows = MR.min(p.m - i0);
            for jt in (j0..j1).step_by(NR) {
                let cols = NR.min(j1 - jt);
                let b: [*const u8; NR] =
                    std::array::from_fn(|j| p.b[(jt + j.min(cols - 1)) * rb..].as_ptr());
                if rows == MR {
                    let a = std::array::from_fn(|r| p.a[(i0 + r) * rb..].as_ptr());
                    let sums = unsafe { tile_u8s8::<MR>(a, b, steps) };
                    for (r, s) in sums.into_iter().enumerate() {
                        unsafe { store(p, c, i0 + r, jt, cols, s) };
                    }
                } else {
                    for r in 0..rows {
                        let sums =
                            unsafe { tile_u8s8::<1>([p.a[(i0 + r) * rb..].as_ptr()], b, steps) };
                        unsafe { store(p, c, i0 + r, jt, cols, sums[0]) };
                    }
                }
            }
        }
    }
}

/// Dot products of `R` unpacked u4 rows with [`NR`] unpacked s4 rows, each
/// `32 * steps` codes long: one i32x4 of column sums per row.
///
/// # Safety
/// AVX2; every pointer must be valid for `32 * steps` bytes.
#[target_feature(enable = "avx2")]
unsafe fn tile_u4s4<const R: usize>(
    a: [*const u8; R],
    b: [*const i8; NR],
    steps: usize,
) -> [__m128i; R] {
    let ones = _mm256_set1_epi16(1);
    let mut sums = [_mm_setzero_si128(); R];
    let mut s0 = 0;
    while s0 < steps {
        let s1 = (s0 + I16_STEPS).min(steps);
        let mut acc = [[_mm256_setzero_si256(); NR]; R];
        for s in s0..s1 {
            let mut bv = [_mm256_setzero_si256(); NR];
            for j in 0..NR {
                bv[j] = unsafe { _mm256_loadu_si256(b[j].add(32 * s).cast()) };
            }
            for r in 0..R {
                let av = unsafe { _mm256_loadu_si256(a[r].add(32 * s).cast()) };
                for j in 0..NR {
                    acc[r][j] = _mm256_add_epi16(acc[r][j], _mm256_maddubs_epi16(av, bv[j]));
                }
            }
        }
        for r in 0..R {
            let mut wide = [_mm256_setzero_si256(); NR];
            for j in 0..NR {
                wide[j] = _mm256_madd_epi16(acc[r][j], ones);
            }
            sums[r] = _mm_add_epi32(sums[r], reduce4(wide));
        }
        s0 = s1;
    }
    sums
}

/// Dot products of `R` u8 rows with [`NR`] s8 rows, each `16 * steps` bytes long:
/// one i32x4 of column sums per row.
///
/// # Safety
/// AVX2; every pointer must be valid for `16 * steps` bytes.
#[target_feature(enable = "avx2")]
unsafe fn tile_u8s8<const R: usize>(
    a: [*const u8; R],
    b: [*const u8; NR],
    steps: usize,
) -> [__m128i; R] {
    let mut acc = [[_mm256_setzero_si256(); NR]; R];
    for s in 0..steps {
        let mut bv = [_mm256_setzero_si256(); NR];
        for j in 0..NR {
            bv[j] = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(b[j].add(16 * s).cast()) });
        }
        for r in 0..R {
            let av = _mm256_cvtepu8_epi16(unsafe { _mm_loadu_si128(a[r].add(16 * s).cast()) });
            for j in 0..NR {
                acc[r][j] = _mm256_add_epi32(acc[r][j], _mm256_madd_epi16(av, bv[j]));
            }
        }
    }
    let mut sums = [_mm_setzero_si128(); R];
    for r in 0..R {
        sums[r] = reduce4(acc[r]);
    }
    sums
}

/// Horizontal sums of four i32x8 vectors, as one i32x4.
#[target_feature(enable = "avx2")]
fn reduce4(v: [__m256i; 4]) -> __m128i {
    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
}

/// Writes `cols` (<= 4) outputs of row `i` from column `j0` on:
/// `sum as f32 * alpha * col_scale[j]`, added to C when accumulating.
///
/// # Safety
/// AVX2; `p.check(c.len())` passed and the outputs lie inside `p.m x p.n`.
#[target_feature(enable = "avx2")]
unsafe fn store(p: &QGemm, c: &mut [f32], i: usize, j0: usize, cols: usize, sums: __m128i) {
    let v = _mm_mul_ps(_mm_cvtepi32_ps(sums), _mm_set1_ps(p.alpha));
    let dst = &mut c[i * p.ldc + j0..i * p.ldc + j0 + cols];
    let scale = &p.col_scale[j0..j0 + cols];
    if cols == 4 {
        let v = _mm_mul_ps(v, unsafe { _mm_loadu_ps(scale.as_ptr()) });
        let v = if p.accumulate {
            _mm_add_ps(unsafe { _mm_loadu_ps(dst.as_ptr()) }, v)
        } else {
            v
        };
        unsafe { _mm_storeu_ps(dst.as_mut_ptr(), v) };
    } else {
        let mut t = [0.0f32; 4];
        unsafe { _mm_storeu_ps(t.as_mut_ptr(), v) };
        for j in 0..cols {
            let v = t[j] * scale[j];
            dst[j] = if p.accumulate { dst[j] + v } else { v };
        }
    }
}

/// Splits 16 packed bytes into 32 codes: low nibbles in the first 16 bytes, high
/// nibbles in the last 16. A and B rows are split the same way, and a dot product
/// does not depend on the order of its terms.
#[target_feature(enable = "avx2")]
unsafe fn split_nibbles(src: *const u8) -> __m256i {
    let x = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(src.cast()) });
    let x = _mm256_srlv_epi32(x, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
    _mm256_and_si256(x, _mm256_set1_epi8(0x0f))
}

/// Unpacks a packed unsigned 4-bit row (a multiple of 16 bytes) into one code
/// per byte; `dst` holds twice as many bytes as `src`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn unpack_u4(src: &[u8], dst: &mut [u8]) {
    assert!(src.len().is_multiple_of(16) && dst.len() >= 2 * src.len());
    for s in 0..src.len() / 16 {
        unsafe {
            let v = split_nibbles(src.as_ptr().add(16 * s));
            _mm256_storeu_si256(dst.as_mut_ptr().add(32 * s).cast(), v);
        }
    }
}

/// Unpacks a packed signed 4-bit row into one sign-extended code per byte.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn unpack_s4(src: &[u8], dst: &mut [i8]) {
    assert!(src.len().is_multiple_of(16) && dst.len() >= 2 * src.len());
    let eight = _mm256_set1_epi8(8);
    for s in 0..src.len() / 16 {
        unsafe {
            let v = split_nibbles(src.as_ptr().add(16 * s));
            // Two's-complement nibble to byte: flipping bit 3 and subtracting 8
            // maps 0..=7 to itself and 8..=15 to -8..=-1.
            let v = _mm256_sub_epi8(_mm256_xor_si256(v, eight), eight);
            _mm256_storeu_si256(dst.as_mut_ptr().add(32 * s).cast(), v);
        }
    }
}
