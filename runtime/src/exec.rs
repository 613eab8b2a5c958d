//! Running a model: the eval-mode forward pass, and the training pass (forward,
//! loss, straight-through backward).
//!
//! Memory plan of the training pass: the forward keeps only *checkpoints*, the
//! outputs of Input (u8 pixels) and Act nodes (packed 4-bit codes in a quantized
//! model, f32 in a full-precision one), plus BatchNorm batch statistics. Every
//! f32 value between checkpoints (conv outputs, BatchNorm outputs, residual sums)
//! is dropped as soon as its consumers have run, and the backward rebuilds it
//! from the saved codes when it needs it. A saved 4-bit activation costs half a
//! byte per element instead of the four of an f32 tensor.

use crate::graph::{Op, QuantScheme};
use crate::model::{Model, QWeights, Slots};
use crate::ops::bn::{self, BatchStats};
use crate::ops::conv::{self, ConvInput};
use crate::ops::im2col::ConvGeom;
use crate::ops::{linear, loss, pool};
use crate::profile::{time, Phase};
use crate::quant::{act, weight};
use std::borrow::Cow;

/// A node's output during a pass.
#[derive(Clone, Debug)]
pub enum Value {
    /// u8 pixels of the input batch (value = byte / 255).
    Pixels(Vec<u8>),
    /// Tightly packed unsigned 4-bit codes (value = code * scale).
    Codes {
        packed: Vec<u8>,
        scale: f32,
    },
    F32(Vec<f32>),
}

impl Value {
    fn as_conv_input(&self) -> ConvInput<'_> {
        match self {
            Value::Pixels(p) => ConvInput::Bytes {
                data: p,
                scale: 1.0 / 255.0,
            },
            Value::Codes { packed, scale } => ConvInput::Codes4 {
                packed,
                scale: *scale,
            },
            Value::F32(v) => ConvInput::F32(v),
        }
    }

    /// Bytes this value occupies.
    pub fn bytes(&self) -> usize {
        match self {
            Value::Pixels(p) => p.len(),
            Value::Codes { packed, .. } => packed.len(),
            Value::F32(v) => v.len() * 4,
        }
    }
}

/// How BatchNorm behaves while computing a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Eval,
    /// Batch statistics, computed now and kept for the backward.
    Train,
    /// Batch statistics saved by the training forward (backward recompute).
    Recompute,
}

/// Per-sample targets and loss weights of one training batch.
#[derive(Clone, Copy, Debug)]
pub struct Targets<'a> {
    pub labels: &'a [u32],
    pub weights: &'a [f32],
}

/// Result of one training pass.
#[derive(Clone, Debug)]
pub struct Pass {
    pub loss: f32,
    pub logits: Vec<f32>,
    /// One gradient per parameter tensor, same order and length as `Model::params`.
    pub grads: Vec<Vec<f32>>,
    /// Bytes of activations saved by the forward for the backward.
    pub saved_bytes: usize,
}

/// Errors of a pass: bad batch shapes or labels.
#[derive(Debug, Clone, PartialEq)]
pub struct PassError(pub String);

impl std::fmt::Display for PassError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PassError {}

impl From<qmul_kernels::ShapeError> for PassError {
    fn from(e: qmul_kernels::ShapeError) -> Self {
        PassError(e.to_string())
    }
}

/// A broken invariant of a validated model (a bug, not bad input): reported
/// as an error rather than a panic, so that no caller is ever aborted.
fn broken(what: &str) -> PassError {
    PassError(format!("internal error: {what}"))
}

struct Ctx<'m> {
    model: &'m Model,
    n: usize,
    qw: Vec<Option<QWeights>>,
    stats: Vec<Option<BatchStats>>,
    /// BatchNorm normalises with its running statistics during a training pass
    /// (the model "in eval mode" while gradients are taken).
    frozen_bn: bool,
}

impl Model {
    fn check_batch(&self, images: &[u8], n: usize) -> Result<(), PassError> {
        let s = self.graph.input_shape();
        if n == 0 {
            return Err(PassError("empty batch".into()));
        }
        if n.checked_mul(s.len()) != Some(images.len()) {
            return Err(PassError(format!(
                "batch of {n} images needs {} bytes ({}x{}x{} each), got {}",
                n.saturating_mul(s.len()),
                s.h,
                s.w,
                s.c,
                images.len()
            )));
        }
        Ok(())
    }

    /// Eval-mode logits (`n x classes`) for `n` NHWC u8 images.
    pub fn forward(&self, images: &[u8], n: usize) -> Result<Vec<f32>, PassError> {
        self.check_batch(images, n)?;
        let mut ctx = Ctx {
            model: self,
            n,
            qw: self.quantize_weights()?,
            stats: vec![None; self.graph.nodes.len()],
            frozen_bn: false,
        };
        let nodes = &self.graph.nodes;
        // Free each value once its last consumer has run.
        let last_use = last_uses(nodes);
        let mut vals: Vec<Option<Value>> = vec![None; nodes.len()];
        let mut i = 0;
        while i < nodes.len() {
            // A BatchNorm feeding only an Act: both in one pass.
            let (v, at) = ctx.forward_step(i, &last_use, &mut vals, images, Mode::Eval)?;
            vals[at] = Some(v);
            for j in nodes[i].inputs() {
                if last_use[j] == i {
                    vals[j] = None;
                }
            }
            i = at + 1;
        }
        match vals.pop().flatten() {
            Some(Value::F32(l)) => Ok(l),
            _ => Err(PassError("graph produced no logits".into())),
        }
    }

    /// Training pass: forward with batch statistics, weighted cross-entropy,
    /// straight-through backward. BatchNorm running statistics are updated when
    /// `update_running` is set. Parameters are not changed (see `optim`), except
    /// that LSQ/DSQ activation ranges still at 0 are initialised from this batch.
    pub fn train_pass(
        &mut self,
        images: &[u8],
        n: usize,
        t: Targets,
        update_running: bool,
    ) -> Result<Pass, PassError> {
        self.pass(images, n, t, update_running, false)
    }

    /// Gradients with the model in eval mode: BatchNorm uses its running
    /// statistics (and is differentiated as the fixed affine map it then is);
    /// nothing in the model changes. SalUn's saliency mask is computed this way.
    pub fn eval_mode_pass(
        &mut self,
        images: &[u8],
        n: usize,
        t: Targets,
    ) -> Result<Pass, PassError> {
        self.pass(images, n, t, false, true)
    }

    fn pass(
        &mut self,
        images: &[u8],
        n: usize,
        t: Targets,
        update_running: bool,
        frozen_bn: bool,
    ) -> Result<Pass, PassError> {
        self.check_batch(images, n)?;
        if t.labels.len() != n || t.weights.len() != n {
            return Err(PassError(format!(
                "{n} images but {} labels and {} weights",
                t.labels.len(),
                t.weights.len()
            )));
        }
        if let Some(&bad) = t.labels.iter().find(|&&l| l as usize >= self.classes()) {
            return Err(PassError(format!(
                "label {bad} out of range for {} classes",
                self.classes()
            )));
        }
        if t.weights.iter().any(|w| !w.is_finite()) {
            return Err(PassError("non-finite loss weight".into()));
        }
        if !frozen_bn {
            self.init_activation_ranges(images, n)?;
        }
        let model: &Model = self;
        let nodes = &model.graph.nodes;
        let mut ctx = Ctx {
            model,
            n,
            qw: time(Phase::WeightQuant, || model.quantize_weights())?,
            stats: vec![None; nodes.len()],
            frozen_bn,
        };
        let last_use = last_uses(nodes);
        let is_checkpoint = |op: &Op| matches!(op, Op::Input { .. } | Op::Act { .. });
        let mut vals: Vec<Option<Value>> = vec![None; nodes.len()];
        let mut saved: Vec<Option<Value>> = vec![None; nodes.len()];
        let mut running = Vec::new();
        let mut i = 0;
        while i < nodes.len() {
            // A BatchNorm feeding only an Act: both in one pass (the backward
            // recomputes the BatchNorm output from the saved codes anyway).
            let (v, at) = ctx.forward_step(i, &last_use, &mut vals, images, Mode::Train)?;
            if let (Op::BatchNorm { .. }, Some(st)) = (&nodes[i], &ctx.stats[i]) {
                running.push((i, st.clone()));
            }
            vals[at] = Some(v);
            for j in nodes[i].inputs() {
                if last_use[j] == i {
                    let v = vals[j].take();
                    if is_checkpoint(&nodes[j]) {
                        saved[j] = v;
                    }
                }
            }
            i = at + 1;
        }
        let logits = match vals.pop().flatten() {
            Some(Value::F32(l)) => l,
            _ => return Err(PassError("graph produced no logits".into())),
        };
        let (loss_v, dlogits) = time(Phase::Loss, || {
            loss::weighted_ce(&logits, model.classes(), t.labels, t.weights)
        });
        let saved_bytes = saved.iter().flatten().map(Value::bytes).sum();
        let grads = ctx.backward(&last_use, saved, dlogits, images)?;
        if update_running && !frozen_bn {
            for (i, st) in running {
                if let Slots::Bn { mean, var, .. } = self.slots[i] {
                    let rows = n * self.shapes[i].h * self.shapes[i].w;
                    let (rm, rv) = two_mut(&mut self.buffers, mean, var)?;
                    bn::update_running(&st, rows, &mut rm.data, &mut rv.data);
                }
            }
        }
        Ok(Pass {
            loss: loss_v,
            logits,
            grads,
            saved_bytes,
        })
    }

    /// Post-training calibration of the activation quantizers: an eval-mode
    /// forward over `images` (running BatchNorm statistics, weights quantized)
    /// that sets each Act node's range from its input as the node is reached,
    /// `pick` mapping the input values to the clip (PACT `a`, LSQ `15 s`, DSQ
    /// `u`). Later layers therefore see the earlier layers already quantized.
    pub fn calibrate_activations(
        &mut self,
        images: &[u8],
        n: usize,
        pick: &dyn Fn(&[f32]) -> f32,
    ) -> Result<(), PassError> {
        self.check_batch(images, n)?;
        let scheme = self.graph.scheme;
        let nodes = self.graph.nodes.clone();
        let last_use = last_uses(&nodes);
        let mut vals: Vec<Option<Value>> = vec![None; nodes.len()];
        let mut qw = self.quantize_weights()?;
        for i in 0..nodes.len() {
            if let (Op::Act { input, .. }, Slots::Act { q }) = (&nodes[i], self.slots[i].clone()) {
                if let Some(Value::F32(x)) = &vals[*input] {
                    let clip = pick(x).max(1e-3);
                    let p = &mut self.params[q].data;
                    match scheme {
                        QuantScheme::Pact | QuantScheme::Dsq => p[0] = clip,
                        QuantScheme::Lsq => p[0] = clip / act::QMAX,
                        QuantScheme::None => {}
                    }
                }
            }
            let mut ctx = Ctx {
                model: self,
                n,
                qw: std::mem::take(&mut qw),
                stats: vec![None; nodes.len()],
                frozen_bn: false,
            };
            let v = ctx.compute(i, &vals, images, Mode::Eval)?;
            qw = ctx.qw;
            vals[i] = Some(v);
            for j in nodes[i].inputs() {
                if last_use[j] == i {
                    vals[j] = None;
                }
            }
        }
        Ok(())
    }

    /// Sets LSQ/DSQ activation ranges still at 0 from the current batch
    /// (the data-dependent initialisation of those quantizers).
    fn init_activation_ranges(&mut self, images: &[u8], n: usize) -> Result<(), PassError> {
        let scheme = self.graph.scheme;
        if !matches!(scheme, QuantScheme::Lsq | QuantScheme::Dsq) {
            return Ok(());
        }
        let pending: Vec<usize> = (0..self.graph.nodes.len())
            .filter(|&i| matches!(self.slots[i], Slots::Act { q } if self.params[q].data[0] <= 0.0))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        // Run an eval-style forward with batch statistics, initialising each
        // pending quantizer from its input as it is reached.
        let nodes = self.graph.nodes.clone();
        let mut vals: Vec<Option<Value>> = vec![None; nodes.len()];
        let mut qw = self.quantize_weights()?;
        for i in 0..nodes.len() {
            if let (Op::Act { input, .. }, Slots::Act { q }) = (&nodes[i], self.slots[i].clone()) {
                if let Some(Value::F32(x)) = &vals[*input] {
                    act::init_from_batch(scheme, &mut self.params[q].data, x);
                }
            }
            let mut ctx = Ctx {
                model: self,
                n,
                qw: std::mem::take(&mut qw),
                stats: vec![None; nodes.len()],
                frozen_bn: false,
            };
            let v = ctx.compute(i, &vals, images, Mode::Train)?;
            qw = ctx.qw;
            vals[i] = Some(v);
        }
        Ok(())
    }
}

impl Ctx<'_> {
    /// A value as f32, borrowed when it already is one.
    fn f32_of<'v>(&self, v: &'v Value, len: usize) -> Cow<'v, [f32]> {
        match v {
            Value::F32(x) => Cow::Borrowed(x),
            other => Cow::Owned(time(Phase::Elementwise, || {
                conv::to_f32(other.as_conv_input(), len)
            })),
        }
    }

    fn geom(&self, i: usize) -> Result<ConvGeom, PassError> {
        let m = self.model;
        match &m.graph.nodes[i] {
            Op::Conv {
                input,
                cout,
                k,
                stride,
                pad,
                ..
            } => {
                let x = m.shapes[*input];
                Ok(ConvGeom {
                    n: self.n,
                    h: x.h,
                    w: x.w,
                    cin: x.c,
                    cout: *cout,
                    k: *k,
                    stride: *stride,
                    pad: *pad,
                })
            }
            _ => Err(broken("conv geometry of a node that is not a conv")),
        }
    }

    /// The weights of node `i` quantized for this pass.
    fn weights(&self, i: usize) -> Result<&QWeights, PassError> {
        self.qw[i]
            .as_ref()
            .ok_or_else(|| broken("weights of a layer without weights"))
    }

    /// The statistics BatchNorm node `i` normalises with in `mode`.
    fn bn_stats(&self, i: usize, x: &[f32], mode: Mode) -> Result<BatchStats, PassError> {
        let m = self.model;
        let (gamma, _, mean, var) = m.slots[i].bn().ok_or_else(|| broken("bn slots"))?;
        Ok(match mode {
            Mode::Eval => bn::eval_stats(&m.buffers[mean].data, &m.buffers[var].data),
            Mode::Train if self.frozen_bn => {
                bn::eval_stats(&m.buffers[mean].data, &m.buffers[var].data)
            }
            Mode::Train => {
                let c = m.params[gamma].data.len();
                time(Phase::BatchNorm, || bn::batch_stats(x, c))
            }
            Mode::Recompute => self.stats[i]
                .clone()
                .ok_or_else(|| broken("batch statistics not saved by the forward"))?,
        })
    }

    /// BatchNorm node `i` and the Act node `i + 1` that alone consumes it, in
    /// one pass: the Act's value (codes, or ReLU outputs in a float model),
    /// computed with the same operations as the two nodes one after the
    /// other, without the BatchNorm output in between. Keeps the batch
    /// statistics like [`Ctx::compute`] does.
    fn compute_bn_act(
        &mut self,
        i: usize,
        vals: &[Option<Value>],
        mode: Mode,
    ) -> Result<Value, PassError> {
        let m = self.model;
        let Op::BatchNorm { input, .. } = &m.graph.nodes[i] else {
            return Err(broken("fused BatchNorm is not a BatchNorm"));
        };
        let xv = vals[*input]
            .as_ref()
            .ok_or_else(|| broken("input value not computed before its consumer"))?;
        let x = self.f32_of(xv, self.n * m.shapes[*input].len());
        let (gamma, beta, _, _) = m.slots[i].bn().ok_or_else(|| broken("bn slots"))?;
        let q = m.slots[i + 1].act().ok_or_else(|| broken("act slots"))?;
        let (g, b) = (&m.params[gamma].data, &m.params[beta].data);
        let st = self.bn_stats(i, &x, mode)?;
        let scheme = m.graph.scheme;
        let v = if scheme == QuantScheme::None {
            Value::F32(time(Phase::BatchNorm, || bn::apply_relu(&x, g, b, &st)))
        } else {
            let qp = &m.params[q].data;
            let scale = act::scale(scheme, qp);
            let packed = time(Phase::BatchNorm, || {
                bn::apply_codes(&x, g, b, &st, 1.0 / scale)
            });
            Value::Codes { packed, scale }
        };
        if matches!(mode, Mode::Train) {
            self.stats[i] = Some(st);
        }
        Ok(v)
    }

    /// Eval mode: Conv node `i`, the BatchNorm `i + 1` that alone consumes
    /// it and the Act `i + 2` that alone consumes that, as one pass over
    /// tiles of the convolution's output (`conv::forward_codes`): neither
    /// the conv output nor the BatchNorm output is ever stored. The same
    /// operations as the nodes one by one, so the same codes. `None` when
    /// the conv's operands are not integer.
    fn conv_bn_act_eval(
        &mut self,
        i: usize,
        vals: &[Option<Value>],
    ) -> Result<Option<Value>, PassError> {
        let m = self.model;
        let Op::Conv { input, .. } = &m.graph.nodes[i] else {
            return Err(broken("fused conv is not a Conv"));
        };
        let xv = vals[*input]
            .as_ref()
            .ok_or_else(|| broken("input value not computed before its consumer"))?;
        let (gamma, beta, mean, var) = m.slots[i + 1].bn().ok_or_else(|| broken("bn slots"))?;
        let q = m.slots[i + 2].act().ok_or_else(|| broken("act slots"))?;
        let st = bn::eval_stats(&m.buffers[mean].data, &m.buffers[var].data);
        let (a, b) = bn::affine(&m.params[gamma].data, &m.params[beta].data, &st);
        let scale = act::scale(m.graph.scheme, &m.params[q].data);
        let inv = 1.0 / scale;
        let g = self.geom(i)?;
        let w = self.weights(i)?.conv();
        let post = |x: &[f32], out: &mut [u8]| bn::codes_of_rows(x, &a, &b, inv, out);
        Ok(conv::forward_codes(&g, xv.as_conv_input(), w, &post)?
            .map(|packed| Value::Codes { packed, scale }))
    }

    /// One step of a forward pass at node `i`: a BatchNorm fused with the Act
    /// that alone consumes it, a residual Add summing into its operand in
    /// place, or the node alone. Returns the value and the node it belongs to
    /// (`i + 1` when fused).
    fn forward_step(
        &mut self,
        i: usize,
        last_use: &[usize],
        vals: &mut [Option<Value>],
        images: &[u8],
        mode: Mode,
    ) -> Result<(Value, usize), PassError> {
        let nodes = &self.model.graph.nodes;
        if mode == Mode::Eval
            && self.model.graph.scheme != QuantScheme::None
            && matches!(nodes[i], Op::Conv { .. })
            && matches!(nodes.get(i + 1), Some(Op::BatchNorm { input, .. }) if *input == i)
            && last_use[i] == i + 1
            && fuses_with_act(nodes, last_use, i + 1)
        {
            if let Some(v) = self.conv_bn_act_eval(i, vals)? {
                return Ok((v, i + 2));
            }
        }
        if fuses_with_act(nodes, last_use, i) {
            return Ok((self.compute_bn_act(i, vals, mode)?, i + 1));
        }
        if let Some(x) = take_add_operand(nodes, last_use, i, vals) {
            return Ok((self.add_into(i, x, vals)?, i));
        }
        Ok((self.compute(i, vals, images, mode)?, i))
    }

    /// Add node `i` with its first operand's value `x` already owned (taken
    /// from the pass because the Add is its last use): `x + b` in place, the
    /// same sums as [`Ctx::compute`] without copying `x` first.
    fn add_into(
        &self,
        i: usize,
        mut x: Vec<f32>,
        vals: &[Option<Value>],
    ) -> Result<Value, PassError> {
        let m = self.model;
        let Op::Add { b, .. } = &m.graph.nodes[i] else {
            return Err(broken("add_into on a node that is not an Add"));
        };
        let yv = vals[*b]
            .as_ref()
            .ok_or_else(|| broken("input value not computed before its consumer"))?;
        let y = self.f32_of(yv, self.n * m.shapes[*b].len());
        time(Phase::Elementwise, || {
            x.iter_mut().zip(y.iter()).for_each(|(p, q)| *p += q)
        });
        Ok(Value::F32(x))
    }

    /// Computes node `i` from its inputs' values.
    fn compute(
        &mut self,
        i: usize,
        vals: &[Option<Value>],
        images: &[u8],
        mode: Mode,
    ) -> Result<Value, PassError> {
        let m = self.model;
        let n = self.n;
        let val = |j: usize| {
            vals[j]
                .as_ref()
                .ok_or_else(|| broken("input value not computed before its consumer"))
        };
        let len = |j: usize| n * m.shapes[j].len();
        Ok(match &m.graph.nodes[i] {
            Op::Input { .. } => Value::Pixels(images.to_vec()),
            Op::Conv { input, .. } => {
                let g = self.geom(i)?;
                let w = self.weights(i)?.conv();
                Value::F32(conv::forward(&g, val(*input)?.as_conv_input(), w)?)
            }
            Op::BatchNorm { input, .. } => {
                let (gamma, beta, _, _) = m.slots[i].bn().ok_or_else(|| broken("bn slots"))?;
                let x = self.f32_of(val(*input)?, len(*input));
                let (g, b) = (&m.params[gamma].data, &m.params[beta].data);
                let st = self.bn_stats(i, &x, mode)?;
                let y = time(Phase::BatchNorm, || bn::apply(&x, g, b, &st));
                if matches!(mode, Mode::Train) {
                    self.stats[i] = Some(st);
                }
                Value::F32(y)
            }
            Op::Act { input, .. } => {
                let q = m.slots[i].act().ok_or_else(|| broken("act slots"))?;
                let x = self.f32_of(val(*input)?, len(*input));
                let scheme = m.graph.scheme;
                if scheme == QuantScheme::None {
                    Value::F32(x.iter().map(|v| v.max(0.0)).collect())
                } else {
                    let qp = &m.params[q].data;
                    let mut packed = vec![0u8; x.len().div_ceil(2)];
                    time(Phase::ActQuant, || {
                        act::quantize_packed(scheme, qp, &x, &mut packed)
                    });
                    Value::Codes {
                        packed,
                        scale: act::scale(scheme, qp),
                    }
                }
            }
            Op::Add { a, b } => {
                let mut x = self.f32_of(val(*a)?, len(*a)).into_owned();
                let y = self.f32_of(val(*b)?, len(*b));
                time(Phase::Elementwise, || {
                    x.iter_mut().zip(y.iter()).for_each(|(p, q)| *p += q)
                });
                Value::F32(x)
            }
            Op::GlobalAvgPool { input } => {
                let s = m.shapes[*input];
                let x = self.f32_of(val(*input)?, len(*input));
                Value::F32(time(Phase::Elementwise, || {
                    pool::gap_forward(&x, n, s.h * s.w, s.c)
                }))
            }
            Op::Linear { input, out, .. } => {
                let (_, b, _, _, cin) =
                    m.slots[i].linear().ok_or_else(|| broken("linear slots"))?;
                let x = self.f32_of(val(*input)?, len(*input));
                let w = self.weights(i)?.linear()?;
                Value::F32(time(Phase::IntGemm, || {
                    linear::forward(&x, n, cin, *out, w, &m.params[b].data)
                })?)
            }
        })
    }

    /// Makes sure `vals[j]` holds node `j`'s value, recomputing it (and any missing
    /// inputs) from the checkpoints.
    fn ensure(
        &mut self,
        j: usize,
        vals: &mut Vec<Option<Value>>,
        images: &[u8],
    ) -> Result<(), PassError> {
        if vals[j].is_some() {
            return Ok(());
        }
        for k in self.model.graph.nodes[j].inputs() {
            self.ensure(k, vals, images)?;
        }
        let v = self.compute(j, vals, images, Mode::Recompute)?;
        vals[j] = Some(v);
        Ok(())
    }

    /// Node `j`'s value after [`Ctx::ensure`].
    fn ensured<'v>(
        &mut self,
        j: usize,
        vals: &'v mut Vec<Option<Value>>,
        images: &[u8],
    ) -> Result<&'v Value, PassError> {
        self.ensure(j, vals, images)?;
        vals[j]
            .as_ref()
            .ok_or_else(|| broken("recomputed value missing"))
    }

    fn backward(
        &mut self,
        last_use: &[usize],
        mut vals: Vec<Option<Value>>,
        dlogits: Vec<f32>,
        images: &[u8],
    ) -> Result<Vec<Vec<f32>>, PassError> {
        let m = self.model;
        let n = self.n;
        let nodes = &m.graph.nodes;
        let mut grads: Vec<Vec<f32>> = m.params.iter().map(|t| vec![0.0; t.data.len()]).collect();
        let mut dnode: Vec<Option<Vec<f32>>> = vec![None; nodes.len()];
        match dnode.last_mut() {
            Some(d) => *d = Some(dlogits),
            None => return Err(broken("empty graph")),
        }
        fn add_to(d: &mut Option<Vec<f32>>, g: Vec<f32>) {
            match d {
                Some(v) => time(Phase::Elementwise, || {
                    v.iter_mut().zip(&g).for_each(|(a, b)| *a += b)
                }),
                None => *d = Some(g),
            }
        }
        for i in (0..nodes.len()).rev() {
            let Some(dy) = dnode[i].take() else {
                vals[i] = None;
                continue;
            };
            let len = |j: usize| n * m.shapes[j].len();
            match &nodes[i] {
                Op::Input { .. } => {}
                Op::Linear { input, out, .. } => {
                    let (w, b, wq, kind, cin) =
                        m.slots[i].linear().ok_or_else(|| broken("linear slots"))?;
                    let xv = self.ensured(*input, &mut vals, images)?;
                    let x = self.f32_of(xv, len(*input));
                    let lw = self.weights(i)?.linear()?;
                    let (dwq, db, dx) = time(Phase::FloatGemm, || {
                        linear::backward(&x, n, cin, *out, lw, &dy)
                    })?;
                    let (gw, gq) = two_mut(&mut grads, w, wq)?;
                    time(Phase::WeightQuant, || {
                        weight::backward(
                            kind,
                            &m.params[wq].data,
                            &m.params[w].data,
                            &dwq,
                            *out,
                            gw,
                            gq,
                        )
                    });
                    grads[b].iter_mut().zip(&db).for_each(|(a, v)| *a += v);
                    add_to(&mut dnode[*input], dx);
                }
                Op::GlobalAvgPool { input } => {
                    let s = m.shapes[*input];
                    let dx = time(Phase::Elementwise, || {
                        pool::gap_backward(&dy, n, s.h * s.w, s.c)
                    });
                    add_to(&mut dnode[*input], dx);
                }
                Op::Add { a, b } => {
                    add_to(&mut dnode[*b], dy.clone());
                    add_to(&mut dnode[*a], dy);
                }
                Op::Act { input, .. }
                    if !self.frozen_bn
                        && m.graph.scheme != QuantScheme::None
                        && fuses_with_act(nodes, last_use, *input) =>
                {
                    // The BatchNorm that only this Act reads, and the Act, in
                    // one backward (`bn::backward_with_act`): the BatchNorm's
                    // output is not recomputed into a tensor.
                    let bn_i = *input;
                    let Op::BatchNorm { input: bn_in, .. } = nodes[bn_i] else {
                        return Err(broken("fused Act's input is not a BatchNorm"));
                    };
                    let q = m.slots[i].act().ok_or_else(|| broken("act slots"))?;
                    let (gamma, beta, _, _) =
                        m.slots[bn_i].bn().ok_or_else(|| broken("bn slots"))?;
                    let xv = self.ensured(bn_in, &mut vals, images)?;
                    let x = self.f32_of(xv, len(bn_in));
                    let st = self.stats[bn_i]
                        .as_ref()
                        .ok_or_else(|| broken("batch statistics not saved"))?;
                    let features = m.shapes[bn_i].len();
                    let (gg, gb, gq) = three_mut(&mut grads, gamma, beta, q)?;
                    let dx = time(Phase::BatchNorm, || {
                        bn::backward_with_act(
                            &x,
                            &dy,
                            &m.params[gamma].data,
                            &m.params[beta].data,
                            st,
                            m.graph.scheme,
                            &m.params[q].data,
                            features,
                            [gg, gb, gq],
                        )
                    });
                    add_to(&mut dnode[bn_in], dx);
                }
                Op::Act { input, .. } => {
                    let q = m.slots[i].act().ok_or_else(|| broken("act slots"))?;
                    let xv = self.ensured(*input, &mut vals, images)?;
                    let x = self.f32_of(xv, len(*input));
                    let mut dx = vec![0.0f32; x.len()];
                    let features = m.shapes[*input].len();
                    time(Phase::ActQuant, || {
                        act::backward(
                            m.graph.scheme,
                            &m.params[q].data,
                            &x,
                            &dy,
                            &mut dx,
                            &mut grads[q],
                            features,
                        )
                    });
                    add_to(&mut dnode[*input], dx);
                }
                Op::BatchNorm { input, .. } => {
                    let (gamma, beta, _, _) = m.slots[i].bn().ok_or_else(|| broken("bn slots"))?;
                    let xv = self.ensured(*input, &mut vals, images)?;
                    let x = self.f32_of(xv, len(*input));
                    let st = self.stats[i]
                        .as_ref()
                        .ok_or_else(|| broken("batch statistics not saved"))?;
                    let (gg, gb) = two_mut(&mut grads, gamma, beta)?;
                    let dx = time(Phase::BatchNorm, || {
                        if self.frozen_bn {
                            bn::backward_frozen(&x, &dy, &m.params[gamma].data, st, gg, gb)
                        } else {
                            bn::backward(&x, &dy, &m.params[gamma].data, st, gg, gb)
                        }
                    });
                    add_to(&mut dnode[*input], dx);
                }
                Op::Conv { input, cout, .. } => {
                    let (w, wq, kind) = m.slots[i].conv().ok_or_else(|| broken("conv slots"))?;
                    let g = self.geom(i)?;
                    let need_dx = !matches!(nodes[*input], Op::Input { .. });
                    let xv = self.ensured(*input, &mut vals, images)?;
                    let cw = self.weights(i)?.conv();
                    let (dwq, dx) = conv::backward(&g, xv.as_conv_input(), cw, &dy, need_dx)?;
                    let (gw, gq) = two_mut(&mut grads, w, wq)?;
                    time(Phase::WeightQuant, || {
                        weight::backward(
                            kind,
                            &m.params[wq].data,
                            &m.params[w].data,
                            &dwq,
                            *cout,
                            gw,
                            gq,
                        )
                    });
                    if let Some(dx) = dx {
                        add_to(&mut dnode[*input], dx);
                    }
                }
            }
            vals[i] = None;
        }
        Ok(grads)
    }
}

/// Three distinct mutable elements of a vector.
fn three_mut<T>(
    v: &mut [T],
    a: usize,
    b: usize,
    c: usize,
) -> Result<(&mut T, &mut T, &mut T), PassError> {
    if a == b || a == c || b == c || a.max(b).max(c) >= v.len() {
        return Err(broken("three parameter slots alias"));
    }
    let mut it = v.iter_mut().enumerate();
    let (mut x, mut y, mut z) = (None, None, None);
    for (k, e) in &mut it {
        if k == a {
            x = Some(e);
        } else if k == b {
            y = Some(e);
        } else if k == c {
            z = Some(e);
        }
    }
    match (x, y, z) {
        (Some(x), Some(y), Some(z)) => Ok((x, y, z)),
        _ => Err(broken("three parameter slots")),
    }
}

/// Two distinct mutable elements of a vector.
fn two_mut<T>(v: &mut [T], a: usize, b: usize) -> Result<(&mut T, &mut T), PassError> {
    if a == b || a.max(b) >= v.len() {
        return Err(broken("two parameter slots alias"));
    }
    Ok(if a < b {
        let (x, y) = v.split_at_mut(b);
        (&mut x[a], &mut y[0])
    } else {
        let (x, y) = v.split_at_mut(a);
        (&mut y[0], &mut x[b])
    })
}

/// For each node, the last node that reads its value (a pass frees the value
/// after that node has run).
pub(crate) fn last_uses(nodes: &[Op]) -> Vec<usize> {
    let mut last_use = vec![0usize; nodes.len()];
    for (i, op) in nodes.iter().enumerate() {
        for j in op.inputs() {
            last_use[j] = i;
        }
    }
    last_use
}

/// Whether node `i` is a BatchNorm whose only consumer is the Act right after
/// it (so the two can run as one pass and the BatchNorm output never exists).
fn fuses_with_act(nodes: &[Op], last_use: &[usize], i: usize) -> bool {
    matches!(nodes[i], Op::BatchNorm { .. })
        && matches!(nodes.get(i + 1), Some(Op::Act { input, .. }) if *input == i)
        && last_use[i] == i + 1
}

/// For an Add node `i` that is the last use of its first operand's f32 value,
/// takes that value out of the pass so the sum can be made in place.
fn take_add_operand(
    nodes: &[Op],
    last_use: &[usize],
    i: usize,
    vals: &mut [Option<Value>],
) -> Option<Vec<f32>> {
    let Op::Add { a, b } = nodes[i] else {
        return None;
    };
    if a == b || last_use[a] != i || !matches!(vals[a], Some(Value::F32(_))) {
        return None;
    }
    match vals[a].take() {
        Some(Value::F32(x)) => Some(x),
        _ => None,
    }
}
