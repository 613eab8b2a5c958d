//! `qmul demo`: the main job on what the repository ships. The pretrained 4-bit
//! model forgets a random 10% of the training subset and, separately, one whole
//! class; each run prints FA, RA, TA and MIA before and after, the time taken
//! and the memory planned and used, commits the new model and appends a
//! deletion receipt through the same session code as the C ABI, then prints
//! and verifies the receipts.

use super::unlearn::{commit, print_memory, print_table, run, UnlearnArgs};
use super::DataArgs;
use crate::forget::ForgetSpec;
use crate::forgetting;
use clap::Args;
use qmul_runtime::session::receipt::{self, Receipt};
use qmul_runtime::session::OpenModel;
use std::path::PathBuf;
use std::time::Instant;

/// The shipped model, relative to the repository root.
pub const SHIPPED_MODEL: &str = "models/checkpoints/fmnist-subset-r18w8-pact.qmul";

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Model to start from (default: the shipped one).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Where the new models and the receipt go.
    #[arg(long, default_value = "runs/demo")]
    pub out_dir: PathBuf,
    /// Unlearning epochs per scenario.
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Learning rate. The reference default (0.01, batch 256) barely moves this
    /// strongly fitted model in 5 epochs; 0.05 with batch 64 forgets (see the model card).
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Class forgotten in the class-wise scenario.
    #[arg(long, default_value_t = 0)]
    pub class: usize,
}

fn shipped_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(SHIPPED_MODEL)
}

pub fn demo(a: DemoArgs) -> Result<(), String> {
    let t_all = Instant::now();
    let model_path = a.model.clone().unwrap_or_else(shipped_model);
    let shown = a
        .model
        .as_ref()
        .map_or_else(|| SHIPPED_MODEL.to_string(), |p| p.display().to_string());
    let model =
        OpenModel::open(&model_path).map_err(|e| format!("{}: {e}", model_path.display()))?;
    let data = DataArgs {
        data: "subset".into(),
        train_subset: None,
    };
    let (tr, te) = data.load()?;
    super::check_compatible(model.model(), &te)?;
    std::fs::create_dir_all(&a.out_dir).map_err(|e| format!("{}: {e}", a.out_dir.display()))?;
    let receipts = a.out_dir.join("receipts.jsonl");
    let info = model.info();
    println!(
        "qmul demo: {} ({} on the shipped Fashion-MNIST subset: {} train / {} test images), kernels {}",
        shown,
        info.arch,
        tr.len(),
        te.len(),
        qmul_kernels::active().name
    );
    for (title, spec, file) in [
        (
            "random 10% of the training set",
            "random:0.1:1".to_string(),
            "forget-random10.qmul",
        ),
        (
            "one whole class",
            format!("class:{}", a.class),
            "forget-class.qmul",
        ),
    ] {
        let split = forgetting::split(&ForgetSpec::parse(&spec)?, &tr, &te)?;
        println!(
            "\n== forget {title} ({spec}: {} images) with Q-MUL ==",
            split.forget.len()
        );
        let out_path = a.out_dir.join(file);
        let args = UnlearnArgs {
            model: model_path.clone(),
            data: data.clone(),
            forget: spec.clone(),
            method: "qmul".into(),
            epochs: Some(a.epochs),
            lr: Some(a.lr),
            batch: a.batch,
            seed: 0,
            variant: None,
            sparsity: 0.5,
            l1_gamma: 5e-4,
            schedule: "step".into(),
            budget_mib: None,
            out: out_path.clone(),
            receipt: Some(receipts.clone()),
        };
        let mut o = run(model.clone(), &tr, &te, &split, &args, None)?;
        print_table(&o.before, &o.after);
        print_memory(&o.memory);
        let c = commit(&mut o, &out_path, Some(&receipts), &spec)?;
        println!(
            "unlearning took {:.1}s; committed {}",
            o.seconds,
            c.path.display()
        );
        if let Some(r) = &c.receipt {
            print_receipt(r);
        }
    }
    let log = receipt::read_log(&receipts).map_err(|e| e.to_string())?;
    if !log.is_valid() {
        return Err(format!(
            "{}: the receipt log does not verify: {}",
            receipts.display(),
            log.problems.join("; ")
        ));
    }
    println!(
        "\nreceipt log {}: {} records, checksums and chain verified{}; total {:.1}s",
        receipts.display(),
        log.records.len(),
        if log.torn_tail > 0 {
            " (a torn last record was ignored)"
        } else {
            ""
        },
        t_all.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The receipt's main fields, as a user would want to see them.
pub fn print_receipt(r: &Receipt) {
    let mia = |m: Option<f64>| m.map_or_else(|| "-".into(), |v| format!("{v:.2}"));
    println!(
        "receipt {}: forgot {} samples (sha256 {}...), method {}, FA {:.2} -> {:.2}, MIA {} -> {}",
        r.seq,
        r.forget_count,
        &r.forget_sha256[..16.min(r.forget_sha256.len())],
        r.method,
        r.before.fa,
        r.after.fa,
        mia(r.before.mia),
        mia(r.after.mia)
    );
    if !r.codes_changed.is_empty() {
        println!("  weight codes changed per epoch: {:?}", r.codes_changed);
    }
    println!(
        "  model {}... -> {}..., checksum {}..., follows {}...",
        &r.model_before_sha256[..12.min(r.model_before_sha256.len())],
        &r.model_after_sha256[..12.min(r.model_after_sha256.len())],
        &r.checksum[..12.min(r.checksum.len())],
        &r.prev[..12.min(r.prev.len())]
    );
}
