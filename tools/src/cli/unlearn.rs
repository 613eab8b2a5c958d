//! `qmul unlearn`: make a model forget a set of training samples, save the result
//! and append a deletion receipt.

use super::{check_compatible, DataArgs};
use crate::forget::ForgetSpec;
use crate::forgetting::{self, Split};
use crate::progress::Progress;
use crate::train::{self, TrainConfig};
use clap::Args;
use qmul_runtime::metrics::Scores;
use qmul_runtime::unlearn::{self, Config, Method, Relabel, Samples, Variant};
use qmul_runtime::{model_file, InitOptions, Model};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Args, Debug, Clone)]
pub struct UnlearnArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// What to forget: random:FRAC:SEED, class:K or indices:FILE.
    #[arg(long)]
    pub forget: String,
    /// qmul, rl, salun, ft, ga, l1, retrain, or the ablations rl+sl, rl+agr.
    #[arg(long, default_value = "qmul")]
    pub method: String,
    /// Epochs (default: the method's reference default).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Learning rate (default: the method's reference default).
    #[arg(long)]
    pub lr: Option<f32>,
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// sequential or mixed (default: sequential for 10 classes, mixed for more).
    #[arg(long)]
    pub variant: Option<String>,
    /// SalUn: share of parameters frozen by the saliency mask.
    #[arg(long, default_value_t = 0.5)]
    pub sparsity: f32,
    /// l1-sparse: initial penalty weight.
    #[arg(long, default_value_t = 5e-4)]
    pub l1_gamma: f32,
    #[arg(long)]
    pub out: PathBuf,
    /// Append a JSON deletion receipt to this file.
    #[arg(long)]
    pub receipt: Option<PathBuf>,
}

/// The method named on the command line, `None` for retrain.
pub fn parse_method(
    name: &str,
    classes: usize,
    variant: Option<&str>,
    sparsity: f32,
    l1_gamma: f32,
) -> Result<Option<Method>, String> {
    let variant = match variant {
        None => Variant::default_for(classes),
        Some("sequential") => Variant::Sequential,
        Some("mixed") => Variant::Mixed,
        Some(v) => return Err(format!("unknown --variant '{v}' (sequential, mixed)")),
    };
    let relabel = |relabel, agr| Method::Relabel {
        relabel,
        agr,
        variant,
    };
    Ok(Some(match name {
        "qmul" => relabel(Relabel::Similar, true),
        "rl" => relabel(Relabel::Random, false),
        "rl+sl" => relabel(Relabel::Similar, false),
        "rl+agr" => relabel(Relabel::Random, true),
        "salun" => Method::Salun { sparsity, variant },
        "ft" => Method::Ft,
        "ga" => Method::Ga,
        "l1" => Method::L1 { gamma: l1_gamma },
        "retrain" => return Ok(None),
        o => {
            return Err(format!(
                "unknown --method '{o}' (qmul, rl, salun, ft, ga, l1, retrain, rl+sl, rl+agr)"
            ))
        }
    }))
}

/// Result of one unlearning run.
pub struct Outcome {
    pub model: Model,
    pub before: Scores,
    pub after: Scores,
    pub seconds: f64,
    pub logs: Vec<unlearn::EpochLog>,
    pub config: serde_json::Value,
}

/// Runs a method on `model` for `split` (no files written).
pub fn run(
    model: &Model,
    tr: &crate::data::Dataset,
    te: &crate::data::Dataset,
    split: &Split,
    a: &UnlearnArgs,
    before: Scores,
) -> Result<Outcome, String> {
    let method = parse_method(
        &a.method,
        model.classes(),
        a.variant.as_deref(),
        a.sparsity,
        a.l1_gamma,
    )?;
    let t0 = Instant::now();
    let (m, logs, config) = match method {
        Some(method) => {
            let mut cfg = Config::new(method);
            cfg.epochs = a.epochs.unwrap_or(cfg.epochs);
            cfg.lr = a.lr.unwrap_or(cfg.lr);
            cfg.batch = a.batch;
            cfg.seed = a.seed;
            let (fi, fl) = forgetting::samples(tr, &split.forget);
            let (ri, rl) = forgetting::samples(tr, &split.retain);
            let mut m = model.clone();
            let mut bar = Progress::new(0, &format!("unlearn {}", a.method));
            let mut last = 0u64;
            let logs = unlearn::unlearn(
                &mut m,
                Samples {
                    images: &fi,
                    labels: &fl,
                },
                Samples {
                    images: &ri,
                    labels: &rl,
                },
                &cfg,
                &mut |p| {
                    if last == 0 {
                        bar = Progress::new(p.steps as u64, &format!("unlearn {}", a.method))
                            .unit("steps");
                    }
                    bar.advance(
                        p.step as u64 - last,
                        &format!("epoch {}/{}", p.epoch + 1, p.epochs),
                    );
                    last = p.step as u64;
                    true
                },
            )
            .map_err(|e| e.to_string())?;
            bar.finish();
            (m, logs, serde_json::to_value(&cfg).unwrap_or_default())
        }
        None => {
            let retain = tr.subset(&split.retain);
            let mut m = Model::new(
                model.graph.clone(),
                InitOptions {
                    seed: a.seed,
                    ..Default::default()
                },
            )
            .map_err(|e| e.to_string())?;
            let [h, w, _] = tr.image_shape();
            let tcfg = TrainConfig {
                epochs: a.epochs.unwrap_or(15),
                batch: 128,
                lr: a.lr.unwrap_or(0.1),
                momentum: 0.9,
                weight_decay: 5e-4,
                seed: a.seed,
                augment: Some(crate::data::Augment::for_size(h, w)),
            };
            train::train(&mut m, &retain, None, &tcfg, 0, None, |r| {
                eprintln!(
                    "retrain epoch {} loss {:.4} train acc {:.2}%",
                    r.epoch, r.loss, r.train_acc
                )
            })?;
            m.info = model.info.clone();
            let config = serde_json::json!({ "method": "retrain", "epochs": tcfg.epochs, "lr": tcfg.lr, "batch": tcfg.batch, "seed": a.seed });
            (m, Vec::new(), config)
        }
    };
    let seconds = t0.elapsed().as_secs_f64();
    let after = forgetting::scores(&m, tr, te, split)?;
    Ok(Outcome {
        model: m,
        before,
        after,
        seconds,
        logs,
        config,
    })
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The deletion receipt of one run: what was forgotten (count and a hash of the
/// samples, never the samples), how, the forgetting metrics before and after,
/// and the hashes of the model files before and after.
pub fn receipt(
    tr: &crate::data::Dataset,
    split: &Split,
    spec: &str,
    method: &str,
    o: &Outcome,
    model_before: &Path,
    model_after: &Path,
) -> Result<serde_json::Value, String> {
    Ok(serde_json::json!({
        "kind": "qmul-deletion-receipt",
        "version": 1,
        "forget_spec": spec,
        "forget_count": split.forget.len(),
        "forget_sha256": forgetting::forget_set_hash(tr, &split.forget),
        "method": method,
        "params": o.config,
        "before": { "fa": o.before.fa, "mia": o.before.mia },
        "after": { "fa": o.after.fa, "mia": o.after.mia },
        "model_before_sha256": forgetting::file_hash(model_before)?,
        "model_after_sha256": forgetting::file_hash(model_after)?,
        "finished_unix": now_unix(),
        "unlearn_seconds": o.seconds,
    }))
}

/// Prints the before/after metrics as a small table.
pub fn print_table(b: &Scores, f: &Scores) {
    println!("            FA      RA      TA      MIA   (percent; FA on the forget set, MIA = forget samples judged non-members)");
    println!(
        "before  {:6.2}  {:6.2}  {:6.2}  {:6.2}",
        b.fa, b.ra, b.ta, b.mia
    );
    println!(
        "after   {:6.2}  {:6.2}  {:6.2}  {:6.2}",
        f.fa, f.ra, f.ta, f.mia
    );
}

/// Appends one JSON line to the receipt file and flushes it to disk.
pub fn append_receipt(path: &Path, v: &serde_json::Value) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(f, "{v}")
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

pub fn unlearn_cmd(a: UnlearnArgs) -> Result<(), String> {
    let started = now_unix();
    let model = model_file::load(&a.model).map_err(|e| e.to_string())?;
    let (tr, te) = a.data.load()?;
    check_compatible(&model, &te)?;
    let split = forgetting::split(&ForgetSpec::parse(&a.forget)?, &tr, &te)?;
    eprintln!(
        "forgetting {} of {} training images ({}), method {}",
        split.forget.len(),
        tr.len(),
        a.forget,
        a.method
    );
    let before = forgetting::scores(&model, &tr, &te, &split)?;
    let out = run(&model, &tr, &te, &split, &a, before)?;
    model_file::save(&out.model, &a.out).map_err(|e| e.to_string())?;
    for l in &out.logs {
        if let (Some(gf), Some(gr)) = (l.g_forget, l.g_retain) {
            eprintln!(
                "epoch {}: G_f {gf:.3} G_r {gr:.3} (ratio {:.2}) w_f {:.3} w_r {:.3}",
                l.epoch,
                gf / gr,
                l.w_forget,
                l.w_retain
            );
        }
    }
    print_table(&out.before, &out.after);
    println!(
        "{} in {:.1}s, saved {}",
        a.method,
        out.seconds,
        a.out.display()
    );
    if let Some(r) = &a.receipt {
        let mut v = receipt(&tr, &split, &a.forget, &a.method, &out, &a.model, &a.out)?;
        v["started_unix"] = started.into();
        append_receipt(r, &v)?;
        println!("receipt appended to {}", r.display());
    }
    Ok(())
}
