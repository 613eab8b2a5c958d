//! A model in memory: its graph, learnable parameters, BatchNorm buffers, and the
//! per-layer slots that tie graph nodes to parameter tensors.
//!
//! Latent f32 weights exist only while a model is in memory; the model file
//! stores the quantized codes and scales and, from format version 3, each
//! weight's position inside its rounding bin (see `model_file` and
//! `quant::sub_bin`). Loading rebuilds latent weights that requantize to the
//! same codes: at their bins' centres without the residuals, within 1/65536
//! step of where they were saved with them.

use crate::exec::PassError;
use crate::graph::{Graph, GraphError, Op, Precision, QuantScheme, Shape};
use crate::ops::conv::ConvWeights;
use crate::ops::linear::LinearWeights;
use crate::quant::{act, weight, weight::WeightQuant};
use crate::rng::Rng;
use qmul_kernels::pack;
use std::collections::BTreeMap;

/// A named f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    fn zeros(name: String, shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor {
            name,
            shape,
            data: vec![0.0; n],
        }
    }
}

/// Which parameter and buffer tensors a node owns (indices into
/// [`Model::params`] and [`Model::buffers`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Slots {
    None,
    Conv {
        w: usize,
        wq: usize,
        kind: WeightQuant,
        cin: usize,
    },
    Bn {
        gamma: usize,
        beta: usize,
        mean: usize,
        var: usize,
    },
    Act {
        q: usize,
    },
    Linear {
        w: usize,
        b: usize,
        wq: usize,
        kind: WeightQuant,
        cin: usize,
    },
}

/// Options for a freshly initialised model.
#[derive(Clone, Copy, Debug)]
pub struct InitOptions {
    pub seed: u64,
    /// Initial PACT clip value `a`.
    pub pact_init: f32,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            seed: 0,
            pact_init: 6.0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Model {
    pub graph: Graph,
    pub shapes: Vec<Shape>,
    pub params: Vec<Tensor>,
    pub buffers: Vec<Tensor>,
    pub slots: Vec<Slots>,
    /// Free-form facts carried in the model file (architecture, how it was trained).
    pub info: BTreeMap<String, String>,
    /// Save the exact f32 latent weights (`{name}.latent`, format version 4)
    /// instead of 1/65536-step residuals: for a model converted from a
    /// PyTorch checkpoint that must convert back bit for bit. Loaded from the
    /// file, kept through unlearning and commits.
    pub exact_latent: bool,
}

/// Weights of one layer quantized for a forward/backward pass.
#[derive(Clone, Debug)]
pub enum QWeights {
    Int4 { packed: Vec<u8>, scale: Vec<f32> },
    Int8 { rows: Vec<u8>, scale: Vec<f32> },
    F32(Vec<f32>),
}

impl QWeights {
    pub fn conv(&self) -> ConvWeights<'_> {
        match self {
            QWeights::Int4 { packed, scale } => ConvWeights::Int4 { packed, scale },
            QWeights::Int8 { rows, scale } => ConvWeights::Int8 { rows, scale },
            QWeights::F32(w) => ConvWeights::F32(w),
        }
    }

    pub fn linear(&self) -> Result<LinearWeights<'_>, PassError> {
        match self {
            QWeights::Int8 { rows, scale } => Ok(LinearWeights::Int8 { rows, scale }),
            QWeights::F32(w) => Ok(LinearWeights::F32(w)),
            QWeights::Int4 { .. } => Err(PassError(
                "4-bit linear layers are not supported (graph validation rejects them)".into(),
            )),
        }
    }
}

impl Slots {
    /// `(w, wq, kind)` of a conv layer.
    pub fn conv(&self) -> Option<(usize, usize, WeightQuant)> {
        match *self {
            Slots::Conv { w, wq, kind, .. } => Some((w, wq, kind)),
            _ => None,
        }
    }

    /// `(w, b, wq, kind, cin)` of a linear layer.
    pub fn linear(&self) -> Option<(usize, usize, usize, WeightQuant, usize)> {
        match *self {
            Slots::Linear {
                w,
                b,
                wq,
                kind,
                cin,
            } => Some((w, b, wq, kind, cin)),
            _ => None,
        }
    }

    /// `(gamma, beta, running_mean, running_var)` of a BatchNorm layer.
    pub fn bn(&self) -> Option<(usize, usize, usize, usize)> {
        match *self {
            Slots::Bn {
                gamma,
                beta,
                mean,
                var,
            } => Some((gamma, beta, mean, var)),
            _ => None,
        }
    }

    /// The quantizer-parameter tensor of an Act node.
    pub fn act(&self) -> Option<usize> {
        match *self {
            Slots::Act { q } => Some(q),
            _ => None,
        }
    }
}

impl Model {
    /// Allocates zeroed parameters and buffers for `graph`.
    pub fn layout(graph: Graph) -> Result<Model, GraphError> {
        let shapes = graph.shapes()?;
        let mut params = Vec::new();
        let mut buffers = Vec::new();
        let mut slots = Vec::with_capacity(graph.nodes.len());
        let scheme = graph.scheme;
        let push = |v: &mut Vec<Tensor>, name: String, shape: Vec<usize>| {
            v.push(Tensor::zeros(name, shape));
            v.len() - 1
        };
        for op in &graph.nodes {
            let s = match op {
                Op::Conv {
                    name,
                    input,
                    cout,
                    k,
                    prec,
                    ..
                } => {
                    let cin = shapes[*input].c;
                    let kind = WeightQuant::of(scheme, *prec);
                    let w = push(
                        &mut params,
                        format!("{name}.weight"),
                        vec![*cout, k * k * cin],
                    );
                    let wq = push(
                        &mut params,
                        format!("{name}.wq"),
                        vec![kind.param_count(*cout)],
                    );
                    Slots::Conv { w, wq, kind, cin }
                }
                Op::Linear {
                    name,
                    input,
                    out,
                    prec,
                } => {
                    let cin = shapes[*input].len();
                    let kind = WeightQuant::of(scheme, *prec);
                    let w = push(&mut params, format!("{name}.weight"), vec![*out, cin]);
                    let b = push(&mut params, format!("{name}.bias"), vec![*out]);
                    let wq = push(
                        &mut params,
                        format!("{name}.wq"),
                        vec![kind.param_count(*out)],
                    );
                    Slots::Linear {
                        w,
                        b,
                        wq,
                        kind,
                        cin,
                    }
                }
                Op::BatchNorm { name, input } => {
                    let c = shapes[*input].c;
                    Slots::Bn {
                        gamma: push(&mut params, format!("{name}.gamma"), vec![c]),
                        beta: push(&mut params, format!("{name}.beta"), vec![c]),
                        mean: push(&mut buffers, format!("{name}.running_mean"), vec![c]),
                        var: push(&mut buffers, format!("{name}.running_var"), vec![c]),
                    }
                }
                Op::Act { name, .. } => Slots::Act {
                    q: push(
                        &mut params,
                        format!("{name}.q"),
                        vec![act::param_count(scheme)],
                    ),
                },
                _ => Slots::None,
            };
            slots.push(s);
        }
        Ok(Model {
            graph,
            shapes,
            params,
            buffers,
            slots,
            info: BTreeMap::new(),
            exact_latent: false,
        })
    }

    /// A freshly initialised model: Kaiming-normal convolutions (fan-out, as the
    /// CIFAR ResNets do), PyTorch-default linear layers, BatchNorm at identity,
    /// quantizer parameters per [`act::initial_params`] and [`weight::initial_params`].
    pub fn new(graph: Graph, opts: InitOptions) -> Result<Model, GraphError> {
        let mut m = Model::layout(graph)?;
        let mut rng = Rng::new(opts.seed);
        let scheme = m.graph.scheme;
        for (i, op) in m.graph.nodes.iter().enumerate() {
            match (&m.slots[i], op) {
                (Slots::Conv { w, wq, kind, .. }, Op::Conv { cout, k, .. }) => {
                    let std = (2.0 / (cout * k * k) as f64).sqrt();
                    m.params[*w]
                        .data
                        .iter_mut()
                        .for_each(|v| *v = (rng.normal() * std) as f32);
                    m.params[*wq].data = weight::initial_params(*kind, &m.params[*w].data, *cout);
                }
                (
                    Slots::Linear {
                        w,
                        b,
                        wq,
                        kind,
                        cin,
                    },
                    Op::Linear { out, .. },
                ) => {
                    let bound = 1.0 / (*cin as f64).sqrt();
                    m.params[*w]
                        .data
                        .iter_mut()
                        .for_each(|v| *v = ((rng.uniform() * 2.0 - 1.0) * bound) as f32);
                    m.params[*b]
                        .data
                        .iter_mut()
                        .for_each(|v| *v = ((rng.uniform() * 2.0 - 1.0) * bound) as f32);
                    m.params[*wq].data = weight::initial_params(*kind, &m.params[*w].data, *out);
                }
                (Slots::Bn { gamma, var, .. }, _) => {
                    m.params[*gamma].data.fill(1.0);
                    m.buffers[*var].data.fill(1.0);
                }
                (Slots::Act { q }, _) => {
                    m.params[*q].data = act::initial_params(scheme, opts.pact_init)
                }
                _ => {}
            }
        }
        Ok(m)
    }

    /// Quantizes every conv and linear layer's latent weights for one pass.
    pub fn quantize_weights(&self) -> Result<Vec<Option<QWeights>>, PassError> {
        (0..self.graph.nodes.len())
            .map(|i| Ok(self.quantize_layer(i)?.map(|(w, _)| w)))
            .collect()
    }

    /// Node `i`'s weights as a pass takes them, with the codes and scales
    /// they came from (`None` for f32 weights), or `None` if the node has no
    /// weights.
    pub fn quantize_layer(
        &self,
        i: usize,
    ) -> Result<Option<(QWeights, Option<weight::Quantized>)>, PassError> {
        let (w, wq, kind, cout, prec) = match (&self.slots[i], &self.graph.nodes[i]) {
            (Slots::Conv { w, wq, kind, .. }, Op::Conv { cout, prec, .. }) => {
                (*w, *wq, *kind, *cout, *prec)
            }
            (Slots::Linear { w, wq, kind, .. }, Op::Linear { out, prec, .. }) => {
                (*w, *wq, *kind, *out, *prec)
            }
            _ => return Ok(None),
        };
        let wl = &self.params[w].data;
        if kind == WeightQuant::None {
            return Ok(Some((QWeights::F32(wl.clone()), None)));
        }
        let kdim = wl.len() / cout.max(1);
        let q = weight::quantize(kind, &self.params[wq].data, wl, cout);
        let packed = match prec {
            Precision::Int4 => QWeights::Int4 {
                packed: pack::pack_s4(&q.codes, cout, kdim)?,
                scale: q.scale.clone(),
            },
            _ => {
                let rows: Vec<i8> = pack::pad_rows_8bit(&q.codes, cout, kdim)?;
                QWeights::Int8 {
                    rows: bytemuck::cast_slice(&rows).to_vec(),
                    scale: q.scale.clone(),
                }
            }
        };
        Ok(Some((packed, Some(q))))
    }

    /// The integer weight codes of every quantized layer (one byte per weight,
    /// no padding), in layer order; f32 layers have none. Comparing two
    /// snapshots counts the codes an update changed.
    pub fn weight_codes(&self) -> Vec<Vec<i8>> {
        self.slots
            .iter()
            .filter_map(|s| match *s {
                Slots::Conv { w, wq, kind, .. } | Slots::Linear { w, wq, kind, .. }
                    if kind != WeightQuant::None =>
                {
                    let cout = self.params[w].shape[0];
                    Some(
                        weight::quantize(kind, &self.params[wq].data, &self.params[w].data, cout)
                            .codes,
                    )
                }
                _ => None,
            })
            .collect()
    }

    /// Keeps every quantizer parameter in its valid range (after an optimiser step).
    pub fn clamp_quant_params(&mut self) {
        let scheme = self.graph.scheme;
        for (s, op) in self.slots.iter().zip(&self.graph.nodes) {
            match (s, op) {
                (Slots::Conv { wq, kind, .. }, Op::Conv { cout, .. })
                | (Slots::Linear { wq, kind, .. }, Op::Linear { out: cout, .. }) => {
                    weight::clamp_params(*kind, &mut self.params[*wq].data, *cout)
                }
                (Slots::Act { q }, _) => act::clamp_params(scheme, &mut self.params[*q].data),
                _ => {}
            }
        }
    }

    /// Number of learnable scalars.
    pub fn param_count(&self) -> usize {
        self.params.iter().map(|t| t.data.len()).sum()
    }

    /// Number of classes the model predicts.
    pub fn classes(&self) -> usize {
        self.graph.classes
    }

    /// The scheme the model was trained with.
    pub fn scheme(&self) -> QuantScheme {
        self.graph.scheme
    }
}
