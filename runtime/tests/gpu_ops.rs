//! The GPU kernels of the training step other than the GEMMs, each against
//! the runtime's CPU function it stands for (feature `gpu`; on lavapipe in
//! CI, `.ci/run`). Without a GPU the tests print why and pass, unless
//! `QMUL_GPU_REQUIRED=1`.
//!
//! Budgets, and why:
//! - exact (bit for bit): the activation codes of PACT, LSQ and DSQ (the
//!   same operations as the CPU; lavapipe and CUDA divide correctly
//!   rounded), the PACT/LSQ/ReLU input gradients (selections of `dy`), the
//!   residual add, pooling (the same sums in the same order), Similar
//!   Labels from the same probabilities, SGD (no fused multiply-add on
//!   lavapipe; a device that fuses moves a value by an ulp);
//! - within float rounding: sums the CPU takes in f64 and the GPU in f32
//!   in another order (BatchNorm statistics and channel sums, the
//!   quantizers' parameter gradients, squared norms, the mean loss), and
//!   the transcendental functions (DSQ's tanh and log, softmax's exp): a
//!   relative error of at most `1e-4` of the terms' magnitude.
#![cfg(feature = "gpu")]

use qmul_kernels::gpu::{ActQuant, Buf, Gpu};
use qmul_runtime::graph::QuantScheme;
use qmul_runtime::ops::{bn, loss, pool};
use qmul_runtime::quant::act;
use qmul_runtime::rng::Rng;

#[path = "../../kernels/tests/common/gpu.rs"]
mod gpu_device;
use gpu_device::gpu;

/// The repository (the shipped model and data): `QMUL_REPO_ROOT`, for a
/// test binary built on one machine and run on another
/// (`benches/gpu/run.sh`), else where this crate was built.
fn repo_root() -> std::path::PathBuf {
    std::env::var_os("QMUL_REPO_ROOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}

/// The shipped 4-bit model.
fn shipped_model() -> qmul_runtime::Model {
    qmul_runtime::model_file::load(
        &repo_root().join("models/checkpoints/fmnist-subset-r18w8-pact.qmul"),
    )
    .unwrap()
}

/// The shipped Fashion-MNIST subset's `train` or `t10k` images and labels.
fn shipped_set(which: &str) -> qmul_runtime::data::Dataset {
    let d = repo_root().join("data/fashion-mnist-subset");
    qmul_runtime::data::idx::load_idx_pair(
        &d.join(format!("{which}-images-idx3-ubyte.gz")),
        &d.join(format!("{which}-labels-idx1-ubyte.gz")),
        10,
        which,
        "",
    )
    .unwrap()
}

fn uniform(r: &mut Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|_| lo + (hi - lo) * r.uniform() as f32)
        .collect()
}

/// An output buffer filled with NaN, so a kernel that writes nothing fails.
fn poisoned(g: &Gpu, n: usize) -> Buf {
    let b = g.scratch(n).unwrap();
    g.fill(&b, n, f32::NAN).unwrap();
    b
}

fn down(g: &Gpu, b: &Buf, n: usize) -> Vec<f32> {
    g.download_f32(b, n).unwrap()
}

fn bits_equal(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            "{what}[{i}]: {a} on the GPU, {b} on the CPU"
        );
    }
}

/// `|got - want| <= 1e-4 * scale` element by element, `scale` the terms'
/// magnitude (at least the value's own).
fn close(what: &str, got: &[f32], want: &[f32], scale: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for i in 0..got.len() {
        let s = scale[i % scale.len()].max(want[i].abs()).max(1e-6);
        assert!(
            (got[i] - want[i]).abs() <= 1e-4 * s,
            "{what}[{i}]: {} on the GPU, {} on the CPU (scale {s})",
            got[i],
            want[i]
        );
    }
}

fn schemes() -> [(ActQuant, QuantScheme, Vec<f32>); 3] {
    [
        (ActQuant::Pact, QuantScheme::Pact, vec![2.3]),
        (ActQuant::Lsq, QuantScheme::Lsq, vec![0.17]),
        (ActQuant::Dsq, QuantScheme::Dsq, vec![2.1, 0.3]),
    ]
}

/// Codes of every quantizer at lengths with partial words and several
/// cubes, inputs across and beyond the range, NaN, infinities, exact ties:
/// the CPU's packed bytes exactly.
#[test]
fn activation_codes_equal_the_cpu_codes() {
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(1);
    for (quant, scheme, q) in schemes() {
        let step = act::scale(scheme, &q);
        for n in [1usize, 7, 8, 9, 1001, 70_003] {
            let mut x = uniform(&mut r, n, -1.0, 3.0 * q[0].max(1.0));
            for (i, v) in [
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                -0.0,
                2.5 * step,
                3.5 * step,
            ]
            .into_iter()
            .enumerate()
            {
                if i < n {
                    x[(i * 131) % n] = v;
                }
            }
            let mut want = vec![0u8; n.div_ceil(2)];
            act::quantize_packed(scheme, &q, &x, &mut want);
            // The parameters sit after another layer's in the buffer.
            let mut qs = vec![9.0f32];
            qs.extend(&q);
            let (xb, qb, out) = (
                g.upload_f32(&x).unwrap(),
                g.upload_f32(&qs).unwrap(),
                poisoned(&g, n.div_ceil(8)),
            );
            g.act_codes(quant, &xb, n, (&qb, 1), &out).unwrap();
            let got = g.download_bytes(&out, n.div_ceil(2)).unwrap();
            assert_eq!(got, want, "{quant:?} n {n}");
        }
    }
}

/// The straight-through backward: `dx` exactly for ReLU, PACT and LSQ
/// (selections of `dy`), within the budget for DSQ; the parameter
/// gradients within the budget of their sums.
#[test]
fn activation_backward_matches_the_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(2);
    let mut cases = vec![(ActQuant::Relu, QuantScheme::None, vec![])];
    cases.extend(schemes());
    for (quant, scheme, q) in cases {
        for n in [1usize, 255, 257, 50_001] {
            let hi = 3.0 * q.first().copied().unwrap_or(1.0).max(1.0);
            let x = uniform(&mut r, n, -1.0, hi);
            let dy = uniform(&mut r, n, -1.0, 1.0);
            let features = 97;
            let mut dx = vec![0.0f32; n];
            let mut dq = vec![0.25f32; q.len()];
            act::backward(scheme, &q, &x, &dy, &mut dx, &mut dq, features);
            let (xb, dyb, qb) = (
                g.upload_f32(&x).unwrap(),
                g.upload_f32(&dy).unwrap(),
                g.upload_f32(&q).unwrap(),
            );
            let dxb = poisoned(&g, n);
            let dqb = g.upload_f32(&vec![0.25f32; q.len().max(1)]).unwrap();
            g.act_backward(quant, &xb, &dyb, n, (&qb, 0), &dxb, (&dqb, 0), features)
                .unwrap();
            let got = down(&g, &dxb, n);
            if quant == ActQuant::Dsq {
                close(&format!("{quant:?} dx n {n}"), &got, &dx, &[1.0]);
            } else {
                bits_equal(&format!("{quant:?} dx n {n}"), &got, &dx);
            }
            if !q.is_empty() {
                // Each term is at most 15 |dy| (LSQ above the range); their
                // sum's scale is the sum of |dy| times that.
                let mag: f32 = dy.iter().map(|v| v.abs()).sum::<f32>() * 15.0;
                let gq = down(&g, &dqb, q.len());
                close(&format!("{quant:?} dq n {n}"), &gq, &dq, &[mag]);
            }
        }
    }
}

/// Batch statistics, the normalisation (with and without ReLU), the
/// running-statistics update and the training-mode backward against
/// `ops::bn`, for channel counts of the network and batches of 1 to 2,048
/// rows.
#[test]
fn batchnorm_matches_the_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(3);
    for (rows, c) in [
        (1usize, 4usize),
        (37, 16),
        (2048, 64),
        (300, 3),
        (50_176, 16),
    ] {
        let n = rows * c;
        let x = uniform(&mut r, n, -2.0, 5.0);
        let dy = uniform(&mut r, n, -1.0, 1.0);
        let gamma = uniform(&mut r, c, 0.5, 1.5);
        let beta = uniform(&mut r, c, -0.5, 0.5);
        let st = bn::batch_stats(&x, c);
        let (xb, dyb, gb, bb) = (
            g.upload_f32(&x).unwrap(),
            g.upload_f32(&dy).unwrap(),
            g.upload_f32(&gamma).unwrap(),
            g.upload_f32(&beta).unwrap(),
        );
        let gs = g.bn_stats(&xb, rows, c, bn::EPS).unwrap();
        let what = format!("{rows} x {c}");
        close(
            &format!("mean {what}"),
            &down(&g, &gs.mean, c),
            &st.mean,
            &[5.0],
        );
        close(
            &format!("var {what}"),
            &down(&g, &gs.var, c),
            &st.var,
            &[25.0],
        );
        close(
            &format!("invstd {what}"),
            &down(&g, &gs.invstd, c),
            &st.invstd,
            &[1.0],
        );
        // The rest from the CPU's statistics, so each kernel is held to its
        // own budget.
        let cs = qmul_kernels::gpu::BnStats {
            mean: g.upload_f32(&st.mean).unwrap(),
            var: g.upload_f32(&st.var).unwrap(),
            invstd: g.upload_f32(&st.invstd).unwrap(),
        };
        for relu in [false, true] {
            let want = if relu {
                bn::apply_relu(&x, &gamma, &beta, &st)
            } else {
                bn::apply(&x, &gamma, &beta, &st)
            };
            let yb = poisoned(&g, n);
            g.bn_apply(&xb, rows, c, &gb, &bb, &cs, relu, &yb).unwrap();
            close(
                &format!("apply {what} relu {relu}"),
                &down(&g, &yb, n),
                &want,
                &[1.0],
            );
        }
        let (mut rm, mut rv) = (uniform(&mut r, c, -1.0, 1.0), uniform(&mut r, c, 0.5, 2.0));
        let (rmb, rvb) = (g.upload_f32(&rm).unwrap(), g.upload_f32(&rv).unwrap());
        bn::update_running(&st, rows, &mut rm, &mut rv);
        g.bn_update_running(&cs, rows, c, bn::MOMENTUM, (&rmb, &rvb))
            .unwrap();
        close(
            &format!("running mean {what}"),
            &down(&g, &rmb, c),
            &rm,
            &[1.0],
        );
        close(
            &format!("running var {what}"),
            &down(&g, &rvb, c),
            &rv,
            &[1.0],
        );
        let (mut dgamma, mut dbeta) = (vec![0.5f32; c], vec![-0.5f32; c]);
        let dx = bn::backward(&x, &dy, &gamma, &st, &mut dgamma, &mut dbeta);
        let (dgb, dbb, dxb) = (
            g.upload_f32(&vec![0.5f32; c]).unwrap(),
            g.upload_f32(&vec![-0.5f32; c]).unwrap(),
            poisoned(&g, n),
        );
        g.bn_backward(&xb, &dyb, rows, c, &gb, &cs, &dgb, &dbb, &dxb)
            .unwrap();
        // Sums over the rows: their scale is rows times a term's.
        let sum_scale = rows as f32 * 3.0;
        close(
            &format!("dgamma {what}"),
            &down(&g, &dgb, c),
            &dgamma,
            &[sum_scale],
        );
        close(
            &format!("dbeta {what}"),
            &down(&g, &dbb, c),
            &dbeta,
            &[sum_scale],
        );
        close(&format!("dx {what}"), &down(&g, &dxb, n), &dx, &[3.0]);
    }
}

/// The residual add and global average pooling (forward, backward): the
/// CPU's results bit for bit.
#[test]
fn add_and_pooling_equal_the_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(4);
    for (n, hw, c) in [
        (1usize, 1usize, 1usize),
        (3, 49, 16),
        (128, 16, 64),
        (5, 64, 512),
    ] {
        let len = n * hw * c;
        let a = uniform(&mut r, len, -1.0, 1.0);
        let b = uniform(&mut r, len, -1.0, 1.0);
        let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        let (ab, bb, yb) = (
            g.upload_f32(&a).unwrap(),
            g.upload_f32(&b).unwrap(),
            poisoned(&g, len),
        );
        g.add(&ab, &bb, len, &yb).unwrap();
        bits_equal("add", &down(&g, &yb, len), &want);
        let pooled = pool::gap_forward(&a, n, hw, c);
        let pb = poisoned(&g, n * c);
        g.gap_forward(&ab, n, hw, c, &pb).unwrap();
        bits_equal(&format!("gap {n}x{hw}x{c}"), &down(&g, &pb, n * c), &pooled);
        let dy = uniform(&mut r, n * c, -1.0, 1.0);
        let dx = pool::gap_backward(&dy, n, hw, c);
        let (dyb, dxb) = (g.upload_f32(&dy).unwrap(), poisoned(&g, len));
        g.gap_backward(&dyb, n, hw, c, &dxb).unwrap();
        bits_equal(
            &format!("gap backward {n}x{hw}x{c}"),
            &down(&g, &dxb, len),
            &dx,
        );
    }
}

/// Weighted cross-entropy (negative weights: gradient ascent), softmax,
/// and Similar Labels from the same probabilities.
#[test]
fn loss_softmax_and_similar_labels_match_the_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(5);
    for (n, classes) in [(1usize, 10usize), (64, 10), (300, 100)] {
        let logits = uniform(&mut r, n * classes, -8.0, 8.0);
        let targets: Vec<u32> = (0..n).map(|_| r.below(classes) as u32).collect();
        let weights: Vec<f32> = (0..n)
            .map(|i| {
                if i % 4 == 3 {
                    -0.5
                } else {
                    1.0 + r.uniform() as f32
                }
            })
            .collect();
        let (want_loss, want_grad) = loss::weighted_ce(&logits, classes, &targets, &weights);
        let (lb, tb, wb) = (
            g.upload_f32(&logits).unwrap(),
            g.upload_u32(&targets).unwrap(),
            g.upload_f32(&weights).unwrap(),
        );
        let (gb, lossb) = (poisoned(&g, n * classes), g.zeros(1).unwrap());
        g.weighted_ce(&lb, &tb, &wb, n, classes, &gb, (&lossb, 0))
            .unwrap();
        let what = format!("{n} x {classes}");
        close(
            &format!("grad {what}"),
            &down(&g, &gb, n * classes),
            &want_grad,
            &[1.0 / n as f32],
        );
        close(
            &format!("loss {what}"),
            &down(&g, &lossb, 1),
            &[want_loss],
            &[20.0],
        );
        let want_p: Vec<f32> = logits.chunks(classes).flat_map(loss::softmax).collect();
        let pb = poisoned(&g, n * classes);
        g.softmax(&lb, n, classes, &pb).unwrap();
        close(
            &format!("softmax {what}"),
            &down(&g, &pb, n * classes),
            &want_p,
            &[1.0],
        );
        let want_sl = qmul_runtime::unlearn::similar_labels(&want_p, classes, &targets);
        let (cpu_p, out) = (g.upload_f32(&want_p).unwrap(), poisoned(&g, n));
        g.similar_labels(&cpu_p, &tb, n, classes, &out).unwrap();
        assert_eq!(
            g.download_u32(&out, n).unwrap(),
            want_sl,
            "similar labels {what}"
        );
    }
}

/// SGD (momentum, weight decay, SalUn's mask) on a tiny model's parameters
/// against `optim::Sgd::step`, and AGR's squared gradient norms against
/// `unlearn::grad_norm_sum`.
#[test]
fn sgd_and_gradient_norms_match_the_cpu() {
    use qmul_runtime::graph::Precision;
    use qmul_runtime::{InitOptions, Model};
    let Some(g) = gpu() else { return };
    let graph = qmul_runtime::Graph {
        nodes: vec![
            qmul_runtime::Op::Input { h: 4, w: 4, c: 3 },
            qmul_runtime::Op::Conv {
                name: "c".into(),
                input: 0,
                cout: 8,
                k: 3,
                stride: 1,
                pad: 1,
                prec: Precision::F32,
            },
            qmul_runtime::Op::GlobalAvgPool { input: 1 },
            qmul_runtime::Op::Linear {
                name: "fc".into(),
                input: 2,
                out: 10,
                prec: Precision::F32,
            },
        ],
        scheme: QuantScheme::None,
        classes: 10,
    };
    let opts = InitOptions {
        seed: 1,
        pact_init: 2.0,
    };
    let mut model = Model::new(graph, opts).unwrap();
    let mut r = Rng::new(6);
    let grads: Vec<Vec<f32>> = model
        .params
        .iter()
        .map(|t| uniform(&mut r, t.data.len(), -1.0, 1.0))
        .collect();
    let mask: Vec<Vec<f32>> = grads
        .iter()
        .map(|t| t.iter().map(|_| (r.below(2)) as f32).collect())
        .collect();
    for masked in [false, true] {
        let mut m = model.clone();
        let start: Vec<Buf> = m
            .params
            .iter()
            .map(|t| g.upload_f32(&t.data).unwrap())
            .collect();
        let vel: Vec<Buf> = m
            .params
            .iter()
            .map(|t| g.zeros(t.data.len()).unwrap())
            .collect();
        let mut sgd = qmul_runtime::optim::Sgd::new(&m, 0.05, 0.9, 5e-4);
        for _ in 0..3 {
            sgd.step(&mut m, &grads, masked.then_some(&mask[..]));
            for (t, ((p, v), gr)) in start.iter().zip(&vel).zip(&grads).enumerate() {
                let gb = g.upload_f32(gr).unwrap();
                let mb = g.upload_f32(&mask[t]).unwrap();
                g.sgd(p, &gb, v, masked.then_some(&mb), gr.len(), 0.05, 0.9, 5e-4)
                    .unwrap();
            }
        }
        for (t, p) in start.iter().enumerate() {
            let want = &m.params[t].data;
            bits_equal(
                &format!("sgd tensor {t} masked {masked}"),
                &down(&g, p, want.len()),
                want,
            );
        }
    }
    let norms = g.zeros(grads.len()).unwrap();
    for (t, gr) in grads.iter().enumerate() {
        g.sum_squares(&g.upload_f32(gr).unwrap(), gr.len(), &norms, t)
            .unwrap();
    }
    let got: f64 = down(&g, &norms, grads.len())
        .iter()
        .map(|&s| (s as f64).sqrt())
        .sum();
    let want = qmul_runtime::unlearn::grad_norm_sum(&grads);
    assert!((got - want).abs() <= 1e-4 * want, "{got} vs {want}");
    model.params.clear();
}

/// Kernels over more than 65,535 cubes (a 2-D grid of cubes) reach every
/// element; bad sizes are errors, not panics.
#[test]
fn large_grids_and_bad_sizes() {
    let Some(g) = gpu() else { return };
    let n = 65_536 * 256 + 300;
    let b = poisoned(&g, n);
    g.fill(&b, n, 1.5).unwrap();
    let s = g.zeros(1).unwrap();
    g.sum_squares(&b, n, &s, 0).unwrap();
    let v = down(&g, &s, 1)[0] as f64;
    let want = 2.25 * n as f64;
    assert!((v - want).abs() <= 1e-4 * want, "{v} vs {want}");
    // A buffer past the device's limit is an error, not a panic on the
    // runtime's thread (wgpu binds at most a few hundred MiB; CUDA has no
    // such limit below its memory).
    if g.name().starts_with("wgpu") {
        assert!(g.scratch(1 << 31).is_err());
        assert!(g.upload_f32(&vec![0.0f32; 1 << 28]).is_err());
    }
    // The multiply-add ceiling bench runs and reports a rate.
    assert!(g.imad_peak(4096, 16).unwrap() > 0.0);
    let small = poisoned(&g, 10);
    assert!(g.fill(&small, 11, 0.0).is_err());
    assert!(g.add(&small, &small, 11, &small).is_err());
    assert!(g.bn_stats(&small, 3, 4, 1e-5).is_err());
    assert!(g
        .act_codes(ActQuant::Relu, &small, 10, (&small, 0), &small)
        .is_err());
}

fn kinds() -> Vec<(
    qmul_kernels::gpu::WeightQuant,
    qmul_runtime::quant::weight::WeightQuant,
)> {
    use qmul_kernels::gpu::WeightQuant as G;
    use qmul_runtime::quant::weight::WeightQuant as C;
    vec![
        (G::MaxAbs4, C::MaxAbs { qmax: 7.0 }),
        (G::MaxAbs8, C::MaxAbs { qmax: 127.0 }),
        (G::Lsq, C::Lsq),
        (G::Dsq, C::Dsq),
    ]
}

/// Weight codes and scales of every quantizer, in the integer GEMM's packed
/// rows, against `quant::weight::quantize` and the CPU packing: bit for bit
/// (an all-zero channel included); the backward against
/// `quant::weight::backward` (`dw` exactly for max-abs and LSQ, the
/// parameters' sums within the budget).
#[test]
fn weight_quantizers_match_the_cpu() {
    use qmul_kernels::pack;
    use qmul_runtime::quant::weight;
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(7);
    for (gk, ck) in kinds() {
        for (cout, k) in [(1usize, 1usize), (4, 27), (16, 144), (64, 576), (10, 513)] {
            let mut w = uniform(&mut r, cout * k, -0.3, 0.3);
            if cout > 2 {
                w[k..2 * k].fill(0.0);
            }
            let q = weight::initial_params(ck, &w, cout);
            let want = weight::quantize(ck, &q, &w, cout);
            let want_rows: Vec<u8> = if gk.bits() == 4 {
                pack::pack_s4(&want.codes, cout, k).unwrap()
            } else {
                pack::pad_rows_8bit(&want.codes, cout, k)
                    .unwrap()
                    .iter()
                    .map(|&c| c as u8)
                    .collect()
            };
            let rb = gk.row_bytes(k);
            let (wb, qb) = (g.upload_f32(&w).unwrap(), g.upload_f32(&q).unwrap());
            let (codes, scale) = (poisoned(&g, cout * rb / 4), poisoned(&g, cout));
            g.weight_codes(gk, &wb, cout, k, (&qb, 0), &codes, &scale)
                .unwrap();
            let what = format!("{gk:?} {cout} x {k}");
            bits_equal(
                &format!("scale {what}"),
                &down(&g, &scale, cout),
                &want.scale,
            );
            assert_eq!(
                g.download_bytes(&codes, cout * rb).unwrap(),
                want_rows,
                "codes {what}"
            );
            let dwq = uniform(&mut r, cout * k, -1.0, 1.0);
            let (mut dw, mut dq) = (vec![0.0f32; cout * k], vec![0.5f32; q.len()]);
            weight::backward(ck, &q, &w, &dwq, cout, &mut dw, &mut dq);
            let (dwqb, dwb) = (g.upload_f32(&dwq).unwrap(), poisoned(&g, cout * k));
            let dqb = g.upload_f32(&vec![0.5f32; q.len().max(1)]).unwrap();
            g.weight_backward(gk, &wb, &dwqb, cout, k, (&qb, 0), &dwb, (&dqb, 0))
                .unwrap();
            let got = down(&g, &dwb, cout * k);
            if gk == qmul_kernels::gpu::WeightQuant::Dsq {
                close(&format!("dw {what}"), &got, &dw, &[1.0]);
            } else {
                bits_equal(&format!("dw {what}"), &got, &dw);
            }
            if !q.is_empty() {
                let mag = dwq.iter().map(|v| v.abs()).sum::<f32>() * 8.0;
                close(&format!("dq {what}"), &down(&g, &dqb, q.len()), &dq, &[mag]);
            }
        }
    }
}

/// im2col of 4-bit and 8-bit codes (odd and even channel counts, strides
/// 1 and 2, 1x1 and 3x3 kernels, padding) and col2im against
/// `ops::im2col`: bit for bit.
#[test]
fn im2col_and_col2im_equal_the_cpu() {
    use qmul_kernels::gpu::ConvShape;
    use qmul_runtime::ops::im2col::{self, ConvGeom};
    let Some(g) = gpu() else { return };
    let mut r = Rng::new(8);
    for &(n, h, cin, k, stride, pad) in &[
        (1usize, 3usize, 1usize, 3usize, 1usize, 1usize),
        (2, 28, 1, 3, 1, 1),
        (3, 8, 16, 3, 2, 1),
        (2, 7, 5, 3, 1, 1),
        (4, 8, 32, 1, 2, 0),
        (1, 5, 3, 3, 2, 0),
    ] {
        let cg = ConvGeom {
            n,
            h,
            w: h,
            cin,
            cout: 8,
            k,
            stride,
            pad,
        };
        let gs = ConvShape {
            n,
            h,
            w: h,
            cin,
            k,
            stride,
            pad,
        };
        let what = format!("{cg:?}");
        let len = n * h * h * cin;
        for bits in [4u32, 8] {
            let src: Vec<u8> = if bits == 4 {
                (0..len.div_ceil(2)).map(|_| r.below(256) as u8).collect()
            } else {
                (0..len).map(|_| r.below(256) as u8).collect()
            };
            // A tightly packed odd-length tensor's last high nibble is 0.
            let mut src = src;
            if bits == 4 && len % 2 == 1 {
                *src.last_mut().unwrap() &= 0x0f;
            }
            let want = if bits == 4 {
                im2col::im2col_u4(&cg, &src)
            } else {
                im2col::im2col_u8(&cg, &src)
            };
            let sb = g.upload_bytes(&src).unwrap();
            let dst = poisoned(&g, want.len() / 4);
            g.im2col_codes(bits, &sb, gs, &dst).unwrap();
            assert_eq!(
                g.download_bytes(&dst, want.len()).unwrap(),
                want,
                "{bits}-bit {what}"
            );
        }
        let ld = cg.kdim() + 3;
        let cols = uniform(&mut r, cg.m() * ld, -1.0, 1.0);
        let start = uniform(&mut r, len, -1.0, 1.0);
        let mut want = start.clone();
        im2col::col2im_add(&cg, &cols, ld, &mut want);
        let (cb, dxb) = (g.upload_f32(&cols).unwrap(), g.upload_f32(&start).unwrap());
        g.col2im_add(&cb, ld, gs, &dxb).unwrap();
        bits_equal(&format!("col2im {what}"), &down(&g, &dxb, len), &want);
    }
}

/// Logits of the device forward against `Model::forward`: `max |diff|` over
/// the batch relative to the largest logit, and how many argmaxes agree.
fn compare_forward(g: &Gpu, model: &qmul_runtime::Model, images: &[u8], n: usize) -> (f32, usize) {
    let want = model.forward(images, n).unwrap();
    let dm = qmul_runtime::gpu::DeviceModel::upload(g, model).unwrap();
    let got = dm.forward(images, n).unwrap();
    assert_eq!(got.len(), want.len());
    let c = model.classes();
    let top = want.iter().fold(0.0f32, |a, v| a.max(v.abs())).max(1e-6);
    let diff = got
        .iter()
        .zip(&want)
        .fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
    let argmax = |r: &[f32]| (0..r.len()).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap();
    let agree = got
        .chunks(c)
        .zip(want.chunks(c))
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    (diff / top, agree)
}

/// The whole eval forward on the device: the shipped model (8-bit stem and
/// classifier, PACT 4-bit body) on 500 shipped test images, and freshly
/// initialised tiny networks of every scheme. Codes can differ where a
/// BatchNorm output lies within rounding of a code boundary (the GPU may
/// fuse its multiply-add), so the logits are held to 1e-3 of the largest
/// logit and the argmax to at least 99% agreement; the figures are printed.
#[test]
fn device_forward_matches_the_cpu_forward() {
    let Some(g) = gpu() else { return };
    let model = shipped_model();
    let test = shipped_set("t10k");
    let n = 500;
    let images = &test.images[..n * test.image_len()];
    let (rel, agree) = compare_forward(&g, &model, images, n);
    eprintln!(
        "shipped model, {n} images: max |logit diff| {rel:.2e} of the largest, argmax {agree}/{n}"
    );
    assert!(rel <= 1e-3 && agree * 100 >= n * 99, "{rel} {agree}");
    for scheme in [QuantScheme::Pact, QuantScheme::Lsq, QuantScheme::Dsq] {
        let graph = tiny_graph(scheme);
        let mut m = qmul_runtime::Model::new(
            graph,
            qmul_runtime::InitOptions {
                seed: 3,
                pact_init: 2.0,
            },
        )
        .unwrap();
        let mut r = Rng::new(9);
        let n = 64;
        let images: Vec<u8> = (0..n * 36).map(|_| r.below(256) as u8).collect();
        // One training pass sets LSQ/DSQ ranges and realistic statistics.
        let labels: Vec<u32> = (0..n).map(|i| (i % 3) as u32).collect();
        let w = vec![1.0f32; n];
        m.train_pass(
            &images,
            n,
            qmul_runtime::Targets {
                labels: &labels,
                weights: &w,
            },
            true,
        )
        .unwrap();
        let (rel, agree) = compare_forward(&g, &m, &images, n);
        eprintln!("tiny {scheme:?}: max |logit diff| {rel:.2e} of the largest, argmax {agree}/{n}");
        assert!(
            rel <= 1e-3 && agree * 100 >= n * 99,
            "{scheme:?}: {rel} {agree}"
        );
    }
}

/// The gradient checks' tiny network (6x6x1 input, 8-bit stem and
/// classifier, 4-bit body with a residual block).
fn tiny_graph(scheme: QuantScheme) -> qmul_runtime::Graph {
    grad::tiny(scheme, qmul_runtime::graph::Precision::Int8)
}

// Only `tiny` of the gradient checks' helpers is used here.
#[allow(dead_code)]
#[path = "common/grad.rs"]
mod grad;

/// Relative L2 error of `got` against `want`.
fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let (mut d, mut w) = (0.0f64, 0.0f64);
    for (a, b) in got.iter().zip(want) {
        d += ((a - b) as f64).powi(2);
        w += (*b as f64).powi(2);
    }
    (d / w.max(1e-30)).sqrt()
}

/// One training pass on the device against `Model::train_pass` (f32
/// gradient GEMMs), on tiny PACT/LSQ/DSQ networks and on the shipped model
/// with a batch of 8 shipped images: logits within 1e-5 (measured: equal), the
/// loss within 1e-4, every parameter gradient within a relative L2 error of
/// 1e-3 (measured: at most 3e-5; the shipped model's median 3.8e-7), the
/// running statistics, and the
/// parameters after three SGD steps on each side within 1e-4.
///
/// With 64 images the shipped model's two passes are each
/// self-consistent but not equal: the GPU sums the batch statistics in f32,
/// the CPU in f64, so the first BatchNorm's mean differs by about an ulp
/// (1.3e-7), a few activations round to the other code, the next layer's
/// statistics differ by 5e-6, and so on: 1.7e-2 at the last BatchNorm and
/// 7% in the logits (the CPU's eval forward with the device's batch
/// statistics gives the device's logits exactly, so nothing else differs).
/// (measured: the loss 0.030 against 0.043, gradients' median relative
/// error 0.54: the strongly fitted model's gradient comes from a few
/// samples). There the test asserts the figures stay in that regime and
/// prints them; a whole run's metrics are what to compare (issue 16, item 4).
#[test]
fn device_training_pass_and_sgd_match_the_cpu() {
    use qmul_runtime::gpu::{DeviceModel, DeviceSgd};
    use qmul_runtime::Targets;
    let Some(g) = gpu() else { return };
    qmul_kernels::set_grad_precision(qmul_kernels::GradPrecision::F32);
    let shipped = shipped_model();
    let train = shipped_set("train");
    let mut cases = vec![
        ("shipped".to_string(), shipped.clone(), 8usize, None),
        ("shipped batch 64".to_string(), shipped, 64usize, None),
    ];
    for scheme in [QuantScheme::Pact, QuantScheme::Lsq, QuantScheme::Dsq] {
        let m = qmul_runtime::Model::new(
            tiny_graph(scheme),
            qmul_runtime::InitOptions {
                seed: 3,
                pact_init: 2.0,
            },
        )
        .unwrap();
        let mut r = Rng::new(10);
        let images: Vec<u8> = (0..48 * 36).map(|_| r.below(256) as u8).collect();
        cases.push((format!("tiny {scheme:?}"), m, 48, Some(images)));
    }
    cases.rotate_left(1);
    for (name, mut m, n, images) in cases {
        let images = images.unwrap_or_else(|| train.images[..n * train.image_len()].to_vec());
        let labels: Vec<u32> = if name.starts_with("shipped") {
            train.labels[..n].iter().map(|&l| l as u32).collect()
        } else {
            (0..n).map(|i| (i % 3) as u32).collect()
        };
        let weights: Vec<f32> = (0..n)
            .map(|i| if i % 5 == 4 { -0.5 } else { 1.0 })
            .collect();
        let t = Targets {
            labels: &labels,
            weights: &weights,
        };
        // LSQ/DSQ ranges come from a first CPU pass (the device requires them).
        m.train_pass(&images, n, t, false).unwrap();
        let mut dm = DeviceModel::upload(&g, &m).unwrap();
        let cpu = m.train_pass(&images, n, t, true).unwrap();
        let dev = dm.train_pass(&images, n, t, true).unwrap();
        let dl = down(&g, &dev.logits, cpu.logits.len());
        let logit_err = rel_l2(&dl, &cpu.logits);
        if name == "shipped batch 64" {
            // See the test's comment: the batch statistics' f32 sums move
            // codes, and the moves compound layer after layer.
            let loss_err = ((dev.loss - cpu.loss) / cpu.loss).abs();
            let gerr: Vec<f64> = dev
                .grads
                .iter()
                .zip(&cpu.grads)
                .map(|(gb, gc)| rel_l2(&down(&g, gb, gc.len()), gc))
                .collect();
            let worst = gerr.iter().cloned().fold(0.0, f64::max);
            let median = {
                let mut v = gerr.clone();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            eprintln!(
                "{name}: logits {logit_err:.2e}, loss {} vs {} ({loss_err:.2e}), gradients median {median:.2e}, worst {worst:.2e}",
                dev.loss, cpu.loss
            );
            assert!(
                logit_err <= 0.2 && loss_err <= 0.5 && median <= 1.0,
                "{name}: beyond the divergence the statistics' rounding explains"
            );
            continue;
        }
        assert!(logit_err <= 1e-5, "{name}: logits off by {logit_err:.2e}");
        assert!(
            (dev.loss - cpu.loss).abs() <= 1e-4 * cpu.loss.abs().max(1.0),
            "{name}: loss {} vs {}",
            dev.loss,
            cpu.loss
        );
        let mut worst = (0.0f64, String::new());
        for (k, (gb, gc)) in dev.grads.iter().zip(&cpu.grads).enumerate() {
            let got = down(&g, gb, gc.len());
            let e = rel_l2(&got, gc);
            if e > worst.0 {
                worst = (e, m.params[k].name.clone());
            }
            assert!(
                e <= 1e-3,
                "{name}: gradient of {} off by {e:.2e}",
                m.params[k].name
            );
        }
        let after = dm.to_model().unwrap();
        for (a, b) in after.buffers.iter().zip(&m.buffers) {
            close(
                &format!("{name}: running {}", b.name),
                &a.data,
                &b.data,
                &[1.0],
            );
        }
        // Three SGD steps on each side from the same gradients.
        let mut sgd = qmul_runtime::optim::Sgd::new(&m, 0.05, 0.9, 5e-4);
        let mut dsgd = DeviceSgd::new(&dm, 0.05, 0.9, 5e-4).unwrap();
        let grads_dev: Vec<Buf> = cpu.grads.iter().map(|v| g.upload_f32(v).unwrap()).collect();
        for _ in 0..3 {
            sgd.step(&mut m, &cpu.grads, None);
            dsgd.step(&mut dm, &grads_dev, None).unwrap();
        }
        let after = dm.to_model().unwrap();
        for (a, b) in after.params.iter().zip(&m.params) {
            close(&format!("{name}: sgd {}", b.name), &a.data, &b.data, &[1.0]);
        }
        eprintln!(
            "{name}: loss {:.6} (CPU {:.6}), worst gradient {:.2e} ({}), G {:.4} (CPU {:.4})",
            dev.loss,
            cpu.loss,
            worst.0,
            worst.1,
            dm.grad_norm_sum(&dev.grads).unwrap(),
            qmul_runtime::unlearn::grad_norm_sum(&cpu.grads)
        );
    }
}

/// Whole unlearning runs on the device (`unlearn_on` with `Device::Gpu`:
/// model, gradients, momentum and SalUn's mask resident) against the same
/// runs on the CPU with f32 gradient GEMMs, on a tiny PACT network: Q-MUL
/// (Similar Labels and AGR), SalUn (its mask from the CPU), l1-sparse and
/// GA, two epochs each. The parameters end within a relative L2 error of
/// 1e-3 of the CPU's and the logs' losses and AGR norms within 1e-3.
#[test]
fn unlearning_runs_on_the_device_match_the_cpu() {
    use qmul_runtime::device::Device;
    use qmul_runtime::samples::Samples;
    use qmul_runtime::unlearn::{self, Config, Method, Relabel, Variant};
    let Some(g) = gpu() else { return };
    qmul_kernels::set_grad_precision(qmul_kernels::GradPrecision::F32);
    let dev = Device::Gpu(std::sync::Arc::new(g));
    let mut m = qmul_runtime::Model::new(
        tiny_graph(QuantScheme::Pact),
        qmul_runtime::InitOptions {
            seed: 4,
            pact_init: 2.0,
        },
    )
    .unwrap();
    let mut r = Rng::new(11);
    let n = 64;
    let images: Vec<u8> = (0..n * 36).map(|_| r.below(256) as u8).collect();
    let labels: Vec<u32> = (0..n).map(|i| (i % 3) as u32).collect();
    // A few CPU training steps so the network has something to forget.
    let mut sgd = qmul_runtime::optim::Sgd::new(&m, 0.05, 0.9, 5e-4);
    for _ in 0..20 {
        let w = vec![1.0f32; n];
        let p = m
            .train_pass(
                &images,
                n,
                qmul_runtime::Targets {
                    labels: &labels,
                    weights: &w,
                },
                true,
            )
            .unwrap();
        sgd.step(&mut m, &p.grads, None);
    }
    let forget = Samples {
        images: &images[..12 * 36],
        labels: &labels[..12],
    };
    let retain = Samples {
        images: &images[12 * 36..],
        labels: &labels[12..],
    };
    let methods = [
        Method::Relabel {
            relabel: Relabel::Similar,
            agr: true,
            variant: Variant::Sequential,
        },
        Method::Salun {
            sparsity: 0.5,
            variant: Variant::Sequential,
        },
        Method::L1 { gamma: 5e-4 },
        Method::Ga,
    ];
    for method in methods {
        let name = method.name();
        let cfg = Config {
            epochs: 2,
            batch: 16,
            lr: 0.02,
            ..Config::new(method)
        };
        let cpu = unlearn::unlearn(&m, forget, retain, &cfg, &mut |_| true).unwrap();
        let gpu = unlearn::unlearn_on(&dev, &m, forget, retain, &cfg, &mut |_| true).unwrap();
        let mut worst = 0.0f64;
        for (a, b) in gpu.model.params.iter().zip(&cpu.model.params) {
            worst = worst.max(rel_l2(&a.data, &b.data));
        }
        for (a, b) in gpu.logs.iter().zip(&cpu.logs) {
            let pairs = [
                (a.loss_forget, b.loss_forget),
                (a.loss_retain, b.loss_retain),
                (a.g_forget, b.g_forget),
                (a.g_retain, b.g_retain),
            ];
            for (x, y) in pairs {
                if let (Some(x), Some(y)) = (x, y) {
                    assert!(
                        (x - y).abs() <= 1e-3 * y.abs().max(1e-3),
                        "{name}: log {x} vs {y}"
                    );
                }
            }
        }
        eprintln!(
            "{name}: parameters {worst:.2e} from the CPU's; codes changed {:?} (CPU {:?})",
            gpu.logs.iter().map(|l| l.codes_changed).collect::<Vec<_>>(),
            cpu.logs.iter().map(|l| l.codes_changed).collect::<Vec<_>>()
        );
        assert!(worst <= 1e-3, "{name}: parameters off by {worst:.2e}");
    }
}
