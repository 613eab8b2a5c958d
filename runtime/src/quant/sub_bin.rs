//! Where each latent weight sits inside its rounding bin, kept in the model
//! file beside the codes.
//!
//! A file of codes and scales alone loads every latent weight at the centre of
//! its bin (`latent = code * scale`): an update then changes a code only after
//! it has added up to half a step, and saving rounds away whatever progress a
//! run made inside the bins, so a later run starts from the centres again. The
//! residual `r = latent / scale - code` puts that back:
//! `latent = (code + r) * scale`.
//!
//! Encoding: one `i16` per weight, `r = q / 65536` with `q` in
//! `-32767..=32767`, so `|r| < 0.49999`: a reconstructed weight always rounds
//! back to its own code (the half-step boundary is never reached, whatever the
//! rounding of `(code + r) * scale / scale`). The resolution is 1/65536 of a
//! step. It was chosen by measurement (`docs/results.md`, section 7): a small
//! deletion request moves the median weight by about 0.0014 steps, so 1/256-
//! step residuals (one byte) rounded most of that movement back to where it
//! started and moved weights by 42% of the run's total movement on saving,
//! and 1/16-step residuals (4 bits) by 7 times it. What the encoding gives up,
//! on purpose:
//! * a weight clipped by LSQ or DSQ (latent beyond the code range) keeps only
//!   half a step of its excess: it gets no gradient while clipped, and the
//!   stored value is still clipped;
//! * under max-abs scaling a weight at the largest code keeps only residuals
//!   that point inwards (`|code + r| <= qmax`), and the channel's largest
//!   weight sits exactly on `qmax * scale`, so the scale, which max-abs derives
//!   from the largest latent weight, comes back bit for bit.

use super::weight::WeightQuant;

/// Residual units per quantization step.
pub const UNITS_PER_STEP: f32 = 65536.0;
/// Largest stored residual magnitude (in units).
pub const MAX_UNITS: i16 = 32767;

/// The residuals of latent weights `w` (`cout x k`) against their `codes` and
/// per-channel `scale`, as [`quantize`](super::weight::quantize) produced them.
pub fn encode(kind: WeightQuant, w: &[f32], codes: &[i8], scale: &[f32]) -> Vec<i16> {
    let k = w.len() / scale.len().max(1);
    let qmax = match kind {
        WeightQuant::MaxAbs { qmax } => Some(qmax as i32),
        _ => None,
    };
    let mut out = Vec::with_capacity(w.len());
    for ((wr, cr), &s) in w.chunks(k.max(1)).zip(codes.chunks(k.max(1))).zip(scale) {
        out.extend(wr.iter().zip(cr).map(|(&v, &c)| {
            // In f64: near an 8-bit layer's largest codes an f32 `v / s`
            // resolves only about 1e-5 of a step.
            let r = (v as f64 / s as f64 - c as f64) as f32;
            let m = MAX_UNITS as f32;
            let mut q = super::round(r * UNITS_PER_STEP).clamp(-m, m) as i16;
            if let Some(m) = qmax {
                // Inwards only at the largest codes, so that max|latent| stays
                // `qmax * scale`.
                if c as i32 == m {
                    q = q.min(0);
                } else if c as i32 == -m {
                    q = q.max(0);
                }
            }
            q
        }));
    }
    out
}

/// Latent weights `(code + r) * scale` from codes, residuals and scales.
pub fn decode(codes: &[i8], residual: &[i16], scale: &[f32]) -> Vec<f32> {
    let k = codes.len() / scale.len().max(1);
    let mut out = Vec::with_capacity(codes.len());
    for ((cr, rr), &s) in codes
        .chunks(k.max(1))
        .zip(residual.chunks(k.max(1)))
        .zip(scale)
    {
        out.extend(
            cr.iter()
                .zip(rr)
                .map(|(&c, &r)| ((c as f64 + r as f64 / UNITS_PER_STEP as f64) * s as f64) as f32),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::weight::{initial_params, quantize};
    use crate::rng::Rng;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| (r.normal() * 0.1) as f32).collect()
    }

    /// Codes and scales survive encode -> decode -> quantize exactly for every
    /// quantizer, and the decoded weights sit within 1/131072 step of the
    /// originals (plus float rounding) unless they were clipped or are a
    /// max-abs channel's largest.
    #[test]
    fn decode_requantizes_to_the_same_codes_and_scales() {
        for kind in [
            WeightQuant::MaxAbs { qmax: 7.0 },
            WeightQuant::MaxAbs { qmax: 127.0 },
            WeightQuant::Lsq,
            WeightQuant::Dsq,
        ] {
            for seed in 0..20 {
                let (cout, k) = (8, 9 * 5);
                let w = random(cout * k, seed);
                let mut q = initial_params(kind, &w, cout);
                if kind == WeightQuant::Lsq {
                    // A step small enough that some weights are clipped.
                    q.iter_mut().for_each(|s| *s *= 0.5);
                }
                let qz = quantize(kind, &q, &w, cout);
                let r = encode(kind, &w, &qz.codes, &qz.scale);
                let back = decode(&qz.codes, &r, &qz.scale);
                assert_eq!(quantize(kind, &q, &back, cout), qz, "{kind:?} seed {seed}");
                for (i, (&a, &b)) in w.iter().zip(&back).enumerate() {
                    let s = qz.scale[i / k];
                    let c = qz.codes[i] as f32;
                    let clipped = (a / s - c).abs() > 0.49;
                    // Max-abs: a channel's largest weight sits on `qmax * scale`
                    // and lies above it by the scale's cleared mantissa bits.
                    let at_max = matches!(kind, WeightQuant::MaxAbs { qmax } if c.abs() == qmax);
                    if !clipped && !at_max {
                        let tol = s / 131072.0 + f32::EPSILON * a.abs();
                        assert!((a - b).abs() <= tol, "{kind:?} {a} {b} {s}");
                    }
                }
            }
        }
    }

    #[test]
    fn residual_of_a_bin_centre_is_zero() {
        let kind = WeightQuant::MaxAbs { qmax: 7.0 };
        let w = [0.7f32, -0.3, 0.1, 0.0];
        let qz = quantize(kind, &[], &w, 1);
        let centred = decode(&qz.codes, &[0; 4], &qz.scale);
        let qc = quantize(kind, &[], &centred, 1);
        assert_eq!(encode(kind, &centred, &qc.codes, &qc.scale), vec![0; 4]);
    }
}
