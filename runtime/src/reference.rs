//! An independent f64 implementation of the same fake-quantized network, used to
//! check the runtime's straight-through backward pass.
//!
//! It shares nothing with the fast path but the graph and the parameters: every
//! layer is written as direct loops over scalars recorded on a tape, and the
//! gradient comes from reverse-mode differentiation of that tape. Quantizers are
//! recorded as single nodes whose local derivatives are the straight-through
//! rules of `reference/qmul-method.md`, written out again here in f64. Small
//! models only: a tape holds one entry per scalar operation.

use crate::graph::{Op, Precision, QuantScheme};
use crate::model::{Model, Slots};
use crate::quant::weight::WeightQuant;

/// Reverse-mode tape of scalar nodes: value and (parent, local derivative) edges.
#[derive(Default)]
struct Tape {
    val: Vec<f64>,
    edges: Vec<Vec<(usize, f64)>>,
}

impl Tape {
    fn push(&mut self, v: f64, e: Vec<(usize, f64)>) -> usize {
        self.val.push(v);
        self.edges.push(e);
        self.val.len() - 1
    }

    fn leaf(&mut self, v: f64) -> usize {
        self.push(v, vec![])
    }

    fn grad(&self, out: usize) -> Vec<f64> {
        let mut g = vec![0.0; self.val.len()];
        g[out] = 1.0;
        for i in (0..=out).rev() {
            if g[i] == 0.0 {
                continue;
            }
            for &(p, d) in &self.edges[i] {
                g[p] += g[i] * d;
            }
        }
        g
    }
}

fn round_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

/// DSQ soft-quantizer derivatives (dQ/dx, dQ/dD, dQ/dalpha) at an in-range x.
fn dsq_partials(x: f64, d: f64, o: f64, alpha: f64) -> (f64, f64, f64) {
    let c = (2.0 / alpha - 1.0).ln();
    let s = 1.0 / (c / 2.0).tanh();
    let v = x / d + o;
    let i = v.floor().clamp(0.0, 14.0);
    let t = v - i - 0.5;
    let th = (c * t).tanh();
    let sech2 = 1.0 - th * th;
    let dx = 0.5 * s * c * sech2;
    let dd = (i - o + 0.5 + 0.5 * s * th) - (x / d) * dx;
    let ds_dc = -0.5 / (c / 2.0).sinh().powi(2);
    let dc_da = -2.0 / (alpha * (2.0 - alpha));
    (dx, dd, 0.5 * d * (ds_dc * th + s * t * sech2) * dc_da)
}

/// Loss and gradient of every parameter tensor (same layout as `Model::params`)
/// of a training-mode pass (batch statistics), computed in f64.
pub fn loss_and_grads(
    model: &Model,
    images: &[u8],
    n: usize,
    labels: &[u32],
    weights: &[f32],
) -> (f64, Vec<Vec<f64>>) {
    loss_and_grads_bn(model, images, n, labels, weights, false)
}

/// As [`loss_and_grads`]; with `frozen_bn` BatchNorm uses its running statistics
/// (an eval-mode pass).
pub fn loss_and_grads_bn(
    model: &Model,
    images: &[u8],
    n: usize,
    labels: &[u32],
    weights: &[f32],
    frozen_bn: bool,
) -> (f64, Vec<Vec<f64>>) {
    let mut t = Tape::default();
    let scheme = model.graph.scheme;
    // Parameters as leaves.
    let pid: Vec<Vec<usize>> = model
        .params
        .iter()
        .map(|p| p.data.iter().map(|&v| t.leaf(v as f64)).collect())
        .collect();
    let mut vals: Vec<Vec<usize>> = Vec::new();
    for (i, op) in model.graph.nodes.iter().enumerate() {
        let shape = model.shapes[i];
        let v: Vec<usize> = match op {
            Op::Input { .. } => images.iter().map(|&p| t.leaf(p as f64 / 255.0)).collect(),
            Op::Conv {
                input,
                cout,
                k,
                stride,
                pad,
                prec,
                ..
            } => {
                let Slots::Conv { w, wq, kind, cin } = model.slots[i].clone() else {
                    unreachable!()
                };
                let wqn = fake_quant_weights(&mut t, model, &pid, w, wq, kind, *cout, *prec);
                let xs = model.shapes[*input];
                let x = &vals[*input];
                let mut out = Vec::with_capacity(n * shape.len());
                for b in 0..n {
                    for oy in 0..shape.h {
                        for ox in 0..shape.w {
                            for co in 0..*cout {
                                let mut e = Vec::new();
                                let mut s = 0.0;
                                for ky in 0..*k {
                                    for kx in 0..*k {
                                        let iy = (oy * stride + ky) as isize - *pad as isize;
                                        let ix = (ox * stride + kx) as isize - *pad as isize;
                                        if iy < 0
                                            || ix < 0
                                            || iy >= xs.h as isize
                                            || ix >= xs.w as isize
                                        {
                                            continue;
                                        }
                                        for ci in 0..cin {
                                            let xi = x[((b * xs.h + iy as usize) * xs.w
                                                + ix as usize)
                                                * cin
                                                + ci];
                                            let wi =
                                                wqn[co * k * k * cin + (ky * k + kx) * cin + ci];
                                            s += t.val[xi] * t.val[wi];
                                            e.push((xi, t.val[wi]));
                                            e.push((wi, t.val[xi]));
                                        }
                                    }
                                }
                                out.push(t.push(s, e));
                            }
                        }
                    }
                }
                out
            }
            Op::BatchNorm { input, .. } if frozen_bn => {
                let Slots::Bn {
                    gamma,
                    beta,
                    mean,
                    var,
                } = model.slots[i]
                else {
                    unreachable!()
                };
                let c = shape.c;
                let x = vals[*input].clone();
                x.iter()
                    .enumerate()
                    .map(|(e, &xi)| {
                        let ch = e % c;
                        let is = 1.0
                            / (model.buffers[var].data[ch] as f64 + crate::ops::bn::EPS as f64)
                                .sqrt();
                        let xh = (t.val[xi] - model.buffers[mean].data[ch] as f64) * is;
                        let (g, be) = (pid[gamma][ch], pid[beta][ch]);
                        let gv = t.val[g];
                        t.push(gv * xh + t.val[be], vec![(xi, gv * is), (g, xh), (be, 1.0)])
                    })
                    .collect()
            }
            Op::BatchNorm { input, .. } => {
                let Slots::Bn { gamma, beta, .. } = model.slots[i] else {
                    unreachable!()
                };
                let x = vals[*input].clone();
                let c = shape.c;
                let rows = x.len() / c;
                let mut out = vec![0usize; x.len()];
                for ch in 0..c {
                    let idx: Vec<usize> = (0..rows).map(|r| x[r * c + ch]).collect();
                    let mean_v = idx.iter().map(|&j| t.val[j]).sum::<f64>() / rows as f64;
                    let mean = t.push(
                        mean_v,
                        idx.iter().map(|&j| (j, 1.0 / rows as f64)).collect(),
                    );
                    let d: Vec<usize> = idx
                        .iter()
                        .map(|&j| t.push(t.val[j] - mean_v, vec![(j, 1.0), (mean, -1.0)]))
                        .collect();
                    let var_v = d.iter().map(|&j| t.val[j] * t.val[j]).sum::<f64>() / rows as f64;
                    let var = t.push(
                        var_v,
                        d.iter()
                            .map(|&j| (j, 2.0 * t.val[j] / rows as f64))
                            .collect(),
                    );
                    let is_v = 1.0 / (var_v + crate::ops::bn::EPS as f64).sqrt();
                    let invstd = t.push(is_v, vec![(var, -0.5 * is_v.powi(3))]);
                    let (g, be) = (pid[gamma][ch], pid[beta][ch]);
                    for (r, &dj) in d.iter().enumerate() {
                        let (gv, dv) = (t.val[g], t.val[dj]);
                        out[r * c + ch] = t.push(
                            gv * dv * is_v + t.val[be],
                            vec![
                                (g, dv * is_v),
                                (dj, gv * is_v),
                                (invstd, gv * dv),
                                (be, 1.0),
                            ],
                        );
                    }
                }
                out
            }
            Op::Act { input, .. } => {
                let Slots::Act { q } = model.slots[i] else {
                    unreachable!()
                };
                let feats = model.shapes[*input].len() as f64;
                let x = vals[*input].clone();
                x.iter()
                    .map(|&xi| act_node(&mut t, scheme, &pid[q], xi, feats))
                    .collect()
            }
            Op::Add { a, b } => {
                let (va, vb) = (vals[*a].clone(), vals[*b].clone());
                va.iter()
                    .zip(&vb)
                    .map(|(&p, &q)| t.push(t.val[p] + t.val[q], vec![(p, 1.0), (q, 1.0)]))
                    .collect()
            }
            Op::GlobalAvgPool { input } => {
                let s = model.shapes[*input];
                let hw = s.h * s.w;
                let x = vals[*input].clone();
                let mut out = Vec::new();
                for b in 0..n {
                    for ch in 0..s.c {
                        let idx: Vec<usize> = (0..hw).map(|p| x[(b * hw + p) * s.c + ch]).collect();
                        let v = idx.iter().map(|&j| t.val[j]).sum::<f64>() / hw as f64;
                        out.push(t.push(v, idx.iter().map(|&j| (j, 1.0 / hw as f64)).collect()));
                    }
                }
                out
            }
            Op::Linear {
                input,
                out: outs,
                prec,
                ..
            } => {
                let Slots::Linear {
                    w,
                    b,
                    wq,
                    kind,
                    cin,
                } = model.slots[i].clone()
                else {
                    unreachable!()
                };
                let wqn = fake_quant_weights(&mut t, model, &pid, w, wq, kind, *outs, *prec);
                let x = vals[*input].clone();
                let mut out = Vec::new();
                for bi in 0..n {
                    let row = &x[bi * cin..(bi + 1) * cin];
                    // 8-bit input rows: per-row scale max/255, identity gradient.
                    let xr: Vec<usize> = if *prec == Precision::Int8 && kind != WeightQuant::None {
                        let mx = row.iter().map(|&j| t.val[j]).fold(0.0f64, f64::max);
                        let s = if mx > 0.0 {
                            (mx as f32 / 255.0) as f64
                        } else {
                            1.0
                        };
                        row.iter()
                            .map(|&j| {
                                t.push(
                                    round_even((t.val[j] / s).clamp(0.0, 255.0)) * s,
                                    vec![(j, 1.0)],
                                )
                            })
                            .collect()
                    } else {
                        row.to_vec()
                    };
                    for o in 0..*outs {
                        let mut s = t.val[pid[b][o]];
                        let mut e = vec![(pid[b][o], 1.0)];
                        for (ci, &xi) in xr.iter().enumerate() {
                            let wi = wqn[o * cin + ci];
                            s += t.val[xi] * t.val[wi];
                            e.push((xi, t.val[wi]));
                            e.push((wi, t.val[xi]));
                        }
                        out.push(t.push(s, e));
                    }
                }
                out
            }
        };
        vals.push(v);
    }
    // Weighted cross-entropy, mean over the batch.
    let logits = vals.last().expect("graph has nodes").clone();
    let k = model.classes();
    let mut e = Vec::new();
    let mut loss = 0.0;
    for b in 0..n {
        let row: Vec<f64> = logits[b * k..(b + 1) * k]
            .iter()
            .map(|&j| t.val[j])
            .collect();
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = row.iter().map(|v| (v - m).exp()).sum();
        let y = labels[b] as usize;
        let w = weights[b] as f64 / n as f64;
        loss += -w * ((row[y] - m) - z.ln());
        for j in 0..k {
            let p = (row[j] - m).exp() / z;
            e.push((logits[b * k + j], w * (p - if j == y { 1.0 } else { 0.0 })));
        }
    }
    let out = t.push(loss, e);
    let g = t.grad(out);
    (
        loss,
        pid.iter()
            .map(|ids| ids.iter().map(|&j| g[j]).collect())
            .collect(),
    )
}

fn act_node(t: &mut Tape, scheme: QuantScheme, q: &[usize], xi: usize, feats: f64) -> usize {
    let x = t.val[xi];
    match scheme {
        QuantScheme::None => t.push(x.max(0.0), vec![(xi, if x > 0.0 { 1.0 } else { 0.0 })]),
        QuantScheme::Pact => {
            let a = t.val[q[0]];
            let y = round_even(x.clamp(0.0, a) * 15.0 / a) * a / 15.0;
            let dx = if (0.0..=a).contains(&x) { 1.0 } else { 0.0 };
            let da = if x >= a { 1.0 } else { 0.0 };
            t.push(y, vec![(xi, dx), (q[0], da)])
        }
        QuantScheme::Lsq => {
            let s = t.val[q[0]];
            let v = x / s;
            let g = 1.0 / (feats * 15.0).sqrt();
            let y = round_even(v.clamp(0.0, 15.0)) * s;
            let (dx, ds) = if v < 0.0 {
                (0.0, 0.0)
            } else if v > 15.0 {
                (0.0, 15.0)
            } else {
                (1.0, round_even(v) - v)
            };
            t.push(y, vec![(xi, dx), (q[0], ds * g)])
        }
        QuantScheme::Dsq => {
            let (u, alpha) = (t.val[q[0]], t.val[q[1]]);
            let d = u / 15.0;
            let y = round_even((x / d).clamp(0.0, 15.0)) * d;
            if x < 0.0 {
                t.push(y, vec![])
            } else if x > u {
                t.push(y, vec![(q[0], 1.0)])
            } else {
                let (dx, dd, da) = dsq_partials(x, d, 0.0, alpha);
                t.push(y, vec![(xi, dx), (q[0], dd / 15.0), (q[1], da)])
            }
        }
    }
}

/// Tape nodes of a layer's fake-quantized weights (`rows x kdim`).
fn fake_quant_weights(
    t: &mut Tape,
    model: &Model,
    pid: &[Vec<usize>],
    w: usize,
    wq: usize,
    kind: WeightQuant,
    rows: usize,
    _prec: Precision,
) -> Vec<usize> {
    let wl: Vec<usize> = pid[w].clone();
    let kd = wl.len() / rows;
    let mut out = Vec::with_capacity(wl.len());
    for r in 0..rows {
        let row = &wl[r * kd..(r + 1) * kd];
        match kind {
            WeightQuant::None => out.extend_from_slice(row),
            WeightQuant::MaxAbs { qmax } => {
                // The scale is a function of the weights but, as in the runtime, the
                // straight-through rule passes the gradient to each weight unchanged.
                let s = crate::quant::weight::scales(
                    kind,
                    &[],
                    &model.params[w].data[r * kd..(r + 1) * kd],
                    1,
                )[0] as f64;
                for &j in row {
                    let y = round_even((t.val[j] / s).clamp(-(qmax as f64), qmax as f64)) * s;
                    out.push(t.push(y, vec![(j, 1.0)]));
                }
            }
            WeightQuant::Lsq => {
                let si = pid[wq][r];
                let s = t.val[si];
                let g = 1.0 / (kd as f64 * 7.0).sqrt();
                for &j in row {
                    let v = t.val[j] / s;
                    let y = round_even(v.clamp(-8.0, 7.0)) * s;
                    let (dx, ds) = if v < -8.0 {
                        (0.0, -8.0)
                    } else if v > 7.0 {
                        (0.0, 7.0)
                    } else {
                        (1.0, round_even(v) - v)
                    };
                    out.push(t.push(y, vec![(j, dx), (si, ds * g)]));
                }
            }
            WeightQuant::Dsq => {
                let ui = pid[wq][r];
                let ai = pid[wq][rows];
                let (u, alpha) = (t.val[ui], t.val[ai]);
                let d = (u as f32 / 7.0) as f64;
                for &j in row {
                    let x = t.val[j];
                    let y = round_even((x / d).clamp(-8.0, 7.0)) * d;
                    if x < -8.0 * d {
                        out.push(t.push(y, vec![(ui, -8.0 / 7.0)]));
                    } else if x > u {
                        out.push(t.push(y, vec![(ui, 1.0)]));
                    } else {
                        let (dx, dd, da) = dsq_partials(x, d, 8.0, alpha);
                        out.push(t.push(y, vec![(j, dx), (ui, dd / 7.0), (ai, da)]));
                    }
                }
            }
        }
    }
    out
}
