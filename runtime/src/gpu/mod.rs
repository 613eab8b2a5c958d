//! A model on a GPU (feature `gpu`): its parameters, running statistics and
//! quantizer state kept on the device, the eval forward and the training
//! pass (forward with batch statistics, weighted cross-entropy, the
//! straight-through backward) run there from the same graph with the kernels
//! of `qmul_kernels::gpu` in place of the CPU's (the same packed layouts, so
//! the same codes), and SGD applied there. Values stay on the device; a
//! pass brings back the loss (and, in eval, the logits), and reads the
//! activation quantizers' few parameters once (their scales are launch
//! arguments).
//!
//! Quantized models only (4-bit body, 8-bit stem and classifier, or any mix
//! of 4- and 8-bit layers): a float layer is a clear error.

mod learner;
mod train;

pub use learner::GpuLearner;
pub use train::{DevicePass, DeviceSgd};

use crate::exec::{last_uses, PassError};
use crate::graph::{Op, Precision, QuantScheme};
use crate::model::{Model, Slots};
use crate::ops::bn;
use crate::quant::{act, weight};
use qmul_kernels::gpu::{
    ActQuant, BnStats, Buf, ConvShape, Gpu, GpuError, QGemmDims, Tile, WeightQuant,
};

impl From<GpuError> for PassError {
    fn from(e: GpuError) -> Self {
        PassError(format!("GPU: {e}"))
    }
}

/// A layer's weights quantized for one pass.
struct QLayer {
    /// Packed signed codes in the integer GEMM's rows.
    codes: Buf,
    /// Per-channel scales.
    scale: Buf,
    kind: WeightQuant,
    cout: usize,
    kdim: usize,
}

impl QLayer {
    fn bits(&self) -> u32 {
        self.kind.bits()
    }
    fn row_bytes(&self) -> usize {
        self.kind.row_bytes(self.kdim)
    }
}

/// A node's output on the device.
#[derive(Clone)]
enum Value {
    /// The input batch's u8 pixels (value = byte / 255), four to a word.
    Pixels(Buf),
    /// Packed unsigned 4-bit codes (value = code * scale), eight to a word.
    Codes {
        buf: Buf,
        scale: f32,
    },
    F32(Buf),
}

/// A model resident on a GPU.
pub struct DeviceModel<'g> {
    gpu: &'g Gpu,
    /// The graph, shapes and slots; its parameter values are those of the
    /// upload until [`DeviceModel::to_model`] brings the device's back.
    model: Model,
    params: Vec<Buf>,
    buffers: Vec<Buf>,
}

fn act_quant(scheme: QuantScheme) -> Result<ActQuant, PassError> {
    Ok(match scheme {
        QuantScheme::Pact => ActQuant::Pact,
        QuantScheme::Lsq => ActQuant::Lsq,
        QuantScheme::Dsq => ActQuant::Dsq,
        QuantScheme::None => {
            return Err(PassError(
                "the GPU path runs quantized models (this one is full precision)".into(),
            ))
        }
    })
}

fn weight_quant(kind: weight::WeightQuant) -> Result<WeightQuant, PassError> {
    Ok(match kind {
        weight::WeightQuant::MaxAbs { qmax } if qmax <= 7.0 => WeightQuant::MaxAbs4,
        weight::WeightQuant::MaxAbs { .. } => WeightQuant::MaxAbs8,
        weight::WeightQuant::Lsq => WeightQuant::Lsq,
        weight::WeightQuant::Dsq => WeightQuant::Dsq,
        weight::WeightQuant::None => {
            return Err(PassError(
                "the GPU path runs quantized layers (a layer has f32 weights)".into(),
            ))
        }
    })
}

fn broken(what: &str) -> PassError {
    PassError(format!("internal error (GPU path): {what}"))
}

impl<'g> DeviceModel<'g> {
    /// Uploads `model`'s parameters and running statistics. Errors for a
    /// model the GPU path does not run (a float layer, a float scheme).
    pub fn upload(gpu: &'g Gpu, model: &Model) -> Result<DeviceModel<'g>, PassError> {
        act_quant(model.graph.scheme)?;
        for (i, op) in model.graph.nodes.iter().enumerate() {
            if let Op::Conv { prec, .. } | Op::Linear { prec, .. } = op {
                if *prec == Precision::F32 {
                    return Err(PassError(format!(
                        "the GPU path runs quantized layers (node {i} is f32)"
                    )));
                }
            }
            if let Slots::Conv { kind, .. } | Slots::Linear { kind, .. } = model.slots[i] {
                weight_quant(kind)?;
            }
        }
        Ok(DeviceModel {
            gpu,
            params: model
                .params
                .iter()
                .map(|t| gpu.upload_f32(&t.data))
                .collect::<Result<_, _>>()?,
            buffers: model
                .buffers
                .iter()
                .map(|t| gpu.upload_f32(&t.data))
                .collect::<Result<_, _>>()?,
            model: model.clone(),
        })
    }

    /// The model with the device's parameters and running statistics.
    pub fn to_model(&self) -> Result<Model, PassError> {
        let mut m = self.model.clone();
        for (t, b) in m.params.iter_mut().zip(&self.params) {
            t.data = self.gpu.download_f32(b, t.data.len())?;
        }
        for (t, b) in m.buffers.iter_mut().zip(&self.buffers) {
            t.data = self.gpu.download_f32(b, t.data.len())?;
        }
        Ok(m)
    }

    /// The graph and shapes (parameter values: see [`DeviceModel::to_model`]).
    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// Every weighted layer's weights quantized on the device.
    fn quantize_weights(&self) -> Result<Vec<Option<QLayer>>, PassError> {
        let (m, g) = (&self.model, self.gpu);
        let mut out = Vec::with_capacity(m.graph.nodes.len());
        for (i, op) in m.graph.nodes.iter().enumerate() {
            let q = match (&m.slots[i], op) {
                (Slots::Conv { w, wq, kind, .. }, Op::Conv { cout, .. })
                | (Slots::Linear { w, wq, kind, .. }, Op::Linear { out: cout, .. }) => {
                    let kind = weight_quant(*kind)?;
                    let kdim = m.params[*w].data.len() / (*cout).max(1);
                    let codes = g.scratch(cout * kind.row_bytes(kdim) / 4)?;
                    let scale = g.scratch(*cout)?;
                    g.weight_codes(
                        kind,
                        &self.params[*w],
                        *cout,
                        kdim,
                        (&self.params[*wq], 0),
                        &codes,
                        &scale,
                    )?;
                    Some(QLayer {
                        codes,
                        scale,
                        kind,
                        cout: *cout,
                        kdim,
                    })
                }
                _ => None,
            };
            out.push(q);
        }
        Ok(out)
    }

    /// Each Act node's code scale, from the device's parameters (read once
    /// per pass: they are launch arguments of the next layers' kernels).
    fn act_scales(&self) -> Result<Vec<f32>, PassError> {
        let m = &self.model;
        let scheme = m.graph.scheme;
        let mut out = vec![0.0f32; m.graph.nodes.len()];
        for (i, s) in m.slots.iter().enumerate() {
            if let Slots::Act { q } = *s {
                let n = act::param_count(scheme);
                let qp = self.gpu.download_f32(&self.params[q], n)?;
                if qp[0] <= 0.0 {
                    return Err(PassError(format!(
                        "node {i}: the activation quantizer's range is not set (train one \
                         step on the CPU first)"
                    )));
                }
                out[i] = act::scale(scheme, &qp);
            }
        }
        Ok(out)
    }

    fn check_batch(&self, images: &[u8], n: usize) -> Result<(), PassError> {
        let s = self.model.graph.input_shape();
        if n == 0 || n.checked_mul(s.len()) != Some(images.len()) {
            return Err(PassError(format!(
                "batch of {n} images needs {} bytes, got {}",
                n.saturating_mul(s.len()),
                images.len()
            )));
        }
        Ok(())
    }

    /// Eval-mode logits (`n x classes`) of `n` NHWC u8 images: the same
    /// graph and checks as [`Model::forward`], run on the device.
    pub fn forward(&self, images: &[u8], n: usize) -> Result<Vec<f32>, PassError> {
        self.check_batch(images, n)?;
        let mut p = PassState::new(self, n, false)?;
        let nodes = &self.model.graph.nodes;
        let last_use = last_uses(nodes);
        for i in 0..nodes.len() {
            let v = p.compute(self, i, images)?;
            p.vals[i] = Some(v);
            for j in nodes[i].inputs() {
                if last_use[j] == i {
                    p.vals[j] = None;
                }
            }
        }
        match p.vals.pop().flatten() {
            Some(Value::F32(l)) => Ok(self.gpu.download_f32(&l, n * self.model.classes())?),
            _ => Err(PassError("graph produced no logits".into())),
        }
    }
}

/// One pass's state: the quantized weights, Act scales, node values and
/// (training) batch statistics.
struct PassState {
    n: usize,
    train: bool,
    qw: Vec<Option<QLayer>>,
    act_scale: Vec<f32>,
    vals: Vec<Option<Value>>,
    stats: Vec<Option<BnStats>>,
}

impl PassState {
    fn new(dm: &DeviceModel, n: usize, train: bool) -> Result<PassState, PassError> {
        let len = dm.model.graph.nodes.len();
        Ok(PassState {
            n,
            train,
            qw: dm.quantize_weights()?,
            act_scale: dm.act_scales()?,
            vals: (0..len).map(|_| None).collect(),
            stats: (0..len).map(|_| None).collect(),
        })
    }

    fn val(&self, j: usize) -> Result<&Value, PassError> {
        self.vals[j]
            .as_ref()
            .ok_or_else(|| broken("a value used before it exists"))
    }

    fn qlayer(&self, i: usize) -> Result<&QLayer, PassError> {
        self.qw[i]
            .as_ref()
            .ok_or_else(|| broken("weights of a layer without weights"))
    }

    /// A value as f32 on the device (codes dequantized into a new buffer).
    fn f32_of(&self, g: &Gpu, v: &Value, len: usize) -> Result<Buf, PassError> {
        Ok(match v {
            Value::F32(b) => b.clone(),
            Value::Codes { buf, scale } => {
                let out = g.scratch(len)?;
                g.dequantize(4, buf, len, *scale, &out)?;
                out
            }
            Value::Pixels(buf) => {
                let out = g.scratch(len)?;
                g.dequantize(8, buf, len, 1.0 / 255.0, &out)?;
                out
            }
        })
    }

    /// The convolution's input as the integer GEMM takes it: its codes'
    /// width, buffer and scale (`alpha`).
    fn conv_input<'v>(
        &self,
        v: &'v Value,
        q: &QLayer,
        i: usize,
    ) -> Result<(&'v Buf, f32), PassError> {
        match (v, q.bits()) {
            (Value::Pixels(b), 8) => Ok((b, 1.0 / 255.0)),
            (Value::Codes { buf, scale }, 4) => Ok((buf, *scale)),
            _ => Err(PassError(format!(
                "node {i}: a {}-bit conv on an input of another width",
                q.bits()
            ))),
        }
    }

    /// The conv's column matrix (im2col of its input's codes).
    fn columns(&self, g: &Gpu, shape: ConvShape, src: &Buf, q: &QLayer) -> Result<Buf, PassError> {
        let cols = g.scratch(shape.m() * q.row_bytes() / 4)?;
        g.im2col_codes(q.bits(), src, shape, &cols)?;
        Ok(cols)
    }

    fn compute(&mut self, dm: &DeviceModel, i: usize, images: &[u8]) -> Result<Value, PassError> {
        let (m, g, n) = (&dm.model, dm.gpu, self.n);
        let len = |j: usize| n * m.shapes[j].len();
        Ok(match &m.graph.nodes[i] {
            Op::Input { .. } => Value::Pixels(g.upload_bytes(images)?),
            Op::Conv { input, .. } => {
                let q = self.qlayer(i)?;
                let shape = conv_shape(m, i, n)?;
                let (src, alpha) = self.conv_input(self.val(*input)?, q, i)?;
                let cols = self.columns(g, shape, src, q)?;
                let out = g.scratch(shape.m() * q.cout)?;
                let d = QGemmDims {
                    m: shape.m(),
                    n: q.cout,
                    row_bytes: q.row_bytes(),
                    ldc: q.cout,
                    alpha,
                    bits: q.bits(),
                };
                g.qgemm_on_device(d, &cols, &q.codes, &q.scale, &out, Tile::DEFAULT)?;
                Value::F32(out)
            }
            Op::BatchNorm { input, .. } => {
                let (gamma, beta, mean, var) = m.slots[i].bn().ok_or_else(|| broken("bn slots"))?;
                let x = self.f32_of(g, self.val(*input)?, len(*input))?;
                let c = m.shapes[i].c;
                let rows = len(*input) / c;
                let st = if self.train {
                    g.bn_stats(&x, rows, c, bn::EPS)?
                } else {
                    g.bn_eval_stats(&dm.buffers[mean], &dm.buffers[var], c, bn::EPS)?
                };
                let y = g.scratch(rows * c)?;
                g.bn_apply(
                    &x,
                    rows,
                    c,
                    &dm.params[gamma],
                    &dm.params[beta],
                    &st,
                    false,
                    &y,
                )?;
                if self.train {
                    self.stats[i] = Some(st);
                }
                Value::F32(y)
            }
            Op::Act { input, .. } => {
                let q = m.slots[i].act().ok_or_else(|| broken("act slots"))?;
                let x = self.f32_of(g, self.val(*input)?, len(*input))?;
                let e = len(*input);
                let out = g.scratch(e.div_ceil(8))?;
                g.act_codes(act_quant(m.graph.scheme)?, &x, e, (&dm.params[q], 0), &out)?;
                Value::Codes {
                    buf: out,
                    scale: self.act_scale[i],
                }
            }
            Op::Add { a, b } => {
                let x = self.f32_of(g, self.val(*a)?, len(*a))?;
                let y = self.f32_of(g, self.val(*b)?, len(*b))?;
                let out = g.scratch(len(i))?;
                g.add(&x, &y, len(i), &out)?;
                Value::F32(out)
            }
            Op::GlobalAvgPool { input } => {
                let s = m.shapes[*input];
                let x = self.f32_of(g, self.val(*input)?, len(*input))?;
                let out = g.scratch(n * s.c)?;
                g.gap_forward(&x, n, s.h * s.w, s.c, &out)?;
                Value::F32(out)
            }
            Op::Linear { input, out, .. } => {
                let q = self.qlayer(i)?;
                if q.bits() != 8 {
                    return Err(PassError("the GPU path runs 8-bit classifiers".into()));
                }
                let (_, b, _, _, cin) =
                    m.slots[i].linear().ok_or_else(|| broken("linear slots"))?;
                let x = self.f32_of(g, self.val(*input)?, len(*input))?;
                let (xq, rs) = quantized_rows(g, &x, n, cin)?;
                let y = g.scratch(n * out)?;
                let d = QGemmDims {
                    m: n,
                    n: *out,
                    row_bytes: q.row_bytes(),
                    ldc: *out,
                    alpha: 1.0,
                    bits: 8,
                };
                g.qgemm_on_device(d, &xq, &q.codes, &q.scale, &y, Tile::DEFAULT)?;
                g.row_scale_bias(&y, &rs, &dm.params[b], n, *out)?;
                Value::F32(y)
            }
        })
    }
}

/// The classifier's input rows quantized (codes, per-row scales).
fn quantized_rows(g: &Gpu, x: &Buf, n: usize, cin: usize) -> Result<(Buf, Buf), PassError> {
    let xq = g.scratch(n * qmul_kernels::pack::row_bytes_8bit(cin) / 4)?;
    let rs = g.scratch(n)?;
    g.quantize_rows(x, n, cin, &xq, &rs)?;
    Ok((xq, rs))
}

/// Conv node `i`'s geometry for a batch of `n`.
fn conv_shape(m: &Model, i: usize, n: usize) -> Result<ConvShape, PassError> {
    match &m.graph.nodes[i] {
        Op::Conv {
            input,
            k,
            stride,
            pad,
            ..
        } => {
            let x = m.shapes[*input];
            Ok(ConvShape {
                n,
                h: x.h,
                w: x.w,
                cin: x.c,
                k: *k,
                stride: *stride,
                pad: *pad,
            })
        }
        _ => Err(broken("conv geometry of a node that is not a conv")),
    }
}

impl crate::samples::Forward for DeviceModel<'_> {
    fn logits(&self, images: &[u8], n: usize) -> Result<Vec<f32>, PassError> {
        self.forward(images, n)
    }

    fn classes(&self) -> usize {
        self.model.classes()
    }

    fn input_shape(&self) -> crate::graph::Shape {
        self.model.graph.input_shape()
    }
}
