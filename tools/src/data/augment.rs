//! Training-time augmentation on u8 NHWC images: random crop with zero
//! padding, and random horizontal flip.
//!
//! "Pad by P then crop back to HxW at a random offset" is the same as
//! shifting the image by (dy, dx) with dy, dx uniform in `-P..=P` and
//! filling what moved in with 0, which is how it is implemented (no padded
//! copy is made). Zero is black, i.e. the background of Fashion-MNIST, and
//! for CIFAR it is the conventional choice.
//!
//! Default padding ([`Augment::for_size`]): 4 pixels for 32x32 images (the
//! usual CIFAR recipe, 1/8 of the side) and 2 pixels for 28x28 (MNIST-style
//! objects fill the frame, so a 4-pixel shift would cut off too much).
//! Flipping suits clothes and natural images, not digits: a mirrored "2" is
//! no longer a "2" — see [`super::DataSource::default_augment`].

use super::rng::Rng;

/// Augmentation settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    /// Maximum shift in pixels, in each direction (the P of "pad P, crop").
    /// 0 disables cropping.
    pub pad: usize,
    /// Whether to mirror left-right with probability 1/2.
    pub flip: bool,
}

/// One concrete draw of the augmentation: what is done to one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transform {
    /// Output row y takes input row `y + dy` (0 where out of range).
    pub dy: isize,
    /// Output column x (before the flip) takes input column `x + dx`.
    pub dx: isize,
    /// Mirror left-right after the shift.
    pub flip: bool,
}

impl Augment {
    /// Settings with the given padding and flip.
    pub const fn new(pad: usize, flip: bool) -> Self {
        Augment { pad, flip }
    }

    /// The default for an image size: pad 4 when both sides are at least
    /// 32 pixels, 2 otherwise (28x28 sets); flip on.
    pub fn for_size(h: usize, w: usize) -> Self {
        let pad = if h.min(w) >= 32 { 4 } else { 2 };
        Augment { pad, flip: true }
    }

    /// Draws a transform. Consumes, in this order, one draw for `dy`, one
    /// for `dx` (only when `pad > 0`) and one coin for the flip (only when
    /// `flip`), so the stream is stable for given settings.
    pub fn draw(&self, rng: &mut Rng) -> Transform {
        let (dy, dx) = if self.pad > 0 {
            let span = 2 * self.pad + 1;
            let p = self.pad as isize;
            (rng.below(span) as isize - p, rng.below(span) as isize - p)
        } else {
            (0, 0)
        };
        let flip = self.flip && rng.coin();
        Transform { dy, dx, flip }
    }

    /// Draws a transform from `rng` and applies it to `src` (one HWC image),
    /// writing the result to `dst` (same size).
    pub fn apply(&self, src: &[u8], h: usize, w: usize, c: usize, rng: &mut Rng, dst: &mut [u8]) {
        self.draw(rng).apply(src, h, w, c, dst);
    }
}

impl Transform {
    /// The transform that changes nothing.
    pub const IDENTITY: Transform = Transform {
        dy: 0,
        dx: 0,
        flip: false,
    };

    /// Applies the transform to one HWC image: `dst(y, x) = src(y + dy,
    /// x' + dx)` with `x' = w-1-x` when flipping and `x' = x` otherwise,
    /// and 0 where that source pixel is outside the image. Panics if `src`
    /// or `dst` is not `h * w * c` long (a caller bug).
    pub fn apply(&self, src: &[u8], h: usize, w: usize, c: usize, dst: &mut [u8]) {
        let len = h * w * c;
        assert_eq!(src.len(), len, "augment: source is not {h}x{w}x{c}");
        assert_eq!(dst.len(), len, "augment: destination is not {h}x{w}x{c}");
        for y in 0..h {
            let sy = y as isize + self.dy;
            let row = &mut dst[y * w * c..(y + 1) * w * c];
            if sy < 0 || sy >= h as isize {
                row.fill(0);
                continue;
            }
            let src_row = &src[sy as usize * w * c..(sy as usize + 1) * w * c];
            for x in 0..w {
                let xx = if self.flip { w - 1 - x } else { x };
                let sx = xx as isize + self.dx;
                let out = &mut row[x * c..(x + 1) * c];
                if sx < 0 || sx >= w as isize {
                    out.fill(0);
                } else {
                    out.copy_from_slice(&src_row[sx as usize * c..(sx as usize + 1) * c]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4x5x2 image: channel 0 = 10*y + x + 1, channel 1 = 100 + that.
    fn img() -> (Vec<u8>, usize, usize, usize) {
        let (h, w, c) = (4, 5, 2);
        let mut v = vec![0u8; h * w * c];
        for y in 0..h {
            for x in 0..w {
                let base = (10 * y + x + 1) as u8;
                v[(y * w + x) * c] = base;
                v[(y * w + x) * c + 1] = base + 100;
            }
        }
        (v, h, w, c)
    }

    fn px(v: &[u8], w: usize, c: usize, y: usize, x: usize) -> &[u8] {
        &v[(y * w + x) * c..(y * w + x + 1) * c]
    }

    #[test]
    fn identity_copies() {
        let (src, h, w, c) = img();
        let mut dst = vec![9; src.len()];
        Transform::IDENTITY.apply(&src, h, w, c, &mut dst);
        assert_eq!(dst, src);
    }

    #[test]
    fn flip_mirrors_columns() {
        let (src, h, w, c) = img();
        let mut dst = vec![0; src.len()];
        let t = Transform {
            dy: 0,
            dx: 0,
            flip: true,
        };
        t.apply(&src, h, w, c, &mut dst);
        for y in 0..h {
            for x in 0..w {
                assert_eq!(px(&dst, w, c, y, x), px(&src, w, c, y, w - 1 - x));
            }
        }
        // Flipping twice is the identity.
        let mut back = vec![0; src.len()];
        t.apply(&dst, h, w, c, &mut back);
        assert_eq!(back, src);
    }

    #[test]
    fn crop_shifts_and_zero_fills() {
        let (src, h, w, c) = img();
        let mut dst = vec![0; src.len()];
        // Window moved down 1 and left 2 in the padded image: output
        // (y, x) shows input (y + 1, x - 2).
        Transform {
            dy: 1,
            dx: -2,
            flip: false,
        }
        .apply(&src, h, w, c, &mut dst);
        for y in 0..h {
            for x in 0..w {
                let (sy, sx) = (y as isize + 1, x as isize - 2);
                let got = px(&dst, w, c, y, x);
                if sy >= h as isize || sx < 0 {
                    assert_eq!(got, &[0, 0], "({y},{x})");
                } else {
                    assert_eq!(got, px(&src, w, c, sy as usize, sx as usize), "({y},{x})");
                }
            }
        }
        // Shift and flip together: output (y, x) shows input (y, w-1-x + 1).
        Transform {
            dy: 0,
            dx: 1,
            flip: true,
        }
        .apply(&src, h, w, c, &mut dst);
        assert_eq!(px(&dst, w, c, 2, 0), &[0, 0]);
        assert_eq!(px(&dst, w, c, 2, 1), px(&src, w, c, 2, 4));
        assert_eq!(px(&dst, w, c, 2, 4), px(&src, w, c, 2, 1));
    }

    #[test]
    fn draws_are_seeded_and_in_range() {
        let aug = Augment::for_size(28, 28);
        assert_eq!(aug, Augment::new(2, true));
        assert_eq!(Augment::for_size(32, 32).pad, 4);
        let draws = |seed| {
            let mut r = Rng::new(seed);
            (0..200).map(|_| aug.draw(&mut r)).collect::<Vec<_>>()
        };
        let a = draws(5);
        assert_eq!(a, draws(5));
        assert_ne!(a, draws(6));
        assert!(a
            .iter()
            .all(|t| (-2..=2).contains(&t.dy) && (-2..=2).contains(&t.dx)));
        // Every shift and both flip states occur.
        for d in -2..=2 {
            assert!(a.iter().any(|t| t.dy == d) && a.iter().any(|t| t.dx == d));
        }
        assert!(a.iter().any(|t| t.flip) && a.iter().any(|t| !t.flip));
        // Disabled augmentation draws the identity.
        let mut r = Rng::new(1);
        assert_eq!(Augment::new(0, false).draw(&mut r), Transform::IDENTITY);
    }

    #[test]
    fn apply_is_deterministic_for_a_seed() {
        let (src, h, w, c) = img();
        let aug = Augment::new(1, true);
        let run = |seed| {
            let mut r = Rng::new(seed);
            let mut out = Vec::new();
            for _ in 0..10 {
                let mut dst = vec![0; src.len()];
                aug.apply(&src, h, w, c, &mut r, &mut dst);
                out.extend(dst);
            }
            out
        };
        assert_eq!(run(11), run(11));
        assert_ne!(run(11), run(12));
    }
}
