//! What the whole-network gradient checks share (included by `grad_check.rs`
//! and `grad_check_bf16.rs`, each its own process, so each can choose the
//! process-wide precision of the gradient GEMMs).

use qmul_runtime::graph::{Graph, Op, Precision, QuantScheme};
use qmul_runtime::{reference, InitOptions, Model, Targets};

/// A tiny residual network exercising every op: 8-bit stem, a block with a
/// strided 1x1 shortcut, an identity block, pooling and an 8-bit classifier.
pub fn tiny(scheme: QuantScheme, edge: Precision) -> Graph {
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

pub fn batch(n: usize, seed: u64) -> (Vec<u8>, Vec<u32>, Vec<f32>) {
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

pub fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    num / den.max(1e-12)
}

/// How far gradients may be from the f64 reference (relative errors).
pub struct Budget {
    /// For every tensor of at least `min_len` values.
    pub per_tensor: f64,
    pub min_len: usize,
    /// For all gradients together, as one vector.
    pub whole: f64,
}

/// Gradients of a training pass against the f64 reference, within `b`.
pub fn check_against_reference(scheme: QuantScheme, edge: Precision, b: Budget) {
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
    let mut worst = 0.0f64;
    for (t, (got, want)) in model.params.iter().zip(pass.grads.iter().zip(&g)) {
        if want.iter().all(|v| *v == 0.0) && got.iter().all(|v| *v == 0.0) {
            assert!(t.data.is_empty(), "{scheme:?}: {} has no gradient", t.name);
            continue;
        }
        compared += 1;
        let e = rel_err(got, want);
        if got.len() < b.min_len {
            continue;
        }
        worst = worst.max(e);
        assert!(e < b.per_tensor, "{scheme:?}/{edge:?}: gradient of {} differs from the f64 reference: rel err {e:.2e}\n got  {:?}\n want {:?}", t.name, &got[..got.len().min(6)], &want[..want.len().min(6)]);
    }
    let all_got: Vec<f32> = pass.grads.iter().flatten().copied().collect();
    let all_want: Vec<f64> = g.iter().flatten().copied().collect();
    let whole = rel_err(&all_got, &all_want);
    println!(
        "{scheme:?}/{edge:?}: largest relative error of a gradient tensor {worst:.2e}, of all gradients {whole:.2e}"
    );
    assert!(
        whole < b.whole,
        "{scheme:?}/{edge:?}: all gradients together differ from the reference by {whole:.2e}"
    );
    // 5 conv weights, 5 x (gamma, beta), fc weight and bias, plus quantizer parameters.
    let expected = if scheme == QuantScheme::None { 17 } else { 21 };
    assert!(
        compared >= expected,
        "{scheme:?}: only {compared} tensors had gradients"
    );
}
