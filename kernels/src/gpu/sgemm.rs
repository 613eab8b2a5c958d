//! The f32 GEMM of the straight-through backward on the GPU:
//! `C = alpha * A B + beta * C` with `A` f32 at any strides and `B` either
//! f32 or codes widened as they are loaded (the CPU's `BMat` encodings:
//! 4-bit and 8-bit, signed and unsigned, rows of `rs` bytes), so `dX = dY W`
//! reads the packed weights and `dW = X^T dY` the packed activations, as on
//! the CPU. The encoding of `B` and the tile shape are `comptime`.
//!
//! Each cube computes a `tm x tn` block of `C` with `(tn / rn) x (tm / rm)`
//! units of `rm x rn` accumulators; the reduction goes `kc` at a time
//! through shared memory. Every output is summed over `k` in order, as the
//! scalar reference does; the GPU compiler may fuse a multiply and an add,
//! so results are compared within a rounding budget.

use cubecl::prelude::*;

/// Encodings of `B` (the `comptime` `benc`).
pub(super) const B_F32: u32 = 0;
pub(super) const B_U4: u32 = 1;
pub(super) const B_S4: u32 = 2;
pub(super) const B_U8: u32 = 3;
pub(super) const B_S8: u32 = 4;

/// Byte `off` of a byte string stored as little-endian `u32` words.
#[cube]
fn byte_at(w: &Array<u32>, off: u32) -> u32 {
    (w[(off / 4) as usize] >> ((off % 4) * 8)) & 255u32
}

/// `B[r][j]` widened to f32.
#[allow(unused_assignments)]
#[cube]
fn b_elem(bf: &Array<f32>, bw: &Array<u32>, r: u32, j: u32, rs: u32, #[comptime] benc: u32) -> f32 {
    let mut v = 0.0f32;
    if comptime!(benc == B_F32) {
        v = bf[(r * rs + j) as usize];
    } else if comptime!(benc == B_U4 || benc == B_S4) {
        let byte = byte_at(bw, r * rs + j / 2);
        let nib = (byte >> ((j % 2) * 4)) & 15u32;
        if comptime!(benc == B_S4) {
            v = f32::cast_from(i32::cast_from(nib) - i32::cast_from((nib & 8u32) << 1));
        } else {
            v = f32::cast_from(nib);
        }
    } else {
        let byte = byte_at(bw, r * rs + j);
        if comptime!(benc == B_S8) {
            v = f32::cast_from(i32::cast_from(byte) - i32::cast_from((byte & 128u32) << 1));
        } else {
            v = f32::cast_from(byte);
        }
    }
    v
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn sgemm_kernel(
    a: &Array<f32>,
    bf: &Array<f32>,
    bw: &Array<u32>,
    c: &mut Array<f32>,
    m: u32,
    n: u32,
    k: u32,
    a_rs: u32,
    a_cs: u32,
    b_rs: u32,
    ldc: u32,
    alpha: f32,
    beta: f32,
    #[comptime] benc: u32,
    #[comptime] tm: u32,
    #[comptime] tn: u32,
    #[comptime] kc: u32,
    #[comptime] rm: u32,
    #[comptime] rn: u32,
) {
    let mut sa = SharedMemory::<f32>::new(comptime!((tm * kc) as usize));
    let mut sb = SharedMemory::<f32>::new(comptime!((kc * tn) as usize));
    let mut acc = Array::<f32>::new(comptime!((rm * rn) as usize));
    #[unroll]
    for i in 0..comptime!(rm * rn) {
        acc[i as usize] = 0.0f32;
    }
    let tx = UNIT_POS_X;
    let ty = UNIT_POS_Y;
    let threads = comptime!((tm / rm) * (tn / rn));
    let tid = ty * comptime!(tn / rn) + tx;
    let row0 = CUBE_POS_Y * tm;
    let col0 = CUBE_POS_X * tn;
    let mut k0 = 0u32;
    while k0 < k {
        // A block: tm rows x kc reduction steps, stored [i][r].
        #[unroll]
        for l in 0..comptime!((tm * kc).div_ceil(threads)) {
            let idx = tid + l * threads;
            if idx < comptime!(tm * kc) {
                let i = row0 + idx / kc;
                let r = k0 + idx % kc;
                let mut v = 0.0f32;
                if i < m && r < k {
                    v = a[(i * a_rs + r * a_cs) as usize];
                }
                sa[idx as usize] = v;
            }
        }
        // B block: kc reduction steps x tn columns, stored [r][j].
        #[unroll]
        for l in 0..comptime!((kc * tn).div_ceil(threads)) {
            let idx = tid + l * threads;
            if idx < comptime!(kc * tn) {
                let r = k0 + idx / tn;
                let j = col0 + idx % tn;
                let mut v = 0.0f32;
                if r < k && j < n {
                    v = b_elem(bf, bw, r, j, b_rs, benc);
                }
                sb[idx as usize] = v;
            }
        }
        sync_cube();
        // The last block may be partial: its missing steps hold zeros, and
        // adding `0 * 0` would still change nothing but the sign of a zero.
        let steps = min(k - k0, kc);
        for r in 0..steps {
            #[unroll]
            for i in 0..rm {
                let av = sa[((ty * rm + i) * kc + r) as usize];
                #[unroll]
                for j in 0..rn {
                    let bv = sb[(r * tn + tx * rn + j) as usize];
                    acc[(i * rn + j) as usize] += av * bv;
                }
            }
        }
        sync_cube();
        k0 += kc;
    }
    #[unroll]
    for i in 0..rm {
        let row = row0 + ty * rm + i;
        #[unroll]
        for j in 0..rn {
            let col = col0 + tx * rn + j;
            if row < m && col < n {
                let at = (row * ldc + col) as usize;
                let v = alpha * acc[(i * rn + j) as usize];
                if beta == 0.0f32 {
                    c[at] = v;
                } else {
                    c[at] = v + beta * c[at];
                }
            }
        }
    }
}
