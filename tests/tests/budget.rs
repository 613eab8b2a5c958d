//! A session's memory plans against what its work really allocates (the
//! counting allocator), for every quantization scheme, two widths, several
//! batches, 1- and 3-channel inputs, every kind of operation; the automatic
//! batch choice; and refusals when the budget is too small.
//!
//! One test in its own binary: the allocator's count is process-wide, and
//! other tests running in parallel threads would add to it.

use qmul_models::{resnet, ResNetConfig};
use qmul_runtime::error::ErrorKind;
use qmul_runtime::rng::Rng;
use qmul_runtime::session::{alloc, CommitTarget, MemoryReport, OpenModel, Session, Which};
use qmul_runtime::unlearn::{Config, Method, Variant};
use qmul_runtime::{InitOptions, Model, QuantScheme};
use std::sync::Arc;

fn model(scheme: QuantScheme, width: usize, side: usize, c: usize) -> Arc<OpenModel> {
    let g = resnet(&ResNetConfig::resnet18(width, side, side, c, 10, scheme)).unwrap();
    let m = Model::new(
        g,
        InitOptions {
            seed: 3,
            pact_init: 4.0,
        },
    )
    .unwrap();
    let mut m = m;
    // LSQ/DSQ activation ranges are set by a first training batch; a saved
    // model always has them.
    if matches!(scheme, QuantScheme::Lsq | QuantScheme::Dsq) {
        let n = 4;
        let images = data(n, side * side * c, 1).0;
        let labels = vec![0u32; n];
        let w = vec![1.0f32; n];
        m.train_pass(
            &images,
            n,
            qmul_runtime::Targets {
                labels: &labels,
                weights: &w,
            },
            false,
        )
        .unwrap();
    }
    OpenModel::from_model(m).unwrap()
}

fn data(n: usize, len: usize, seed: u64) -> (Vec<u8>, Vec<u32>) {
    let mut r = Rng::new(seed);
    let images = (0..n * len).map(|_| r.below(256) as u8).collect();
    let labels = (0..n).map(|_| r.below(10) as u32).collect();
    (images, labels)
}

fn check(what: &str, m: &MemoryReport, worst: &mut f64, lines: &mut Vec<String>) {
    let measured = m
        .measured
        .expect("the tests build with the counting allocator");
    assert!(
        measured <= m.planned,
        "{what}: measured {measured} bytes above the resident set, planned {}",
        m.planned
    );
    let ratio = m.planned as f64 / measured.max(1) as f64;
    *worst = worst.max(ratio);
    lines.push(format!(
        "{what:<44} planned {:>10} measured {:>10} (x{ratio:.2})",
        m.planned, measured
    ));
}

#[test]
fn measured_peaks_stay_within_plans_and_budgets_are_kept() {
    assert!(alloc::counting());
    let mut worst = 0.0f64;
    let mut lines = Vec::new();
    let salun = Method::Salun {
        sparsity: 0.5,
        variant: Variant::Sequential,
    };
    let cases = [
        (QuantScheme::Pact, 8, 28, 1, Method::qmul(10), 16),
        (QuantScheme::Pact, 16, 28, 1, Method::qmul(10), 64),
        (QuantScheme::Pact, 8, 28, 1, salun, 3),
        (QuantScheme::Lsq, 8, 28, 1, Method::rl(10), 32),
        (QuantScheme::Dsq, 8, 28, 1, Method::Ft, 16),
        (QuantScheme::None, 4, 28, 1, Method::qmul(10), 16),
        (QuantScheme::Pact, 8, 32, 3, Method::qmul(10), 24),
        (QuantScheme::Pact, 8, 28, 1, Method::Ga, 1),
    ];
    for (scheme, width, side, c, method, batch) in cases {
        let len = side * side * c;
        let open = model(scheme, width, side, c);
        let mut s = Session::new(open.clone(), u64::MAX).unwrap();
        let (fi, fl) = data(24, len, 1);
        let (ri, rl) = data(72, len, 2);
        let (ti, tl) = data(40, len, 3);
        s.set_forget(&fi, &fl).unwrap();
        s.set_retain(&ri, &rl).unwrap();
        s.set_test(&ti, &tl).unwrap();
        let tag = format!("{}/w{width}/{side}x{side}x{c}", scheme.name());
        let mut p = Config::new(method.clone());
        p.epochs = 1;
        p.batch = batch;
        p.lr = 0.01;
        let r = s.unlearn(&p, &mut |_| true).unwrap();
        let mem = r.memory;
        check(
            &format!("{tag} unlearn {} b{batch}", method.name()),
            &mem,
            &mut worst,
            &mut lines,
        );
        let (_, mem) = s.predict(&ti[..8 * len], 8).unwrap();
        check(&format!("{tag} predict 8"), &mem, &mut worst, &mut lines);
        let (_, mem) = s.evaluate(Which::Unlearned).unwrap();
        check(&format!("{tag} evaluate"), &mem, &mut worst, &mut lines);
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("m.qmul");
        let c = s
            .commit(&CommitTarget {
                model_path: Some(&target),
                receipts: None,
                request: None,
                force: true,
            })
            .unwrap();
        check(&format!("{tag} commit"), &c.memory, &mut worst, &mut lines);
    }
    // The automatic batch: the largest that fits, and the run stays inside.
    let open = model(QuantScheme::Pact, 8, 28, 1);
    let (fi, fl) = data(64, 784, 1);
    let (ri, rl) = data(192, 784, 2);
    let probe = Session::new(open.clone(), u64::MAX).unwrap();
    let base = probe.resident();
    for extra_mib in [6u64, 12, 40] {
        let budget = base + (96 << 10) * 3 + (extra_mib << 20);
        let mut s = Session::new(open.clone(), budget).unwrap();
        s.set_forget(&fi, &fl).unwrap();
        s.set_retain(&ri, &rl).unwrap();
        let mut p = Config::new(Method::qmul(10));
        p.epochs = 1;
        p.batch = 0;
        match s.unlearn(&p, &mut |_| true) {
            Ok(r) => {
                let b = r.config.batch;
                let m = r.memory;
                assert!(m.resident + m.planned <= budget);
                check(
                    &format!("auto batch {b} within {extra_mib} MiB"),
                    &m,
                    &mut worst,
                    &mut lines,
                );
                assert!(m.resident + m.measured.unwrap() <= budget);
            }
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::BudgetExceeded, "{e}");
                lines.push(format!("{extra_mib} MiB: {e}"));
            }
        }
    }
    // Too small a budget: refused with a clear error, nothing changes.
    let mut s = Session::new(open.clone(), base + (200 << 10)).unwrap();
    s.set_forget(&fi[..784 * 8], &fl[..8]).unwrap();
    s.set_retain(&ri[..784 * 8], &rl[..8]).unwrap();
    let mut p = Config::new(Method::qmul(10));
    p.batch = 64;
    let e = s.unlearn(&p, &mut |_| true).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BudgetExceeded);
    assert!(e.message.contains("budget"), "{e}");
    assert!(s.unlearned().is_none());
    let e = Session::new(open, 1000).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BudgetExceeded);
    lines.push(format!("largest planned/measured ratio: {worst:.2}"));
    qmul_tests::figure!("budget", &lines.join("\n"));
    assert!(worst < 4.0, "plans should be tight enough to be useful");
}
