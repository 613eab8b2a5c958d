//! Sub-bin weight state through the session: a run with zero learning rate
//! keeps the file's codes and residuals exactly, and two small deletion
//! requests in a row move more codes when each commit keeps the residuals
//! than when every request starts from the bins' centres.

use qmul_runtime::data::Dataset;
use qmul_runtime::model_file::{self, WriteOptions};
use qmul_runtime::rng::Rng;
use qmul_runtime::session::{CommitTarget, OpenModel, Session};
use qmul_runtime::unlearn::{Config, Method};
use std::path::{Path, PathBuf};

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/checkpoints/fmnist-subset-r18w8-pact.qmul")
}

/// The shipped subset's training and test sets.
fn data() -> (Dataset, Dataset) {
    qmul_tools::data::spec::load("subset").unwrap()
}

/// `n` distinct training indices drawn with `seed`, sorted.
fn draw(len: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..len).collect();
    let mut r = Rng::new(seed);
    for i in 0..n {
        let j = i + r.below(len - i);
        idx.swap(i, j);
    }
    idx.truncate(n);
    idx.sort_unstable();
    idx
}

/// One deletion request on the file at `path`: unlearn `forget` with Q-MUL
/// and commit; returns the codes the run changed.
fn request(path: &Path, tr: &Dataset, forget: &[usize], lr: f32, seed: u64) -> u64 {
    let mut s = Session::new(OpenModel::open(path).unwrap(), u64::MAX).unwrap();
    s.set_forget_indices(tr, forget).unwrap();
    s.set_retain_rest(tr).unwrap();
    let mut p = Config::new(Method::qmul(10));
    p.epochs = 1;
    p.lr = lr;
    p.batch = 128;
    p.seed = seed;
    let changed = s
        .unlearn(&p, &mut |_| true)
        .unwrap()
        .logs
        .iter()
        .map(|l| l.codes_changed.unwrap())
        .sum();
    s.commit(&CommitTarget {
        model_path: None,
        receipts: None,
        request: None,
        // These runs are about weight state, not about passing the deletion check.
        force: true,
    })
    .unwrap();
    changed
}

/// The file's tensors of one kind (`codes`, `residual`, `scale`), by name.
fn tensors(bytes: &[u8], suffix: &str) -> Vec<(String, Vec<u8>)> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n.ends_with(suffix))
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    v.sort();
    v
}

#[test]
fn the_shipped_model_keeps_its_sub_bin_state() {
    let loaded = model_file::load_checked(&shipped()).unwrap();
    assert!(loaded.sub_bin, "the shipped model should carry residuals");
    // Its weights are spread across their bins, not at the centres.
    let bytes = std::fs::read(shipped()).unwrap();
    let r = tensors(&bytes, ".residual");
    let all: Vec<i16> = r
        .iter()
        .flat_map(|(_, b)| b.chunks_exact(2).map(|x| i16::from_le_bytes([x[0], x[1]])))
        .collect();
    let zero = all.iter().filter(|&&x| x == 0).count();
    assert!(
        zero * 10 < all.len(),
        "{zero} of {} residuals are 0",
        all.len()
    );
}

#[test]
fn zero_learning_rate_keeps_codes_and_residuals_exactly() {
    let (tr, _) = data();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.qmul");
    std::fs::copy(shipped(), &path).unwrap();
    let before = std::fs::read(&path).unwrap();
    let original = model_file::load(&path).unwrap();
    let images: Vec<u8> = (0..8).flat_map(|i| tr.image(i).to_vec()).collect();
    let images = images.as_slice();
    // The model the session starts from predicts exactly as the file's.
    let open = OpenModel::open(&path).unwrap();
    assert_eq!(
        open.model().forward(images, 8).unwrap(),
        original.forward(images, 8).unwrap()
    );
    assert_eq!(request(&path, &tr, &draw(tr.len(), 64, 1), 0.0, 0), 0);
    let after = std::fs::read(&path).unwrap();
    for suffix in [".codes", ".residual", ".scale"] {
        assert_eq!(
            tensors(&before, suffix),
            tensors(&after, suffix),
            "{suffix} changed"
        );
    }
}

#[test]
fn repeated_requests_compound_with_residuals() {
    let (tr, _) = data();
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("kept.qmul");
    let centred = dir.path().join("centred.qmul");
    std::fs::copy(shipped(), &kept).unwrap();
    let strip = |p: &Path| {
        let m = model_file::load(p).unwrap();
        let b = model_file::to_bytes_with(&m, WriteOptions::CENTRES).unwrap();
        model_file::write_atomic(p, &b).unwrap();
    };
    std::fs::copy(shipped(), &centred).unwrap();
    strip(&centred);
    // Two small requests, each forgetting 1% with a small rate.
    let (mut with, mut without) = (0, 0);
    for k in 0..2u64 {
        let forget = draw(tr.len(), tr.len() / 100, 10 + k);
        with += request(&kept, &tr, &forget, 0.002, k);
        without += request(&centred, &tr, &forget, 0.002, k);
        strip(&centred);
    }
    eprintln!("codes changed over two requests: {with} with residuals, {without} without");
    qmul_tests::figure!(
        "sub_bin_repeated",
        &format!(
            "two 1% Q-MUL requests (1 epoch, lr 0.002) on the shipped model: {with} codes \
             changed keeping residuals, {without} starting each from the bins' centres"
        )
    );
    assert!(with > 2 * without.max(1), "{with} vs {without}");
}

/// What the residual's resolution keeps of one request's progress: per weight,
/// how far the run moved it (in steps) and how far the saved file puts it from
/// where the run left it, with the file's 1/65536-step residuals and, for
/// comparison, with 1/256-step (8-bit) and 1/16-step (4-bit) residuals.
#[test]
fn the_residual_keeps_a_requests_progress() {
    use qmul_runtime::quant::weight::{self, WeightQuant};
    use qmul_runtime::Model;
    let (tr, _) = data();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.qmul");
    std::fs::copy(shipped(), &path).unwrap();
    let start = model_file::load(&path).unwrap();
    let mut s = Session::new(OpenModel::open(&path).unwrap(), u64::MAX).unwrap();
    s.set_forget_indices(&tr, &draw(tr.len(), tr.len() / 100, 3))
        .unwrap();
    s.set_retain_rest(&tr).unwrap();
    let mut p = Config::new(Method::qmul(10));
    p.epochs = 1;
    p.lr = 0.002;
    p.batch = 128;
    s.unlearn(&p, &mut |_| true).unwrap();
    let exact = s.unlearned().unwrap().0.clone();
    s.commit(&CommitTarget {
        model_path: None,
        receipts: None,
        request: None,
        force: true,
    })
    .unwrap();
    let saved = model_file::load(&path).unwrap();
    // Per quantized weight: (start, exact, saved) in steps of the exact model's scale.
    let layers = |m: &Model| -> Vec<(Vec<f32>, Vec<f32>)> {
        m.slots
            .iter()
            .filter_map(|sl| sl.conv().or(sl.linear().map(|l| (l.0, l.2, l.3))))
            .filter(|&(_, _, k)| k != WeightQuant::None)
            .map(|(w, wq, kind)| {
                let cout = m.params[w].shape[0];
                let q = weight::quantize(kind, &m.params[wq].data, &m.params[w].data, cout);
                (m.params[w].data.clone(), q.scale)
            })
            .collect()
    };
    let (a, b, c) = (layers(&start), layers(&exact), layers(&saved));
    let (mut moved, mut lost16, mut lost8, mut lost4) = (Vec::new(), 0.0f64, 0.0f64, 0.0f64);
    for ((la, lb), lc) in a.iter().zip(&b).zip(&c) {
        let k = la.0.len() / lb.1.len();
        for i in 0..la.0.len() {
            let step = lb.1[i / k] as f64;
            let (x0, x1, x2) = (la.0[i] as f64, lb.0[i] as f64, lc.0[i] as f64);
            moved.push((x1 - x0).abs() / step);
            lost16 += (x2 - x1).abs() / step;
            let r = x1 / step - (x1 / step).round();
            lost8 += ((r * 256.0).round() / 256.0 - r).abs();
            lost4 += ((r * 16.0).round() / 16.0 - r).abs();
        }
    }
    let total: f64 = moved.iter().sum();
    moved.sort_by(|x, y| x.total_cmp(y));
    let q = |f: f64| moved[((moved.len() - 1) as f64 * f) as usize];
    let text = format!(
        "one 1% Q-MUL request (1 epoch, lr 0.002) on the shipped model, {} weights: movement in \
         steps median {:.4}, 90th percentile {:.4}, mean {:.4}; saving moves weights by {:.2}% of \
         the run's total movement with the file's 1/65536-step residuals; 1/256-step residuals \
         would move them by {:.1}%, 1/16-step ones by {:.0}%",
        moved.len(),
        q(0.5),
        q(0.9),
        total / moved.len() as f64,
        100.0 * lost16 / total,
        100.0 * lost8 / total,
        100.0 * lost4 / total
    );
    qmul_tests::figure!("sub_bin_resolution", &text);
    assert!(lost16 < 0.02 * total, "{text}");
}
