//! Blocking and packing shared by the SIMD `sgemm` variants (AVX2, AVX-512, NEON).
//!
//! The loop nest is the Goto/BLIS one. `B` is packed a `KC x NC` block at a time
//! into column panels `NR = NV * LANES` wide, and `A` an `MC x KC` block at a time
//! into row panels `MR` tall. A per-ISA micro-kernel ([`MicroKernel::tile`]) then
//! computes one `MR x NR` tile of `C` from one A panel and one B panel, keeping every
//! accumulator in a register. Packing pays off three ways:
//!
//! * `B`'s codes (s4/u4/s8/u8) are widened to f32 here, once per element of a
//!   `KC x NC` block, and the widened panel is then reused by every row panel of
//!   `A`. The micro-kernel only ever sees f32, so the int4 operand costs nothing
//!   inside the inner loop and there is one micro-kernel per ISA, not one per encoding.
//! * The strided `A` (row-major `dY` for dX, transposed `dY` for dW) becomes one
//!   contiguous stream of `MR` values per reduction step, whatever its strides.
//! * Edges are zero-padded inside the panels, so the micro-kernel has no tail
//!   logic; only the final store of an edge tile goes through a small buffer.
//!
//! The last B panel of a block is narrowed to the fewest vectors that cover the
//! remaining columns (`nv < NV`), so a width such as 16 or 144 wastes at most
//! `LANES - 1` columns instead of up to `NR - 1`.
//!
//! The micro-kernels do the arithmetic; everything here is portable and is inlined
//! into each variant's `#[target_feature]` entry point, so the packing loops are
//! compiled (and auto-vectorised) for that variant's ISA.

use crate::{BMat, SGemm, ShapeError};
use std::cell::Cell;

/// Integer encodings of `B` that the packer widens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Codes {
    S8,
    U8,
    S4,
    U4,
}

/// One ISA's register tile and its code-widening routine.
pub(crate) trait MicroKernel {
    /// Rows of a tile, and of an A panel.
    const MR: usize;
    /// f32 lanes in one vector register.
    const LANES: usize;
    /// Vectors per tile row; full B panels are `NV * LANES` columns wide.
    const NV: usize;

    /// Computes one tile: for `i < MR`, `j < nv * LANES`,
    /// `c[i * ldc + j] = alpha * sum_{r < kc} a[r * MR + i] * b[r * nv * LANES + j]`,
    /// plus `beta * c[i * ldc + j]` if `beta != 0` (otherwise `c` is not read).
    ///
    /// # Safety
    /// The CPU supports the kernel's target features; `1 <= nv <= NV`; `a` holds
    /// `kc * MR` and `b` `kc * nv * LANES` readable floats; every addressed element
    /// of `c` is valid for reads and writes.
    unsafe fn tile(
        nv: usize,
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
    );

    /// Starts fetching the `MR x n` tile of C at `c` into cache (a hint; may be a no-op).
    ///
    /// # Safety
    /// The CPU supports the kernel's target features.
    #[inline(always)]
    unsafe fn prefetch_c(_c: *const f32, _ldc: usize, _n: usize) {}

    /// Widens the first `dst.len()` codes of `src` (a packed row segment starting on
    /// a byte boundary; `src` holds exactly the bytes those codes occupy) to f32.
    ///
    /// # Safety
    /// The CPU supports the kernel's target features.
    #[inline(always)]
    unsafe fn widen(codes: Codes, src: &[u8], dst: &mut [f32]) {
        widen_portable(codes, src, dst)
    }
}

/// Cache blocking of one variant: `kc` reduction steps per packed block (a B
/// panel, `kc * NR` floats, is reused by every A panel of the block, so it wants
/// L1 or at least L2), `mc` rows of A per packed block (`mc * kc` floats, in L2),
/// `nc` columns of B per packed block (`kc * nc` floats, in L2/L3).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Blocking {
    pub kc: usize,
    pub mc: usize,
    pub nc: usize,
}

/// Scalar widening, used for tails and wherever an ISA has no faster routine.
#[inline(always)]
pub(crate) fn widen_portable(codes: Codes, src: &[u8], dst: &mut [f32]) {
    let n = dst.len();
    match codes {
        Codes::S8 => {
            for (d, &s) in dst.iter_mut().zip(&src[..n]) {
                *d = s as i8 as f32;
            }
        }
        Codes::U8 => {
            for (d, &s) in dst.iter_mut().zip(&src[..n]) {
                *d = s as f32;
            }
        }
        Codes::S4 => {
            let (pairs, tail) = dst.split_at_mut(n & !1);
            for (d, &s) in pairs.chunks_exact_mut(2).zip(&src[..n / 2]) {
                d[0] = (((s << 4) as i8) >> 4) as f32;
                d[1] = ((s as i8) >> 4) as f32;
            }
            if let Some(d) = tail.first_mut() {
                *d = (((src[n / 2] << 4) as i8) >> 4) as f32;
            }
        }
        Codes::U4 => {
            let (pairs, tail) = dst.split_at_mut(n & !1);
            for (d, &s) in pairs.chunks_exact_mut(2).zip(&src[..n / 2]) {
                d[0] = (s & 0x0f) as f32;
                d[1] = (s >> 4) as f32;
            }
            if let Some(d) = tail.first_mut() {
                *d = (src[n / 2] & 0x0f) as f32;
            }
        }
    }
}

/// Largest `MR * NV * LANES` of any variant (the edge-tile buffer).
const MAX_TILE: usize = 512;
/// Packed buffers start on a cache line, so full-vector panel loads never split one.
const ALIGN_F32: usize = 16;

thread_local! {
    /// Packing buffers of this thread, kept between calls so repeated GEMMs of one
    /// shape (every training step) neither allocate nor page-fault.
    static PACK_BUF: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Index of the first 64-byte aligned element of `v`.
fn aligned_start(v: &[f32]) -> usize {
    let misalign = (v.as_ptr() as usize / 4) % ALIGN_F32;
    (ALIGN_F32 - misalign) % ALIGN_F32
}

/// `C = alpha * A * B + beta * C` with micro-kernel `K` (single-threaded).
///
/// # Safety
/// The CPU supports `K`'s target features.
#[inline(always)]
pub(crate) unsafe fn gemm<K: MicroKernel>(
    p: &SGemm,
    c: &mut [f32],
    bl: Blocking,
) -> Result<(), ShapeError> {
    const { assert!(K::MR * K::NV * K::LANES <= MAX_TILE && K::LANES % 2 == 0) };
    p.check(c.len())?;
    let (m, n, k) = (p.m, p.n, p.k);
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        for i in 0..m {
            for x in &mut c[i * p.ldc..i * p.ldc + n] {
                *x = if p.beta == 0.0 {
                    p.alpha * 0.0
                } else {
                    p.alpha * 0.0 + p.beta * *x
                };
            }
        }
        return Ok(());
    }
    let nr = K::NV * K::LANES;
    // Block sizes: multiples of the tile (nc also keeps packed 4-bit columns on whole bytes).
    let kc = bl.kc.max(1).min(k);
    let mc = (bl.mc / K::MR).max(1) * K::MR;
    let nc = (bl.nc / nr).max(1) * nr;
    let a_len = m.min(mc).next_multiple_of(K::MR) * kc;
    let b_len = n.min(nc).next_multiple_of(K::LANES) * kc;

    let mut buf = PACK_BUF.take();
    let row_len = n.min(nc);
    let need = a_len + b_len + row_len + 3 * ALIGN_F32;
    if buf.len() < need {
        buf = vec![0.0; need];
    }
    let start = aligned_start(&buf);
    let (abuf, rest) = buf[start..].split_at_mut(a_len.next_multiple_of(ALIGN_F32));
    let (bbuf, rest) = rest.split_at_mut(b_len.next_multiple_of(ALIGN_F32));
    let rowbuf = &mut rest[..row_len];
    let abuf = &mut abuf[..a_len];
    let cp = c.as_mut_ptr();

    for jc in (0..n).step_by(nc) {
        let ncur = nc.min(n - jc);
        for pc in (0..k).step_by(kc) {
            let kcur = kc.min(k - pc);
            // Later reduction blocks accumulate onto what the first one stored.
            let beta = if pc == 0 { p.beta } else { 1.0 };
            // SAFETY: forwarded from the caller.
            unsafe { pack_b::<K>(&p.b, pc, kcur, jc, ncur, bbuf, rowbuf) };
            for ic in (0..m).step_by(mc) {
                let mcur = mc.min(m - ic);
                pack_a::<K>(p, ic, mcur, pc, kcur, abuf);
                let ctx = Macro {
                    kcur,
                    alpha: p.alpha,
                    beta,
                    ldc: p.ldc,
                };
                // Column panels outermost: one B panel stays in L1 while the A
                // panels of the block stream past it.
                let mut jr = 0;
                while jr < ncur {
                    let nv = K::NV.min((ncur - jr).div_ceil(K::LANES));
                    let bp = bbuf[jr * kcur..].as_ptr();
                    let nvalid = (nv * K::LANES).min(ncur - jr);
                    for ir in (0..mcur).step_by(K::MR) {
                        let mvalid = K::MR.min(mcur - ir);
                        let ap = abuf[ir * kcur..].as_ptr();
                        let ct = cp.wrapping_add((ic + ir) * p.ldc + jc + jr);
                        if ir + 2 * K::MR <= mcur {
                            // Ask for the next tile's C while this one computes.
                            // SAFETY: forwarded from the caller; a prefetch never faults.
                            unsafe { K::prefetch_c(ct.wrapping_add(K::MR * p.ldc), p.ldc, nvalid) };
                        }
                        // SAFETY: the tile covers rows ic+ir.. < m and columns
                        // jc+jr.. < n of C, in bounds by `p.check`; the panels
                        // hold kcur * MR and kcur * nv * LANES floats.
                        unsafe { ctx.tile::<K>(nv, ap, bp, ct, mvalid, nvalid) };
                    }
                    jr += nv * K::LANES;
                }
            }
        }
    }
    PACK_BUF.set(buf);
    Ok(())
}

/// What every tile of one packed block shares.
struct Macro {
    kcur: usize,
    alpha: f32,
    beta: f32,
    ldc: usize,
}

impl Macro {
    /// One tile of C, of which the top-left `mvalid x nvalid` part is stored;
    /// partial tiles are computed into a buffer and merged.
    ///
    /// # Safety
    /// As [`MicroKernel::tile`], with only the `mvalid x nvalid` part of `c` valid.
    #[inline(always)]
    unsafe fn tile<K: MicroKernel>(
        &self,
        nv: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        mvalid: usize,
        nvalid: usize,
    ) {
        let w = nv * K::LANES;
        if mvalid == K::MR && nvalid == w {
            // SAFETY: forwarded from the caller.
            unsafe { K::tile(nv, self.kcur, a, b, c, self.ldc, self.alpha, self.beta) };
            return;
        }
        let mut tmp = [0.0f32; MAX_TILE];
        // SAFETY: forwarded from the caller, with the tile going to `tmp`.
        unsafe { K::tile(nv, self.kcur, a, b, tmp.as_mut_ptr(), w, self.alpha, 0.0) };
        for i in 0..mvalid {
            for j in 0..nvalid {
                let t = tmp[i * w + j];
                // SAFETY: i < mvalid, j < nvalid.
                unsafe {
                    let d = c.add(i * self.ldc + j);
                    *d = if self.beta == 0.0 {
                        t
                    } else {
                        t + self.beta * *d
                    };
                }
            }
        }
    }
}

/// Packs rows `ic..ic + mcur`, reduction steps `pc..pc + kcur` of A into row
/// panels: panel `q` holds, for each step `r`, the `MR` values of rows
/// `ic + q*MR ..`, zero beyond `m`.
#[inline(always)]
fn pack_a<K: MicroKernel>(
    p: &SGemm,
    ic: usize,
    mcur: usize,
    pc: usize,
    kcur: usize,
    abuf: &mut [f32],
) {
    let mr = K::MR;
    for (q, panel) in abuf[..mcur.next_multiple_of(mr) * kcur]
        .chunks_exact_mut(mr * kcur)
        .enumerate()
    {
        let i0 = ic + q * mr;
        let rows = mr.min(ic + mcur - i0);
        if p.a_rs == 1 {
            // Transposed A (dW): the MR values of one step are contiguous.
            if rows == mr {
                for (r, dst) in panel.chunks_exact_mut(mr).enumerate() {
                    let s = i0 + (pc + r) * p.a_cs;
                    dst.copy_from_slice(&p.a[s..s + mr]);
                }
            } else {
                for (r, dst) in panel.chunks_exact_mut(mr).enumerate() {
                    let s = i0 + (pc + r) * p.a_cs;
                    dst[..rows].copy_from_slice(&p.a[s..s + rows]);
                    dst[rows..].fill(0.0);
                }
            }
        } else if p.a_cs == 1 {
            // Row-major A (dX): read each row once, scatter with stride MR.
            for ii in 0..mr {
                if ii < rows {
                    let s = (i0 + ii) * p.a_rs + pc;
                    let src = &p.a[s..s + kcur];
                    for (dst, &v) in panel.chunks_exact_mut(mr).zip(src) {
                        dst[ii] = v;
                    }
                } else {
                    for dst in panel.chunks_exact_mut(mr) {
                        dst[ii] = 0.0;
                    }
                }
            }
        } else {
            for (r, dst) in panel.chunks_exact_mut(mr).enumerate() {
                for (ii, d) in dst.iter_mut().enumerate() {
                    *d = if ii < rows {
                        p.a[(i0 + ii) * p.a_rs + (pc + r) * p.a_cs]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// Packs rows `pc..pc + kcur`, columns `jc..jc + ncur` of B into column panels of
/// the widths the macro-kernel walks (`NV * LANES`, the last one narrowed), widening
/// codes to f32; columns beyond `n` are zero. Rows are walked outermost, so the
/// source (the large im2col matrix in dW) is read sequentially, and each row is
/// widened in one pass into `row` (one long SIMD loop rather than one short call per
/// panel), then copied panel by panel with fixed-size moves.
///
/// # Safety
/// The CPU supports `K`'s target features.
#[inline(always)]
unsafe fn pack_b<K: MicroKernel>(
    b: &BMat,
    pc: usize,
    kcur: usize,
    jc: usize,
    ncur: usize,
    bbuf: &mut [f32],
    row: &mut [f32],
) {
    let nr = K::NV * K::LANES;
    let nfull = ncur / nr * nr;
    let row = &mut row[..ncur];
    for r in 0..kcur {
        let i = pc + r;
        let src: &[f32] = match *b {
            BMat::F32 { data, rs } => &data[i * rs + jc..i * rs + jc + ncur],
            BMat::S8 { data, rs } => {
                let s = &data[i * rs + jc..i * rs + jc + ncur];
                // SAFETY: i8 and u8 have the same layout.
                let s = unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, ncur) };
                // SAFETY: forwarded from the caller.
                unsafe { K::widen(Codes::S8, s, row) };
                row
            }
            BMat::U8 { data, rs } => {
                // SAFETY: forwarded from the caller.
                unsafe { K::widen(Codes::U8, &data[i * rs + jc..i * rs + jc + ncur], row) };
                row
            }
            BMat::S4 { data, rs } => {
                let s = i * rs + jc / 2;
                // SAFETY: forwarded from the caller.
                unsafe { K::widen(Codes::S4, &data[s..s + ncur.div_ceil(2)], row) };
                row
            }
            BMat::U4 { data, rs } => {
                let s = i * rs + jc / 2;
                // SAFETY: forwarded from the caller.
                unsafe { K::widen(Codes::U4, &data[s..s + ncur.div_ceil(2)], row) };
                row
            }
        };
        for (q, chunk) in src[..nfull].chunks_exact(nr).enumerate() {
            let off = q * nr * kcur + r * nr;
            bbuf[off..off + nr].copy_from_slice(chunk);
        }
        if nfull < ncur {
            let rem = ncur - nfull;
            let w = rem.next_multiple_of(K::LANES);
            let off = nfull * kcur + r * w;
            bbuf[off..off + rem].copy_from_slice(&src[nfull..]);
            bbuf[off + rem..off + w].fill(0.0);
        }
    }
}

/// Helpers for the per-variant unit tests: random problems checked against the
/// scalar reference.
#[cfg(test)]
pub(crate) mod testing {
    use crate::pack::{pack_s4, pack_u4, row_bytes_4bit};
    use crate::{BMat, SGemm};

    pub struct Rng(u64);
    impl Rng {
        pub fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        }
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        pub fn f32(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
    }

    /// Storage behind one random `BMat`.
    pub enum BStore {
        F32(Vec<f32>, usize),
        S8(Vec<i8>, usize),
        U8(Vec<u8>, usize),
        S4(Vec<u8>, usize),
        U4(Vec<u8>, usize),
    }

    impl BStore {
        /// A random `k x n` B in encoding `enc` (0..5); `tight` makes the row
        /// stride and the buffer as small as possible (catches over-reads).
        pub fn random(rng: &mut Rng, enc: usize, k: usize, n: usize, tight: bool) -> BStore {
            let extra = if tight { 0 } else { rng.below(5) };
            match enc {
                0 => {
                    let rs = n + extra;
                    let len = (k - 1) * rs + n;
                    BStore::F32((0..len).map(|_| rng.f32()).collect(), rs)
                }
                1 => {
                    let rs = n + extra;
                    BStore::S8(
                        (0..(k - 1) * rs + n).map(|_| rng.next() as i8).collect(),
                        rs,
                    )
                }
                2 => {
                    let rs = n + extra;
                    BStore::U8(
                        (0..(k - 1) * rs + n).map(|_| rng.next() as u8).collect(),
                        rs,
                    )
                }
                3 | 4 if !tight => {
                    // The layout the model stores: rows padded by `pack`.
                    if enc == 3 {
                        let codes: Vec<i8> = (0..k * n).map(|_| rng.below(16) as i8 - 8).collect();
                        BStore::S4(pack_s4(&codes, k, n).unwrap(), row_bytes_4bit(n))
                    } else {
                        let codes: Vec<u8> = (0..k * n).map(|_| rng.below(16) as u8).collect();
                        BStore::U4(pack_u4(&codes, k, n).unwrap(), row_bytes_4bit(n))
                    }
                }
                _ => {
                    let rs = n.div_ceil(2) + extra;
                    let bytes: Vec<u8> = (0..(k - 1) * rs + n.div_ceil(2))
                        .map(|_| rng.next() as u8)
                        .collect();
                    if enc == 3 {
                        BStore::S4(bytes, rs)
                    } else {
                        BStore::U4(bytes, rs)
                    }
                }
            }
        }

        pub fn mat(&self) -> BMat<'_> {
            match self {
                BStore::F32(d, rs) => BMat::F32 { data: d, rs: *rs },
                BStore::S8(d, rs) => BMat::S8 { data: d, rs: *rs },
                BStore::U8(d, rs) => BMat::U8 { data: d, rs: *rs },
                BStore::S4(d, rs) => BMat::S4 { data: d, rs: *rs },
                BStore::U4(d, rs) => BMat::U4 { data: d, rs: *rs },
            }
        }
    }

    /// Runs `f` on random problems (shapes around the tile sizes and the model's
    /// shapes, every B encoding, row-major / transposed / strided A, beta 0 and
    /// not) and compares with the scalar reference within f32 rounding.
    pub fn check_against_scalar(
        f: &dyn Fn(&SGemm, &mut [f32]) -> crate::KernelResult,
        cases: usize,
        seed: u64,
    ) {
        let mut rng = Rng::new(seed);
        let dims = [
            1usize, 2, 3, 5, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 33, 47, 48, 49, 64, 97, 144,
        ];
        for case in 0..cases {
            let m = dims[rng.below(dims.len())];
            let n = dims[rng.below(dims.len())];
            let k = if case % 17 == 0 {
                300 + rng.below(300)
            } else {
                dims[rng.below(dims.len())]
            };
            let enc = case % 5;
            let tight = rng.below(2) == 0;
            let b = BStore::random(&mut rng, enc, k, n, tight);
            let (a_rs, a_cs) = match rng.below(3) {
                0 => (k + rng.below(3), 1),
                1 => (1, m + rng.below(3)),
                _ => (2 * k + 1, 2),
            };
            let a_len = (m - 1) * a_rs + (k - 1) * a_cs + 1;
            let a: Vec<f32> = (0..a_len).map(|_| rng.f32()).collect();
            let ldc = n + rng.below(3);
            let beta = [0.0, 1.0, -0.5][rng.below(3)];
            let alpha = [1.0, 0.25, -2.0][rng.below(3)];
            let c_len = (m - 1) * ldc + n;
            let c0: Vec<f32> = if beta == 0.0 {
                vec![f32::NAN; c_len]
            } else {
                (0..c_len).map(|_| rng.f32()).collect()
            };
            let p = SGemm {
                m,
                n,
                k,
                alpha,
                a: &a,
                a_rs,
                a_cs,
                b: b.mat(),
                beta,
                ldc,
            };
            let mut want = c0.clone();
            crate::cpu::scalar::sgemm(&p, &mut want).expect("operands match the sizes");
            let mut got = c0.clone();
            f(&p, &mut got).expect("operands match the sizes");
            for i in 0..m {
                for j in 0..n {
                    let mag: f32 = (0..k)
                        .map(|r| (a[i * a_rs + r * a_cs] * p.b.get(r, j)).abs())
                        .sum::<f32>()
                        * alpha.abs()
                        + if beta == 0.0 {
                            0.0
                        } else {
                            (beta * c0[i * ldc + j]).abs()
                        };
                    let tol = 2.0 * (k as f32 + 2.0) * f32::EPSILON * mag + 1e-30;
                    let (g, w) = (got[i * ldc + j], want[i * ldc + j]);
                    assert!(
                        (g - w).abs() <= tol,
                        "case {case}: m={m} n={n} k={k} enc={enc} tight={tight} a_rs={a_rs} a_cs={a_cs} \
                         alpha={alpha} beta={beta}: C[{i}][{j}] = {g}, want {w} (tol {tol})"
                    );
                }
                // Padding between rows of C is never written.
                for j in n..ldc {
                    if i + 1 < m {
                        assert!(
                            got[i * ldc + j].to_bits() == c0[i * ldc + j].to_bits(),
                            "case {case}: wrote C padding"
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::check_against_scalar;
    use super::*;

    /// A plain-Rust micro-kernel with deliberately odd tile sizes, to test the
    /// blocking logic on every architecture.
    struct Portable;

    impl MicroKernel for Portable {
        const MR: usize = 3;
        const LANES: usize = 2;
        const NV: usize = 3;

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
            let w = nv * Self::LANES;
            for i in 0..Self::MR {
                for j in 0..w {
                    let mut acc = 0.0f32;
                    for r in 0..kc {
                        // SAFETY: the caller guarantees the panel sizes.
                        acc += unsafe { *a.add(r * Self::MR + i) * *b.add(r * w + j) };
                    }
                    // SAFETY: the caller guarantees C's tile is valid.
                    let d = unsafe { &mut *c.add(i * ldc + j) };
                    *d = if beta == 0.0 {
                        alpha * acc
                    } else {
                        alpha * acc + beta * *d
                    };
                }
            }
        }
    }

    #[test]
    fn widen_portable_matches_bmat_get() {
        let bytes: Vec<u8> = (0..=255).collect();
        for n in [0, 1, 2, 7, 16, 33] {
            let mut d = vec![0.0; n];
            widen_portable(Codes::S4, &bytes[100..100 + n.div_ceil(2)], &mut d);
            let bm = BMat::S4 {
                data: &bytes[100..],
                rs: 0,
            };
            assert!((0..n).all(|j| d[j] == bm.get(0, j)));
            widen_portable(Codes::U4, &bytes[7..7 + n.div_ceil(2)], &mut d);
            let bm = BMat::U4 {
                data: &bytes[7..],
                rs: 0,
            };
            assert!((0..n).all(|j| d[j] == bm.get(0, j)));
        }
    }

    #[test]
    fn portable_kernel_default_blocking() {
        let bl = Blocking {
            kc: 256,
            mc: 96,
            nc: 1024,
        };
        // SAFETY: the portable kernel needs no CPU feature.
        check_against_scalar(&|p, c| unsafe { gemm::<Portable>(p, c, bl) }, 300, 1);
    }

    #[test]
    fn portable_kernel_tiny_blocks() {
        // Blocks smaller than the shapes: several jc / pc / ic iterations per call.
        for (s, bl) in [
            (
                2,
                Blocking {
                    kc: 5,
                    mc: 6,
                    nc: 12,
                },
            ),
            (
                3,
                Blocking {
                    kc: 1,
                    mc: 1,
                    nc: 1,
                },
            ),
        ] {
            // SAFETY: the portable kernel needs no CPU feature.
            check_against_scalar(&|p, c| unsafe { gemm::<Portable>(p, c, bl) }, 200, s);
        }
    }

    #[test]
    fn k_zero_scales_c() {
        let a = [0.0f32; 1];
        let bd = [0.0f32; 4];
        let p = SGemm {
            m: 2,
            n: 2,
            k: 0,
            alpha: 1.0,
            a: &a,
            a_rs: 0,
            a_cs: 0,
            b: BMat::F32 { data: &bd, rs: 2 },
            beta: 0.5,
            ldc: 2,
        };
        let mut c = [2.0, 4.0, 6.0, 8.0];
        // SAFETY: the portable kernel needs no CPU feature.
        unsafe {
            gemm::<Portable>(
                &p,
                &mut c,
                Blocking {
                    kc: 4,
                    mc: 4,
                    nc: 4,
                },
            )
        }
        .expect("operands match the sizes");
        assert_eq!(c, [1.0, 2.0, 3.0, 4.0]);
        let p = SGemm { beta: 0.0, ..p };
        let mut c = [f32::NAN; 4];
        // SAFETY: as above.
        unsafe {
            gemm::<Portable>(
                &p,
                &mut c,
                Blocking {
                    kc: 4,
                    mc: 4,
                    nc: 4,
                },
            )
        }
        .expect("operands match the sizes");
        assert_eq!(c, [0.0; 4]);
    }
}
