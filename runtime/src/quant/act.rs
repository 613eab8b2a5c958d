//! Activation quantizers: ReLU + unsigned 4-bit quantization, codes 0..=15.
//!
//! Parameters live in the model's parameter store as a small vector per Act node:
//! PACT `[a]` (clip), LSQ `[s]` (step), DSQ `[u, alpha]` (upper clip; the lower
//! clip is fixed at 0 so that zero, and therefore convolution padding, stays
//! exactly representable). The dequantized value of code `q` is `q * scale`.
//!
//! Backward (straight-through), per the method reference:
//! * PACT: `dx = dy * 1[0 <= x <= a]`, `da = sum dy * 1[x >= a]` (plain PACT, no
//!   rounding-residual term).
//! * LSQ: `v = x/s`; `dx = dy` inside `[0, 15]`; `ds = g * sum dy * (round(v) - v)`
//!   inside, `+ 15 dy` above, `0` below; `g = 1/sqrt(N * 15)`, N = features per sample.
//! * DSQ: `dx`, `du` (via `D = u/15`), `dalpha` from the tanh soft quantizer
//!   inside the range; above the range `du = dy`.

use super::{dsq, round};
use crate::graph::QuantScheme;

/// Largest unsigned 4-bit code.
pub const QMAX: f32 = 15.0;

/// Number of learnable parameters of an Act node under `scheme`.
pub fn param_count(scheme: QuantScheme) -> usize {
    match scheme {
        QuantScheme::None => 0,
        QuantScheme::Pact | QuantScheme::Lsq => 1,
        QuantScheme::Dsq => 2,
    }
}

/// Initial parameters. LSQ's step and DSQ's range start at 0, meaning "set from
/// the first training batch" ([`init_from_batch`]).
pub fn initial_params(scheme: QuantScheme, pact_init: f32) -> Vec<f32> {
    match scheme {
        QuantScheme::None => vec![],
        QuantScheme::Pact => vec![pact_init],
        QuantScheme::Lsq => vec![0.0],
        QuantScheme::Dsq => vec![0.0, 0.2],
    }
}

/// Data-dependent initialisation on the first batch: LSQ `s = 2 mean|x| / sqrt(Q_P)`
/// over the ReLU'd input; DSQ `u = 15 s` with the same `s`.
pub fn init_from_batch(scheme: QuantScheme, q: &mut [f32], x: &[f32]) {
    let needs = matches!(scheme, QuantScheme::Lsq | QuantScheme::Dsq) && q[0] <= 0.0;
    if !needs || x.is_empty() {
        return;
    }
    let mean = x.iter().map(|&v| v.max(0.0) as f64).sum::<f64>() / x.len() as f64;
    let s = ((2.0 * mean / (QMAX as f64).sqrt()) as f32).max(1e-3);
    q[0] = if scheme == QuantScheme::Lsq {
        s
    } else {
        s * QMAX
    };
}

/// Value of one code step.
pub fn scale(scheme: QuantScheme, q: &[f32]) -> f32 {
    match scheme {
        QuantScheme::None => 1.0,
        QuantScheme::Pact => q[0] / QMAX,
        QuantScheme::Lsq => q[0],
        QuantScheme::Dsq => q[0] / QMAX,
    }
}

/// Code of one input. All three hard quantizers round `x / scale` to the nearest
/// level and clip to 0..=15 (PACT clips `x` to `[0, a]` first, which is the same).
///
/// Computed without a float-to-int conversion (which does not vectorise):
/// adding 1.5 * 2^23 rounds to the nearest integer, half to even, exactly as
/// [`round_small`] does, and leaves that integer in the low mantissa bits.
/// `max`/`min` send NaN to 0, as the saturating cast of a NaN would.
// Not `clamp`: it keeps NaN, whose bits would give a garbage code here.
#[allow(clippy::manual_clamp)]
#[inline(always)]
pub fn code(x: f32, inv_scale: f32) -> u8 {
    const MAGIC: f32 = 12_582_912.0;
    let v = (x * inv_scale).max(0.0).min(QMAX);
    ((v + MAGIC).to_bits() & 0xff) as u8
}

/// Quantizes `x` (NHWC, any length) into tightly packed 4-bit codes: element `e`
/// is nibble `e % 2` of byte `e / 2` (low nibble first).
pub fn quantize_packed(scheme: QuantScheme, q: &[f32], x: &[f32], out: &mut [u8]) {
    quantize_with_inverse(1.0 / scale(scheme, q), x, out)
}

/// [`quantize_packed`] with the inverse scale given.
pub fn quantize_with_inverse(inv: f32, x: &[f32], out: &mut [u8]) {
    assert!(out.len() >= x.len().div_ceil(2));
    let n = x.len().div_ceil(2);
    crate::par::map(crate::par::split_mut(&mut out[..n], 1), |(b0, o)| {
        let end = (2 * (b0 + o.len())).min(x.len());
        quantize_serial(inv, &x[2 * b0..end], o)
    });
}

crate::simd::multiversion! {
    fn quantize_serial(inv: f32, x: &[f32], out: &mut [u8]) {
        // Blocks of 32: the codes of a block in one loop and their packing in a
        // second, so both vectorise (one loop over pairs does not).
        const B: usize = 32;
        let blocks = (x.len() / B).min(out.len() / (B / 2));
        let (xb, xt) = x.split_at(blocks * B);
        let (ob, ot) = out.split_at_mut(blocks * B / 2);
        for (xc, oc) in xb.chunks_exact(B).zip(ob.chunks_exact_mut(B / 2)) {
            let mut c = [0u8; B];
            for (c, &v) in c.iter_mut().zip(xc) {
                *c = code(v, inv);
            }
            for (o, p) in oc.iter_mut().zip(c.chunks_exact(2)) {
                *o = p[0] | (p[1] << 4);
            }
        }
        let mut pairs = xt.chunks_exact(2);
        for (o, p) in ot.iter_mut().zip(&mut pairs) {
            *o = code(p[0], inv) | (code(p[1], inv) << 4);
        }
        if let [last] = pairs.remainder() {
            ot[xt.len() / 2] = code(*last, inv);
        }
    }
}

/// Backward of ReLU + quantizer at inputs `x` with output gradient `dy`: writes
/// `dx` and adds parameter gradients into `dq`. `features` is N in LSQ's
/// gradient scale (elements per sample). Runs on every core: each thread
/// takes a contiguous range and its own partial parameter sums (f64), which
/// are added in range order.
pub fn backward(
    scheme: QuantScheme,
    q: &[f32],
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dq: &mut [f32],
    features: usize,
) {
    let n = x.len().min(dy.len()).min(dx.len());
    let parts = crate::par::map(crate::par::split_mut(&mut dx[..n], 1), |(s, d)| {
        let e = s + d.len();
        backward_range(scheme, q, &x[s..e], &dy[s..e], d, ParamSums::default())
    });
    add_param_grads(scheme, &parts, features, dq);
}

/// Adds the per-range parameter sums of [`backward_range`] (in range order)
/// into the quantizer's parameter gradients `dq`.
pub(crate) fn add_param_grads(
    scheme: QuantScheme,
    parts: &[ParamSums],
    features: usize,
    dq: &mut [f32],
) {
    let mut sums = [0.0f64; 2];
    for p in parts {
        let t = p.total();
        sums[0] += t[0];
        sums[1] += t[1];
    }
    match scheme {
        QuantScheme::None => {}
        QuantScheme::Pact => dq[0] += sums[0] as f32,
        QuantScheme::Lsq => {
            let gscale = 1.0 / ((features as f64) * QMAX as f64).sqrt();
            dq[0] += (sums[0] * gscale) as f32;
        }
        QuantScheme::Dsq => {
            dq[0] += sums[0] as f32;
            dq[1] += sums[1] as f32;
        }
    }
}

/// Independent accumulators per parameter sum in [`backward_range`]: one
/// f64 accumulator would chain every add on the one before (four cycles an
/// element, most of a PACT backward's time); element `i` of a range goes
/// to lane `i % LANES`.
pub(crate) const LANES: usize = 8;

/// Partial parameter-gradient sums of [`backward_range`], `LANES` per
/// parameter, carried from one piece of a range to the next.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ParamSums {
    lanes: [[f64; LANES]; 2],
}

impl ParamSums {
    /// The two sums, each over its lanes in lane order.
    pub(crate) fn total(&self) -> [f64; 2] {
        let mut t = [0.0f64; 2];
        for (t, l) in t.iter_mut().zip(&self.lanes) {
            for v in l {
                *t += v;
            }
        }
        t
    }
}

/// Writes `dx[i]` and adds the parameter terms of element `i` to its lane,
/// from `f(x[i], dy[i]) = (dx, term 0, term 1)`.
#[inline(always)]
fn lanes(
    x: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    mut acc: ParamSums,
    f: impl Fn(f32, f32) -> (f32, f64, f64),
) -> ParamSums {
    let n = x.len().min(dy.len()).min(dx.len());
    let whole = n / LANES * LANES;
    let [a0, a1] = &mut acc.lanes;
    for ((dc, xc), gc) in dx[..whole]
        .chunks_exact_mut(LANES)
        .zip(x[..whole].chunks_exact(LANES))
        .zip(dy[..whole].chunks_exact(LANES))
    {
        for l in 0..LANES {
            let (d, t0, t1) = f(xc[l], gc[l]);
            dc[l] = d;
            a0[l] += t0;
            a1[l] += t1;
        }
    }
    for (l, ((d, &xv), &g)) in dx[whole..n]
        .iter_mut()
        .zip(&x[whole..n])
        .zip(&dy[whole..n])
        .enumerate()
    {
        let (dv, t0, t1) = f(xv, g);
        *d = dv;
        a0[l] += t0;
        a1[l] += t1;
    }
    acc
}

crate::simd::multiversion! {
    /// [`backward`] on one range: writes `dx` and adds the parameter-gradient
    /// terms (PACT `a`, LSQ `s` before its gradient scale, DSQ `u` and
    /// `alpha`) into `acc`, [`LANES`] accumulators each. A range done in
    /// pieces whose lengths are multiples of `LANES`, each piece's result the
    /// next one's `acc`, sums exactly as the whole range does.
    pub(crate) fn backward_range(
        scheme: QuantScheme,
        q: &[f32],
        x: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        acc: ParamSums,
    ) -> ParamSums {
        match scheme {
            QuantScheme::None => lanes(x, dy, dx, acc, |xv, g| {
                (if xv > 0.0 { g } else { 0.0 }, 0.0, 0.0)
            }),
            QuantScheme::Pact => {
                let a = q[0];
                lanes(x, dy, dx, acc, |xv, g| {
                    let d = if (0.0..=a).contains(&xv) { g } else { 0.0 };
                    (d, if xv >= a { g as f64 } else { 0.0 }, 0.0)
                })
            }
            QuantScheme::Lsq => {
                let s = q[0];
                let inv = 1.0 / s;
                lanes(x, dy, dx, acc, |xv, g| {
                    let v = xv * inv;
                    if v < 0.0 {
                        (0.0, 0.0, 0.0)
                    } else if v > QMAX {
                        (0.0, (g * QMAX) as f64, 0.0)
                    } else {
                        (g, (g * (round(v) - v)) as f64, 0.0)
                    }
                })
            }
            QuantScheme::Dsq => {
                let (u, alpha) = (q[0], q[1]);
                let d = u / QMAX;
                let sharp = dsq::Sharpness::new(alpha);
                lanes(x, dy, dx, acc, |xv, g| {
                    if xv < 0.0 {
                        (0.0, 0.0, 0.0)
                    } else if xv > u {
                        (0.0, g as f64, 0.0)
                    } else {
                        let sg = sharp.grad(xv, d, 0.0);
                        (g * sg.dx, (g * sg.dd / QMAX) as f64, (g * sg.dalpha) as f64)
                    }
                })
            }
        }
    }
}

/// Keeps parameters in their valid domain after an optimiser step.
pub fn clamp_params(scheme: QuantScheme, q: &mut [f32]) {
    match scheme {
        QuantScheme::None => {}
        QuantScheme::Pact | QuantScheme::Lsq => q[0] = q[0].max(1e-4),
        QuantScheme::Dsq => {
            q[0] = q[0].max(1e-4);
            q[1] = q[1].clamp(1e-3, 0.499);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::round_small;

    /// The conversion-free code equals the definition (round half to even of
    /// the clamped value, then a saturating cast) for every input that matters:
    /// a fine grid across and beyond the range, ties, signed zeros, NaN, inf.
    #[test]
    fn code_equals_rounding_the_clamped_value() {
        let inv = 1.0 / 0.37;
        let mut xs: Vec<f32> = (-2000..8000).map(|i| i as f32 * 0.00373).collect();
        xs.extend((0..=16).map(|k| (k as f32 + 0.5) / inv));
        xs.extend([
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e30,
            -1e30,
        ]);
        for x in xs {
            let want = round_small((x * inv).clamp(0.0, QMAX)) as u8;
            assert_eq!(code(x, inv), want, "x = {x}");
        }
    }

    /// The lane-split parameter sums equal one sequential f64 sum within f64
    /// rounding (so the f32 gradients they become agree), `dx` exactly, at
    /// lengths with and without a partial last chunk; and a range done in
    /// pieces of whole chunks sums exactly as the whole range.
    #[test]
    fn lane_sums_equal_the_sequential_sum() {
        let mut r = crate::rng::Rng::new(4);
        for (scheme, q) in [
            (QuantScheme::Pact, vec![1.2f32]),
            (QuantScheme::Lsq, vec![0.09f32]),
            (QuantScheme::Dsq, vec![1.2f32, 0.4]),
        ] {
            for n in [1usize, 7, 8, 1001, 4096] {
                let x: Vec<f32> = (0..n).map(|_| r.uniform() as f32 * 2.0 - 0.4).collect();
                let dy: Vec<f32> = (0..n).map(|_| r.uniform() as f32 - 0.5).collect();
                let mut dx = vec![0.0f32; n];
                let got = backward_range(scheme, &q, &x, &dy, &mut dx, ParamSums::default());
                let (mut want, mut dxw) = ([0.0f64; 2], vec![0.0f32; n]);
                for i in 0..n {
                    let mut one = [0.0f32];
                    let t = backward_range(
                        scheme,
                        &q,
                        &x[i..=i],
                        &dy[i..=i],
                        &mut one,
                        ParamSums::default(),
                    )
                    .total();
                    dxw[i] = one[0];
                    want[0] += t[0];
                    want[1] += t[1];
                }
                assert_eq!(dx, dxw, "{scheme:?} n {n}");
                let t = got.total();
                for k in 0..2 {
                    let tol = 1e-12 * want[k].abs().max(1e-6);
                    assert!(
                        (t[k] - want[k]).abs() <= tol,
                        "{scheme:?} n {n}: {t:?} vs {want:?}"
                    );
                }
                if n % LANES == 0 && n >= 16 {
                    let h = n / 2 / LANES * LANES;
                    let mut d2 = vec![0.0f32; n];
                    let (a, b) = d2.split_at_mut(h);
                    let p = backward_range(scheme, &q, &x[..h], &dy[..h], a, ParamSums::default());
                    let p = backward_range(scheme, &q, &x[h..], &dy[h..], b, p);
                    assert_eq!(p.total(), t, "{scheme:?} n {n}: pieces");
                }
            }
        }
    }

    /// The blocked, threaded packer gives every element the code `code` gives
    /// it, at every length (blocks, tails, odd lengths, the threaded split).
    #[test]
    fn packed_codes_equal_elementwise_codes_at_every_length() {
        let mut r = crate::rng::Rng::new(9);
        let q = [2.5f32];
        let inv = 1.0 / scale(QuantScheme::Pact, &q);
        for len in [0usize, 1, 2, 31, 32, 33, 63, 64, 65, 1000, 40_001] {
            let x: Vec<f32> = (0..len).map(|_| r.uniform() as f32 * 4.0 - 1.0).collect();
            let mut packed = vec![0u8; len.div_ceil(2)];
            quantize_packed(QuantScheme::Pact, &q, &x, &mut packed);
            for (e, &v) in x.iter().enumerate() {
                assert_eq!(
                    qmul_kernels::pack::get_u4(&packed, e),
                    code(v, inv),
                    "len {len} element {e}"
                );
            }
        }
    }

    #[test]
    fn pact_codes_and_grads() {
        let q = [3.0f32];
        let x = [-1.0, 0.1, 1.5, 2.9, 3.0, 7.0];
        let mut codes = [0u8; 3];
        quantize_packed(QuantScheme::Pact, &q, &x, &mut codes);
        let unpacked: Vec<u8> = (0..6)
            .map(|e| qmul_kernels::pack::get_u4(&codes, e))
            .collect();
        assert_eq!(unpacked, vec![0, 0, 8, 14, 15, 15]);
        let dy = [1.0f32; 6];
        let mut dx = [0.0f32; 6];
        let mut dq = [0.0f32];
        backward(QuantScheme::Pact, &q, &x, &dy, &mut dx, &mut dq, 6);
        assert_eq!(dx, [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
        assert_eq!(dq[0], 2.0);
    }

    #[test]
    fn lsq_step_gradient_follows_formula() {
        let q = [0.5f32];
        let x = [0.3f32, -0.2, 9.0];
        let dy = [1.0f32, 1.0, 2.0];
        let mut dx = [0.0f32; 3];
        let mut dq = [0.0f32];
        backward(QuantScheme::Lsq, &q, &x, &dy, &mut dx, &mut dq, 4);
        let expect = ((1.0 - 0.6) + 0.0 + 2.0 * 15.0) / (4.0f32 * 15.0).sqrt();
        assert!((dq[0] - expect).abs() < 1e-5);
        assert_eq!(dx, [1.0, 0.0, 0.0]);
    }
}
