//! The convolutions' data movement on the GPU (the runtime's `ops::im2col`
//! is the reference): im2col of packed 4-bit or 8-bit codes into the
//! integer GEMM's packed rows, and col2im, the adjoint that adds a column
//! matrix of gradients back onto the NHWC input. Both move or add values
//! without rounding, in the CPU's order, so they equal the CPU bit for bit.

#![allow(clippy::manual_is_multiple_of)] // cube code: integer remainders, as the kernel language spells them
use super::reduce::{cube_index, UNITS};
use cubecl::prelude::*;

/// Word `idx` of the column matrix (rows of `row_words`): row `r` is output
/// pixel `r` (image, then row, then column), element `e` of a row is tap
/// `e / cin` (`ky`, `kx`) of channel `e % cin`; padding and the row's tail
/// past `k * k * cin` elements are code 0.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn im2col_codes_kernel(
    src: &Array<u32>,
    dst: &mut Array<u32>,
    rows: u32,
    row_words: u32,
    h: u32,
    w: u32,
    cin: u32,
    k: u32,
    stride: u32,
    pad: u32,
    oh: u32,
    ow: u32,
    #[comptime] bits: u32,
) {
    let idx = cube_index() * UNITS + UNIT_POS_X;
    if idx < rows * row_words {
        let r = idx / row_words;
        let wd = idx % row_words;
        let ox = r % ow;
        let oy = (r / ow) % oh;
        let b = r / (ow * oh);
        let kdim = k * k * cin;
        let mut word = 0u32;
        #[unroll]
        for j in 0..comptime!(32 / bits) {
            let e = wd * comptime!(32 / bits) + j;
            if e < kdim {
                let tap = e / cin;
                let ch = e % cin;
                // The input position plus `pad` (unsigned arithmetic):
                // below `pad` or past the image is padding.
                let iy = oy * stride + tap / k;
                let ix = ox * stride + tap % k;
                if iy >= pad && ix >= pad && iy - pad < h && ix - pad < w {
                    let s = ((b * h + iy - pad) * w + ix - pad) * cin + ch;
                    let v = (src[(s / comptime!(32 / bits)) as usize]
                        >> ((s % comptime!(32 / bits)) * bits))
                        & comptime!((1u32 << bits) - 1);
                    word |= v << (j * bits);
                }
            }
        }
        dst[idx as usize] = word;
    }
}

/// `dx[i] += sum of cols[row][tap * cin + ch]` over every column entry
/// taken from input element `i`, added in the order the CPU's row-by-row
/// col2im adds them (rows ascending: taps descending).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn col2im_add_kernel(
    cols: &Array<f32>,
    dx: &mut Array<f32>,
    n: u32,
    ld: u32,
    h: u32,
    w: u32,
    cin: u32,
    k: u32,
    stride: u32,
    pad: u32,
    oh: u32,
    ow: u32,
) {
    let i = cube_index() * UNITS + UNIT_POS_X;
    if i < n * h * w * cin {
        let ch = i % cin;
        let ix = (i / cin) % w;
        let iy = (i / (cin * w)) % h;
        let b = i / (cin * w * h);
        let mut acc = dx[i as usize];
        let mut ky = k;
        while ky > 0 {
            ky -= 1;
            let ty = iy + pad;
            if ty >= ky && (ty - ky) % stride == 0 && (ty - ky) / stride < oh {
                let oy = (ty - ky) / stride;
                let mut kx = k;
                while kx > 0 {
                    kx -= 1;
                    let tx = ix + pad;
                    if tx >= kx && (tx - kx) % stride == 0 && (tx - kx) / stride < ow {
                        let ox = (tx - kx) / stride;
                        let row = (b * oh + oy) * ow + ox;
                        acc += cols[(row * ld + (ky * k + kx) * cin + ch) as usize];
                    }
                }
            }
        }
        dx[i as usize] = acc;
    }
}
