//! The straight-through backward of whole networks against the f64 reference
//! implementation, for every quantization scheme, and the full-precision
//! network's gradients against finite differences.

#[path = "common/grad.rs"]
mod grad;

use grad::{batch, check_against_reference, rel_err, tiny, Budget};
use qmul_runtime::graph::{Precision, QuantScheme};
use qmul_runtime::{reference, InitOptions, Model, Targets};

/// These checks hold the f32 gradient GEMMs to the f32 budget, whatever
/// the process default (`QMUL_BACKWARD`, else bf16); every test here
/// calls it, so none runs in another precision; `grad_check_bf16.rs` checks bf16 against its own budget.
fn f32_gemms() {
    qmul_kernels::set_grad_precision(qmul_kernels::GradPrecision::F32);
}

/// Relative error allowed with f32 gradient GEMMs: every tensor.
const TOL: Budget = Budget {
    per_tensor: 2e-3,
    min_len: 0,
    whole: 2e-3,
};

#[test]
fn pact_network_gradients_match_f64_reference() {
    f32_gemms();
    check_against_reference(QuantScheme::Pact, Precision::Int8, TOL);
}

#[test]
fn lsq_network_gradients_match_f64_reference() {
    f32_gemms();
    check_against_reference(QuantScheme::Lsq, Precision::Int8, TOL);
}

#[test]
fn dsq_network_gradients_match_f64_reference() {
    f32_gemms();
    check_against_reference(QuantScheme::Dsq, Precision::Int8, TOL);
}

#[test]
fn quantized_body_with_f32_edges_matches_reference() {
    f32_gemms();
    check_against_reference(QuantScheme::Pact, Precision::F32, TOL);
}

#[test]
fn full_precision_gradients_match_reference_and_finite_differences() {
    f32_gemms();
    check_against_reference(QuantScheme::None, Precision::F32, TOL);
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
    f32_gemms();
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
