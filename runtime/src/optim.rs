//! SGD with momentum and weight decay (PyTorch semantics: `g += wd * p`,
//! `v = mu * v + g`, `p -= lr * v`) and the cosine learning-rate schedule.

use crate::model::Model;

#[derive(Clone, Debug)]
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    velocity: Vec<Vec<f32>>,
}

impl Sgd {
    pub fn new(model: &Model, lr: f32, momentum: f32, weight_decay: f32) -> Self {
        Sgd {
            lr,
            momentum,
            weight_decay,
            velocity: model
                .params
                .iter()
                .map(|t| vec![0.0; t.data.len()])
                .collect(),
        }
    }

    /// The momentum buffers, one per parameter tensor (saved with training
    /// checkpoints so that a resumed run continues the same trajectory).
    pub fn velocity(&self) -> &[Vec<f32>] {
        &self.velocity
    }

    /// Restores momentum buffers saved from an optimiser over the same model.
    /// Wrong tensor counts or lengths and non-finite values are errors and
    /// leave the current buffers unchanged.
    pub fn set_velocity(&mut self, v: Vec<Vec<f32>>) -> Result<(), String> {
        if v.len() != self.velocity.len() {
            return Err(format!(
                "momentum has {} tensors, the model {}",
                v.len(),
                self.velocity.len()
            ));
        }
        for (i, (new, old)) in v.iter().zip(&self.velocity).enumerate() {
            if new.len() != old.len() {
                return Err(format!(
                    "momentum tensor {i} has {} values, the parameter {}",
                    new.len(),
                    old.len()
                ));
            }
            if new.iter().any(|x| !x.is_finite()) {
                return Err(format!("momentum tensor {i} holds a non-finite value"));
            }
        }
        self.velocity = v;
        Ok(())
    }

    /// One update of every parameter from `grads`, scaled per tensor by `mask`
    /// when given (SalUn's saliency mask: 0 freezes an element). Quantizer
    /// parameters are clamped back into their valid ranges afterwards.
    pub fn step(&mut self, model: &mut Model, grads: &[Vec<f32>], mask: Option<&[Vec<f32>]>) {
        crate::profile::time(crate::profile::Phase::Optimiser, || {
            self.update(model, grads, mask)
        })
    }

    fn update(&mut self, model: &mut Model, grads: &[Vec<f32>], mask: Option<&[Vec<f32>]>) {
        for (t, ((p, g), v)) in model
            .params
            .iter_mut()
            .zip(grads)
            .zip(&mut self.velocity)
            .enumerate()
        {
            let mk = mask.map(|m| &m[t]);
            for i in 0..p.data.len() {
                let mut gi = g[i] + self.weight_decay * p.data[i];
                if let Some(mk) = mk {
                    gi *= mk[i];
                }
                v[i] = self.momentum * v[i] + gi;
                p.data[i] -= self.lr * v[i];
            }
        }
        model.clamp_quant_params();
    }
}

/// Cosine annealing from `base` to 0 over `total` steps, evaluated at `step`.
pub fn cosine_lr(base: f32, step: usize, total: usize) -> f32 {
    if total == 0 {
        return base;
    }
    let t = (step.min(total)) as f64 / total as f64;
    (base as f64 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
}
