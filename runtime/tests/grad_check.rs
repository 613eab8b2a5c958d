//! The straight-through backward of whole networks against the f64 reference
//! implementation, for every quantization scheme, and the full-precision
//! network's gradients against finite differences.

use qmul_runtime::graph::{Graph, Op, Precision, QuantScheme};
use qmul_runtime::{reference, InitOptions, Model, Targets};

/// A tiny residual network exercising every op: 8-bit stem, a block with a
/// strided 1x1 shortcut, an identity block, pooling and an 8-bit classifier.
fn tiny(scheme: QuantScheme, edge: Precision) -> Graph {
    let q = scheme != QuantScheme::None;
    let body = if q { Precision::Int4 } else { Precision::F32 };
    let edge = if q { edge } else { Precision::F32 };
    let conv = |name: &str, input, cout, k, stride, prec| Op::Conv {
        name: name.into(),
        input,
        cout,
        k,
        stride,
        pad: k / 2,
        prec,
    };
    let bn = |name: &str, input| Op::BatchNorm {
        name: name.into(),
        input,
    };
    let act = |name: &str, input| Op::Act {
        name: name.into(),
        input,
    };
    let nodes = vec![
        Op::Input { h: 6, w: 6, c: 1 },   // 0
        conv("stem", 0, 4, 3, 1, edge),   // 1
        bn("stem.bn", 1),                 // 2
        act("stem.act", 2),               // 3
        conv("b1.c1", 3, 6, 3, 2, body),  // 4
        bn("b1.bn1", 4),                  // 5
        act("b1.a1", 5),                  // 6
        conv("b1.c2", 6, 6, 3, 1, body),  // 7
        bn("b1.bn2", 7),                  // 8
        conv("b1.sc", 3, 6, 1, 2, body),  // 9
        bn("b1.bnsc", 9),                 // 10
        Op::Add { a: 8, b: 10 },          // 11
        act("b1.out", 11),                // 12
        conv("b2.c1", 12, 6, 3, 1, body), // 13
        bn("b2.bn1", 13),                 // 14
        Op::Add { a: 14, b: 12 },         // 15
        act("b2.out", 15),                // 16
        Op::GlobalAvgPool { input: 16 },  // 17
        Op::Linear {
            name: "fc".into(),
            input: 17,
            out: 3,
            prec: edge,
        },
    ];
    Graph {
        nodes,
        scheme,
        classes: 3,
    }
}

fn batch(n: usize, seed: u64) -> (Vec<u8>, Vec<u32>, Vec<f32>) {
    let mut r = qmul_runtime::rng::Rng::new(seed);
    let images = (0..n * 36).map(|_| r.below(256) as u8).collect();
    let labels = (0..n).map(|_| r.below(3) as u32).collect();
    let weights = (0..n)
        .map(|i| {
            if i % 3 == 2 {
                -0.5
            } else {
                1.0 + r.uniform() as f32
            }
        })
        .collect();
    (images, labels, weights)
}

fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    num / den.max(1e-12)
}

fn check_against_reference(scheme: QuantScheme, edge: Precision) {
    let mut model = Model::new(
        tiny(scheme, edge),
        InitOptions {
            seed: 3,
            pact_init: 2.0,
        },
    )
    .unwrap();
    let (images, labels, weights) = batch(4, 11);
    // One update first so LSQ/DSQ ranges are initialised and BN is not at identity.
    let p0 = model
        .train_pass(
            &images,
            4,
            Targets {
                labels: &labels,
                weights: &weights,
            },
            false,
        )
        .unwrap();
    let mut sgd = qmul_runtime::optim::Sgd::new(&model, 0.05, 0.0, 0.0);
    sgd.step(&mut model, &p0.grads, None);
    let pass = model
        .train_pass(
            &images,
            4,
            Targets {
                labels: &labels,
                weights: &weights,
            },
            false,
        )
        .unwrap();
    let (loss, g) = reference::loss_and_grads(&model, &images, 4, &labels, &weights);
    assert!(
        (pass.loss as f64 - loss).abs() < 1e-4 * loss.abs().max(1.0),
        "{scheme:?}: loss {} vs reference {loss}",
        pass.loss
    );
    let mut compared = 0;
    for (t, (got, want)) in model.params.iter().zip(pass.grads.iter().zip(&g)) {
        if want.iter().all(|v| *v == 0.0) && got.iter().all(|v| *v == 0.0) {
            assert!(t.data.is_empty(), "{scheme:?}: {} has no gradient", t.name);
            continue;
        }
        compared += 1;
        let e = rel_err(got, want);
        assert!(e < 2e-3, "{scheme:?}/{edge:?}: gradient of {} differs from the f64 reference: rel err {e:.2e}\n got  {:?}\n want {:?}", t.name, &got[..got.len().min(6)], &want[..want.len().min(6)]);
    }
    // 5 conv weights, 5 x (gamma, beta), fc weight and bias, plus quantizer parameters.
    let expected = if scheme == QuantScheme::None { 17 } else { 21 };
    assert!(
        compared >= expected,
        "{scheme:?}: only {compared} tensors had gradients"
    );
}

#[test]
fn pact_network_gradients_match_f64_reference() {
    check_against_reference(QuantScheme::Pact, Precision::Int8);
}

#[test]
fn lsq_network_gradients_match_f64_reference() {
    check_against_reference(QuantScheme::Lsq, Precision::Int8);
}

#[test]
fn dsq_network_gradients_match_f64_reference() {
    check_against_reference(QuantScheme::Dsq, Precision::Int8);
}

#[test]
fn quantized_body_with_f32_edges_matches_reference() {
    check_against_reference(QuantScheme::Pact, Precision::F32);
}

#[test]
fn full_precision_gradients_match_reference_and_finite_differences() {
    check_against_reference(QuantScheme::None, Precision::F32);
    // Finite differences of the f64 reference loss on a few parameters of each tensor.
    let model = Model::new(
        tiny(QuantScheme::None, Precision::F32),
        InitOptions {
            seed: 5,
            pact_init: 2.0,
        },
    )
    .unwrap();
    let (images, labels, weights) = batch(3, 2);
    let mut m2 = model.clone();
    let pass = m2
        .train_pass(
            &images,
            3,
            Targets {
                labels: &labels,
                weights: &weights,
            },
            false,
        )
        .unwrap();
    for (ti, t) in model
        .params
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.data.is_empty())
    {
        for j in [0, t.data.len() / 2, t.data.len() - 1] {
            let h = 1e-3f32;
            let mut plus = model.clone();
            plus.params[ti].data[j] += h;
            let mut minus = model.clone();
            minus.params[ti].data[j] -= h;
            let lp = reference::loss_and_grads(&plus, &images, 3, &labels, &weights).0;
            let lm = reference::loss_and_grads(&minus, &images, 3, &labels, &weights).0;
            let fd = (lp - lm) / (2.0 * h as f64);
            let got = pass.grads[ti][j] as f64;
            assert!(
                (got - fd).abs() < 2e-3 + 2e-2 * fd.abs(),
                "{}[{j}]: backward {got} vs finite difference {fd}",
                t.name
            );
        }
    }
}

#[test]
fn eval_mode_gradients_match_reference_and_change_nothing() {
    for scheme in [QuantScheme::Pact, QuantScheme::Lsq] {
        let mut model = Model::new(
            tiny(scheme, Precision::Int8),
            InitOptions {
                seed: 11,
                pact_init: 2.0,
            },
        )
        .unwrap();
        let (images, labels, weights) = batch(4, 5);
        // Train a little so running statistics and ranges are not at their initial values.
        let mut sgd = qmul_runtime::optim::Sgd::new(&model, 0.05, 0.0, 0.0);
        for _ in 0..3 {
            let p = model
                .train_pass(
                    &images,
                    4,
                    Targets {
                        labels: &labels,
                        weights: &weights,
                    },
                    true,
                )
                .unwrap();
            sgd.step(&mut model, &p.grads, None);
        }
        let before = model.clone();
        let pass = model
            .eval_mode_pass(
                &images,
                4,
                Targets {
                    labels: &labels,
                    weights: &weights,
                },
            )
            .unwrap();
        assert_eq!(
            model.params, before.params,
            "an eval-mode pass must not change parameters"
        );
        assert_eq!(
            model.buffers, before.buffers,
            "an eval-mode pass must not change running statistics"
        );
        let (loss, g) = reference::loss_and_grads_bn(&model, &images, 4, &labels, &weights, true);
        let fwd = model.forward(&images, 4).unwrap();
        // f32 and f64 may round a rare activation that sits on a code boundary to
        // neighbouring codes; that moves the loss by ~1e-4, not more.
        assert!(
            (pass.loss as f64 - loss).abs() < 1e-3 * loss.abs().max(1.0),
            "{scheme:?}: loss {} vs reference {loss}; logits {:?} vs forward {:?}",
            pass.loss,
            &pass.logits[..6],
            &fwd[..6]
        );
        for (t, (got, want)) in model.params.iter().zip(pass.grads.iter().zip(&g)) {
            if t.data.is_empty() {
                continue;
            }
            let e = rel_err(got, want);
            assert!(
                e < 2e-3,
                "{scheme:?}: eval-mode gradient of {} differs: {e:.2e}",
                t.name
            );
        }
        // Eval-mode logits are the eval forward's.
        assert_eq!(pass.logits, model.forward(&images, 4).unwrap());
    }
}
