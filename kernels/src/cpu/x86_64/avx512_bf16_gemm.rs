//! AVX-512 BF16 GEMM for the straight-through backward: the contract of
//! `sgemm` (`C = alpha * A * B + beta * C`, `B` stored as f32 or codes) with
//! both operands rounded to bf16 (round to nearest even) and products summed
//! in f32 by `vdpbf16ps`, which multiplies two pairs of bf16 per f32 lane:
//! twice the multiply-adds of an f32 FMA per instruction. Codes (4-bit and
//! 8-bit) are exact in bf16, so for the backward GEMMs only the gradient `dY`
//! is rounded (relative error at most 2^-9 per element).
//!
//! Packing: a bf16 pair occupies one 32-bit slot. A panel holds, for each
//! pair of reduction steps `(2q, 2q + 1)`, the `MR` slots `(A(i, 2q), A(i, 2q+1))`
//! of its rows; a B panel holds, for each pair, the slots `(B(2q, j), B(2q+1, j))`
//! of its 16 or 32 columns. The 8 x 32 tile then takes, per pair, two panel
//! loads, eight 32-bit broadcasts and sixteen `vdpbf16ps` into sixteen
//! accumulators. An odd reduction length pads its last pair with zero.

use super::super::scalar::bf16_bits;
use super::super::sgemm_blocking::Codes;
use super::avx512_sgemm::widen;
use crate::{BMat, SGemm, ShapeError};
use std::arch::x86_64::*;

const MR: usize = 8;
/// Columns of a full B panel (two zmm of f32 lanes).
const NR: usize = 32;
/// Reduction steps per packed block (128 pairs: a 32-column B panel is 16 KiB).
const KC: usize = 256;
/// Rows per packed A block (256 rows x 128 pairs x 4 B = 128 KiB, L2).
const MC: usize = 256;
/// Columns per packed B block (every `n` of the backward in one block).
const NC: usize = 1152;

pub fn detect() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512bf16")
}

/// The GEMM, single-threaded.
pub fn sgemm_bf16(p: &SGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    p.check(c.len())?;
    if !detect() {
        return Err(ShapeError::unsupported("avx512 bf16 gemm (AVX-512 BF16)"));
    }
    // SAFETY: features checked; `check` bounds every operand the call reads.
    unsafe { gemm(p, c) };
    Ok(())
}

#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn gemm(p: &SGemm, c: &mut [f32]) {
    let (m, n, k) = (p.m, p.n, p.k);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            for x in &mut c[i * p.ldc..i * p.ldc + n] {
                *x = if p.beta == 0.0 { 0.0 } else { p.beta * *x };
            }
        }
        return;
    }
    let kc = KC.min(k);
    let pairs_max = kc.div_ceil(2);
    let ncb = NC.min(n);
    let mut bbuf = vec![0u32; pairs_max * ncb.next_multiple_of(16)];
    let mut abuf = vec![0u32; pairs_max * MC.min(m).next_multiple_of(MR)];
    let mut rows = [
        vec![0.0f32; ncb.next_multiple_of(16)],
        vec![0.0f32; ncb.next_multiple_of(16)],
    ];
    let cp = c.as_mut_ptr();
    for jc in (0..n).step_by(NC) {
        let ncur = NC.min(n - jc);
        for pc in (0..k).step_by(KC) {
            let kcur = KC.min(k - pc);
            let pairs = kcur.div_ceil(2);
            let beta = if pc == 0 { p.beta } else { 1.0 };
            // SAFETY: this function runs with AVX-512 BF16 and BW.
            unsafe { pack_b(&p.b, pc, kcur, jc, ncur, &mut bbuf, &mut rows) };
            for ic in (0..m).step_by(MC) {
                let mcur = MC.min(m - ic);
                pack_a(p, ic, mcur, pc, kcur, &mut abuf);
                let mut jr = 0;
                while jr < ncur {
                    let w = if ncur - jr > 16 { NR } else { 16 };
                    let bp = bbuf[jr * pairs..].as_ptr();
                    let nvalid = w.min(ncur - jr);
                    for ir in (0..mcur).step_by(MR) {
                        let mvalid = MR.min(mcur - ir);
                        let ap = abuf[ir * pairs..].as_ptr();
                        let ct = cp.wrapping_add((ic + ir) * p.ldc + jc + jr);
                        // SAFETY: the panels hold `pairs` steps of MR and w
                        // slots; the tile's valid part lies inside C.
                        unsafe {
                            store_tile(w, pairs, ap, bp, ct, p.ldc, mvalid, nvalid, p.alpha, beta)
                        };
                    }
                    jr += w;
                }
            }
        }
    }
}

/// Packs rows `ic..ic + mcur`, steps `pc..pc + kcur` of A into MR-row panels
/// of bf16 pairs (zero beyond `m` and `k`).
#[inline(always)]
fn pack_a(p: &SGemm, ic: usize, mcur: usize, pc: usize, kcur: usize, abuf: &mut [u32]) {
    let pairs = kcur.div_ceil(2);
    let a = |i: usize, r: usize| -> u32 {
        if r < kcur {
            bf16_bits(p.a[i * p.a_rs + (pc + r) * p.a_cs])
        } else {
            0
        }
    };
    for (q, panel) in abuf[..mcur.next_multiple_of(MR) * pairs]
        .chunks_exact_mut(MR * pairs)
        .enumerate()
    {
        let i0 = ic + q * MR;
        let nrows = MR.min(ic + mcur - i0);
        for (s, slots) in panel.chunks_exact_mut(MR).enumerate() {
            for (ii, slot) in slots.iter_mut().enumerate() {
                *slot = if ii < nrows {
                    a(i0 + ii, 2 * s) | (a(i0 + ii, 2 * s + 1) << 16)
                } else {
                    0
                };
            }
        }
    }
}

/// Widens row `i`, columns `jc..jc + ncur` of B into `dst`.
///
/// # Safety
/// AVX-512F present.
#[inline(always)]
unsafe fn b_row(b: &BMat, i: usize, jc: usize, ncur: usize, dst: &mut [f32]) {
    let dst = &mut dst[..ncur];
    // SAFETY (each widen): AVX-512F present; the slices hold the codes.
    unsafe {
        match *b {
            BMat::F32 { data, rs } => dst.copy_from_slice(&data[i * rs + jc..i * rs + jc + ncur]),
            BMat::S8 { data, rs } => {
                let s = &data[i * rs + jc..i * rs + jc + ncur];
                // SAFETY: i8 and u8 have the same layout.
                let s = std::slice::from_raw_parts(s.as_ptr() as *const u8, ncur);
                widen(Codes::S8, s, dst)
            }
            BMat::U8 { data, rs } => widen(Codes::U8, &data[i * rs + jc..][..ncur], dst),
            BMat::S4 { data, rs } => {
                widen(Codes::S4, &data[i * rs + jc / 2..][..ncur.div_ceil(2)], dst)
            }
            BMat::U4 { data, rs } => {
                widen(Codes::U4, &data[i * rs + jc / 2..][..ncur.div_ceil(2)], dst)
            }
        }
    }
}

/// 16 slots `(bf16(lo[j]), bf16(hi[j]))` from 16 floats each, rounded to
/// nearest even by `vcvtne2ps2bf16` and interleaved by one word permute.
///
/// # Safety
/// AVX-512 BF16 and BW present; 16 floats readable at `lo` and `hi`, 16
/// slots writable at `dst`.
#[inline(always)]
unsafe fn interleave16(lo: *const f32, hi: *const f32, dst: *mut u32) {
    // SAFETY: forwarded from the caller.
    unsafe {
        // Words 0..16 of `x` are lo's, 16..32 hi's; slot j takes words j and 16 + j.
        let x = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(hi), _mm512_loadu_ps(lo));
        let idx = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        let v = _mm512_permutexvar_epi16(idx, std::mem::transmute::<__m512bh, __m512i>(x));
        _mm512_storeu_si512(dst as *mut _, v);
    }
}

/// Packs steps `pc..pc + kcur`, columns `jc..jc + ncur` of B into panels of
/// 32 columns (the last one 16 when at most 16 remain) of bf16 pairs; panel
/// at column `jr` starts at slot `jr * pairs`.
///
/// # Safety
/// AVX-512 BF16 and BW present.
#[inline(always)]
unsafe fn pack_b(
    b: &BMat,
    pc: usize,
    kcur: usize,
    jc: usize,
    ncur: usize,
    bbuf: &mut [u32],
    rows: &mut [Vec<f32>; 2],
) {
    let pairs = kcur.div_ceil(2);
    let padded = ncur.next_multiple_of(16);
    for s in 0..pairs {
        let [r0, r1] = rows;
        // SAFETY: AVX-512F present.
        unsafe { b_row(b, pc + 2 * s, jc, ncur, r0) };
        if 2 * s + 1 < kcur {
            // SAFETY: as above.
            unsafe { b_row(b, pc + 2 * s + 1, jc, ncur, r1) };
        } else {
            r1[..ncur].fill(0.0);
        }
        r0[ncur..padded].fill(0.0);
        r1[ncur..padded].fill(0.0);
        let mut jr = 0;
        while jr < ncur {
            let w = if ncur - jr > 16 { NR } else { 16 };
            let dst = &mut bbuf[jr * pairs + s * w..jr * pairs + (s + 1) * w];
            for h in (0..w).step_by(16) {
                // SAFETY: the rows hold `padded >= jr + w` floats, `dst` w slots.
                unsafe {
                    interleave16(
                        r0[jr + h..].as_ptr(),
                        r1[jr + h..].as_ptr(),
                        dst[h..].as_mut_ptr(),
                    )
                };
            }
            jr += w;
        }
    }
}

/// One tile into C: full tiles directly, edge tiles through a buffer.
///
/// # Safety
/// AVX-512 BF16 present; `a` holds `pairs * MR` and `b` `pairs * w` slots;
/// the `mvalid x nvalid` part of the tile at `c` (row stride `ldc`) is valid.
#[inline(always)]
unsafe fn store_tile(
    w: usize,
    pairs: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    mvalid: usize,
    nvalid: usize,
    alpha: f32,
    beta: f32,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if mvalid == MR && nvalid == w {
            if w == NR {
                tile::<2>(pairs, a, b, c, ldc, alpha, beta)
            } else {
                tile::<1>(pairs, a, b, c, ldc, alpha, beta)
            }
            return;
        }
        let mut tmp = [0.0f32; MR * NR];
        if w == NR {
            tile::<2>(pairs, a, b, tmp.as_mut_ptr(), w, alpha, 0.0)
        } else {
            tile::<1>(pairs, a, b, tmp.as_mut_ptr(), w, alpha, 0.0)
        }
        for i in 0..mvalid {
            for j in 0..nvalid {
                let d = c.add(i * ldc + j);
                let t = tmp[i * w + j];
                *d = if beta == 0.0 { t } else { t + beta * *d };
            }
        }
    }
}

/// The `MR x 16V` tile: `c = alpha * acc + beta * c` (`c` unread when beta is 0).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn tile<const V: usize>(
    pairs: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
) {
    // SAFETY: the caller guarantees the panel sizes and the tile at `c`.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        let (mut a, mut b) = (a, b);
        for _ in 0..pairs {
            let mut bv: [__m512bh; V] =
                [std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512()); V];
            for v in 0..V {
                bv[v] = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    b.add(16 * v) as *const _
                ));
            }
            for i in 0..MR {
                let ai =
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*a.add(i) as i32));
                for v in 0..V {
                    acc[i][v] = _mm512_dpbf16_ps(acc[i][v], ai, bv[v]);
                }
            }
            a = a.add(MR);
            b = b.add(16 * V);
        }
        let va = _mm512_set1_ps(alpha);
        for i in 0..MR {
            for v in 0..V {
                let cp = c.add(i * ldc + 16 * v);
                let r = _mm512_mul_ps(acc[i][v], va);
                let r = if beta == 0.0 {
                    r
                } else {
                    _mm512_fmadd_ps(_mm512_set1_ps(beta), _mm512_loadu_ps(cp), r)
                };
                _mm512_storeu_ps(cp, r);
            }
        }
    }
}
