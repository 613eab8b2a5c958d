//! Weight quantizers: signed codes with one scale per output channel.
//!
//! * Max-abs (4-bit under PACT, and every 8-bit layer): `scale = max|w| / Q_P`,
//!   `code = round(w / scale)`; the backward is the identity (nothing is clipped).
//! * LSQ (4-bit): learned step `s` per channel, codes `round(clip(w/s, -8, 7))`;
//!   `dw = dwq` inside, `ds = g * sum dwq * (round(v) - v)` inside, `-8 dwq` below,
//!   `7 dwq` above, `g = 1/sqrt(K * 7)` with K weights per channel.
//! * DSQ (4-bit): learned upper clip `u` per channel with interval `D = u / 7` and
//!   levels `D * (-8..=7)` (so codes stay symmetric integers), sharpness `alpha` per
//!   layer; backward through the tanh soft quantizer.
//!
//! Parameter layout per layer: max-abs `[]`; LSQ `[s_0 .. s_{n-1}]`; DSQ
//! `[u_0 .. u_{n-1}, alpha]`.

use super::{dsq, round};
use crate::graph::{Precision, QuantScheme};

/// Which quantizer a layer's weights use.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WeightQuant {
    /// f32 weights.
    None,
    /// Max-abs symmetric, `qmax` = 7 (4-bit) or 127 (8-bit).
    MaxAbs {
        qmax: f32,
    },
    Lsq,
    Dsq,
}

impl WeightQuant {
    pub fn of(scheme: QuantScheme, prec: Precision) -> Self {
        match (prec, scheme) {
            (Precision::F32, _) | (_, QuantScheme::None) => WeightQuant::None,
            (Precision::Int8, _) => WeightQuant::MaxAbs { qmax: 127.0 },
            (Precision::Int4, QuantScheme::Pact) => WeightQuant::MaxAbs { qmax: 7.0 },
            (Precision::Int4, QuantScheme::Lsq) => WeightQuant::Lsq,
            (Precision::Int4, QuantScheme::Dsq) => WeightQuant::Dsq,
        }
    }

    pub fn param_count(self, cout: usize) -> usize {
        match self {
            WeightQuant::None | WeightQuant::MaxAbs { .. } => 0,
            WeightQuant::Lsq => cout,
            WeightQuant::Dsq => cout + 1,
        }
    }
}

/// Codes (row-major `cout x k`) and per-channel scales of one weight tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    pub codes: Vec<i8>,
    pub scale: Vec<f32>,
}

fn max_abs(row: &[f32]) -> f32 {
    row.iter().fold(0.0f32, |m, &v| m.max(v.abs()))
}

/// Clears the low mantissa bits of a max-abs scale so that `code * scale` is
/// exact for every code and `max|code * scale| / qmax` gives back the same scale:
/// a model saved as codes + scales and loaded again requantizes bit for bit.
fn exact_scale(s: f32, qmax: f32) -> f32 {
    let bits = if qmax <= 7.0 { 3 } else { 7 };
    f32::from_bits(s.to_bits() & !((1u32 << bits) - 1))
}

/// Initial quantizer parameters from the latent weights.
pub fn initial_params(kind: WeightQuant, w: &[f32], cout: usize) -> Vec<f32> {
    let k = w.len() / cout.max(1);
    match kind {
        WeightQuant::None | WeightQuant::MaxAbs { .. } => vec![],
        WeightQuant::Lsq => w
            .chunks(k)
            .map(|r| {
                (2.0 * r.iter().map(|v| v.abs()).sum::<f32>() / k as f32 / 7f32.sqrt()).max(1e-8)
            })
            .collect(),
        WeightQuant::Dsq => {
            let mut q: Vec<f32> = w.chunks(k).map(|r| max_abs(r).max(1e-8)).collect();
            q.push(0.2);
            q
        }
    }
}

/// Per-channel scale (value of one code step).
pub fn scales(kind: WeightQuant, q: &[f32], w: &[f32], cout: usize) -> Vec<f32> {
    let k = w.len() / cout;
    match kind {
        WeightQuant::None => vec![1.0; cout],
        WeightQuant::MaxAbs { qmax } => w
            .chunks(k)
            .map(|r| {
                let m = max_abs(r);
                if m > 0.0 {
                    exact_scale(m / qmax, qmax)
                } else {
                    1.0
                }
            })
            .collect(),
        WeightQuant::Lsq => q[..cout].to_vec(),
        WeightQuant::Dsq => q[..cout].iter().map(|u| u / 7.0).collect(),
    }
}

/// Quantizes latent weights `w` (`cout x k`).
pub fn quantize(kind: WeightQuant, q: &[f32], w: &[f32], cout: usize) -> Quantized {
    let scale = scales(kind, q, w, cout);
    let k = w.len() / cout;
    let (lo, hi) = match kind {
        WeightQuant::MaxAbs { qmax } => (-qmax, qmax),
        _ => (-8.0, 7.0),
    };
    let mut codes = Vec::with_capacity(w.len());
    for (row, &s) in w.chunks(k).zip(&scale) {
        let inv = 1.0 / s;
        codes.extend(
            row.iter()
                .map(|&v| super::round_small((v * inv).clamp(lo, hi)) as i8),
        );
    }
    Quantized { codes, scale }
}

/// Straight-through backward: from `dwq` (gradient w.r.t. the quantized weight
/// values) to `dw` (latent weights, overwritten) and `dq` (parameters, added).
pub fn backward(
    kind: WeightQuant,
    q: &[f32],
    w: &[f32],
    dwq: &[f32],
    cout: usize,
    dw: &mut [f32],
    dq: &mut [f32],
) {
    let k = w.len() / cout;
    match kind {
        WeightQuant::None | WeightQuant::MaxAbs { .. } => dw.copy_from_slice(dwq),
        WeightQuant::Lsq => {
            let g = 1.0 / ((k as f64) * 7.0).sqrt();
            for n in 0..cout {
                let s = q[n];
                let inv = 1.0 / s;
                let mut ds = 0.0f64;
                for i in n * k..(n + 1) * k {
                    let v = w[i] * inv;
                    let gq = dwq[i];
                    if v < -8.0 {
                        dw[i] = 0.0;
                        ds -= 8.0 * gq as f64;
                    } else if v > 7.0 {
                        dw[i] = 0.0;
                        ds += 7.0 * gq as f64;
                    } else {
                        dw[i] = gq;
                        ds += (gq * (round(v) - v)) as f64;
                    }
                }
                dq[n] += (ds * g) as f32;
            }
        }
        WeightQuant::Dsq => {
            let alpha = q[cout];
            let sharp = dsq::Sharpness::new(alpha);
            let mut dalpha = 0.0f64;
            for n in 0..cout {
                let u = q[n];
                let d = u / 7.0;
                let mut du = 0.0f64;
                for i in n * k..(n + 1) * k {
                    let x = w[i];
                    let gq = dwq[i];
                    if x < -8.0 * d {
                        dw[i] = 0.0;
                        du -= (8.0 / 7.0) * gq as f64;
                    } else if x > u {
                        dw[i] = 0.0;
                        du += gq as f64;
                    } else {
                        let sg = sharp.grad(x, d, 8.0);
                        dw[i] = gq * sg.dx;
                        du += (gq * sg.dd / 7.0) as f64;
                        dalpha += (gq * sg.dalpha) as f64;
                    }
                }
                dq[n] += du as f32;
            }
            dq[cout] += dalpha as f32;
        }
    }
}

/// Keeps parameters valid after an optimiser step.
pub fn clamp_params(kind: WeightQuant, q: &mut [f32], cout: usize) {
    match kind {
        WeightQuant::None | WeightQuant::MaxAbs { .. } => {}
        WeightQuant::Lsq => q.iter_mut().for_each(|s| *s = s.max(1e-8)),
        WeightQuant::Dsq => {
            q[..cout].iter_mut().for_each(|u| *u = u.max(1e-8));
            q[cout] = q[cout].clamp(1e-3, 0.499);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxabs_round_trip_is_exact() {
        let w = [0.7f32, -0.35, 0.1, 0.0, 2.0, -1.0];
        let kind = WeightQuant::MaxAbs { qmax: 7.0 };
        let qz = quantize(kind, &[], &w, 2);
        assert_eq!(qz.codes, vec![7, -4, 1, 0, 7, -4]);
        let deq: Vec<f32> = qz
            .codes
            .iter()
            .enumerate()
            .map(|(i, &c)| c as f32 * qz.scale[i / 3])
            .collect();
        assert_eq!(
            quantize(kind, &[], &deq, 2),
            qz,
            "dequantize -> quantize must be exact"
        );
    }

    #[test]
    fn lsq_and_dsq_clip_at_their_ranges() {
        let w = [10.0f32, -10.0, 0.05];
        let lsq = quantize(WeightQuant::Lsq, &[0.1], &w, 1);
        assert_eq!(lsq.codes, vec![7, -8, 0]);
        let dsq = quantize(WeightQuant::Dsq, &[0.7, 0.2], &w, 1);
        assert_eq!(dsq.codes, vec![7, -8, 0]);
        assert!((dsq.scale[0] - 0.1).abs() < 1e-7);
    }
}
