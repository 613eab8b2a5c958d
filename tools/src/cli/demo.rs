//! `qmul demo`: the main job on what the repository ships. The pretrained 4-bit
//! model forgets a random 10% of the training subset and, separately, one whole
//! class; each run prints FA, RA, TA and MIA before and after, the time taken,
//! and writes the new model and a deletion receipt.

use super::unlearn::{append_receipt, print_table, receipt, run, UnlearnArgs};
use super::DataArgs;
use crate::forget::ForgetSpec;
use crate::forgetting;
use clap::Args;
use qmul_runtime::model_file;
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
        model_file::load(&model_path).map_err(|e| format!("{}: {e}", model_path.display()))?;
    let data = DataArgs {
        data: "subset".into(),
        train_subset: None,
    };
    let (tr, te) = data.load()?;
    super::check_compatible(&model, &te)?;
    std::fs::create_dir_all(&a.out_dir).map_err(|e| format!("{}: {e}", a.out_dir.display()))?;
    let receipts = a.out_dir.join("receipts.jsonl");
    println!(
        "qmul demo: {} ({} on the shipped Fashion-MNIST subset: {} train / {} test images), kernels {}",
        shown,
        model.info.get("arch").map(String::as_str).unwrap_or("model"),
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
        let before = forgetting::scores(&model, &tr, &te, &split)?;
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
            out: out_path.clone(),
            receipt: Some(receipts.clone()),
        };
        let o = run(&model, &tr, &te, &split, &args, before)?;
        model_file::save(&o.model, &out_path).map_err(|e| e.to_string())?;
        print_table(&o.before, &o.after);
        println!(
            "unlearning took {:.1}s; new model {}",
            o.seconds,
            out_path.display()
        );
        let v = receipt(&tr, &split, &spec, "qmul", &o, &model_path, &out_path)?;
        append_receipt(&receipts, &v)?;
    }
    println!(
        "\nreceipts appended to {}; total {:.1}s",
        receipts.display(),
        t_all.elapsed().as_secs_f64()
    );
    Ok(())
}
