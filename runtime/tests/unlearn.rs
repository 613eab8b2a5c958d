//! Each unlearning method's defining behaviour on a tiny model and synthetic data.

use qmul_runtime::graph::{Graph, Op, Precision, QuantScheme};
use qmul_runtime::unlearn::{
    self, agr_weights, similar_labels, Config, Method, Relabel, Samples, UnlearnError, Variant,
};
use qmul_runtime::{InitOptions, Model, Targets};

fn tiny() -> Graph {
    let conv = |name: &str, input, cout, stride, prec| Op::Conv {
        name: name.into(),
        input,
        cout,
        k: 3,
        stride,
        pad: 1,
        prec,
    };
    Graph {
        nodes: vec![
            Op::Input { h: 8, w: 8, c: 1 },
            conv("stem", 0, 6, 1, Precision::Int8),
            Op::BatchNorm {
                name: "stem.bn".into(),
                input: 1,
            },
            Op::Act {
                name: "stem.act".into(),
                input: 2,
            },
            conv("c1", 3, 8, 2, Precision::Int4),
            Op::BatchNorm {
                name: "c1.bn".into(),
                input: 4,
            },
            Op::Act {
                name: "c1.act".into(),
                input: 5,
            },
            Op::GlobalAvgPool { input: 6 },
            Op::Linear {
                name: "fc".into(),
                input: 7,
                out: 4,
                prec: Precision::Int8,
            },
        ],
        scheme: QuantScheme::Pact,
        classes: 4,
    }
}

/// Four classes: a bright quadrant per class, plus noise.
fn data(n: usize, seed: u64) -> (Vec<u8>, Vec<u32>) {
    let mut r = qmul_runtime::rng::Rng::new(seed);
    let mut images = Vec::with_capacity(n * 64);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let c = r.below(4);
        for y in 0..8 {
            for x in 0..8 {
                let q = (y / 4) * 2 + x / 4;
                let base = if q == c { 180 } else { 40 };
                images.push((base + r.below(60)) as u8);
            }
        }
        labels.push(c as u32);
    }
    (images, labels)
}

fn trained() -> (Model, Vec<u8>, Vec<u32>) {
    let mut m = Model::new(
        tiny(),
        InitOptions {
            seed: 2,
            pact_init: 3.0,
        },
    )
    .unwrap();
    let (images, labels) = data(240, 1);
    let mut sgd = qmul_runtime::optim::Sgd::new(&m, 0.05, 0.9, 5e-4);
    for _ in 0..15 {
        for b in 0..6 {
            let (i0, i1) = (b * 40, (b + 1) * 40);
            let w = vec![1.0f32; 40];
            let p = m
                .train_pass(
                    &images[i0 * 64..i1 * 64],
                    40,
                    Targets {
                        labels: &labels[i0..i1],
                        weights: &w,
                    },
                    true,
                )
                .unwrap();
            sgd.step(&mut m, &p.grads, None);
        }
    }
    (m, images, labels)
}

fn mean_ce(m: &Model, images: &[u8], labels: &[u32]) -> f64 {
    let logits = m.forward(images, labels.len()).unwrap();
    let k = m.classes();
    logits
        .chunks(k)
        .zip(labels)
        .map(|(row, &y)| -(qmul_runtime::ops::loss::softmax(row)[y as usize] as f64).ln())
        .sum::<f64>()
        / labels.len() as f64
}

#[test]
fn similar_labels_pick_the_nearest_probability_class() {
    let probs = [
        0.7, 0.2, 0.06, 0.04, /**/ 0.1, 0.5, 0.35, 0.05, /**/ 0.3, 0.25, 0.05, 0.4,
    ];
    // Row 0: predicted 0 -> runner-up 1. Row 1: label 2 (0.35) -> nearest is 1 (0.5, |0.15|) vs 0 (0.1, |0.25|).
    // Row 2: label 3 (0.4) -> nearest is 0 (0.3).
    assert_eq!(similar_labels(&probs, 4, &[0, 2, 3]), vec![1, 1, 0]);
}

#[test]
fn agr_gives_the_larger_side_the_smaller_weight() {
    assert_eq!(agr_weights(3.0, 1.0), (0.25, 0.75));
    assert_eq!(agr_weights(0.0, 0.0), (0.5, 0.5));
    let (m, images, labels) = trained();
    let cfg = Config {
        epochs: 2,
        lr: 0.01,
        batch: 32,
        ..Config::new(Method::qmul(4))
    };
    let (f, r) = (40, 240);
    let logs = unlearn::unlearn(
        &m,
        Samples {
            images: &images[..f * 64],
            labels: &labels[..f],
        },
        Samples {
            images: &images[f * 64..r * 64],
            labels: &labels[f..r],
        },
        &cfg,
        &mut |_| true,
    )
    .unwrap()
    .logs;
    for l in &logs {
        let (gf, gr) = (l.g_forget.unwrap(), l.g_retain.unwrap());
        assert!(gf > 0.0 && gr > 0.0);
        assert!(
            (l.w_forget as f64 - gr / (gf + gr)).abs() < 1e-6
                && (l.w_retain as f64 - gf / (gf + gr)).abs() < 1e-6
        );
        assert_eq!(
            l.g_retain_batches,
            Some(2),
            "retain side sampled to the forget loader's 2 batches"
        );
    }
}

#[test]
fn salun_moves_only_salient_parameters() {
    let (m, images, labels) = trained();
    let forget = Samples {
        images: &images[..40 * 64],
        labels: &labels[..40],
    };
    let retain = Samples {
        images: &images[40 * 64..],
        labels: &labels[40..],
    };
    let mask = unlearn::saliency_mask(&mut m.clone(), &forget, 64, 32, 0.5).unwrap();
    let kept: usize = mask.iter().flatten().filter(|&&v| v == 1.0).count();
    let total: usize = mask.iter().map(Vec::len).sum();
    assert!(
        (kept as f64 - total as f64 / 2.0).abs() <= 1.0 + total as f64 * 0.01,
        "{kept} of {total}"
    );
    let cfg = Config {
        epochs: 1,
        batch: 32,
        ..Config::new(Method::Salun {
            sparsity: 0.5,
            variant: Variant::Sequential,
        })
    };
    let after = unlearn::unlearn(&m, forget, retain, &cfg, &mut |_| true)
        .unwrap()
        .model;
    let mut moved = 0;
    for ((a, b), mk) in m.params.iter().zip(&after.params).zip(&mask) {
        for ((x, y), k) in a.data.iter().zip(&b.data).zip(mk) {
            if x != y {
                assert_eq!(*k, 1.0, "{} moved outside the mask", a.name);
                moved += 1;
            }
        }
    }
    assert!(
        moved > kept / 2,
        "salient parameters should move ({moved} of {kept})"
    );
}

#[test]
fn gradient_ascent_raises_the_forget_loss() {
    let (m, images, labels) = trained();
    let (fi, fl) = (&images[..40 * 64], &labels[..40]);
    let before = mean_ce(&m, fi, fl);
    let cfg = Config {
        epochs: 5,
        lr: 0.1,
        batch: 20,
        ..Config::new(Method::Ga)
    };
    let empty = Samples {
        images: &[],
        labels: &[],
    };
    let after = unlearn::unlearn(
        &m,
        Samples {
            images: fi,
            labels: fl,
        },
        empty,
        &cfg,
        &mut |_| true,
    )
    .unwrap()
    .model;
    let now = mean_ce(&after, fi, fl);
    assert!(now > 1.5 * before, "forget loss {before:.3} -> {now:.3}");
}

#[test]
fn random_labels_forget_and_cancellation_loses_nothing() {
    let (m, images, labels) = trained();
    let forget = Samples {
        images: &images[..40 * 64],
        labels: &labels[..40],
    };
    let retain = Samples {
        images: &images[40 * 64..],
        labels: &labels[40..],
    };
    let cfg = Config {
        epochs: 2,
        batch: 32,
        ..Config::new(Method::Relabel {
            relabel: Relabel::Random,
            agr: false,
            variant: Variant::Mixed,
        })
    };
    let c = m.clone();
    let mut calls = 0;
    let r = unlearn::unlearn(&c, forget, retain, &cfg, &mut |_| {
        calls += 1;
        calls < 3
    });
    assert!(matches!(r, Err(UnlearnError::Cancelled)));
    assert_eq!(
        c.params, m.params,
        "a cancelled run must leave the model unchanged"
    );
    let bad = Samples {
        images: &images[..64],
        labels: &[9],
    };
    assert!(matches!(
        unlearn::unlearn(&c, bad, retain, &cfg, &mut |_| true),
        Err(UnlearnError::Invalid(_))
    ));
    let empty = Samples {
        images: &[],
        labels: &[],
    };
    assert!(matches!(
        unlearn::unlearn(&c, empty, retain, &cfg, &mut |_| true),
        Err(UnlearnError::Invalid(_))
    ));
}

#[test]
fn cancellation_is_honoured_inside_every_pre_pass() {
    use qmul_runtime::unlearn::Phase;
    let (m, images, labels) = trained();
    let forget = Samples {
        images: &images[..40 * 64],
        labels: &labels[..40],
    };
    let retain = Samples {
        images: &images[40 * 64..],
        labels: &labels[40..],
    };
    let salun = Method::Salun {
        sparsity: 0.5,
        variant: Variant::Sequential,
    };
    for (method, phase) in [
        (Method::qmul(4), Phase::SimilarLabels),
        (Method::qmul(4), Phase::GradientNorms),
        (salun, Phase::Saliency),
    ] {
        let cfg = Config {
            epochs: 1,
            batch: 8,
            ..Config::new(method)
        };
        let mut seen = 0;
        let mut trained_steps = 0;
        let r = unlearn::unlearn(&m, forget, retain, &cfg, &mut |p| {
            if p.phase == Phase::Train {
                trained_steps += 1;
            }
            if p.phase == phase {
                seen += 1;
                // Stop after the first batch of the pre-pass.
                return false;
            }
            true
        });
        assert!(matches!(r, Err(UnlearnError::Cancelled)), "{phase:?}");
        assert_eq!(seen, 1, "{phase:?}: cancelled after one batch");
        assert_eq!(trained_steps, 0, "{phase:?}: no training step ran");
    }
}

#[test]
fn diverging_settings_are_errors_not_models() {
    let (m, images, labels) = trained();
    let forget = Samples {
        images: &images[..40 * 64],
        labels: &labels[..40],
    };
    let retain = Samples {
        images: &images[40 * 64..],
        labels: &labels[40..],
    };
    for lr in [f32::NAN, f32::INFINITY, -1.0] {
        let cfg = Config {
            lr,
            ..Config::new(Method::Ft)
        };
        assert!(matches!(
            unlearn::unlearn(&m, forget, retain, &cfg, &mut |_| true),
            Err(UnlearnError::Invalid(_))
        ));
    }
    let cfg = Config {
        epochs: 1,
        lr: 1e30,
        batch: 32,
        ..Config::new(Method::Ft)
    };
    assert!(matches!(
        unlearn::unlearn(&m, forget, retain, &cfg, &mut |_| true),
        Err(UnlearnError::Diverged(_))
    ));
    // Whatever a huge penalty does, the run either reports divergence or
    // yields a model that saves and loads back: never an unloadable file.
    for gamma in [1e30f32, 1e35, f32::MAX / 4.0] {
        let cfg = Config {
            epochs: 2,
            batch: 32,
            ..Config::new(Method::L1 { gamma })
        };
        match unlearn::unlearn(&m, forget, retain, &cfg, &mut |_| true) {
            Err(UnlearnError::Diverged(_)) => {}
            Ok(u) => match qmul_runtime::model_file::to_bytes(&u.model) {
                Ok(b) => {
                    qmul_runtime::model_file::from_bytes(&b).unwrap();
                }
                Err(e) => assert!(e.to_string().contains("diverged"), "{e}"),
            },
            Err(e) => panic!("gamma {gamma}: {e}"),
        }
    }
}

#[test]
fn each_epoch_logs_the_weight_codes_it_changed() {
    let (m, images, labels) = trained();
    let forget = Samples {
        images: &images[..40 * 64],
        labels: &labels[..40],
    };
    let retain = Samples {
        images: &images[40 * 64..],
        labels: &labels[40..],
    };
    // No step size, no code moves (weight decay is scaled by the rate too).
    let still = Config {
        epochs: 2,
        lr: 0.0,
        batch: 32,
        ..Config::new(Method::Ft)
    };
    let out = unlearn::unlearn(&m, forget, retain, &still, &mut |_| true).unwrap();
    assert!(out.logs.iter().all(|l| l.codes_changed == Some(0)));
    // One real epoch: the count is the number of codes that differ.
    let moving = Config {
        epochs: 1,
        lr: 0.5,
        batch: 32,
        ..Config::new(Method::qmul(4))
    };
    let out = unlearn::unlearn(&m, forget, retain, &moving, &mut |_| true).unwrap();
    let want = unlearn::codes_changed(&m.weight_codes(), &out.model.weight_codes());
    assert!(want > 0);
    assert_eq!(out.logs[0].codes_changed, Some(want));
}

#[test]
fn the_reference_schedule_steps_once_per_epoch() {
    use qmul_runtime::unlearn::Schedule;
    let e = Schedule::CosinePerEpoch;
    // A 1-epoch run keeps the full rate; 2 epochs run at 1 and 0.5 (mean 0.75).
    assert_eq!(e.lr(0.1, 7, 10, 0, 1), 0.1);
    assert_eq!(e.lr(0.1, 0, 20, 0, 2), 0.1);
    assert!((e.lr(0.1, 19, 20, 1, 2) - 0.05).abs() < 1e-7);
    // The per-step cosine anneals within the epoch.
    let s = Schedule::CosinePerStep;
    assert!((s.lr(0.1, 5, 10, 0, 1) - 0.05).abs() < 1e-7);
    assert_eq!(Schedule::parse("epoch"), Some(e));
    // The reference schedule is the default.
    assert_eq!(Schedule::default(), e);
    assert_eq!(Config::new(Method::Ft).schedule, e);
    // PyTorch's CosineAnnealingLR(T_max = epochs, eta_min = 0), base 0.1, one
    // `scheduler.step()` per epoch: the closed form its documentation gives,
    // `eta_min + (base - eta_min) (1 + cos(pi e / T_max)) / 2`, to 8 decimals
    // (its recursive update agrees with it to about 1e-9).
    let torch: [(usize, &[f32]); 3] = [
        (1, &[0.1]),
        (2, &[0.1, 0.05]),
        (
            10,
            &[
                0.1, 0.09755283, 0.09045085, 0.07938926, 0.06545085, 0.05, 0.03454915, 0.02061074,
                0.00954915, 0.00244717,
            ],
        ),
    ];
    for (epochs, want) in torch {
        for (ep, &w) in want.iter().enumerate() {
            // Every step of an epoch runs at the epoch's rate.
            for step in [0, 3] {
                let got = e.lr(0.1, ep * 4 + step, epochs * 4, ep, epochs);
                assert!(
                    (got - w).abs() < 1e-7,
                    "{epochs} epochs, epoch {ep}: {got} vs {w}"
                );
            }
        }
    }
    // Results written before the field existed read as the per-step cosine.
    let old: Config = serde_json::from_str(
        r#"{"method":{"method":"ft"},"epochs":1,"lr":0.1,"batch":8,"seed":0,"momentum":0.9,"weight_decay":0.0}"#,
    )
    .unwrap();
    assert_eq!(old.schedule, s);
    // The two schedules train differently.
    let (m, images, labels) = trained();
    let retain = Samples {
        images: &images[40 * 64..],
        labels: &labels[40..],
    };
    let none = Samples {
        images: &[],
        labels: &[],
    };
    let run = |schedule| {
        let cfg = Config {
            epochs: 2,
            lr: 0.05,
            batch: 32,
            schedule,
            ..Config::new(Method::Ft)
        };
        unlearn::unlearn(&m, none, retain, &cfg, &mut |_| true)
            .unwrap()
            .model
            .params
    };
    assert_ne!(run(s), run(e));
}

/// qmul's defaults come from the tuned tables; the reference's stay
/// available for experiments (which tune relative to them).
#[test]
fn defaults_are_the_tuned_rates_and_the_reference_stays() {
    let q = Method::qmul(10);
    assert_eq!(q.reference_schedule(), (10, 0.01));
    assert_eq!(Config::new(q.clone()).lr, 0.05);
    assert_eq!(Config::new(q).epochs, 10);
    assert_eq!(Config::new(Method::rl(10)).lr, 0.01);
    assert_eq!(Config::new(Method::Ft).lr, 0.05);
    assert_eq!(Config::new(Method::Ga).lr, 5e-4);
    assert_eq!(Method::Ga.reference_schedule(), (5, 1e-4));
    assert_eq!(Config::new(Method::Ft).batch, 64);
}
