//! The training step's operations other than the GEMMs, on device buffers
//! ([`Buf`]): activation quantizers, BatchNorm, the residual add, pooling,
//! the loss, SGD, and the reductions that Similar Labels, AGR and the
//! metrics need. Each checks its buffers' sizes, launches and returns
//! without waiting (the device runs launches in order); results stay on the
//! device until a caller downloads them. `runtime/tests/gpu_ops.rs` runs
//! each against the runtime's CPU function of the same name.

use super::act::{self, ActQuant};
use super::conv;
use super::elementwise as ew;
use super::reduce::{self, UNITS};
use super::wquant;
use super::{caught, check_operands, loss, norm, Buf, Client, Gpu, GpuError};
use cubecl::prelude::*;

/// A device buffer as a kernel argument.
macro_rules! arg {
    ($b:expr) => {
        // SAFETY: every launch below first checks (`check_operands`) that
        // each buffer holds the elements its kernel indexes.
        unsafe { ArrayArg::from_raw_parts($b.handle.clone(), $b.len) }
    };
}

/// Runs `$body` with `$cl` the client and `R` its runtime type, turning a
/// panic inside cubecl into an error.
macro_rules! launch {
    ($gpu:expr, |$cl:ident, $r:ident| $body:expr) => {
        match &$gpu.client {
            Client::Wgpu($cl) => {
                type $r = cubecl::wgpu::WgpuRuntime;
                caught(|| $body)?
            }
            #[cfg(feature = "cuda")]
            Client::Cuda($cl) => {
                type $r = cubecl::cuda::CudaRuntime;
                caught(|| $body)?
            }
        }
    };
}

/// The cubes of [`UNITS`] units covering `units` units, as a 2-D grid (a
/// dimension holds at most 65,535 cubes), and how many cubes that is.
fn grid_1d(op: &str, units: usize) -> Result<(CubeCount, CubeDim, usize), GpuError> {
    let cubes = units.div_ceil(UNITS as usize).max(1);
    let x = cubes.min(65_535);
    let y = cubes.div_ceil(x);
    if y > 65_535 {
        return Err(GpuError(format!(
            "{op} on the GPU: {units} units are too many"
        )));
    }
    Ok((
        CubeCount::Static(x as u32, y as u32, 1),
        CubeDim::new_1d(UNITS),
        x * y,
    ))
}

/// The grid of one cube per item (channel), and its cube count.
fn grid_per_item(op: &str, items: usize) -> Result<(CubeCount, CubeDim, usize), GpuError> {
    grid_1d(op, items * UNITS as usize)
}

/// The geometry of a convolution: `n x h x w x cin` NHWC input, square
/// kernel `k`, `stride`, zero padding `pad` (the runtime's `ConvGeom`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvShape {
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    /// Rows of the column matrix (output pixels of the batch).
    pub fn m(&self) -> usize {
        self.n * self.oh() * self.ow()
    }
    /// Elements of a column row (weights per output channel).
    pub fn kdim(&self) -> usize {
        self.k * self.k * self.cin
    }
    fn valid(&self) -> bool {
        self.k > 0
            && self.stride > 0
            && self.h + 2 * self.pad >= self.k
            && self.w + 2 * self.pad >= self.k
    }
}

/// A weight quantizer (the runtime's `WeightQuant` of a quantized layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightQuant {
    /// Max-abs, 4-bit (`qmax` 7; PACT models) or 8-bit (`qmax` 127; the stem
    /// and the classifier).
    MaxAbs4,
    MaxAbs8,
    /// LSQ, 4-bit: a step per channel.
    Lsq,
    /// DSQ, 4-bit: an upper clip per channel and one `alpha`.
    Dsq,
}

impl WeightQuant {
    pub fn bits(self) -> u32 {
        if self == WeightQuant::MaxAbs8 {
            8
        } else {
            4
        }
    }

    /// Bytes of one packed row of `k` codes.
    pub fn row_bytes(self, k: usize) -> usize {
        if self.bits() == 8 {
            crate::pack::row_bytes_8bit(k)
        } else {
            crate::pack::row_bytes_4bit(k)
        }
    }

    /// Parameters of a layer of `cout` channels.
    pub fn params(self, cout: usize) -> usize {
        match self {
            WeightQuant::MaxAbs4 | WeightQuant::MaxAbs8 => 0,
            WeightQuant::Lsq => cout,
            WeightQuant::Dsq => cout + 1,
        }
    }

    fn code(self) -> u32 {
        match self {
            WeightQuant::MaxAbs4 | WeightQuant::MaxAbs8 => wquant::MAXABS,
            WeightQuant::Lsq => wquant::LSQ,
            WeightQuant::Dsq => wquant::DSQ,
        }
    }
}

/// A BatchNorm's batch (or running) statistics on the device, `c` each.
pub struct BnStats {
    pub mean: Buf,
    pub var: Buf,
    pub invstd: Buf,
}

impl Gpu {
    /// `n` 32-bit words (floats or codes) on the device, contents undefined:
    /// for outputs a kernel writes whole.
    pub fn scratch(&self, n: usize) -> Result<Buf, GpuError> {
        let n = n.max(1);
        self.check_size(4 * n)?;
        let handle = match &self.client {
            Client::Wgpu(cl) => cl.empty(4 * n),
            #[cfg(feature = "cuda")]
            Client::Cuda(cl) => cl.empty(4 * n),
        };
        Ok(Buf { handle, len: n })
    }

    /// `n` zeros on the device.
    pub fn zeros(&self, n: usize) -> Result<Buf, GpuError> {
        let b = self.scratch(n)?;
        self.fill(&b, n, 0.0)?;
        Ok(b)
    }

    pub fn upload_u32(&self, v: &[u32]) -> Result<Buf, GpuError> {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.upload_bytes(&bytes)
    }

    /// The first `len` words of `b` as `u32`.
    pub fn download_u32(&self, b: &Buf, len: usize) -> Result<Vec<u32>, GpuError> {
        Ok(self
            .download_f32(b, len)?
            .into_iter()
            .map(f32::to_bits)
            .collect())
    }

    /// The first `len` bytes of `b` (packed codes).
    pub fn download_bytes(&self, b: &Buf, len: usize) -> Result<Vec<u8>, GpuError> {
        let words = self.download_u32(b, len.div_ceil(4))?;
        let mut v: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        v.truncate(len);
        Ok(v)
    }

    /// `out[..n] = value`.
    pub fn fill(&self, out: &Buf, n: usize, value: f32) -> Result<(), GpuError> {
        check_operands("fill", &[("out", out, n)], n)?;
        let (count, dim, _) = grid_1d("fill", n)?;
        launch!(self, |cl, R| reduce::fill_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(out),
            n as u32,
            value
        ));
        Ok(())
    }

    /// Adds the cubes' partial sums (`stride` per cube, the first `lanes`
    /// of them used) into `out[out_off..]`, lane `l` times `factors[l]`.
    #[allow(clippy::too_many_arguments)]
    fn finish_sums(
        &self,
        partials: &Buf,
        cubes: usize,
        stride: u32,
        lanes: u32,
        out: &Buf,
        out_off: usize,
        factors: [f32; 2],
    ) -> Result<(), GpuError> {
        check_operands(
            "sum",
            &[
                ("partials", partials, cubes * stride as usize),
                ("out", out, out_off + lanes as usize),
            ],
            cubes * stride as usize + out_off,
        )?;
        launch!(self, |cl, R| reduce::finish_sums_kernel::launch::<R>(
            cl,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(UNITS),
            arg!(partials),
            arg!(out),
            cubes as u32,
            out_off as u32,
            factors[0],
            factors[1],
            stride,
            lanes
        ));
        Ok(())
    }

    /// `out[out_off] += sum x[i]^2` over `x[..n]` (a tensor's squared L2
    /// norm: AGR's gradient norms).
    pub fn sum_squares(
        &self,
        x: &Buf,
        n: usize,
        out: &Buf,
        out_off: usize,
    ) -> Result<(), GpuError> {
        check_operands("sum_squares", &[("x", x, n)], n)?;
        let (count, dim, cubes) = grid_1d("sum_squares", n)?;
        let partials = self.scratch(cubes)?;
        launch!(self, |cl, R| reduce::sum_squares_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(x),
            arg!(partials),
            n as u32
        ));
        self.finish_sums(&partials, cubes, 1, 1, out, out_off, [1.0, 0.0])
    }

    /// The 4-bit codes of an activation quantizer's forward on `x[..n]`,
    /// packed eight to a word of `out` (`n.div_ceil(8)` words; the CPU's
    /// byte order), its parameters at `q[q_off..]`.
    pub fn act_codes(
        &self,
        quant: ActQuant,
        x: &Buf,
        n: usize,
        q: (&Buf, usize),
        out: &Buf,
    ) -> Result<(), GpuError> {
        if quant == ActQuant::Relu {
            return Err(GpuError("act_codes: a ReLU has no codes".into()));
        }
        let words = n.div_ceil(8);
        check_operands(
            "act_codes",
            &[
                ("x", x, n),
                ("q", q.0, q.1 + quant.params()),
                ("out", out, words),
            ],
            n,
        )?;
        let (count, dim, _) = grid_1d("act_codes", words)?;
        launch!(self, |cl, R| act::act_codes_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(x),
            arg!(q.0),
            arg!(out),
            n as u32,
            q.1 as u32,
            quant.code()
        ));
        Ok(())
    }

    /// The straight-through backward of an activation quantizer at inputs
    /// `x[..n]` with output gradient `dy`: writes `dx` and adds the
    /// parameter gradients into `dq[dq_off..]` (LSQ's scaled by
    /// `1 / sqrt(features * 15)`, `features` the elements per sample).
    #[allow(clippy::too_many_arguments)]
    pub fn act_backward(
        &self,
        quant: ActQuant,
        x: &Buf,
        dy: &Buf,
        n: usize,
        q: (&Buf, usize),
        dx: &Buf,
        dq: (&Buf, usize),
        features: usize,
    ) -> Result<(), GpuError> {
        let p = quant.params();
        check_operands(
            "act_backward",
            &[
                ("x", x, n),
                ("dy", dy, n),
                ("q", q.0, q.1 + p),
                ("dx", dx, n),
                ("dq", dq.0, dq.1 + p),
            ],
            n,
        )?;
        let (count, dim, cubes) = grid_1d("act_backward", n)?;
        let partials = self.scratch(2 * cubes)?;
        launch!(self, |cl, R| act::act_backward_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(x),
            arg!(dy),
            arg!(q.0),
            arg!(dx),
            arg!(partials),
            n as u32,
            q.1 as u32,
            quant.code()
        ));
        match quant {
            ActQuant::Relu => Ok(()),
            ActQuant::Pact => self.finish_sums(&partials, cubes, 2, 1, dq.0, dq.1, [1.0, 0.0]),
            ActQuant::Lsq => {
                // The CPU scales the f64 sum by LSQ's gradient scale.
                let g = (1.0 / ((features as f64) * 15.0).sqrt()) as f32;
                self.finish_sums(&partials, cubes, 2, 1, dq.0, dq.1, [g, 0.0])
            }
            ActQuant::Dsq => self.finish_sums(&partials, cubes, 2, 2, dq.0, dq.1, [1.0, 1.0]),
        }
    }

    /// BatchNorm's batch statistics of `x` (`rows x c`).
    pub fn bn_stats(&self, x: &Buf, rows: usize, c: usize, eps: f32) -> Result<BnStats, GpuError> {
        check_operands("bn_stats", &[("x", x, rows * c)], rows * c)?;
        if rows == 0 || c == 0 {
            return Err(GpuError("bn_stats: an empty batch".into()));
        }
        let st = BnStats {
            mean: self.scratch(c)?,
            var: self.scratch(c)?,
            invstd: self.scratch(c)?,
        };
        let (count, dim, _) = grid_per_item("bn_stats", c)?;
        launch!(self, |cl, R| norm::bn_stats_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(x),
            arg!(st.mean),
            arg!(st.var),
            arg!(st.invstd),
            rows as u32,
            c as u32,
            eps
        ));
        Ok(st)
    }

    /// Moves the running statistics towards `st`'s (a batch of `rows`).
    pub fn bn_update_running(
        &self,
        st: &BnStats,
        rows: usize,
        c: usize,
        momentum: f32,
        running: (&Buf, &Buf),
    ) -> Result<(), GpuError> {
        check_operands(
            "bn_update_running",
            &[
                ("mean", &st.mean, c),
                ("var", &st.var, c),
                ("running mean", running.0, c),
                ("running var", running.1, c),
            ],
            c,
        )?;
        let unbias = if rows > 1 {
            rows as f32 / (rows - 1) as f32
        } else {
            1.0
        };
        let (count, dim, _) = grid_1d("bn_update_running", c)?;
        launch!(self, |cl, R| norm::bn_running_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(st.mean),
            arg!(st.var),
            arg!(running.0),
            arg!(running.1),
            c as u32,
            momentum,
            unbias
        ));
        Ok(())
    }

    /// `y = gamma * (x - mean) * invstd + beta` (`rows x c`), and `max(y, 0)`
    /// when `relu`.
    #[allow(clippy::too_many_arguments)]
    pub fn bn_apply(
        &self,
        x: &Buf,
        rows: usize,
        c: usize,
        gamma: &Buf,
        beta: &Buf,
        st: &BnStats,
        relu: bool,
        y: &Buf,
    ) -> Result<(), GpuError> {
        let n = rows * c;
        check_operands(
            "bn_apply",
            &[
                ("x", x, n),
                ("gamma", gamma, c),
                ("beta", beta, c),
                ("mean", &st.mean, c),
                ("invstd", &st.invstd, c),
                ("y", y, n),
            ],
            n,
        )?;
        let (count, dim, _) = grid_1d("bn_apply", n)?;
        launch!(self, |cl, R| norm::bn_apply_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(x),
            arg!(gamma),
            arg!(beta),
            arg!(st.mean),
            arg!(st.invstd),
            arg!(y),
            n as u32,
            c as u32,
            relu
        ));
        Ok(())
    }

    /// Training-mode BatchNorm backward: writes `dx`, adds into `dgamma`
    /// and `dbeta`.
    #[allow(clippy::too_many_arguments)]
    pub fn bn_backward(
        &self,
        x: &Buf,
        dy: &Buf,
        rows: usize,
        c: usize,
        gamma: &Buf,
        st: &BnStats,
        dgamma: &Buf,
        dbeta: &Buf,
        dx: &Buf,
    ) -> Result<(), GpuError> {
        let n = rows * c;
        check_operands(
            "bn_backward",
            &[
                ("x", x, n),
                ("dy", dy, n),
                ("gamma", gamma, c),
                ("mean", &st.mean, c),
                ("invstd", &st.invstd, c),
                ("dgamma", dgamma, c),
                ("dbeta", dbeta, c),
                ("dx", dx, n),
            ],
            n,
        )?;
        if rows == 0 || c == 0 {
            return Err(GpuError("bn_backward: an empty batch".into()));
        }
        let sums = self.scratch(2 * c)?;
        let (count, dim, _) = grid_per_item("bn_backward", c)?;
        launch!(self, |cl, R| norm::bn_backward_sums_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(x),
            arg!(dy),
            arg!(st.mean),
            arg!(st.invstd),
            arg!(sums),
            arg!(dgamma),
            arg!(dbeta),
            rows as u32,
            c as u32
        ));
        let (count, dim, _) = grid_1d("bn_backward", n)?;
        launch!(self, |cl, R| norm::bn_backward_dx_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(x),
            arg!(dy),
            arg!(gamma),
            arg!(st.mean),
            arg!(st.invstd),
            arg!(sums),
            arg!(dx),
            n as u32,
            c as u32,
            rows as f32
        ));
        Ok(())
    }

    /// `y = a + b` over `n` elements (the residual add).
    pub fn add(&self, a: &Buf, b: &Buf, n: usize, y: &Buf) -> Result<(), GpuError> {
        check_operands("add", &[("a", a, n), ("b", b, n), ("y", y, n)], n)?;
        let (count, dim, _) = grid_1d("add", n)?;
        launch!(self, |cl, R| ew::add_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(a),
            arg!(b),
            arg!(y),
            n as u32
        ));
        Ok(())
    }

    /// Global average pooling `[n, hw, c] -> [n, c]`.
    pub fn gap_forward(
        &self,
        x: &Buf,
        n: usize,
        hw: usize,
        c: usize,
        y: &Buf,
    ) -> Result<(), GpuError> {
        check_operands(
            "gap_forward",
            &[("x", x, n * hw * c), ("y", y, n * c)],
            n * hw * c,
        )?;
        let (count, dim, _) = grid_1d("gap_forward", n * c)?;
        launch!(self, |cl, R| ew::gap_forward_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(x),
            arg!(y),
            n as u32,
            hw as u32,
            c as u32
        ));
        Ok(())
    }

    /// The pooling's backward: `dy` (`[n, c]`) spread over the positions.
    pub fn gap_backward(
        &self,
        dy: &Buf,
        n: usize,
        hw: usize,
        c: usize,
        dx: &Buf,
    ) -> Result<(), GpuError> {
        check_operands(
            "gap_backward",
            &[("dy", dy, n * c), ("dx", dx, n * hw * c)],
            n * hw * c,
        )?;
        let (count, dim, _) = grid_1d("gap_backward", n * hw * c)?;
        launch!(self, |cl, R| ew::gap_backward_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(dy),
            arg!(dx),
            n as u32,
            hw as u32,
            c as u32
        ));
        Ok(())
    }

    /// One SGD update of `p[..n]` from `g` with momentum buffer `v`, the
    /// gradient scaled by `mask` when given.
    #[allow(clippy::too_many_arguments)]
    pub fn sgd(
        &self,
        p: &Buf,
        g: &Buf,
        v: &Buf,
        mask: Option<&Buf>,
        n: usize,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    ) -> Result<(), GpuError> {
        let m = mask.unwrap_or(g);
        check_operands(
            "sgd",
            &[("p", p, n), ("g", g, n), ("v", v, n), ("mask", m, n)],
            n,
        )?;
        let (count, dim, _) = grid_1d("sgd", n)?;
        launch!(self, |cl, R| ew::sgd_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(p),
            arg!(g),
            arg!(v),
            arg!(m),
            n as u32,
            lr,
            momentum,
            weight_decay,
            mask.is_some()
        ));
        Ok(())
    }

    /// Weighted softmax cross-entropy of `logits` (`n x classes`): writes the
    /// gradient and adds the loss (the mean over the rows) into
    /// `loss[loss_off]`.
    #[allow(clippy::too_many_arguments)]
    pub fn weighted_ce(
        &self,
        logits: &Buf,
        targets: &Buf,
        weights: &Buf,
        n: usize,
        classes: usize,
        grad: &Buf,
        loss: (&Buf, usize),
    ) -> Result<(), GpuError> {
        check_operands(
            "weighted_ce",
            &[
                ("logits", logits, n * classes),
                ("targets", targets, n),
                ("weights", weights, n),
                ("grad", grad, n * classes),
                ("loss", loss.0, loss.1 + 1),
            ],
            n * classes,
        )?;
        if n == 0 || classes == 0 {
            return Err(GpuError("weighted_ce: an empty batch".into()));
        }
        let rows = self.scratch(n)?;
        let (count, dim, _) = grid_1d("weighted_ce", n)?;
        launch!(self, |cl, R| super::loss::weighted_ce_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(logits),
            arg!(targets),
            arg!(weights),
            arg!(grad),
            arg!(rows),
            n as u32,
            classes as u32
        ));
        self.finish_sums(&rows, n, 1, 1, loss.0, loss.1, [1.0 / n as f32, 0.0])
    }

    /// Softmax probabilities of every row of `logits` (`n x classes`).
    pub fn softmax(
        &self,
        logits: &Buf,
        n: usize,
        classes: usize,
        probs: &Buf,
    ) -> Result<(), GpuError> {
        check_operands(
            "softmax",
            &[
                ("logits", logits, n * classes),
                ("probs", probs, n * classes),
            ],
            n * classes,
        )?;
        if classes == 0 {
            return Err(GpuError("softmax: no classes".into()));
        }
        let (count, dim, _) = grid_1d("softmax", n)?;
        launch!(self, |cl, R| loss::softmax_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(logits),
            arg!(probs),
            n as u32,
            classes as u32
        ));
        Ok(())
    }

    /// Similar Labels of `n` rows of probabilities with true `labels`.
    pub fn similar_labels(
        &self,
        probs: &Buf,
        labels: &Buf,
        n: usize,
        classes: usize,
        out: &Buf,
    ) -> Result<(), GpuError> {
        check_operands(
            "similar_labels",
            &[
                ("probs", probs, n * classes),
                ("labels", labels, n),
                ("out", out, n),
            ],
            n * classes,
        )?;
        let (count, dim, _) = grid_1d("similar_labels", n)?;
        launch!(self, |cl, R| loss::similar_labels_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(probs),
            arg!(labels),
            arg!(out),
            n as u32,
            classes as u32
        ));
        Ok(())
    }

    /// `dst[..n] = src[..n]`.
    pub fn copy(&self, src: &Buf, dst: &Buf, n: usize) -> Result<(), GpuError> {
        check_operands("copy", &[("src", src, n), ("dst", dst, n)], n)?;
        let (count, dim, _) = grid_1d("copy", n)?;
        launch!(self, |cl, R| reduce::copy_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(src),
            arg!(dst),
            n as u32
        ));
        Ok(())
    }

    /// Codes and per-channel scales of latent weights `w` (`cout x k`):
    /// `codes` in the integer GEMM's packed rows (`kind.row_bytes(k) / 4`
    /// words each), `scale` `cout` floats; the quantizer's parameters (LSQ,
    /// DSQ) at `q.0[q.1..]`.
    pub fn weight_codes(
        &self,
        kind: WeightQuant,
        w: &Buf,
        cout: usize,
        k: usize,
        q: (&Buf, usize),
        codes: &Buf,
        scale: &Buf,
    ) -> Result<(), GpuError> {
        let words = kind.row_bytes(k) / 4;
        check_operands(
            "weight_codes",
            &[
                ("w", w, cout * k),
                ("q", q.0, q.1 + kind.params(cout)),
                ("codes", codes, cout * words),
                ("scale", scale, cout),
            ],
            cout * k.max(words),
        )?;
        if cout == 0 || k == 0 {
            return Err(GpuError("weight_codes: an empty layer".into()));
        }
        if cout > 65_535 {
            return Err(GpuError(format!(
                "weight_codes: {cout} channels (65,535 at most)"
            )));
        }
        let (lo, hi) = match kind {
            WeightQuant::MaxAbs4 => (-7.0, 7.0),
            WeightQuant::MaxAbs8 => (-127.0, 127.0),
            WeightQuant::Lsq | WeightQuant::Dsq => (-8.0, 7.0),
        };
        launch!(self, |cl, R| wquant::weight_codes_kernel::launch::<R>(
            cl,
            CubeCount::Static(cout as u32, 1, 1),
            CubeDim::new_1d(UNITS),
            arg!(w),
            arg!(q.0),
            arg!(codes),
            arg!(scale),
            k as u32,
            words as u32,
            q.1 as u32,
            lo,
            hi,
            kind.code(),
            kind.bits()
        ));
        Ok(())
    }

    /// The weight quantizer's straight-through backward: the latent weights'
    /// gradient `dw` from `dwq` (the gradient of the quantized values;
    /// max-abs: the identity) and the parameters' gradients added into
    /// `dq.0[dq.1..]`.
    #[allow(clippy::too_many_arguments)]
    pub fn weight_backward(
        &self,
        kind: WeightQuant,
        w: &Buf,
        dwq: &Buf,
        cout: usize,
        k: usize,
        q: (&Buf, usize),
        dw: &Buf,
        dq: (&Buf, usize),
    ) -> Result<(), GpuError> {
        let n = cout * k;
        let p = kind.params(cout);
        check_operands(
            "weight_backward",
            &[
                ("w", w, n),
                ("dwq", dwq, n),
                ("q", q.0, q.1 + p),
                ("dw", dw, n),
                ("dq", dq.0, dq.1 + p),
            ],
            n,
        )?;
        if matches!(kind, WeightQuant::MaxAbs4 | WeightQuant::MaxAbs8) {
            return self.copy(dwq, dw, n);
        }
        if cout == 0 || cout > 65_535 {
            return Err(GpuError(format!("weight_backward: {cout} channels")));
        }
        // DSQ's per-channel shares of dalpha, finished into dq[cout].
        let partials = self.scratch(cout)?;
        launch!(self, |cl, R| wquant::weight_backward_kernel::launch::<R>(
            cl,
            CubeCount::Static(cout as u32, 1, 1),
            CubeDim::new_1d(UNITS),
            arg!(w),
            arg!(dwq),
            arg!(q.0),
            arg!(dw),
            arg!(dq.0),
            arg!(partials),
            k as u32,
            cout as u32,
            q.1 as u32,
            kind.code()
        ));
        if kind == WeightQuant::Dsq {
            self.finish_sums(&partials, cout, 1, 1, dq.0, dq.1 + cout, [1.0, 0.0])?;
        }
        Ok(())
    }

    /// im2col of packed codes (`bits` 4 or 8; the NHWC input packed
    /// `32 / bits` to a word, the CPU's byte order) into the integer GEMM's
    /// rows of `row_bytes_{4,8}bit(kdim)` bytes, `m` rows.
    pub fn im2col_codes(
        &self,
        bits: u32,
        src: &Buf,
        g: ConvShape,
        dst: &Buf,
    ) -> Result<(), GpuError> {
        if bits != 4 && bits != 8 {
            return Err(GpuError(format!("im2col: {bits}-bit codes (4 or 8)")));
        }
        if !g.valid() {
            return Err(GpuError(format!("im2col: bad geometry {g:?}")));
        }
        let per = (32 / bits) as usize;
        let rb = if bits == 4 {
            crate::pack::row_bytes_4bit(g.kdim())
        } else {
            crate::pack::row_bytes_8bit(g.kdim())
        };
        let (rows, words) = (g.m(), rb / 4);
        let src_len = (g.n * g.h * g.w * g.cin).div_ceil(per);
        check_operands(
            "im2col",
            &[("src", src, src_len), ("dst", dst, rows * words)],
            rows * words,
        )?;
        let (count, dim, _) = grid_1d("im2col", rows * words)?;
        launch!(self, |cl, R| conv::im2col_codes_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(src),
            arg!(dst),
            rows as u32,
            words as u32,
            g.h as u32,
            g.w as u32,
            g.cin as u32,
            g.k as u32,
            g.stride as u32,
            g.pad as u32,
            g.oh() as u32,
            g.ow() as u32,
            bits
        ));
        Ok(())
    }

    /// col2im: adds the column matrix `cols` (`m` rows of `ld` floats, the
    /// first `kdim` used) back onto the NHWC input gradient `dx`.
    pub fn col2im_add(
        &self,
        cols: &Buf,
        ld: usize,
        g: ConvShape,
        dx: &Buf,
    ) -> Result<(), GpuError> {
        if !g.valid() || ld < g.kdim() {
            return Err(GpuError(format!("col2im: bad geometry {g:?} (ld {ld})")));
        }
        let n_in = g.n * g.h * g.w * g.cin;
        let m = g.m();
        check_operands(
            "col2im",
            &[
                ("cols", cols, (m.max(1) - 1) * ld + g.kdim()),
                ("dx", dx, n_in),
            ],
            n_in.max(m * ld),
        )?;
        let (count, dim, _) = grid_1d("col2im", n_in)?;
        launch!(self, |cl, R| conv::col2im_add_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(cols),
            arg!(dx),
            g.n as u32,
            ld as u32,
            g.h as u32,
            g.w as u32,
            g.cin as u32,
            g.k as u32,
            g.stride as u32,
            g.pad as u32,
            g.oh() as u32,
            g.ow() as u32
        ));
        Ok(())
    }

    /// Eval-mode BatchNorm statistics from the running buffers (held, not
    /// copied: `mean` and `var` are the running buffers themselves).
    pub fn bn_eval_stats(
        &self,
        running_mean: &Buf,
        running_var: &Buf,
        c: usize,
        eps: f32,
    ) -> Result<BnStats, GpuError> {
        check_operands(
            "bn_eval_stats",
            &[
                ("running mean", running_mean, c),
                ("running var", running_var, c),
            ],
            c,
        )?;
        let invstd = self.scratch(c)?;
        let (count, dim, _) = grid_1d("bn_eval_stats", c)?;
        launch!(self, |cl, R| norm::bn_invstd_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(running_var),
            arg!(invstd),
            c as u32,
            eps
        ));
        Ok(BnStats {
            mean: running_mean.clone(),
            var: running_var.clone(),
            invstd,
        })
    }

    /// Packed unsigned codes (`bits` 4 or 8) as values `code * scale`.
    pub fn dequantize(
        &self,
        bits: u32,
        codes: &Buf,
        n: usize,
        scale: f32,
        out: &Buf,
    ) -> Result<(), GpuError> {
        if bits != 4 && bits != 8 {
            return Err(GpuError(format!("dequantize: {bits}-bit codes (4 or 8)")));
        }
        let words = n.div_ceil((32 / bits) as usize);
        check_operands("dequantize", &[("codes", codes, words), ("out", out, n)], n)?;
        let (count, dim, _) = grid_1d("dequantize", n)?;
        launch!(self, |cl, R| ew::dequantize_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(codes),
            arg!(out),
            n as u32,
            scale,
            bits
        ));
        Ok(())
    }

    /// The 8-bit classifier's input rows (`n x cin`) as codes in rows of
    /// `row_bytes_8bit(cin)` bytes, with a scale per row.
    pub fn quantize_rows(
        &self,
        x: &Buf,
        n: usize,
        cin: usize,
        codes: &Buf,
        scales: &Buf,
    ) -> Result<(), GpuError> {
        let words = crate::pack::row_bytes_8bit(cin) / 4;
        check_operands(
            "quantize_rows",
            &[
                ("x", x, n * cin),
                ("codes", codes, n * words),
                ("scales", scales, n),
            ],
            n * cin.max(words),
        )?;
        if n == 0 || n > 65_535 || cin == 0 {
            return Err(GpuError(format!("quantize_rows: {n} rows of {cin}")));
        }
        launch!(self, |cl, R| act::quantize_rows_kernel::launch::<R>(
            cl,
            CubeCount::Static(n as u32, 1, 1),
            CubeDim::new_1d(UNITS),
            arg!(x),
            arg!(codes),
            arg!(scales),
            cin as u32,
            words as u32
        ));
        Ok(())
    }

    /// `y[i][j] = y[i][j] * row_scale[i] + bias[j]` over `n x out`.
    pub fn row_scale_bias(
        &self,
        y: &Buf,
        row_scale: &Buf,
        bias: &Buf,
        n: usize,
        out: usize,
    ) -> Result<(), GpuError> {
        check_operands(
            "row_scale_bias",
            &[
                ("y", y, n * out),
                ("row scale", row_scale, n),
                ("bias", bias, out),
            ],
            n * out,
        )?;
        let (count, dim, _) = grid_1d("row_scale_bias", n * out)?;
        launch!(self, |cl, R| ew::row_scale_bias_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(y),
            arg!(row_scale),
            arg!(bias),
            n as u32,
            out as u32
        ));
        Ok(())
    }

    /// `out[i][j] = x[i][j] * s[j]` over `n x c`.
    pub fn scale_cols(
        &self,
        x: &Buf,
        s: &Buf,
        n: usize,
        c: usize,
        out: &Buf,
    ) -> Result<(), GpuError> {
        check_operands(
            "scale_cols",
            &[("x", x, n * c), ("s", s, c), ("out", out, n * c)],
            n * c,
        )?;
        let (count, dim, _) = grid_1d("scale_cols", n * c)?;
        launch!(self, |cl, R| ew::scale_cols_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(x),
            arg!(s),
            arg!(out),
            n as u32,
            c as u32
        ));
        Ok(())
    }

    /// `out[j] += sum_i x[i][j]` over `n x c`, the rows in order.
    pub fn col_sums(&self, x: &Buf, n: usize, c: usize, out: &Buf) -> Result<(), GpuError> {
        check_operands("col_sums", &[("x", x, n * c), ("out", out, c)], n * c)?;
        let (count, dim, _) = grid_1d("col_sums", c)?;
        launch!(self, |cl, R| ew::col_sums_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(x),
            arg!(out),
            n as u32,
            c as u32
        ));
        Ok(())
    }

    /// The classifier's quantized input rows back as values (`n x cin`).
    pub fn dequantize_rows(
        &self,
        codes: &Buf,
        row_scale: &Buf,
        n: usize,
        cin: usize,
        out: &Buf,
    ) -> Result<(), GpuError> {
        let words = crate::pack::row_bytes_8bit(cin) / 4;
        check_operands(
            "dequantize_rows",
            &[
                ("codes", codes, n * words),
                ("row scale", row_scale, n),
                ("out", out, n * cin),
            ],
            n * cin.max(words),
        )?;
        let (count, dim, _) = grid_1d("dequantize_rows", n * cin)?;
        launch!(self, |cl, R| ew::dequantize_rows_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(codes),
            arg!(row_scale),
            arg!(out),
            n as u32,
            cin as u32,
            words as u32
        ));
        Ok(())
    }

    /// Clamps `x[start..start + count]` into `[lo, hi]`.
    pub fn clamp(
        &self,
        x: &Buf,
        start: usize,
        count: usize,
        lo: f32,
        hi: f32,
    ) -> Result<(), GpuError> {
        check_operands("clamp", &[("x", x, start + count)], start + count)?;
        if count == 0 {
            return Ok(());
        }
        let (c, dim, _) = grid_1d("clamp", count)?;
        launch!(self, |cl, R| ew::clamp_kernel::launch::<R>(
            cl,
            c,
            dim,
            arg!(x),
            start as u32,
            count as u32,
            lo,
            hi
        ));
        Ok(())
    }

    /// `g[i] += gamma * signum(w[i])` over `n`.
    pub fn add_sign(&self, g: &Buf, w: &Buf, n: usize, gamma: f32) -> Result<(), GpuError> {
        check_operands("add_sign", &[("g", g, n), ("w", w, n)], n)?;
        let (count, dim, _) = grid_1d("add_sign", n)?;
        launch!(self, |cl, R| ew::add_sign_kernel::launch::<R>(
            cl,
            count,
            dim,
            arg!(g),
            arg!(w),
            n as u32,
            gamma
        ));
        Ok(())
    }

    /// The device's `i32` multiply-add rate in G op/s (2 ops each), measured
    /// with `units` units doing `iters` rounds of 8 independent multiply-adds.
    pub fn imad_peak(&self, units: usize, iters: u32) -> Result<f64, GpuError> {
        let out = self.scratch(units)?;
        let (count, dim, cubes) = grid_1d("imad_peak", units)?;
        let run = || -> Result<(), GpuError> {
            launch!(self, |cl, R| reduce::imad_peak_kernel::launch::<R>(
                cl,
                count.clone(),
                dim,
                arg!(out),
                iters
            ));
            self.sync()
        };
        run()?;
        let t = std::time::Instant::now();
        run()?;
        let s = t.elapsed().as_secs_f64();
        Ok((cubes * UNITS as usize) as f64 * iters as f64 * 16.0 / s / 1e9)
    }
}
