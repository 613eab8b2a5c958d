//! Planning the memory of a session's work before doing it.
//!
//! A pass's allocations are a dry run of `exec`: the same nodes in the same
//! order with the same liveness rules (a value is freed after its last consumer;
//! Input and Act outputs are kept as checkpoints for the backward, which
//! recomputes everything between them and frees each value once the backward
//! has passed its node), and, for each op, the buffers its implementation
//! allocates (column matrices, outputs, f32 copies of codes, gradients). Every
//! buffer is either proportional to the batch or of fixed size (weights,
//! gradients, kernel scratch), so each point of the run costs
//! `fixed_t + batch * per_image_t`; the plan keeps the largest of each part,
//! `fixed + batch * per_image`, an upper bound of every point (tested against
//! the counting allocator in `tests/budget.rs`). That affine form is what lets a
//! session pick the largest batch that fits a budget.
//!
//! The plan counts what qmul allocates, not what the host does, nor thread
//! stacks or the allocator's own bookkeeping.

use crate::graph::{Op, QuantScheme, Shape};
use crate::model::Model;
use crate::quant::weight::WeightQuant;
use qmul_kernels::pack;

/// Bytes of one piece of work as `fixed + batch * per_image`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    pub fixed: u64,
    pub per_image: u64,
}

impl Cost {
    pub fn fixed(b: u64) -> Cost {
        Cost {
            fixed: b,
            per_image: 0,
        }
    }

    pub fn per_image(b: u64) -> Cost {
        Cost {
            fixed: 0,
            per_image: b,
        }
    }

    /// Bytes at a batch of `n`.
    pub fn at(&self, n: usize) -> u64 {
        self.fixed
            .saturating_add(self.per_image.saturating_mul(n as u64))
    }

    /// Both parts at least as large as in `o` (the bound of two points).
    pub fn max(self, o: Cost) -> Cost {
        Cost {
            fixed: self.fixed.max(o.fixed),
            per_image: self.per_image.max(o.per_image),
        }
    }
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, o: Cost) -> Cost {
        Cost {
            fixed: self.fixed.saturating_add(o.fixed),
            per_image: self.per_image.saturating_add(o.per_image),
        }
    }
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, o: Cost) {
        *self = *self + o;
    }
}

/// Scratch one thread of an integer GEMM holds (every variant): B panels of at
/// most `max(256 KiB, 16 rows)` and at most `n + 16` rows of `2 * row_bytes`
/// unpacked codes, plus up to 24 unpacked rows of A and B.
fn qgemm_scratch(n: usize, row_bytes: usize) -> u64 {
    let kc = 2 * row_bytes as u64;
    ((256u64 << 10).max(16 * kc)).min((n as u64 + 16) * kc) + 24 * kc
}

/// Scratch one thread of an f32 GEMM holds (every variant's blocking: KC <= 256,
/// MC <= 256, NC <= 1152, tiles up to 8 x 16): packed A and B blocks and a row.
fn sgemm_scratch(m: usize, n: usize, k: usize) -> u64 {
    let kc = k.min(256) as u64;
    let (mc, nc) = (m.min(256) as u64 + 8, n.min(1152) as u64 + 16);
    4 * (mc * kc + nc * kc + nc + 48)
}

/// The graph, shapes, slot tables and small per-node vectors of a pass.
const BOOKKEEPING: u64 = 256 << 10;

fn f32s(n: usize) -> u64 {
    4 * n as u64
}

/// How a node's value is held during a pass.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rep {
    Pixels,
    Codes,
    F32,
}

/// The pieces of a model the planner reads.
struct View<'m> {
    m: &'m Model,
    threads: u64,
}

impl View<'_> {
    fn shape(&self, i: usize) -> Shape {
        self.m.shapes[i]
    }

    fn rep(&self, i: usize) -> Rep {
        match self.m.graph.nodes[i] {
            Op::Input { .. } => Rep::Pixels,
            Op::Act { .. } if self.m.graph.scheme != QuantScheme::None => Rep::Codes,
            _ => Rep::F32,
        }
    }

    /// Bytes of node `i`'s value, per image (packed codes: half a byte each,
    /// plus a byte of rounding per batch, counted as fixed).
    fn value(&self, i: usize) -> Cost {
        let len = self.shape(i).len();
        match self.rep(i) {
            Rep::Pixels => Cost::per_image(len as u64),
            Rep::Codes => Cost {
                fixed: 1,
                per_image: len.div_ceil(2) as u64,
            },
            Rep::F32 => Cost::per_image(f32s(len)),
        }
    }

    /// An f32 view of node `i`'s value: free when it already is f32.
    fn as_f32(&self, i: usize) -> Cost {
        if self.rep(i) == Rep::F32 {
            Cost::default()
        } else {
            Cost::per_image(f32s(self.shape(i).len()))
        }
    }

    /// `(input shape, output shape, kdim, cout)` of conv node `i`.
    fn conv_dims(&self, i: usize) -> (Shape, Shape, usize, usize) {
        match &self.m.graph.nodes[i] {
            Op::Conv { input, k, cout, .. } => {
                let x = self.shape(*input);
                (x, self.shape(i), k * k * x.c, *cout)
            }
            _ => {
                let z = Shape { h: 0, w: 0, c: 0 };
                (z, z, 0, 0)
            }
        }
    }

    /// Output-column buffers of a GEMM split over columns: only when its rows
    /// are fewer than `8 * threads`, so at most that many rows of `n` floats.
    fn private_cols(&self, n: usize) -> Cost {
        Cost::fixed(8 * self.threads * f32s(n))
    }

    /// Buffers `compute(i)` allocates, its output included.
    fn forward_temps(&self, i: usize) -> Cost {
        let m = self.m;
        let scheme = m.graph.scheme;
        match &m.graph.nodes[i] {
            Op::Input { .. } => self.value(i),
            Op::Conv { input, .. } => {
                let (x, y, kd, cout) = self.conv_dims(i);
                let pixels = (y.h * y.w) as u64;
                let out = Cost::per_image(pixels * 4 * cout as u64) + self.private_cols(cout);
                // Integer convs build their columns one tile per thread
                // (`conv::forward_tiled`), never the whole matrix.
                let tile = |rb: usize| {
                    Cost::fixed(
                        self.threads * (crate::ops::conv::forward_tile_rows(rb) * rb) as u64,
                    )
                };
                match self.rep(*input) {
                    Rep::Codes => out + tile(pack::row_bytes_4bit(kd)),
                    Rep::Pixels if scheme != QuantScheme::None => {
                        out + tile(pack::row_bytes_8bit(kd))
                    }
                    _ => {
                        out + Cost::per_image(f32s(x.len()) + pixels * f32s(kd))
                            + Cost::fixed(f32s(cout * kd))
                    }
                }
            }
            Op::BatchNorm { input, .. } => {
                let c = self.shape(i).c;
                self.as_f32(*input) + self.value(i) + Cost::fixed(f32s(6 * c) + 16 * c as u64)
            }
            Op::Act { input, .. } => self.as_f32(*input) + self.value(i),
            Op::Add { b, .. } => self.value(i) + self.as_f32(*b),
            Op::GlobalAvgPool { input } => self.as_f32(*input) + self.value(i),
            Op::Linear {
                input, out, prec, ..
            } => {
                let cin = self.shape(*input).len();
                let q = if WeightQuant::of(scheme, *prec) == WeightQuant::None {
                    Cost::fixed(f32s(out * cin))
                } else {
                    Cost::per_image(pack::row_bytes_8bit(cin) as u64 + 4)
                };
                self.as_f32(*input) + self.value(i) + q + self.private_cols(*out)
            }
        }
    }

    /// Buffers the backward of node `i` allocates (beside its incoming
    /// gradient), its input gradient included.
    fn backward_temps(&self, i: usize) -> Cost {
        let m = self.m;
        let scheme = m.graph.scheme;
        let t = self.threads;
        match &m.graph.nodes[i] {
            Op::Input { .. } => Cost::default(),
            Op::Linear {
                input, out, prec, ..
            } => {
                let cin = self.shape(*input).len();
                let quantized = WeightQuant::of(scheme, *prec) != WeightQuant::None;
                let mut c = self.as_f32(*input)
                    + Cost::per_image(f32s(cin) * 2 + f32s(*out))
                    + Cost::fixed(f32s(*out) + f32s(out * cin) * (1 + t))
                    + self.private_cols(cin);
                if quantized {
                    c += Cost::per_image(pack::row_bytes_8bit(cin) as u64 + 4);
                }
                c
            }
            Op::GlobalAvgPool { input } => Cost::per_image(f32s(self.shape(*input).len())),
            Op::Add { .. } => Cost::per_image(f32s(self.shape(i).len())),
            Op::Act { input, .. } => {
                self.as_f32(*input) + Cost::per_image(f32s(self.shape(*input).len()))
            }
            Op::BatchNorm { input, .. } => {
                let c = self.shape(i).c;
                self.as_f32(*input)
                    + Cost::per_image(f32s(self.shape(*input).len()))
                    + Cost::fixed(f32s(4 * c) + 16 * c as u64)
            }
            Op::Conv { input, .. } => {
                let (x, y, kd, cout) = self.conv_dims(i);
                let pixels = (y.h * y.w) as u64;
                // dW, and a private sum per thread unless the rows are split.
                let private = match self.rep(*input) {
                    Rep::F32 => t,
                    _ if crate::ops::conv::dw_splits_rows(cout, kd) => 0,
                    _ => t,
                };
                let dw = Cost::fixed(f32s(cout * kd) * (1 + private));
                // Codes: one tile of input columns per thread (`conv::dw_tiled`);
                // f32 inputs: the whole column matrix.
                let tile =
                    |rb: usize| Cost::fixed(t * (crate::ops::conv::dw_tile_rows(rb) * rb) as u64);
                let cols = match self.rep(*input) {
                    Rep::Codes => tile(pack::row_bytes_4bit(kd)),
                    Rep::Pixels => tile(pack::row_bytes_8bit(kd)),
                    Rep::F32 => Cost::per_image(pixels * f32s(kd)),
                };
                let dw_part = dw + cols;
                if matches!(m.graph.nodes[*input], Op::Input { .. }) {
                    return dw_part;
                }
                // dX, and per thread one column tile (`conv::dx_tiled`: at most
                // max(2^16, kdim) floats + alignment) and the tile's rows of dY
                // scaled per column.
                let rows = ((1usize << 16) / kd.max(1))
                    .min((1usize << 14) / cout.max(1))
                    .max(1);
                let tile = f32s(kd.max(1 << 16) + 16) + f32s(rows * cout);
                let dx_part =
                    Cost::fixed(f32s(cout * kd) + t * tile) + Cost::per_image(f32s(x.len()));
                dw_part.max(dx_part) + Cost::fixed(f32s(cout * kd))
            }
        }
    }

    /// Kernel scratch of the largest GEMM of a pass, for every thread that may
    /// run it (the workers and the calling thread, whose buffers persist).
    fn scratch(&self, backward: bool) -> Cost {
        let m = self.m;
        let scheme = m.graph.scheme;
        let big = 1 << 20; // rows of a batch-sized GEMM: only the caps matter
        let mut most = 0u64;
        for (i, op) in m.graph.nodes.iter().enumerate() {
            let (gemm_fwd, gemm_bwd) = match op {
                Op::Conv { input, prec, .. } => {
                    let (_, _, kd, cout) = self.conv_dims(i);
                    let fwd = match (self.rep(*input), WeightQuant::of(scheme, *prec)) {
                        (_, WeightQuant::None) => sgemm_scratch(big, cout, kd),
                        (Rep::Codes, _) => qgemm_scratch(cout, pack::row_bytes_4bit(kd)),
                        _ => qgemm_scratch(cout, pack::row_bytes_8bit(kd)),
                    };
                    let bwd = sgemm_scratch(cout, kd, big).max(sgemm_scratch(big, kd, cout));
                    (fwd, bwd)
                }
                Op::Linear {
                    input, out, prec, ..
                } => {
                    let cin = self.shape(*input).len();
                    let fwd = match WeightQuant::of(scheme, *prec) {
                        WeightQuant::None => sgemm_scratch(big, *out, cin),
                        _ => qgemm_scratch(*out, pack::row_bytes_8bit(cin)),
                    };
                    let bwd = sgemm_scratch(*out, cin, big).max(sgemm_scratch(big, cin, *out));
                    (fwd, bwd)
                }
                _ => continue,
            };
            most = most.max(gemm_fwd);
            if backward {
                most = most.max(gemm_bwd);
            }
        }
        Cost::fixed((self.threads + 1) * most)
    }

    /// Weights quantized for one pass, and the largest transient of quantizing them.
    fn pass_weights(&self) -> Cost {
        let m = self.m;
        let (mut held, mut transient) = (0u64, 0u64);
        for (i, op) in m.graph.nodes.iter().enumerate() {
            let (cout, prec) = match op {
                Op::Conv { cout, prec, .. } => (*cout, *prec),
                Op::Linear { out, prec, .. } => (*out, *prec),
                _ => continue,
            };
            let kd = match op {
                Op::Conv { .. } => self.conv_dims(i).2,
                Op::Linear { input, .. } => self.shape(*input).len(),
                _ => 0,
            };
            let kind = WeightQuant::of(m.graph.scheme, prec);
            let rows = match (kind, prec) {
                (WeightQuant::None, _) => f32s(cout * kd),
                (_, crate::graph::Precision::Int4) => (cout * pack::row_bytes_4bit(kd)) as u64,
                _ => (cout * pack::row_bytes_8bit(kd)) as u64,
            };
            held += rows + f32s(cout);
            transient = transient.max(3 * (cout * pack::row_bytes_8bit(kd)) as u64 + f32s(cout));
        }
        Cost::fixed(held + transient)
    }

    /// The quantized weights alone (what a file stores per layer).
    fn pass_weights_held(&self) -> u64 {
        let m = self.m;
        let mut held = 0u64;
        for (i, op) in m.graph.nodes.iter().enumerate() {
            let (cout, prec, kd) = match op {
                Op::Conv { cout, prec, .. } => (*cout, *prec, self.conv_dims(i).2),
                Op::Linear {
                    out, prec, input, ..
                } => (*out, *prec, self.shape(*input).len()),
                _ => continue,
            };
            held += match (WeightQuant::of(m.graph.scheme, prec), prec) {
                (WeightQuant::None, _) => f32s(cout * kd),
                (_, crate::graph::Precision::Int4) => (cout * pack::row_bytes_4bit(kd)) as u64,
                _ => (cout * pack::row_bytes_8bit(kd)) as u64,
            };
        }
        held
    }
}

/// Bytes of a model's latent parameters and buffers (f32).
pub fn model_bytes(m: &Model) -> u64 {
    let n: usize = m
        .params
        .iter()
        .chain(&m.buffers)
        .map(|t| t.data.len())
        .sum();
    f32s(n) + BOOKKEEPING
}

/// Bytes of the parameters alone (one gradient, one momentum buffer, one mask).
pub fn param_bytes(m: &Model) -> u64 {
    f32s(m.param_count())
}

fn view(m: &Model) -> View<'_> {
    View {
        m,
        threads: qmul_kernels::par::threads() as u64,
    }
}

fn last_uses(m: &Model) -> Vec<usize> {
    let mut last = vec![0usize; m.graph.nodes.len()];
    for (i, op) in m.graph.nodes.iter().enumerate() {
        for j in op.inputs() {
            last[j] = i;
        }
    }
    last
}

/// An eval-mode forward of a batch (`Model::forward`), its input buffer and
/// logits included.
pub fn forward(m: &Model) -> Cost {
    let v = view(m);
    let last = last_uses(m);
    let mut live = Cost::default();
    let mut peak = Cost::default();
    for i in 0..m.graph.nodes.len() {
        peak = peak.max(live + v.forward_temps(i));
        live += v.value(i);
        for j in m.graph.nodes[i].inputs() {
            if last[j] == i {
                live = sub(live, v.value(j));
            }
        }
    }
    let input = Cost::per_image(m.graph.input_shape().len() as u64);
    let base = v.pass_weights() + Cost::fixed(BOOKKEEPING) + v.scratch(false) + input;
    base + peak
}

fn sub(a: Cost, b: Cost) -> Cost {
    Cost {
        fixed: a.fixed.saturating_sub(b.fixed),
        per_image: a.per_image.saturating_sub(b.per_image),
    }
}

/// One training pass (`Model::train_pass`): forward with checkpoints, loss,
/// straight-through backward, the parameter gradients it returns, and the
/// batch's images, labels and weights.
pub fn train_pass(m: &Model) -> Cost {
    let v = view(m);
    let nodes = &m.graph.nodes;
    let last = last_uses(m);
    let is_checkpoint = |i: usize| matches!(nodes[i], Op::Input { .. } | Op::Act { .. });
    let classes = m.classes();
    // Forward: live values, saved checkpoints.
    let mut live = Cost::default();
    let mut peak = Cost::default();
    let mut have = vec![false; nodes.len()];
    for i in 0..nodes.len() {
        peak = peak.max(live + v.forward_temps(i));
        live += v.value(i);
        have[i] = true;
        for j in nodes[i].inputs() {
            if last[j] == i && !is_checkpoint(j) {
                live = sub(live, v.value(j));
                have[j] = false;
            }
        }
    }
    // Logits (kept in the result) and their gradient.
    let logits = Cost::per_image(f32s(classes));
    let last_node = nodes.len() - 1;
    live = sub(live, v.value(last_node));
    have[last_node] = false;
    live += logits + logits;
    peak = peak.max(live);
    // Backward: gradients per node, recomputation from checkpoints.
    let mut dnode = vec![false; nodes.len()];
    dnode[last_node] = true;
    let mut live_d = logits; // dlogits now held in dnode
    live = sub(live, logits);
    for i in (0..nodes.len()).rev() {
        if !dnode[i] {
            if have[i] {
                live = sub(live, v.value(i));
                have[i] = false;
            }
            continue;
        }
        // Recompute a missing input, as `ensure` does (depth first), for the
        // ops whose backward reads their input.
        if let Op::Linear { input, .. }
        | Op::Act { input, .. }
        | Op::BatchNorm { input, .. }
        | Op::Conv { input, .. } = &nodes[i]
        {
            recompute(&v, *input, &mut have, &mut live, &mut peak, live_d);
        }
        let temps = v.backward_temps(i);
        peak = peak.max(live + live_d + temps);
        // The input gradients join dnode (summed into existing ones).
        for j in nodes[i].inputs() {
            if matches!(nodes[i], Op::Conv { .. }) && matches!(nodes[j], Op::Input { .. }) {
                continue;
            }
            if !dnode[j] {
                dnode[j] = true;
                live_d += Cost::per_image(f32s(m.shapes[j].len()));
            }
        }
        dnode[i] = false;
        live_d = sub(live_d, Cost::per_image(f32s(m.shapes[i].len())));
        if have[i] {
            live = sub(live, v.value(i));
            have[i] = false;
        }
    }
    let grads = Cost::fixed(param_bytes(m) + f32s(m.params.len()) * 6);
    let batch = Cost::per_image(m.graph.input_shape().len() as u64 + 8);
    v.pass_weights() + grads + batch + Cost::fixed(BOOKKEEPING) + v.scratch(true) + logits + peak
}

/// `ensure(j)`: recomputes node `j` (and its missing inputs first) into `have`.
fn recompute(v: &View, j: usize, have: &mut [bool], live: &mut Cost, peak: &mut Cost, d: Cost) {
    if have[j] {
        return;
    }
    for k in v.m.graph.nodes[j].inputs() {
        recompute(v, k, have, live, peak, d);
    }
    *peak = peak.max(*live + d + v.forward_temps(j));
    *live += v.value(j);
    have[j] = true;
}

/// How an unlearning run uses memory beside its passes.
#[derive(Clone, Copy, Debug)]
pub struct UnlearnShape {
    pub forget: usize,
    pub retain: usize,
    /// SalUn keeps a saliency mask (and ranks every parameter to make it).
    pub saliency: bool,
    /// Q-MUL's Similar Labels keep the forget set's probabilities.
    pub similar_labels: bool,
}

/// A whole unlearning run: the working copy of the model and its momentum, two
/// snapshots of the weight codes, the per-epoch orders, targets and index
/// vectors (up to 80 bytes a sample while they are built), then the largest phase: a training pass (AGR's norm passes
/// are the same), the Similar-Labels probabilities, or building SalUn's mask
/// (accumulated gradients, their magnitudes and the mask beside a pass). The
/// session's own sets and model are resident, not part of this.
pub fn unlearn(m: &Model, s: UnlearnShape) -> Cost {
    let params = param_bytes(m);
    let samples = (s.forget + s.retain) as u64;
    // Two snapshots of the weight codes (a byte a weight) count the codes each
    // epoch changes; quantizing one layer for them needs its scales.
    let snapshots = 2 * (m.param_count() as u64) + 64 * m.graph.nodes.len() as u64;
    let base =
        Cost::fixed(model_bytes(m) + params + snapshots + 80 * samples + 8 * s.forget as u64);
    let mask = if s.saliency { params } else { 0 };
    let mut phase = train_pass(m) + Cost::fixed(mask);
    if s.similar_labels {
        phase = phase.max(probabilities(m, s.forget));
    }
    if s.saliency {
        phase = phase.max(train_pass(m) + Cost::fixed(3 * params));
    }
    base + phase
}

/// Eval-mode probabilities of `n` samples in batches (FA, RA, TA, predictions):
/// the probabilities kept, one batch gathered and its forward pass.
pub fn probabilities(m: &Model, n: usize) -> Cost {
    Cost::fixed(f32s(n * m.classes()) + 8 * n as u64) + forward(m)
}

/// FA, RA, TA and the membership attacks over the session's three sets,
/// evaluated `batch` at a time: each set's probabilities (one set at a time),
/// four f64 attack features of the forget set, the attack's members (the
/// first len(test) retain samples) and the test set, one attack's SVM on
/// members and non-members at a time (about 12 f64 vectors of them), and the
/// loss attack's sorted shadow losses.
pub fn evaluate(m: &Model, forget: usize, retain: usize, test: usize, batch: usize) -> u64 {
    let largest = forget.max(retain).max(test);
    let members = test.min(retain);
    let kept = 32 * (forget + members + test) as u64 + f32s(largest * m.classes());
    let svm = 96 * 2 * members as u64 + 16 * forget as u64 + 16 * (members + test) as u64;
    kept + svm + forward(m).at(batch.min(largest).max(1))
}

/// The number of weights of each conv and linear layer (all, and quantized).
fn weight_counts(m: &Model) -> (usize, Vec<usize>) {
    let (mut all, mut quantized) = (0, Vec::new());
    for s in &m.slots {
        if let Some((w, kind)) = s
            .conv()
            .map(|c| (c.0, c.2))
            .or(s.linear().map(|l| (l.0, l.3)))
        {
            all += m.params[w].data.len();
            if kind != WeightQuant::None {
                quantized.push(m.params[w].data.len());
            }
        }
    }
    (all, quantized)
}

/// An upper bound of the serialized file: each layer's codes (or f32 weights)
/// and sub-bin residuals (two bytes per quantized weight), every other tensor as
/// f32, and a header of at most 64 KiB per 64 nodes.
fn file_bytes(m: &Model) -> u64 {
    let codes = view(m).pass_weights_held();
    let (weights, quantized) = weight_counts(m);
    let residuals: usize = quantized.iter().sum();
    let others = m.param_count() + m.buffers.iter().map(|t| t.data.len()).sum::<usize>() - weights;
    codes + 2 * residuals as u64 + f32s(others) + (64 << 10) * (1 + m.graph.nodes.len() as u64 / 64)
}

/// Writing a model: its weights quantized, the tensors' bytes and the file
/// (twice the file), one layer's codes and residuals at a time while the
/// residuals are computed, and the model parsed back from them to prove they load.
pub fn commit(m: &Model) -> u64 {
    let largest = weight_counts(m).1.into_iter().max().unwrap_or(0) as u64;
    2 * file_bytes(m) + 5 * largest + model_bytes(m) + view(m).pass_weights().fixed
}
