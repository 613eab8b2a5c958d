//! The network graph a model file carries: nodes in topological order, each an op
//! whose inputs are earlier nodes. The runtime executes any such graph; it never
//! needs to know an architecture by name.

use serde::{Deserialize, Serialize};

/// How a layer's weights and inputs are represented in the integer kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Signed 4-bit weight codes, unsigned 4-bit input codes.
    Int4,
    /// Signed 8-bit weight codes, unsigned 8-bit input codes.
    Int8,
    /// Full precision.
    F32,
}

/// The quantization-aware-training scheme of a model: which quantizer clips and
/// rounds the activations (and the 4-bit weights).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantScheme {
    /// No quantization: f32 weights and ReLU activations.
    None,
    /// PACT activations (learned clip `a`), per-channel max-abs weight scales.
    Pact,
    /// LSQ activations and weights (learned step sizes).
    Lsq,
    /// DSQ activations and weights (learned range and tanh sharpness alpha).
    Dsq,
}

impl QuantScheme {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "pact" => Some(Self::Pact),
            "lsq" => Some(Self::Lsq),
            "dsq" => Some(Self::Dsq),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Pact => "pact",
            Self::Lsq => "lsq",
            Self::Dsq => "dsq",
        }
    }
}

/// One node of the graph. `input`, `a`, `b` are indices of earlier nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Image batch, NHWC u8 pixels; the value is `pixel / 255`.
    Input { h: usize, w: usize, c: usize },
    /// 2-D convolution (no bias), square kernel, zero padding.
    Conv {
        name: String,
        input: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        prec: Precision,
    },
    /// BatchNorm over channels (NHWC last axis).
    BatchNorm { name: String, input: usize },
    /// ReLU fused with the model's activation quantizer (plain ReLU when the
    /// scheme is `None`); the output feeds 4-bit layers as unsigned codes.
    Act { name: String, input: usize },
    /// Elementwise sum (residual connection).
    Add { a: usize, b: usize },
    /// Mean over the spatial axes.
    GlobalAvgPool { input: usize },
    /// Fully connected layer with bias; input is flattened.
    Linear {
        name: String,
        input: usize,
        out: usize,
        prec: Precision,
    },
}

impl Op {
    /// Indices of the nodes this op reads.
    pub fn inputs(&self) -> Vec<usize> {
        match self {
            Op::Input { .. } => vec![],
            Op::Add { a, b } => vec![*a, *b],
            Op::Conv { input, .. }
            | Op::BatchNorm { input, .. }
            | Op::Act { input, .. }
            | Op::GlobalAvgPool { input }
            | Op::Linear { input, .. } => vec![*input],
        }
    }
}

/// Per-sample shape of a node's output (NHWC without N).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Shape {
    pub fn len(&self) -> usize {
        self.h * self.w * self.c
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A validated graph: ops in topological order, the last node is the logits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub nodes: Vec<Op>,
    pub scheme: QuantScheme,
    pub classes: usize,
}

/// Why a graph is not runnable.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphError(pub String);

impl std::fmt::Display for GraphError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid graph: {}", self.0)
    }
}

impl std::error::Error for GraphError {}

/// Largest dimension accepted anywhere in a graph; keeps shape arithmetic far
/// from overflow when a hostile model file describes the graph.
const MAX_DIM: usize = 1 << 16;

/// Most nodes a graph may have (ResNet-18 has 61). Bounds the work and memory of
/// validating a hostile graph.
pub const MAX_NODES: usize = 4096;

/// Longest input-to-node path accepted. The backward pass recomputes values
/// between checkpoints recursively, so this bounds its stack use too.
pub const MAX_DEPTH: usize = 1024;

impl Graph {
    /// Checks every edge, shape and precision rule and returns each node's output shape.
    pub fn shapes(&self) -> Result<Vec<Shape>, GraphError> {
        let err = |i: usize, m: &str| Err(GraphError(format!("node {i}: {m}")));
        if self.nodes.is_empty() {
            return Err(GraphError("no nodes".into()));
        }
        if self.nodes.len() > MAX_NODES {
            return Err(GraphError(format!(
                "{} nodes, more than the {MAX_NODES} allowed",
                self.nodes.len()
            )));
        }
        let mut depth = vec![0usize; self.nodes.len()];
        let mut shapes: Vec<Shape> = Vec::with_capacity(self.nodes.len());
        let mut names = std::collections::HashSet::new();
        for (i, op) in self.nodes.iter().enumerate() {
            for j in op.inputs() {
                if j >= i {
                    return err(i, &format!("input {j} is not an earlier node"));
                }
                depth[i] = depth[i].max(depth[j] + 1);
            }
            if depth[i] > MAX_DEPTH {
                return err(i, &format!("deeper than the {MAX_DEPTH} nodes allowed"));
            }
            if let Some(name) = op.name() {
                if name.is_empty() || !names.insert(name.to_string()) {
                    return err(i, &format!("layer name '{name}' is empty or repeated"));
                }
            }
            let s = match op {
                Op::Input { h, w, c } => {
                    if i != 0 {
                        return err(i, "Input must be node 0");
                    }
                    Shape {
                        h: *h,
                        w: *w,
                        c: *c,
                    }
                }
                Op::Conv {
                    input,
                    cout,
                    k,
                    stride,
                    pad,
                    prec,
                    ..
                } => {
                    let x = shapes[*input];
                    if *k == 0 || *stride == 0 || *cout == 0 || *k > 15 || *pad > 15 || *stride > 15
                    {
                        return err(i, "bad conv geometry");
                    }
                    if x.h + 2 * pad < *k || x.w + 2 * pad < *k {
                        return err(i, "kernel larger than padded input");
                    }
                    let src = &self.nodes[*input];
                    match prec {
                        Precision::Int4
                            if !matches!(src, Op::Act { .. })
                                || self.scheme == QuantScheme::None =>
                        {
                            return err(
                                i,
                                "an int4 conv must read an Act node of a quantized model",
                            )
                        }
                        Precision::Int8 if !matches!(src, Op::Input { .. }) => {
                            return err(i, "an int8 conv must read the Input node")
                        }
                        _ => {}
                    }
                    Shape {
                        h: (x.h + 2 * pad - k) / stride + 1,
                        w: (x.w + 2 * pad - k) / stride + 1,
                        c: *cout,
                    }
                }
                Op::BatchNorm { input, .. } => shapes[*input],
                Op::Act { input, .. } => shapes[*input],
                Op::Add { a, b } => {
                    if shapes[*a] != shapes[*b] {
                        return err(i, "Add of different shapes");
                    }
                    shapes[*a]
                }
                Op::GlobalAvgPool { input } => Shape {
                    h: 1,
                    w: 1,
                    c: shapes[*input].c,
                },
                Op::Linear {
                    input, out, prec, ..
                } => {
                    if *prec == Precision::Int4 {
                        return err(i, "Linear supports int8 or f32");
                    }
                    if *out == 0 {
                        return err(i, "Linear with no outputs");
                    }
                    let _ = shapes[*input];
                    Shape {
                        h: 1,
                        w: 1,
                        c: *out,
                    }
                }
            };
            if s.h == 0
                || s.w == 0
                || s.c == 0
                || s.h > MAX_DIM
                || s.w > MAX_DIM
                || s.c > MAX_DIM
                || s.len() > 1 << 26
            {
                return err(i, "output shape empty or too large");
            }
            shapes.push(s);
        }
        let last = shapes.last().copied().unwrap_or(Shape { h: 0, w: 0, c: 0 });
        if !matches!(self.nodes.last(), Some(Op::Linear { .. }))
            || last.c != self.classes
            || self.classes < 2
        {
            return Err(GraphError(
                "the last node must be a Linear layer with one output per class".into(),
            ));
        }
        Ok(shapes)
    }

    /// Input image shape.
    pub fn input_shape(&self) -> Shape {
        match self.nodes.first() {
            Some(Op::Input { h, w, c }) => Shape {
                h: *h,
                w: *w,
                c: *c,
            },
            _ => Shape { h: 0, w: 0, c: 0 },
        }
    }
}

impl Op {
    /// The layer name of ops that own parameters.
    pub fn name(&self) -> Option<&str> {
        match self {
            Op::Conv { name, .. }
            | Op::BatchNorm { name, .. }
            | Op::Act { name, .. }
            | Op::Linear { name, .. } => Some(name),
            _ => None,
        }
    }
}
