//! `qmul experiment --forget sequence:NxFRAC:SEED`: deletion requests one
//! after another on the same model file, as a device receives them. Each
//! method (and seed) keeps its own chain of files: request K starts from the
//! file request K-1 committed (through `Session::commit`, the path `qmul
//! unlearn` and the C ABI use, so the sub-bin state carries over) and is
//! measured on everything forgotten so far against a Retrain on what is left.
//! With `--start codes` every request starts from the bins' centres (the
//! residuals stripped before each request): the same chain without sub-bin
//! state. Resumable: finished requests are in `results.json`, their models in
//! `<report>/chain/`.

use super::experiment::{
    cached_model, overrides, record_run, reference_config, save_results, ExperimentArgs,
};
use super::unlearn::{run, UnlearnArgs};
use crate::data::Dataset;
use crate::forget::ForgetSpec;
use crate::forgetting;
use crate::report::{self, RequestRef, Results};
use crate::train::TrainConfig;
use qmul_models::ResNetConfig;
use qmul_runtime::metrics::avg_gap;
use qmul_runtime::model_file::{self, WriteOptions};
use qmul_runtime::session::{CommitTarget, OpenModel};
use qmul_runtime::Model;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the experiment command prepared for the sequence.
pub struct Setup<'a> {
    pub cache: &'a Path,
    pub cfg: &'a ResNetConfig,
    pub tcfg: &'a TrainConfig,
    pub base_key: &'a str,
    pub original: &'a Model,
    /// The session's view of the original for the first request.
    pub original_open: Arc<OpenModel>,
    /// Strip the sub-bin residuals before every request.
    pub strip_each: bool,
    pub methods: &'a [String],
}

/// The chain file of `method`, `seed` after request `k`.
fn chain_path(report: &Path, method: &str, seed: u64, k: usize) -> PathBuf {
    report.join("chain").join(format!(
        "{}-seed{seed}-request{k}.qmul",
        method.replace('+', "_")
    ))
}

/// `path`'s model without its residuals (every weight at its bin's centre).
fn centred(path: &Path) -> Result<Arc<OpenModel>, String> {
    let m = model_file::load(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let b = model_file::to_bytes_with(&m, WriteOptions::CENTRES).map_err(|e| e.to_string())?;
    OpenModel::from_bytes(&b).map_err(|e| e.to_string())
}

pub fn run_sequence(
    a: &ExperimentArgs,
    spec: &ForgetSpec,
    tr: &Dataset,
    te: &Dataset,
    s: &Setup,
) -> Result<(), String> {
    let ForgetSpec::Sequence { count, .. } = *spec else {
        return Err("not a sequence of requests".into());
    };
    let results_path = a.report.join("results.json");
    let mut results: Results = if results_path.exists() {
        report::load(&a.report)?
    } else {
        Results::default()
    };
    let setting = serde_json::json!({
        "data": a.data.describe(), "arch": s.cfg.arch_name(), "width": a.width, "quant": a.quant,
        "forget": a.forget, "train_epochs": a.train_epochs, "train_lr": a.train_lr,
        "augment": !a.no_augment, "set": a.set, "batch": a.batch, "schedule": a.schedule,
        "start": a.start, "methods": a.methods,
    });
    if results.runs.is_empty() {
        results.setting = setting;
    } else if results.setting != setting {
        return Err(format!(
            "{} holds results of another setting; use another --report directory",
            results_path.display()
        ));
    }
    std::fs::create_dir_all(a.report.join("chain"))
        .map_err(|e| format!("{}: {e}", a.report.display()))?;
    let mut wanted = Vec::new();
    for m in s.methods {
        let c = reference_config(m, tr.classes)?
            .ok_or("retrain is the reference of every request, not a method of the sequence")?;
        let (e, l) = overrides(&a.set, m)?;
        wanted.push((m.clone(), e.unwrap_or(c.epochs), l.unwrap_or(c.lr)));
    }
    for k in 1..=count {
        let req = spec.request(k).ok_or("not a sequence")?;
        let split = forgetting::split(&req, tr, te)?;
        let (retrain, retrain_secs) = cached_model(
            s.cache,
            "retrain",
            &format!("{}|exclude {}", s.base_key, req.text()),
            s.cfg,
            &tr.subset(&split.retain),
            s.tcfg,
        )?;
        let rt = forgetting::scores(&retrain, tr, te, &split)?;
        if !results.requests.iter().any(|q| q.request == k) {
            results.requests.push(RequestRef {
                request: k,
                forgotten: split.forgotten().len(),
                original: forgetting::scores(s.original, tr, te, &split)?,
                retrain: rt,
                retrain_seconds: retrain_secs,
            });
            save_results(&a.report, s.methods, &mut results)?;
        }
        for seed in 0..a.seeds {
            for (m, epochs, lr) in &wanted {
                let done = |r: &Results, k: usize| {
                    r.runs
                        .iter()
                        .any(|x| &x.method == m && x.seed == seed && x.request == Some(k))
                };
                if done(&results, k) {
                    continue;
                }
                let prev = chain_path(&a.report, m, seed, k - 1);
                let start = match k {
                    1 => s.original_open.clone(),
                    _ if s.strip_each => centred(&prev)?,
                    _ => OpenModel::open(&prev).map_err(|e| format!("{}: {e}", prev.display()))?,
                };
                let args = UnlearnArgs {
                    model: prev.clone(),
                    data: a.data.clone(),
                    forget: req.text(),
                    method: m.clone(),
                    epochs: Some(*epochs),
                    lr: Some(*lr),
                    batch: a.batch,
                    seed,
                    variant: None,
                    sparsity: 0.5,
                    l1_gamma: 5e-4,
                    schedule: a.schedule.clone(),
                    force: true,
                    budget_mib: None,
                    out: PathBuf::new(),
                    receipt: None,
                };
                let mut o = run(start, tr, te, &split, &args, None)?;
                let check = o.session.verify().map_err(|e| e.to_string())?.verdict;
                let out = chain_path(&a.report, m, seed, k);
                // Measured, not gated: a request that fails the check is kept
                // (forced) so that the next request follows it, as the table
                // reports it.
                o.session
                    .commit(&CommitTarget {
                        model_path: Some(&out),
                        receipts: None,
                        request: Some(&req.text()),
                        force: true,
                    })
                    .map_err(|e| e.to_string())?;
                let g = avg_gap(&o.after, &rt);
                results.runs.push(record_run(
                    &format!("{m} seed {seed} request {k}/{count}"),
                    m,
                    seed,
                    o,
                    g,
                    check,
                    Some(k),
                    None,
                ));
                save_results(&a.report, s.methods, &mut results)?;
            }
        }
    }
    print!("{}", report::markdown(&results));
    println!(
        "wrote {}/results.json, table.md, avg_gap.svg",
        a.report.display()
    );
    Ok(())
}
