//! The training pass on the device (forward with batch statistics, weighted
//! cross-entropy, the straight-through backward) and SGD on the device's
//! parameters: the CPU's `exec` and `optim` with the GPU's kernels. The
//! forward keeps every value on the device for the backward (a GPU has the
//! memory the CPU path saves by recomputing).

use super::{broken, conv_shape, quantized_rows, weight_quant, DeviceModel, PassState, Value};
use crate::exec::{PassError, Targets};
use crate::graph::{Op, QuantScheme};
use crate::model::Slots;
use crate::ops::bn;
use qmul_kernels::gpu::{BEnc, Buf, Gpu, SGemmDims, Tile, WeightQuant};

/// The tile of the backward's f32 GEMMs.
const SGEMM_TILE: Tile = Tile {
    tm: 64,
    tn: 64,
    kw: 16,
    rm: 4,
    rn: 4,
};

/// The result of a training pass on the device.
pub struct DevicePass {
    pub loss: f32,
    /// The logits (`n x classes`), on the device.
    pub logits: Buf,
    /// One gradient per parameter tensor, on the device (the model's order).
    pub grads: Vec<Buf>,
}

/// SGD's momentum buffers on the device (PyTorch semantics, as `optim::Sgd`).
pub struct DeviceSgd {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    velocity: Vec<Buf>,
}

impl DeviceSgd {
    pub fn new(
        dm: &DeviceModel,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    ) -> Result<DeviceSgd, PassError> {
        let velocity = dm
            .model
            .params
            .iter()
            .map(|t| dm.gpu.zeros(t.data.len()))
            .collect::<Result<_, _>>()?;
        Ok(DeviceSgd {
            lr,
            momentum,
            weight_decay,
            velocity,
        })
    }

    /// The momentum buffers (for a training checkpoint).
    pub fn velocity(&self, dm: &DeviceModel) -> Result<Vec<Vec<f32>>, PassError> {
        self.velocity
            .iter()
            .zip(&dm.model.params)
            .map(|(v, t)| Ok(dm.gpu.download_f32(v, t.data.len())?))
            .collect()
    }

    /// Momentum buffers restored from a checkpoint (one per parameter
    /// tensor, of its length).
    pub fn set_velocity(&mut self, dm: &DeviceModel, v: &[Vec<f32>]) -> Result<(), PassError> {
        if v.len() != self.velocity.len()
            || v.iter()
                .zip(&dm.model.params)
                .any(|(a, t)| a.len() != t.data.len())
        {
            return Err(PassError("momentum buffers of another model".into()));
        }
        self.velocity = v
            .iter()
            .map(|t| dm.gpu.upload_f32(t))
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    /// One update of every parameter from `grads` (scaled by `mask` when
    /// given), then the quantizer parameters clamped into their ranges.
    pub fn step(
        &mut self,
        dm: &mut DeviceModel,
        grads: &[Buf],
        mask: Option<&[Buf]>,
    ) -> Result<(), PassError> {
        let g = dm.gpu;
        for (t, p) in dm.params.iter().enumerate() {
            let n = dm.model.params[t].data.len();
            g.sgd(
                p,
                &grads[t],
                &self.velocity[t],
                mask.map(|m| &m[t]),
                n,
                self.lr,
                self.momentum,
                self.weight_decay,
            )?;
        }
        dm.clamp_quant_params()
    }
}

/// Adds `g` into the node gradient `d` (a new buffer; buffers are never
/// written after a consumer may hold them).
fn add_to(gpu: &Gpu, d: &mut Option<Buf>, g: Buf, n: usize) -> Result<(), PassError> {
    *d = Some(match d.take() {
        Some(v) => {
            let out = gpu.scratch(n)?;
            gpu.add(&v, &g, n, &out)?;
            out
        }
        None => g,
    });
    Ok(())
}

impl DeviceModel<'_> {
    /// The quantizer parameters clamped into their valid ranges (as
    /// `Model::clamp_quant_params`).
    fn clamp_quant_params(&self) -> Result<(), PassError> {
        let (m, g) = (&self.model, self.gpu);
        for (s, op) in m.slots.iter().zip(&m.graph.nodes) {
            match (s, op) {
                (Slots::Conv { wq, kind, .. }, Op::Conv { cout, .. })
                | (Slots::Linear { wq, kind, .. }, Op::Linear { out: cout, .. }) => {
                    match weight_quant(*kind)? {
                        WeightQuant::Lsq => g.clamp(&self.params[*wq], 0, *cout, 1e-8, f32::MAX)?,
                        WeightQuant::Dsq => {
                            g.clamp(&self.params[*wq], 0, *cout, 1e-8, f32::MAX)?;
                            g.clamp(&self.params[*wq], *cout, 1, 1e-3, 0.499)?;
                        }
                        _ => {}
                    }
                }
                (Slots::Act { q }, _) => match m.graph.scheme {
                    QuantScheme::Pact | QuantScheme::Lsq => {
                        g.clamp(&self.params[*q], 0, 1, 1e-4, f32::MAX)?
                    }
                    QuantScheme::Dsq => {
                        g.clamp(&self.params[*q], 0, 1, 1e-4, f32::MAX)?;
                        g.clamp(&self.params[*q], 1, 1, 1e-3, 0.499)?;
                    }
                    QuantScheme::None => {}
                },
                _ => {}
            }
        }
        Ok(())
    }

    /// l1-sparse's penalty: `grads += gamma * signum(params)`.
    pub fn add_l1(&self, grads: &[Buf], gamma: f32) -> Result<(), PassError> {
        for (t, (gr, p)) in grads.iter().zip(&self.params).enumerate() {
            self.gpu
                .add_sign(gr, p, self.model.params[t].data.len(), gamma)?;
        }
        Ok(())
    }

    /// The sum over parameter tensors of each gradient's L2 norm (AGR's
    /// `G`): squared norms on the device, one download of one float a tensor.
    pub fn grad_norm_sum(&self, grads: &[Buf]) -> Result<f64, PassError> {
        let g = self.gpu;
        let sq = g.zeros(grads.len())?;
        for (t, gr) in grads.iter().enumerate() {
            g.sum_squares(gr, self.model.params[t].data.len(), &sq, t)?;
        }
        Ok(g.download_f32(&sq, grads.len())?
            .iter()
            .map(|&s| (s as f64).sqrt())
            .sum())
    }

    /// Whether every parameter is finite (a download of every tensor: for
    /// once an epoch).
    pub fn params_finite(&self) -> Result<Option<String>, PassError> {
        for (t, b) in self.model.params.iter().zip(&self.params) {
            if self
                .gpu
                .download_f32(b, t.data.len())?
                .iter()
                .any(|v| !v.is_finite())
            {
                return Ok(Some(t.name.clone()));
            }
        }
        Ok(None)
    }

    /// Training pass on the device: forward with batch statistics, weighted
    /// cross-entropy, straight-through backward; the running statistics
    /// updated when `update_running`. The same checks as `Model::train_pass`;
    /// the parameters are not changed ([`DeviceSgd::step`] does that).
    pub fn train_pass(
        &mut self,
        images: &[u8],
        n: usize,
        t: Targets,
        update_running: bool,
    ) -> Result<DevicePass, PassError> {
        self.check_batch(images, n)?;
        let classes = self.model.classes();
        if t.labels.len() != n || t.weights.len() != n {
            return Err(PassError(format!(
                "{n} images but {} labels and {} weights",
                t.labels.len(),
                t.weights.len()
            )));
        }
        if let Some(&bad) = t.labels.iter().find(|&&l| l as usize >= classes) {
            return Err(PassError(format!(
                "label {bad} out of range for {classes} classes"
            )));
        }
        if t.weights.iter().any(|w| !w.is_finite()) {
            return Err(PassError("non-finite loss weight".into()));
        }
        let g = self.gpu;
        let mut p = PassState::new(self, n, true)?;
        let nodes = &self.model.graph.nodes;
        for i in 0..nodes.len() {
            let v = p.compute(self, i, images)?;
            p.vals[i] = Some(v);
        }
        let logits = match p.vals.last().cloned().flatten() {
            Some(Value::F32(l)) => l,
            _ => return Err(PassError("graph produced no logits".into())),
        };
        let (tb, wb) = (g.upload_u32(t.labels)?, g.upload_f32(t.weights)?);
        let dlogits = g.scratch(n * classes)?;
        let loss = g.zeros(1)?;
        g.weighted_ce(&logits, &tb, &wb, n, classes, &dlogits, (&loss, 0))?;
        let grads = self.backward(&mut p, dlogits)?;
        if update_running {
            for (i, st) in p.stats.iter().enumerate() {
                if let (Some(st), Slots::Bn { mean, var, .. }) = (st, &self.model.slots[i]) {
                    let rows = n * self.model.shapes[i].h * self.model.shapes[i].w;
                    let c = self.model.shapes[i].c;
                    g.bn_update_running(
                        st,
                        rows,
                        c,
                        bn::MOMENTUM,
                        (&self.buffers[*mean], &self.buffers[*var]),
                    )?;
                }
            }
        }
        Ok(DevicePass {
            loss: g.download_f32(&loss, 1)?[0],
            logits,
            grads,
        })
    }

    fn backward(&self, p: &mut PassState, dlogits: Buf) -> Result<Vec<Buf>, PassError> {
        let (m, g, n) = (&self.model, self.gpu, p.n);
        let nodes = &m.graph.nodes;
        let grads: Vec<Buf> = m
            .params
            .iter()
            .map(|t| g.zeros(t.data.len()))
            .collect::<Result<_, _>>()?;
        let mut dnode: Vec<Option<Buf>> = (0..nodes.len()).map(|_| None).collect();
        *dnode.last_mut().ok_or_else(|| broken("empty graph"))? = Some(dlogits);
        let len = |j: usize| n * m.shapes[j].len();
        for i in (0..nodes.len()).rev() {
            let Some(dy) = dnode[i].take() else {
                continue;
            };
            match &nodes[i] {
                Op::Input { .. } => {}
                Op::Linear { input, out, .. } => {
                    let (w, b, wq, _, cin) =
                        m.slots[i].linear().ok_or_else(|| broken("linear slots"))?;
                    let q = p.qlayer(i)?;
                    let x = p.f32_of(g, p.val(*input)?, len(*input))?;
                    // dW from the dequantized inputs the forward multiplied.
                    let (xq, rs) = quantized_rows(g, &x, n, cin)?;
                    let xin = g.scratch(n * cin)?;
                    g.dequantize_rows(&xq, &rs, n, cin, &xin)?;
                    let dwq = g.scratch(out * cin)?;
                    let dw = SGemmDims {
                        m: *out,
                        n: cin,
                        k: n,
                        a_rs: 1,
                        a_cs: *out,
                        b_rs: cin,
                        b: BEnc::F32,
                        ldc: cin,
                        alpha: 1.0,
                        beta: 0.0,
                    };
                    g.sgemm_on_device(dw, &dy, &xin, &dwq, SGEMM_TILE)?;
                    g.weight_backward(
                        q.kind,
                        &self.params[w],
                        &dwq,
                        *out,
                        cin,
                        (&self.params[wq], 0),
                        &grads[w],
                        (&grads[wq], 0),
                    )?;
                    g.col_sums(&dy, n, *out, &grads[b])?;
                    let dys = g.scratch(n * out)?;
                    g.scale_cols(&dy, &q.scale, n, *out, &dys)?;
                    let dx = g.scratch(n * cin)?;
                    let d = SGemmDims {
                        m: n,
                        n: cin,
                        k: *out,
                        a_rs: *out,
                        a_cs: 1,
                        b_rs: q.row_bytes(),
                        b: BEnc::S8,
                        ldc: cin,
                        alpha: 1.0,
                        beta: 0.0,
                    };
                    g.sgemm_on_device(d, &dys, &q.codes, &dx, SGEMM_TILE)?;
                    add_to(g, &mut dnode[*input], dx, len(*input))?;
                }
                Op::GlobalAvgPool { input } => {
                    let s = m.shapes[*input];
                    let dx = g.scratch(len(*input))?;
                    g.gap_backward(&dy, n, s.h * s.w, s.c, &dx)?;
                    add_to(g, &mut dnode[*input], dx, len(*input))?;
                }
                Op::Add { a, b } => {
                    add_to(g, &mut dnode[*b], dy.clone(), len(i))?;
                    add_to(g, &mut dnode[*a], dy, len(i))?;
                }
                Op::Act { input, .. } => {
                    let q = m.slots[i].act().ok_or_else(|| broken("act slots"))?;
                    let x = p.f32_of(g, p.val(*input)?, len(*input))?;
                    let dx = g.scratch(len(*input))?;
                    let features = m.shapes[*input].len();
                    g.act_backward(
                        super::act_quant(m.graph.scheme)?,
                        &x,
                        &dy,
                        len(*input),
                        (&self.params[q], 0),
                        &dx,
                        (&grads[q], 0),
                        features,
                    )?;
                    add_to(g, &mut dnode[*input], dx, len(*input))?;
                }
                Op::BatchNorm { input, .. } => {
                    let (gamma, beta, _, _) = m.slots[i].bn().ok_or_else(|| broken("bn slots"))?;
                    let x = p.f32_of(g, p.val(*input)?, len(*input))?;
                    let st = p.stats[i]
                        .as_ref()
                        .ok_or_else(|| broken("batch statistics not saved"))?;
                    let c = m.shapes[i].c;
                    let dx = g.scratch(len(*input))?;
                    g.bn_backward(
                        &x,
                        &dy,
                        len(*input) / c,
                        c,
                        &self.params[gamma],
                        st,
                        &grads[gamma],
                        &grads[beta],
                        &dx,
                    )?;
                    add_to(g, &mut dnode[*input], dx, len(*input))?;
                }
                Op::Conv { input, cout, .. } => {
                    let (w, wq, _) = m.slots[i].conv().ok_or_else(|| broken("conv slots"))?;
                    let q = p.qlayer(i)?;
                    let shape = conv_shape(m, i, n)?;
                    let (src, alpha) = p.conv_input(p.val(*input)?, q, i)?;
                    let cols = p.columns(g, shape, src, q)?;
                    let rows = shape.m();
                    // dW = alpha * dY^T X, X the codes' columns widened as loaded.
                    let dwq = g.scratch(cout * q.kdim)?;
                    let d = SGemmDims {
                        m: *cout,
                        n: q.kdim,
                        k: rows,
                        a_rs: 1,
                        a_cs: *cout,
                        b_rs: q.row_bytes(),
                        b: if q.bits() == 4 { BEnc::U4 } else { BEnc::U8 },
                        ldc: q.kdim,
                        alpha,
                        beta: 0.0,
                    };
                    g.sgemm_on_device(d, &dy, &cols, &dwq, SGEMM_TILE)?;
                    g.weight_backward(
                        q.kind,
                        &self.params[w],
                        &dwq,
                        *cout,
                        q.kdim,
                        (&self.params[wq], 0),
                        &grads[w],
                        (&grads[wq], 0),
                    )?;
                    if !matches!(nodes[*input], Op::Input { .. }) {
                        // dX = col2im((dY diag(scale)) W_codes).
                        let dys = g.scratch(rows * cout)?;
                        g.scale_cols(&dy, &q.scale, rows, *cout, &dys)?;
                        let dcols = g.scratch(rows * q.kdim)?;
                        let d = SGemmDims {
                            m: rows,
                            n: q.kdim,
                            k: *cout,
                            a_rs: *cout,
                            a_cs: 1,
                            b_rs: q.row_bytes(),
                            b: if q.bits() == 4 { BEnc::S4 } else { BEnc::S8 },
                            ldc: q.kdim,
                            alpha: 1.0,
                            beta: 0.0,
                        };
                        g.sgemm_on_device(d, &dys, &q.codes, &dcols, SGEMM_TILE)?;
                        let dx = g.zeros(len(*input))?;
                        g.col2im_add(&dcols, q.kdim, shape, &dx)?;
                        add_to(g, &mut dnode[*input], dx, len(*input))?;
                    }
                }
            }
            p.vals[i] = None;
        }
        Ok(grads)
    }
}
