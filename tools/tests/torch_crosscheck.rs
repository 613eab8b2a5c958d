//! PyTorch as the independent oracle for qmul's numerics: random networks of
//! every scheme built and run in PyTorch by `tools/python/crosscheck.py`
//! (`qmul_torch.QResNet18`: fake quantization in float), converted with
//! `qmul convert`'s library functions and run by qmul's packed integer
//! kernels. Compared: eval logits and argmax on 10,000 Fashion-MNIST images,
//! 128 training steps' loss, logits and every parameter gradient
//! (weights, BatchNorm, the PACT/LSQ/DSQ quantizer parameters), and the
//! round trip PyTorch -> qmul -> PyTorch of every tensor.
//!
//! Needs a python with torch: `QMUL_TORCH_PYTHON` (else `python3` if it has
//! torch). Without one the test says SKIPPED and passes, unless
//! `QMUL_TORCH_REQUIRED=1` (set by `tools/python/crosscheck.sh`, which also
//! installs PyTorch). Figures go to stdout (`-- --nocapture`).

use qmul_runtime::model::Model;
use qmul_runtime::model_file;
use qmul_runtime::{GradPrecision, Targets};
use qmul_tools::torch::{self, names, LatentState, ReadOptions};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Logit agreement: `|qmul - torch| <= LOGIT_TOL * (1 + |torch|)` for every
/// logit of a sample, on all but the samples where a value fell on the other
/// side of a rounding boundary somewhere in the network and a code differs
/// (qmul's integer sums are exact, PyTorch's float convolutions round), which
/// the argmax bound covers.
const LOGIT_TOL: f32 = 1e-3;
/// Fraction of samples that must meet `LOGIT_TOL` in every logit (measured:
/// 99.7% PACT, 99.9% LSQ, 92.6% DSQ, whose unrounded weight and activation
/// steps make PyTorch's float products round more than PACT's trimmed scales).
const LOGIT_FRACTION: f64 = 0.9;
/// The median logit's relative difference: float rounding, no more.
const LOGIT_MEDIAN: f32 = 1e-6;
/// Fraction of samples whose argmax must agree.
const ARGMAX_FRACTION: f64 = 0.999;
/// A training batch's forward passes agree when every logit is within
/// `TRAIN_AGREE * (1 + |logit|)`: no code differs anywhere in the batch.
/// (128 training batches of 4 images in a fresh run.)
const TRAIN_AGREE: f32 = 1e-4;
/// Training batches that must be compared at all.
const MIN_AGREEING: usize = 3;
/// Gradient agreement on the batches compared, after the budgets of
/// `runtime/tests/common/grad.rs` against the f64 reference: per tensor of
/// at least `MIN_LEN` values `||g_qmul - g_torch|| <= per_tensor *
/// ||g_torch||` and all gradients together `<= whole`, on every batch. The
/// batches compared are those whose logits agree (no code differs) and whose
/// PyTorch forward has no activation-quantizer input within 1e-5 of a
/// straight-through mask edge (`train.K.near_mask`, from `crosscheck.py`):
/// there the code is the same on both sides (0 or 15) but the gradient
/// passes on one side only, and qmul's and PyTorch's values differ by
/// accumulated float rounding. (Found by this test: such batches had
/// agreeing logits and gradients up to 1e-2 apart; the worst ones held the
/// most values at the edge.) The activation quantizers' parameters are
/// scalars whose gradients are sums of rounding residuals (LSQ/DSQ) or
/// clipped terms with much cancellation: held to `whole` only, their worst
/// printed.
struct Budget {
    per_tensor: f64,
    whole: f64,
}
const MIN_LEN: usize = 16;
/// f32 gradient GEMMs: float rounding only.
const F32_BUDGET: Budget = Budget {
    per_tensor: 1e-3,
    whole: 1e-3,
};
/// bf16 gradient GEMMs: the budget of `runtime/tests/grad_check_bf16.rs`.
const BF16_BUDGET: Budget = Budget {
    per_tensor: 3e-2,
    whole: 1e-2,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A python that imports torch, or `None` (with why).
fn python() -> Result<String, String> {
    let candidates: Vec<String> = match std::env::var("QMUL_TORCH_PYTHON") {
        Ok(p) => vec![p],
        Err(_) => vec!["python3".into()],
    };
    for p in &candidates {
        let ok = Command::new(p)
            .args(["-c", "import torch"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(p.clone());
        }
    }
    Err(format!(
        "no python with torch among {candidates:?} (set QMUL_TORCH_PYTHON, or run \
         tools/python/crosscheck.sh, which installs PyTorch)"
    ))
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let v = st.tensor(name).unwrap_or_else(|_| panic!("{name} missing"));
    assert_eq!(v.dtype(), Dtype::F32, "{name}");
    v.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn norm(v: impl Iterator<Item = f64>) -> f64 {
    v.map(|x| x * x).sum::<f64>().sqrt()
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0
}

/// The subset's training then test images, concatenated: what a case's
/// `pixel_indices` / `train.K.indices` point into.
fn subset_images() -> (Vec<u8>, usize) {
    let (tr, te) = qmul_tools::data::load("subset").unwrap();
    let per = tr.image(0).len();
    let mut all = Vec::with_capacity((tr.len() + te.len()) * per);
    for i in 0..tr.len() {
        all.extend_from_slice(tr.image(i));
    }
    for i in 0..te.len() {
        all.extend_from_slice(te.image(i));
    }
    (all, per)
}

/// A case's images: `{prefix}pixels` (U8 NHWC) or, in the fixtures,
/// `{indices}` (I64 into [`subset_images`]).
fn images(case: &SafeTensors, pixels: &str, indices: &str) -> (Vec<u8>, usize) {
    if let Ok(t) = case.tensor(pixels) {
        return (t.data().to_vec(), t.shape()[0]);
    }
    let idx: Vec<usize> = case
        .tensor(indices)
        .unwrap_or_else(|_| panic!("neither {pixels} nor {indices} in the case"))
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize)
        .collect();
    let (all, per) = subset_images();
    let mut out = Vec::with_capacity(idx.len() * per);
    for &i in &idx {
        out.extend_from_slice(&all[i * per..(i + 1) * per]);
    }
    (out, idx.len())
}

/// Eval logits over `pixels` in batches.
fn forward_all(m: &Model, pixels: &[u8], n: usize) -> Vec<f32> {
    let per = pixels.len() / n;
    let mut out = Vec::with_capacity(n * m.classes());
    for start in (0..n).step_by(500) {
        let b = (n - start).min(500);
        out.extend(
            m.forward(&pixels[start * per..(start + b) * per], b)
                .unwrap(),
        );
    }
    out
}

/// What the training steps of one scheme gave.
struct TrainFigures {
    batches: usize,
    batch_size: usize,
    /// Batches whose forward passes agree with PyTorch's.
    agreeing: usize,
    /// Worst relative gradient error on them per tensor of at least
    /// `MIN_LEN` values, and where.
    worst: (f64, String),
    /// Worst relative error of all gradients together (per batch).
    whole: f64,
    /// Worst relative error of a short tensor (activation quantizer parameters).
    quant_worst: f64,
    loss_err: f64,
    /// Largest relative logit difference on the other batches.
    flipped_logits: f64,
    /// Agreeing batches left out: a value lay at a straight-through mask edge.
    near_mask: usize,
}

/// qmul's training pass on each of the case's batches against PyTorch's.
fn train_steps(m: &Model, case: &SafeTensors) -> TrainFigures {
    let batches = (0..)
        .take_while(|k| case.tensor(&format!("train.{k}.labels")).is_ok())
        .count();
    let mut f = TrainFigures {
        batches,
        batch_size: case.tensor("train.0.labels").map_or(0, |t| t.shape()[0]),
        agreeing: 0,
        worst: (0.0, String::new()),
        whole: 0.0,
        quant_worst: 0.0,
        loss_err: 0.0,
        flipped_logits: 0.0,
        near_mask: 0,
    };
    let entries = names::entries(m).unwrap();
    for k in 0..batches {
        let p = format!("train.{k}.");
        let (tp, bsz) = images(case, &format!("{p}pixels"), &format!("{p}indices"));
        let labels: Vec<u32> = case
            .tensor(&format!("{p}labels"))
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect();
        let weights = vec![1.0f32; bsz];
        let mut mm = m.clone();
        let pass = mm
            .train_pass(
                &tp,
                bsz,
                Targets {
                    labels: &labels,
                    weights: &weights,
                },
                false,
            )
            .unwrap();
        let tl = f32s(case, &format!("{p}logits"));
        let agree = pass
            .logits
            .iter()
            .zip(&tl)
            .all(|(a, b)| (a - b).abs() <= TRAIN_AGREE * (1.0 + b.abs()));
        if !agree {
            let rel = norm(pass.logits.iter().zip(&tl).map(|(a, b)| (a - b) as f64))
                / norm(tl.iter().map(|&x| x as f64));
            f.flipped_logits = f.flipped_logits.max(rel);
            continue;
        }
        let near_mask = case
            .tensor(&format!("{p}near_mask"))
            .map_or(0, |t| i64::from_le_bytes(t.data()[..8].try_into().unwrap()));
        if near_mask > 0 {
            f.near_mask += 1;
            continue;
        }
        f.agreeing += 1;
        let loss = f32s(case, &format!("{p}loss"))[0];
        f.loss_err = f
            .loss_err
            .max(((pass.loss - loss).abs() / loss.abs().max(1.0)) as f64);
        let (mut diff2, mut ref2) = (0.0f64, 0.0f64);
        for e in &entries {
            let names::Place::Param(i) = e.place else {
                continue;
            };
            let g = match e.conv {
                Some((cout, k, cin)) => names::rows_to_torch(&pass.grads[i], cout, k, cin),
                None => pass.grads[i].clone(),
            };
            let t = f32s(case, &format!("{p}grad.{}", e.torch));
            assert_eq!(g.len(), t.len(), "{}", e.torch);
            // Relative to the tensor's norm (floored: a quantizer range
            // nothing reached has a zero gradient on both sides).
            let d = norm(g.iter().zip(&t).map(|(a, b)| (a - b) as f64));
            let r = norm(t.iter().map(|&x| x as f64));
            diff2 += d * d;
            ref2 += r * r;
            let rel = d / r.max(1e-6);
            if t.len() < MIN_LEN {
                f.quant_worst = f.quant_worst.max(rel);
                continue;
            }
            if rel > f.worst.0 {
                f.worst = (rel, format!("{} (batch {k})", e.torch));
            }
        }
        f.whole = f.whole.max((diff2 / ref2.max(1e-30)).sqrt());
    }
    f
}

/// The gradient GEMMs' precision is process-wide: one scheme's comparisons
/// at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The comparisons of one scheme (figures printed), and which failed.
fn check_scheme(dir: &Path, scheme: &str) -> Vec<&'static str> {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let model_path = dir.join(format!("{scheme}.safetensors"));
    let ckpt = std::fs::read(&model_path).unwrap();
    let c = torch::from_torch_bytes(
        &ckpt,
        &ReadOptions {
            latent: Some(LatentState::Exact),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{scheme}: {e}"));
    // PyTorch -> qmul -> PyTorch: every tensor bit for bit (exact latents).
    let file = model_file::to_bytes_with(&c.model, c.latent.write_options()).unwrap();
    let loaded = model_file::from_bytes_checked(&file).unwrap();
    let back = torch::to_torch_bytes(&loaded.model, LatentState::of_file(&loaded)).unwrap();
    let (a, b) = (
        SafeTensors::deserialize(&ckpt).unwrap(),
        SafeTensors::deserialize(&back).unwrap(),
    );
    let mut compared = 0;
    for (name, v) in a.tensors() {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        let w = b.tensor(&name).unwrap_or_else(|_| panic!("{name} lost"));
        assert_eq!(v.shape(), w.shape(), "{name}");
        assert!(
            v.data() == w.data(),
            "{scheme}: {name} changed in the round trip"
        );
        compared += 1;
    }
    assert_eq!(
        compared,
        b.len(),
        "{scheme}: extra tensors after the round trip"
    );
    let m = loaded.model;

    let case_bytes = std::fs::read(dir.join(format!("{scheme}.case.safetensors"))).unwrap();
    let case = SafeTensors::deserialize(&case_bytes).unwrap();
    let (pixels, n) = images(&case, "pixels", "pixel_indices");
    let want = f32s(&case, "logits");
    let got = forward_all(&m, &pixels, n);
    let k = m.classes();
    let (mut close, mut same, mut worst) = (0usize, 0usize, 0.0f32);
    for (g, w) in got.chunks(k).zip(want.chunks(k)) {
        let ok = g
            .iter()
            .zip(w)
            .all(|(x, y)| (x - y).abs() <= LOGIT_TOL * (1.0 + y.abs()));
        close += ok as usize;
        same += (argmax(g) == argmax(w)) as usize;
        for (x, y) in g.iter().zip(w) {
            worst = worst.max((x - y).abs() / (1.0 + y.abs()));
        }
    }
    let median = {
        let mut d: Vec<f32> = got
            .iter()
            .zip(&want)
            .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
            .collect();
        d.sort_by(f32::total_cmp);
        d[d.len() / 2]
    };
    println!(
        "{scheme}: eval logits of {n} images: {close} within {LOGIT_TOL:e} x (1 + |logit|) \
         (median {median:.1e}, worst {worst:.1e}); argmax agrees on {same} ({:.2}%)",
        100.0 * same as f64 / n as f64
    );
    let mut failed = Vec::new();
    if (close as f64) < LOGIT_FRACTION * n as f64 || median > LOGIT_MEDIAN {
        failed.push("logits");
    }
    if (same as f64) < ARGMAX_FRACTION * n as f64 {
        failed.push("argmax");
    }

    // Training steps in f32 (the oracle comparison), then in bf16 where the
    // CPU has it (qmul's default backward there) against its own budget.
    for (precision, budget) in [
        (GradPrecision::F32, F32_BUDGET),
        (GradPrecision::Bf16, BF16_BUDGET),
    ] {
        qmul_kernels::set_grad_precision(precision);
        if qmul_kernels::grad_precision() != precision {
            println!("{scheme}: no bf16 gradient GEMMs on this CPU; f32 only");
            continue;
        }
        let t = train_steps(&m, &case);
        if t.batches == 0 {
            println!("{scheme}: no training batches in this case (eval and round trip only)");
            break;
        }
        println!(
            "{scheme}, {} backward: {} training steps of {} images: {} with every logit within \
             {TRAIN_AGREE:e} x (1 + |logit|) of PyTorch's and no activation at a \
             straight-through mask edge, {} more with agreeing logits but a value at an edge \
             (left out), the rest with a code on the other side of a rounding boundary \
             (logits up to {:.1e} apart). On the {}: per-tensor gradient error at most {:.1e} \
             ({}; budget {:e}), all together {:.1e} (budget {:e}); activation quantizer \
             parameters' worst {:.1e}; loss within {:.1e}",
            precision.name(),
            t.batches,
            t.batch_size,
            t.agreeing,
            t.near_mask,
            t.flipped_logits,
            t.agreeing,
            t.worst.0,
            t.worst.1,
            budget.per_tensor,
            t.whole,
            budget.whole,
            t.quant_worst,
            t.loss_err
        );
        if t.agreeing < MIN_AGREEING
            || t.worst.0 > budget.per_tensor
            || t.whole > budget.whole
            || t.loss_err > TRAIN_AGREE as f64
        {
            failed.push(if precision == GradPrecision::F32 {
                "f32 gradients"
            } else {
                "bf16 gradients"
            });
        }
    }
    qmul_kernels::set_grad_precision(GradPrecision::F32);
    failed
}

#[test]
fn qmul_matches_pytorch_fake_quantization() {
    let py = match python() {
        Ok(p) => p,
        Err(why) => {
            if std::env::var("QMUL_TORCH_REQUIRED").is_ok_and(|v| v == "1") {
                panic!("QMUL_TORCH_REQUIRED=1 but {why}");
            }
            // Written to the stream itself, not through `eprintln!`, which
            // the test harness captures: the skip must show in every log.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED torch_crosscheck: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let t = std::time::Instant::now();
    let out = Command::new(&py)
        .arg(repo().join("tools/python/crosscheck.py"))
        .args([
            "make",
            dir.path().to_str().unwrap(),
            "--width",
            "8",
            "--n",
            "10000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "crosscheck.py failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "PyTorch side ({py}) in {:.1} s:\n{}",
        t.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout).trim_end()
    );
    check_all(dir.path());
}

/// Every scheme's comparisons; fails with the list of what was outside.
fn check_all(dir: &Path) {
    let failed: Vec<String> = ["pact", "lsq", "dsq"]
        .iter()
        .flat_map(|s| {
            check_scheme(dir, s)
                .into_iter()
                .map(move |f| format!("{s} {f}"))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "outside the stated tolerances: {failed:?}"
    );
}

/// The eval comparisons and the round trip against PyTorch's numbers kept
/// in the repository (`tools/tests/fixtures/torch/`: width-4 networks, 2,000
/// subset images by index, made by `crosscheck.py make DIR --width 4 --n
/// 2000 --train-batches 0 --indices`), so that CI, which has no PyTorch,
/// still checks qmul's forward against PyTorch. (Training batches are left
/// out of the fixtures: few of them are comparable, see `Budget`, and their
/// gradients would make the files megabytes; CI checks gradients against
/// the f64 reference, `runtime/tests/grad_check.rs`.)
#[test]
fn qmul_matches_the_kept_pytorch_figures() {
    check_all(&repo().join("tools/tests/fixtures/torch"));
}
