//! The integer GEMMs on the GPU: `C = alpha * col_scale[j] * sum_k A[i][k] B[j][k]`
//! with `A` unsigned and `B` signed codes, both in the CPU kernels' packed
//! row layout (rows of `row_bytes`, a multiple of 16 bytes; 4-bit codes two
//! per byte, low nibble first; 8-bit codes one per byte), read as `u32`
//! words. One kernel for both widths: the bit width is a `comptime`
//! parameter, and so is the tile shape.
//!
//! Each cube computes a `tm x tn` block of `C` with `(tn / rn) x (tm / rm)`
//! units, each unit an `rm x rn` block of accumulators. The reduction walks
//! the rows `kw` words at a time: the cube's units copy the `A` and `B`
//! words of the step into shared memory together, then every unit takes its
//! rows and columns from there. Products are summed in `i32` (exact), so
//! the result equals the scalar reference bit for bit when the epilogue
//! rounds the same way: `(acc as f32 * alpha) * col_scale[j]`, two
//! correctly rounded products, no fused multiply-add.

use cubecl::prelude::*;

/// The dot product of the codes packed in one word of `A` and one of `B`.
#[cube]
fn dot_word(a: u32, b: u32, #[comptime] bits: u32) -> i32 {
    let mut s = 0i32;
    #[unroll]
    for j in 0..comptime!(32 / bits) {
        let x = (a >> (j * bits)) & comptime!((1u32 << bits) - 1);
        let y = (b >> (j * bits)) & comptime!((1u32 << bits) - 1);
        // Two's complement of a `bits`-wide field.
        let yi = i32::cast_from(y) - i32::cast_from((y & comptime!(1u32 << (bits - 1))) << 1);
        s += i32::cast_from(x) * yi;
    }
    s
}

/// Words `k0..k0 + kw` of rows `row0..row0 + count` of `src` (rows of
/// `row_words`; rows past `rows` and words past the row read as zero) into
/// `dst[r * kw + w]`, the cube's `threads` units taking turns.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_words(
    src: &Array<u32>,
    dst: &mut SharedMemory<u32>,
    row0: u32,
    rows: u32,
    k0: u32,
    row_words: u32,
    tid: u32,
    #[comptime] count: u32,
    #[comptime] kw: u32,
    #[comptime] threads: u32,
) {
    #[unroll]
    for l in 0..comptime!((count * kw).div_ceil(threads)) {
        let idx = tid + l * threads;
        if idx < comptime!(count * kw) {
            let r = row0 + idx / kw;
            let w = k0 + idx % kw;
            let mut v = 0u32;
            if r < rows && w < row_words {
                v = src[(r * row_words + w) as usize];
            }
            dst[idx as usize] = v;
        }
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn qgemm_kernel(
    a: &Array<u32>,
    b: &Array<u32>,
    col_scale: &Array<f32>,
    c: &mut Array<f32>,
    m: u32,
    n: u32,
    row_words: u32,
    ldc: u32,
    alpha: f32,
    #[comptime] bits: u32,
    #[comptime] tm: u32,
    #[comptime] tn: u32,
    #[comptime] kw: u32,
    #[comptime] rm: u32,
    #[comptime] rn: u32,
) {
    let mut sa = SharedMemory::<u32>::new(comptime!((tm * kw) as usize));
    let mut sb = SharedMemory::<u32>::new(comptime!((tn * kw) as usize));
    let mut acc = Array::<i32>::new(comptime!((rm * rn) as usize));
    #[unroll]
    for i in 0..comptime!(rm * rn) {
        acc[i as usize] = 0i32;
    }
    let tx = UNIT_POS_X;
    let ty = UNIT_POS_Y;
    let threads = comptime!((tm / rm) * (tn / rn));
    let tid = ty * comptime!(tn / rn) + tx;
    let row0 = CUBE_POS_Y * tm;
    let col0 = CUBE_POS_X * tn;
    let mut k0 = 0u32;
    while k0 < row_words {
        // The step's words of A and B into shared memory, every unit a share.
        load_words(a, &mut sa, row0, m, k0, row_words, tid, tm, kw, threads);
        load_words(b, &mut sb, col0, n, k0, row_words, tid, tn, kw, threads);
        sync_cube();
        #[unroll]
        for w in 0..kw {
            #[unroll]
            for i in 0..rm {
                let av = sa[((ty * rm + i) * kw + w) as usize];
                #[unroll]
                for j in 0..rn {
                    let bv = sb[((tx * rn + j) * kw + w) as usize];
                    acc[(i * rn + j) as usize] += dot_word(av, bv, bits);
                }
            }
        }
        sync_cube();
        k0 += kw;
    }
    #[unroll]
    for i in 0..rm {
        let r = row0 + ty * rm + i;
        #[unroll]
        for j in 0..rn {
            let col = col0 + tx * rn + j;
            if r < m && col < n {
                let v = f32::cast_from(acc[(i * rn + j) as usize]) * alpha;
                c[(r * ldc + col) as usize] = v * col_scale[col as usize];
            }
        }
    }
}

/// Tile shape of [`qgemm_kernel`]: the cube's block of `C`, the words of
/// the reduction per shared-memory step, each unit's block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    pub tm: u32,
    pub tn: u32,
    pub kw: u32,
    pub rm: u32,
    pub rn: u32,
}

impl Tile {
    /// 64 x 64 outputs per cube, 16 x 16 units of 4 x 4, 4 words (32 4-bit
    /// codes) per step: 2 KiB of shared memory.
    pub const DEFAULT: Tile = Tile {
        tm: 64,
        tn: 64,
        kw: 4,
        rm: 4,
        rn: 4,
    };

    /// Units per cube.
    pub fn units(&self) -> u32 {
        (self.tm / self.rm) * (self.tn / self.rn)
    }

    pub(super) fn valid(&self) -> bool {
        [self.tm, self.tn, self.kw, self.rm, self.rn]
            .iter()
            .all(|&v| v > 0)
            && self.tm.is_multiple_of(self.rm)
            && self.tn.is_multiple_of(self.rn)
            && self.units() <= 1024
    }
}
