//! Post-training quantization: a full-precision network (`--quant none`)
//! turned into the packed 4-bit PACT model without training.
//!
//! The method is the standard data-free-weights, calibrated-activations recipe
//! (Krishnamoorthi, "Quantizing deep convolutional networks for efficient
//! inference", 2018; Nagel et al., "A White Paper on Neural Network
//! Quantization", 2021, section 3), with MSE-optimal clipping of activations
//! (Banner, Nahshan, Soudry, "Post training 4-bit quantization of
//! convolutional networks for rapid-deployment", NeurIPS 2019):
//! * weights: symmetric per-output-channel max-abs scales, 4-bit in the body,
//!   8-bit in the first convolution and the classifier (the PACT model's
//!   weight quantizer, so the result is an ordinary PACT model that trains,
//!   unlearns and saves like any other; the f32 weights become its latent
//!   weights, and the file's sub-bin residuals keep them);
//! * activations: each ReLU becomes a PACT quantizer whose clip `a` minimises
//!   the mean squared error between the unsigned 4-bit quantized and the
//!   full-precision activations on the calibration images, chosen layer by
//!   layer in order with the earlier layers already quantized (so that each
//!   clip sees the errors it has to live with);
//! * BatchNorm keeps its running statistics; nothing is retrained.

use crate::error::{Error, Result};
use crate::graph::{Op, Precision, QuantScheme};
use crate::model::{Model, Slots};
use crate::quant::act::QMAX;

/// Clip candidates tried per layer, as fractions of the largest activation.
const CANDIDATES: usize = 100;

/// The clip `a` in `(0, max]` minimising the squared error of
/// `round(clamp(x, 0, a) * 15 / a) * a / 15` against `max(x, 0)` over `x`.
pub fn mse_clip(x: &[f32]) -> f32 {
    let pos: Vec<f32> = x.iter().copied().filter(|v| *v > 0.0).collect();
    let max = pos.iter().copied().fold(0.0f32, f32::max);
    if pos.is_empty() || !max.is_finite() {
        return 1.0;
    }
    // A sample of at most about 200,000 values bounds the cost on large
    // layers (the error of a clip is a smooth function of it).
    let stride = (pos.len() / 200_000).max(1);
    let sample: Vec<f32> = pos.iter().step_by(stride).copied().collect();
    let mut best = (f64::INFINITY, max);
    for k in 1..=CANDIDATES {
        let a = max * k as f32 / CANDIDATES as f32;
        let step = a / QMAX;
        let err: f64 = sample
            .iter()
            .map(|&v| {
                let q = (v.min(a) / step).round() * step;
                ((q - v) as f64).powi(2)
            })
            .sum();
        if err < best.0 {
            best = (err, a);
        }
    }
    best.1
}

/// The 4-bit PACT model of a full-precision `float` model, its activation
/// clips calibrated on `n` images.
pub fn quantize(float: &Model, calib: &[u8], n: usize) -> Result<Model> {
    if float.graph.scheme != QuantScheme::None {
        return Err(Error::invalid(format!(
            "post-training quantization takes a full-precision model; this one is already {}",
            float.graph.scheme.name()
        )));
    }
    if n == 0 {
        return Err(Error::invalid("no calibration images"));
    }
    let mut graph = float.graph.clone();
    graph.scheme = QuantScheme::Pact;
    let mut first_conv = true;
    for op in &mut graph.nodes {
        match op {
            Op::Conv { prec, .. } => {
                *prec = if first_conv {
                    Precision::Int8
                } else {
                    Precision::Int4
                };
                first_conv = false;
            }
            Op::Linear { prec, .. } => *prec = Precision::Int8,
            _ => {}
        }
    }
    let mut q = Model::layout(graph).map_err(|e| Error::invalid(e.to_string()))?;
    // Same names, same shapes: copy every tensor the float model has.
    for t in q.params.iter_mut().chain(q.buffers.iter_mut()) {
        if let Some(src) = float
            .params
            .iter()
            .chain(&float.buffers)
            .find(|s| s.name == t.name && !s.data.is_empty())
        {
            if src.shape != t.shape {
                return Err(Error::internal(format!("{}: shapes differ", t.name)));
            }
            t.data.clone_from(&src.data);
        }
    }
    // PACT's clips start at the largest value, then calibration sets them.
    for s in &q.slots {
        if let Slots::Act { q: p } = s {
            q.params[*p].data = vec![1.0];
        }
    }
    q.info = float.info.clone();
    q.info.insert(
        "quantized".into(),
        format!(
            "post-training: per-channel max-abs weights, MSE-optimal PACT clips on {n} \
             calibration images"
        ),
    );
    q.calibrate_activations(calib, n, &mse_clip)?;
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mse_clip_cuts_a_long_tail_and_keeps_a_uniform_range() {
        // Uniform on (0, 1]: the best clip is the maximum (nothing to cut).
        let u: Vec<f32> = (1..=1000).map(|i| i as f32 / 1000.0).collect();
        assert!(mse_clip(&u) > 0.9, "{}", mse_clip(&u));
        // 10,000 values in (0, 1] and five at 2: clipping the five costs less
        // than coarser steps for all the others. (A single outlier far out
        // is kept instead: its squared error would dominate.)
        let mut t: Vec<f32> = (1..=10_000).map(|i| i as f32 / 10_000.0).collect();
        t.extend([2.0; 5]);
        let a = mse_clip(&t);
        assert!(a > 0.9 && a < 1.5, "{a}");
        // Nothing positive: a harmless default.
        assert_eq!(mse_clip(&[-1.0, 0.0]), 1.0);
    }
}
