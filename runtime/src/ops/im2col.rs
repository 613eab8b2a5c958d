//! im2col and its adjoint col2im for square-kernel convolutions on NHWC tensors.
//!
//! A column row holds one output pixel's receptive field in `(ky, kx, c)` order,
//! the same order as a weight row, so `conv = im2col(x) * W^T` is one GEMM.
//! Padding positions hold code 0, which is value 0 for every representation here
//! (unsigned activation codes have no zero point).

use qmul_kernels::pack;

/// Geometry of one convolution over a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvGeom {
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    /// Rows of the column matrix: output pixels of the whole batch.
    pub fn m(&self) -> usize {
        self.n * self.oh() * self.ow()
    }
    /// Reduction length: weights per output channel.
    pub fn kdim(&self) -> usize {
        self.k * self.k * self.cin
    }

    /// Calls `f(row, tap, src_pixel, count)` for every run of in-bounds taps
    /// of every output pixel: taps `tap..tap + count` (`tap = ky * k + kx`) read
    /// the consecutive input pixels `src_pixel..src_pixel + count` (NHW index).
    /// Runs along `kx` are contiguous in both the column row and the input, so
    /// callers copy whole runs at once.
    #[inline(always)]
    fn for_each_run(&self, mut f: impl FnMut(usize, usize, usize, usize)) {
        let (oh, ow) = (self.oh(), self.ow());
        let (k, pad) = (self.k as isize, self.pad as isize);
        let mut row = 0;
        for b in 0..self.n {
            for oy in 0..oh {
                for ox in 0..ow {
                    let x0 = (ox * self.stride) as isize - pad;
                    let kx0 = (-x0).max(0);
                    let kx1 = (self.w as isize - x0).min(k);
                    for ky in 0..k {
                        let iy = (oy * self.stride) as isize + ky - pad;
                        if iy < 0 || iy >= self.h as isize || kx1 <= kx0 {
                            continue;
                        }
                        let src = (b * self.h + iy as usize) * self.w + (x0 + kx0) as usize;
                        f(row, (ky * k + kx0) as usize, src, (kx1 - kx0) as usize);
                    }
                    row += 1;
                }
            }
        }
    }
}

/// Columns of tightly packed 4-bit codes (element `e` of the NHWC input is nibble
/// `e % 2` of byte `e / 2`) as packed rows of [`pack::row_bytes_4bit`]`(kdim)` bytes.
pub fn im2col_u4(g: &ConvGeom, src: &[u8]) -> Vec<u8> {
    let rb = pack::row_bytes_4bit(g.kdim());
    let c = g.cin;
    let mut dst = vec![0u8; g.m() * rb];
    if c % 2 == 0 {
        let cb = c / 2;
        g.for_each_run(|row, tap, px, cnt| {
            let d = row * rb + tap * cb;
            dst[d..d + cnt * cb].copy_from_slice(&src[px * cb..(px + cnt) * cb]);
        });
    } else {
        g.for_each_run(|row, tap, px, cnt| {
            let drow = &mut dst[row * rb..(row + 1) * rb];
            for e in 0..cnt * c {
                pack::set_nibble(drow, tap * c + e, pack::get_u4(src, px * c + e));
            }
        });
    }
    dst
}

/// Columns of 8-bit values as rows of [`pack::row_bytes_8bit`]`(kdim)` bytes.
pub fn im2col_u8(g: &ConvGeom, src: &[u8]) -> Vec<u8> {
    let rb = pack::row_bytes_8bit(g.kdim());
    let c = g.cin;
    let mut dst = vec![0u8; g.m() * rb];
    g.for_each_run(|row, tap, px, cnt| {
        let d = row * rb + tap * c;
        dst[d..d + cnt * c].copy_from_slice(&src[px * c..(px + cnt) * c]);
    });
    dst
}

/// Columns of f32 values as rows of `kdim` floats.
pub fn im2col_f32(g: &ConvGeom, src: &[f32]) -> Vec<f32> {
    let kd = g.kdim();
    let c = g.cin;
    let mut dst = vec![0.0f32; g.m() * kd];
    g.for_each_run(|row, tap, px, cnt| {
        let d = row * kd + tap * c;
        dst[d..d + cnt * c].copy_from_slice(&src[px * c..(px + cnt) * c]);
    });
    dst
}

/// Adjoint of im2col: adds each column entry back onto the input pixel it came from.
pub fn col2im_add(g: &ConvGeom, cols: &[f32], ld: usize, dx: &mut [f32]) {
    let c = g.cin;
    g.for_each_run(|row, tap, px, cnt| {
        let s = row * ld + tap * c;
        for (d, &v) in dx[px * c..(px + cnt) * c]
            .iter_mut()
            .zip(&cols[s..s + cnt * c])
        {
            *d += v;
        }
    });
}
