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
    fn for_each_run(&self, f: impl FnMut(usize, usize, usize, usize)) {
        self.for_each_run_in(0, self.m(), f)
    }

    /// [`ConvGeom::for_each_run`] restricted to the column rows `r0..r1`.
    #[inline(always)]
    fn for_each_run_in(&self, r0: usize, r1: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
        let (oh, ow) = (self.oh(), self.ow());
        if oh == 0 || ow == 0 {
            return;
        }
        let (k, pad) = (self.k as isize, self.pad as isize);
        let (mut b, mut oy, mut ox) = (r0 / (oh * ow), r0 / ow % oh, r0 % ow);
        for row in r0..r1 {
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
            ox += 1;
            if ox == ow {
                ox = 0;
                oy += 1;
                if oy == oh {
                    oy = 0;
                    b += 1;
                }
            }
        }
    }
}

/// Runs `f(sub_geometry, first_image, part)` on contiguous groups of images in
/// parallel, `part` being those images' rows of `dst` (`row_len` elements each).
fn per_images<T: Send>(
    g: &ConvGeom,
    dst: &mut [T],
    row_len: usize,
    f: impl Fn(&ConvGeom, usize, &mut [T]) + Sync,
) {
    let per_img = g.oh() * g.ow() * row_len;
    if per_img == 0 {
        return;
    }
    crate::par::map(crate::par::split_mut(dst, per_img), |(b0, part)| {
        let sub = ConvGeom {
            n: part.len() / per_img,
            ..*g
        };
        f(&sub, b0, part)
    });
}

/// Columns of tightly packed 4-bit codes (element `e` of the NHWC input is nibble
/// `e % 2` of byte `e / 2`) as packed rows of [`pack::row_bytes_4bit`]`(kdim)` bytes.
pub fn im2col_u4(g: &ConvGeom, src: &[u8]) -> Vec<u8> {
    let rb = pack::row_bytes_4bit(g.kdim());
    let mut dst = vec![0u8; g.m() * rb];
    let img = g.h * g.w * g.cin;
    if img.is_multiple_of(2) {
        per_images(g, &mut dst, rb, |sub, b0, part| {
            im2col_u4_serial(sub, &src[b0 * img / 2..], part)
        });
    } else {
        im2col_u4_serial(g, src, &mut dst);
    }
    dst
}

crate::simd::multiversion! {
    fn im2col_u4_serial(g: &ConvGeom, src: &[u8], dst: &mut [u8]) {
        let rb = pack::row_bytes_4bit(g.kdim());
        let c = g.cin;
        if c.is_multiple_of(2) {
            let cb = c / 2;
            g.for_each_run(|row, tap, px, cnt| {
                let d = row * rb + tap * cb;
                copy_run(&mut dst[d..d + cnt * cb], &src[px * cb..(px + cnt) * cb]);
            });
        } else {
            g.for_each_run(|row, tap, px, cnt| {
                let drow = &mut dst[row * rb..(row + 1) * rb];
                for e in 0..cnt * c {
                    pack::set_nibble(drow, tap * c + e, pack::get_u4(src, px * c + e));
                }
            });
        }
    }
}

crate::simd::multiversion! {
    /// [`im2col_u4`] of the column rows `r0..r1` only, into `dst` (those rows):
    /// the tile of a convolution computed tile by tile. Rows whose receptive
    /// field lies inside the image (most of them) are copied tap row by tap
    /// row with only their padding bytes zeroed; border rows are zeroed and
    /// then filled with their in-bounds runs.
    pub fn im2col_u4_rows(g: &ConvGeom, src: &[u8], r0: usize, r1: usize, dst: &mut [u8]) {
        let rb = pack::row_bytes_4bit(g.kdim());
        let dst = &mut dst[..(r1 - r0) * rb];
        let c = g.cin;
        if !c.is_multiple_of(2) {
            dst.fill(0);
            g.for_each_run_in(r0, r1, |row, tap, px, cnt| {
                let drow = &mut dst[(row - r0) * rb..(row - r0 + 1) * rb];
                for e in 0..cnt * c {
                    pack::set_nibble(drow, tap * c + e, pack::get_u4(src, px * c + e));
                }
            });
            return;
        }
        let (oh, ow) = (g.oh(), g.ow());
        if oh == 0 || ow == 0 {
            return;
        }
        let (cb, k) = (c / 2, g.k);
        let (kb, used) = (k * cb, k * k * cb);
        let (h, w) = (g.h as isize, g.w as isize);
        let (mut b, mut oy, mut ox) = (r0 / (oh * ow), r0 / ow % oh, r0 % ow);
        for d in dst.chunks_exact_mut(rb) {
            let iy0 = (oy * g.stride) as isize - g.pad as isize;
            let ix0 = (ox * g.stride) as isize - g.pad as isize;
            let (ki, img0) = (k as isize, b * g.h);
            if iy0 >= 0 && iy0 + ki <= h && ix0 >= 0 && ix0 + ki <= w {
                for (ky, dk) in d[..used].chunks_exact_mut(kb).enumerate() {
                    let s = ((img0 + iy0 as usize + ky) * g.w + ix0 as usize) * cb;
                    copy_run(dk, &src[s..s + kb]);
                }
                zero_small(&mut d[used..]);
            } else {
                d.fill(0);
                let kx0 = (-ix0).max(0);
                let kx1 = (w - ix0).min(ki);
                for ky in 0..ki {
                    let iy = iy0 + ky;
                    if iy < 0 || iy >= h || kx1 <= kx0 {
                        continue;
                    }
                    let s = ((img0 + iy as usize) * g.w + (ix0 + kx0) as usize) * cb;
                    let o = (ky * ki + kx0) as usize * cb;
                    let n = (kx1 - kx0) as usize * cb;
                    copy_run(&mut d[o..o + n], &src[s..s + n]);
                }
            }
            ox += 1;
            if ox == ow {
                ox = 0;
                oy += 1;
                if oy == oh {
                    oy = 0;
                    b += 1;
                }
            }
        }
    }
}

crate::simd::multiversion! {
    /// [`im2col_u8`] of the column rows `r0..r1` only, into `dst` (zeroed here).
    pub fn im2col_u8_rows(g: &ConvGeom, src: &[u8], r0: usize, r1: usize, dst: &mut [u8]) {
        let rb = pack::row_bytes_8bit(g.kdim());
        let dst = &mut dst[..(r1 - r0) * rb];
        dst.fill(0);
        let c = g.cin;
        g.for_each_run_in(r0, r1, |row, tap, px, cnt| {
            let d = (row - r0) * rb + tap * c;
            copy_run(&mut dst[d..d + cnt * c], &src[px * c..(px + cnt) * c]);
        });
    }
}

/// Zeroes a few bytes (a row's padding) eight at a time, where `fill` would
/// call `memset` once per row.
#[inline(always)]
fn zero_small(d: &mut [u8]) {
    let mut c = d.chunks_exact_mut(8);
    for x in &mut c {
        x.copy_from_slice(&[0u8; 8]);
    }
    for x in c.into_remainder() {
        *x = 0;
    }
}

/// Copies a short run (a few taps of a few channels: 8 to a few hundred
/// bytes) eight bytes at a time, where `copy_from_slice` would call `memcpy`
/// once per run.
#[inline(always)]
fn copy_run(dst: &mut [u8], src: &[u8]) {
    let n = src.len().min(dst.len());
    let mut d = dst[..n].chunks_exact_mut(8);
    let mut s = src[..n].chunks_exact(8);
    for (d, s) in (&mut d).zip(&mut s) {
        let mut w = [0u8; 8];
        w.copy_from_slice(s);
        d.copy_from_slice(&w);
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}

/// Columns of 8-bit values as rows of [`pack::row_bytes_8bit`]`(kdim)` bytes.
pub fn im2col_u8(g: &ConvGeom, src: &[u8]) -> Vec<u8> {
    let rb = pack::row_bytes_8bit(g.kdim());
    let mut dst = vec![0u8; g.m() * rb];
    let img = g.h * g.w * g.cin;
    per_images(g, &mut dst, rb, |sub, b0, part| {
        let (c, src) = (sub.cin, &src[b0 * img..]);
        sub.for_each_run(|row, tap, px, cnt| {
            let d = row * rb + tap * c;
            part[d..d + cnt * c].copy_from_slice(&src[px * c..(px + cnt) * c]);
        });
    });
    dst
}

/// Columns of f32 values as rows of `kdim` floats.
pub fn im2col_f32(g: &ConvGeom, src: &[f32]) -> Vec<f32> {
    let kd = g.kdim();
    let mut dst = vec![0.0f32; g.m() * kd];
    let img = g.h * g.w * g.cin;
    per_images(g, &mut dst, kd, |sub, b0, part| {
        let (c, src) = (sub.cin, &src[b0 * img..]);
        sub.for_each_run(|row, tap, px, cnt| {
            let d = row * kd + tap * c;
            part[d..d + cnt * c].copy_from_slice(&src[px * c..(px + cnt) * c]);
        });
    });
    dst
}

/// Adjoint of im2col: adds each column entry back onto the input pixel it came from.
pub fn col2im_add(g: &ConvGeom, cols: &[f32], ld: usize, dx: &mut [f32]) {
    let img = g.h * g.w * g.cin;
    let rows_per_img = g.oh() * g.ow();
    crate::par::map(crate::par::split_mut(dx, img), |(b0, part)| {
        let sub = ConvGeom {
            n: part.len() / img,
            ..*g
        };
        col2im_rows_add(&sub, 0, sub.m(), &cols[b0 * rows_per_img * ld..], ld, part);
    });
}

crate::simd::multiversion! {
    /// col2im of the column rows `r0..r1` only (`cols` holds those rows, `ld`
    /// floats apart), added into `dx`, the whole input of `g`'s images. Lets the
    /// backward turn a tile of the column gradient into input gradients while the
    /// tile is still in cache, so the full column matrix never exists.
    pub fn col2im_rows_add(
        g: &ConvGeom,
        r0: usize,
        r1: usize,
        cols: &[f32],
        ld: usize,
        dx: &mut [f32],
    ) {
        let c = g.cin;
        g.for_each_run_in(r0, r1, |row, tap, px, cnt| {
            let s = (row - r0) * ld + tap * c;
            for (d, &v) in dx[px * c..(px + cnt) * c]
                .iter_mut()
                .zip(&cols[s..s + cnt * c])
            {
                *d += v;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Column entry (row, j) straight from the definition.
    fn naive(g: &ConvGeom, x: &[f32], row: usize, j: usize) -> f32 {
        let (oh, ow) = (g.oh(), g.ow());
        let (b, oy, ox) = (row / (oh * ow), row / ow % oh, row % ow);
        let (tap, ch) = (j / g.cin, j % g.cin);
        let (ky, kx) = (tap / g.k, tap % g.k);
        let iy = (oy * g.stride + ky) as isize - g.pad as isize;
        let ix = (ox * g.stride + kx) as isize - g.pad as isize;
        if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
            return 0.0;
        }
        x[((b * g.h + iy as usize) * g.w + ix as usize) * g.cin + ch]
    }

    #[test]
    fn im2col_variants_match_definition_and_col2im_is_adjoint() {
        let mut r = crate::rng::Rng::new(5);
        // Big enough to take the multithreaded paths; odd channel count included.
        for &(n, h, cin, k, stride, pad) in &[
            (8, 16, 4, 3, 1, 1),
            (6, 15, 3, 3, 2, 1),
            (9, 14, 2, 1, 2, 0),
        ] {
            let g = ConvGeom {
                n,
                h,
                w: h,
                cin,
                cout: 1,
                k,
                stride,
                pad,
            };
            let len = n * h * h * cin;
            let codes: Vec<u8> = (0..len).map(|_| r.below(16) as u8).collect();
            let xf: Vec<f32> = codes.iter().map(|&c| c as f32).collect();
            let packed = pack::pack_u4(&codes, 1, len).unwrap();
            let u4 = im2col_u4(&g, &packed);
            let u8c = im2col_u8(&g, &codes);
            // Any row range of the tiled variants equals those rows of the whole.
            let (rb4, rb8) = (
                pack::row_bytes_4bit(g.kdim()),
                pack::row_bytes_8bit(g.kdim()),
            );
            for (r0, r1) in [(0, g.m()), (3, 17.min(g.m())), (g.m() / 2, g.m())] {
                let mut t4 = vec![0xffu8; (r1 - r0) * rb4];
                im2col_u4_rows(&g, &packed, r0, r1, &mut t4);
                assert_eq!(t4, u4[r0 * rb4..r1 * rb4]);
                let mut t8 = vec![0xffu8; (r1 - r0) * rb8];
                im2col_u8_rows(&g, &codes, r0, r1, &mut t8);
                assert_eq!(t8, u8c[r0 * rb8..r1 * rb8]);
            }
            let f = im2col_f32(&g, &xf);
            let (rb4, rb8, kd) = (
                pack::row_bytes_4bit(g.kdim()),
                pack::row_bytes_8bit(g.kdim()),
                g.kdim(),
            );
            for row in 0..g.m() {
                for j in 0..kd {
                    let want = naive(&g, &xf, row, j);
                    assert_eq!(pack::get_u4(&u4[row * rb4..], j) as f32, want);
                    assert_eq!(u8c[row * rb8 + j] as f32, want);
                    assert_eq!(f[row * kd + j], want);
                }
            }
            // <im2col(x), y> == <x, col2im(y)>
            let y: Vec<f32> = (0..g.m() * kd).map(|_| r.uniform() as f32 - 0.5).collect();
            let lhs: f64 = f
                .iter()
                .zip(&y)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum();
            let mut dx = vec![0.0f32; len];
            col2im_add(&g, &y, kd, &mut dx);
            let rhs: f64 = xf
                .iter()
                .zip(&dx)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum();
            assert!(
                (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
                "{lhs} vs {rhs}"
            );
        }
    }
}
