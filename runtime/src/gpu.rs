//! A model on a GPU (feature `gpu`): its weights quantized and kept on the
//! device, and the eval-mode forward pass run there from the same graph,
//! with the kernels of `qmul_kernels::gpu` in place of the CPU's (the same
//! packed layouts, so the same codes). Every intermediate value stays on
//! the device; only the logits come back.
//!
//! Quantized models only (4-bit body, 8-bit stem and classifier, or any
//! mix of 4- and 8-bit layers): a float layer is a clear error.

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

/// A layer's state on the device.
enum Layer {
    None,
    /// Packed signed codes in the integer GEMM's rows, per-channel scales.
    Weights {
        codes: Buf,
        scale: Buf,
        bits: u32,
        kdim: usize,
        bias: Option<Buf>,
    },
    Bn {
        gamma: Buf,
        beta: Buf,
        eval: BnStats,
    },
    Act {
        quant: ActQuant,
        q: Buf,
        scale: f32,
    },
}

/// A node's output on the device.
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
    model: Model,
    layers: Vec<Layer>,
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

impl<'g> DeviceModel<'g> {
    /// Uploads `model` and quantizes its weights on the device.
    pub fn upload(gpu: &'g Gpu, model: &Model) -> Result<DeviceModel<'g>, PassError> {
        let m = model;
        let scheme = m.graph.scheme;
        let mut layers = Vec::with_capacity(m.graph.nodes.len());
        for (i, op) in m.graph.nodes.iter().enumerate() {
            let layer = match (&m.slots[i], op) {
                (Slots::Conv { w, wq, kind, .. }, Op::Conv { cout, prec, .. })
                | (
                    Slots::Linear { w, wq, kind, .. },
                    Op::Linear {
                        out: cout, prec, ..
                    },
                ) => {
                    if *prec == Precision::F32 {
                        return Err(PassError(format!(
                            "the GPU path runs quantized layers (node {i} is f32)"
                        )));
                    }
                    let gk = weight_quant(*kind)?;
                    let wl = &m.params[*w].data;
                    let kdim = wl.len() / cout.max(&1);
                    let wb = gpu.upload_f32(wl);
                    let qb = gpu.upload_f32(&m.params[*wq].data);
                    let codes = gpu.scratch(cout * gk.row_bytes(kdim) / 4);
                    let scale = gpu.scratch(*cout);
                    gpu.weight_codes(gk, &wb, *cout, kdim, (&qb, 0), &codes, &scale)?;
                    let bias = match m.slots[i] {
                        Slots::Linear { b, .. } => Some(gpu.upload_f32(&m.params[b].data)),
                        _ => None,
                    };
                    Layer::Weights {
                        codes,
                        scale,
                        bits: gk.bits(),
                        kdim,
                        bias,
                    }
                }
                (
                    Slots::Bn {
                        gamma,
                        beta,
                        mean,
                        var,
                    },
                    _,
                ) => {
                    let c = m.params[*gamma].data.len();
                    let rm = gpu.upload_f32(&m.buffers[*mean].data);
                    let rv = gpu.upload_f32(&m.buffers[*var].data);
                    Layer::Bn {
                        gamma: gpu.upload_f32(&m.params[*gamma].data),
                        beta: gpu.upload_f32(&m.params[*beta].data),
                        eval: gpu.bn_eval_stats(&rm, &rv, c, bn::EPS)?,
                    }
                }
                (Slots::Act { q }, _) => {
                    let qp = &m.params[*q].data;
                    Layer::Act {
                        quant: act_quant(scheme)?,
                        q: gpu.upload_f32(qp),
                        scale: act::scale(scheme, qp),
                    }
                }
                _ => Layer::None,
            };
            layers.push(layer);
        }
        Ok(DeviceModel {
            gpu,
            model: model.clone(),
            layers,
        })
    }

    /// Eval-mode logits (`n x classes`) of `n` NHWC u8 images: the same
    /// graph and checks as [`Model::forward`], run on the device.
    pub fn forward(&self, images: &[u8], n: usize) -> Result<Vec<f32>, PassError> {
        let m = &self.model;
        let s = m.graph.input_shape();
        if n == 0 || n.checked_mul(s.len()) != Some(images.len()) {
            return Err(PassError(format!(
                "batch of {n} images needs {} bytes, got {}",
                n.saturating_mul(s.len()),
                images.len()
            )));
        }
        let nodes = &m.graph.nodes;
        let last_use = last_uses(nodes);
        let mut vals: Vec<Option<Value>> = (0..nodes.len()).map(|_| None).collect();
        for i in 0..nodes.len() {
            let v = self.compute(i, &vals, images, n)?;
            vals[i] = Some(v);
            for j in nodes[i].inputs() {
                if last_use[j] == i {
                    vals[j] = None;
                }
            }
        }
        let classes = m.classes();
        match vals.pop().flatten() {
            Some(Value::F32(l)) => Ok(self.gpu.download_f32(&l, n * classes)?),
            _ => Err(PassError("graph produced no logits".into())),
        }
    }

    /// A value as f32 on the device (codes dequantized into a new buffer).
    fn f32_of(&self, v: &Value, len: usize) -> Result<Buf, PassError> {
        Ok(match v {
            Value::F32(b) => b.clone(),
            Value::Codes { buf, scale } => {
                let out = self.gpu.scratch(len);
                self.gpu.dequantize(4, buf, len, *scale, &out)?;
                out
            }
            Value::Pixels(buf) => {
                let out = self.gpu.scratch(len);
                self.gpu.dequantize(8, buf, len, 1.0 / 255.0, &out)?;
                out
            }
        })
    }

    fn compute(
        &self,
        i: usize,
        vals: &[Option<Value>],
        images: &[u8],
        n: usize,
    ) -> Result<Value, PassError> {
        let (m, g) = (&self.model, self.gpu);
        let val = |j: usize| {
            vals[j]
                .as_ref()
                .ok_or_else(|| PassError("internal error: a value used before it exists".into()))
        };
        let len = |j: usize| n * m.shapes[j].len();
        let broken = || PassError(format!("internal error: node {i}'s state on the device"));
        Ok(match (&m.graph.nodes[i], &self.layers[i]) {
            (Op::Input { .. }, _) => Value::Pixels(g.upload_bytes(images)),
            (
                Op::Conv {
                    input,
                    cout,
                    k,
                    stride,
                    pad,
                    ..
                },
                Layer::Weights {
                    codes,
                    scale,
                    bits,
                    kdim,
                    ..
                },
            ) => {
                let x = m.shapes[*input];
                let shape = ConvShape {
                    n,
                    h: x.h,
                    w: x.w,
                    cin: x.c,
                    k: *k,
                    stride: *stride,
                    pad: *pad,
                };
                let (src, alpha) = match (val(*input)?, *bits) {
                    (Value::Pixels(b), 8) => (b, 1.0 / 255.0),
                    (Value::Codes { buf, scale }, 4) => (buf, *scale),
                    _ => {
                        return Err(PassError(format!(
                            "node {i}: a {bits}-bit conv on an input of another width"
                        )))
                    }
                };
                let rb = if *bits == 4 {
                    qmul_kernels::pack::row_bytes_4bit(*kdim)
                } else {
                    qmul_kernels::pack::row_bytes_8bit(*kdim)
                };
                let rows = shape.m();
                let cols = g.scratch(rows * rb / 4);
                g.im2col_codes(*bits, src, shape, &cols)?;
                let out = g.scratch(rows * cout);
                let d = QGemmDims {
                    m: rows,
                    n: *cout,
                    row_bytes: rb,
                    ldc: *cout,
                    alpha,
                    bits: *bits,
                };
                g.qgemm_on_device(d, &cols, codes, scale, &out, Tile::DEFAULT)?;
                Value::F32(out)
            }
            (Op::BatchNorm { input, .. }, Layer::Bn { gamma, beta, eval }) => {
                let x = self.f32_of(val(*input)?, len(*input))?;
                let c = m.shapes[i].c;
                let rows = len(*input) / c;
                let y = g.scratch(rows * c);
                g.bn_apply(&x, rows, c, gamma, beta, eval, false, &y)?;
                Value::F32(y)
            }
            (Op::Act { input, .. }, Layer::Act { quant, q, scale }) => {
                let x = self.f32_of(val(*input)?, len(*input))?;
                let e = len(*input);
                let out = g.scratch(e.div_ceil(8));
                g.act_codes(*quant, &x, e, (q, 0), &out)?;
                Value::Codes {
                    buf: out,
                    scale: *scale,
                }
            }
            (Op::Add { a, b }, _) => {
                let x = self.f32_of(val(*a)?, len(*a))?;
                let y = self.f32_of(val(*b)?, len(*b))?;
                let out = g.scratch(len(i));
                g.add(&x, &y, len(i), &out)?;
                Value::F32(out)
            }
            (Op::GlobalAvgPool { input }, _) => {
                let s = m.shapes[*input];
                let x = self.f32_of(val(*input)?, len(*input))?;
                let out = g.scratch(n * s.c);
                g.gap_forward(&x, n, s.h * s.w, s.c, &out)?;
                Value::F32(out)
            }
            (
                Op::Linear { input, out, .. },
                Layer::Weights {
                    codes,
                    scale,
                    bits: 8,
                    kdim,
                    bias: Some(bias),
                },
            ) => {
                let x = self.f32_of(val(*input)?, len(*input))?;
                let rb = qmul_kernels::pack::row_bytes_8bit(*kdim);
                let xq = g.scratch(n * rb / 4);
                let rs = g.scratch(n);
                g.quantize_rows(&x, n, *kdim, &xq, &rs)?;
                let y = g.scratch(n * out);
                let d = QGemmDims {
                    m: n,
                    n: *out,
                    row_bytes: rb,
                    ldc: *out,
                    alpha: 1.0,
                    bits: 8,
                };
                g.qgemm_on_device(d, &xq, codes, scale, &y, Tile::DEFAULT)?;
                g.row_scale_bias(&y, &rs, bias, n, *out)?;
                Value::F32(y)
            }
            (Op::Linear { .. }, _) => {
                return Err(PassError(
                    "the GPU path runs 8-bit classifiers (this one is not)".into(),
                ))
            }
            _ => return Err(broken()),
        })
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
