//! `qmul unlearn`: make a model forget a set of training samples, commit the
//! result and append a deletion receipt, through the runtime's session (the
//! same open -> sets -> unlearn -> verify -> commit -> receipt path as the C ABI).

use super::{check_compatible, DataArgs};
use crate::forget::ForgetSpec;
use crate::forgetting::{self, Split};
use crate::progress::Progress;
use crate::train::{self, TrainConfig};
use clap::Args;
use qmul_runtime::metrics::Scores;
use qmul_runtime::session::{
    CommitReport, CommitTarget, MemoryReport, OpenModel, Session, UnlearnReport, Which,
};
use qmul_runtime::unlearn::{self, Config, Method, Relabel, Variant};
use qmul_runtime::{InitOptions, Model};
use std::path::PathBuf;
use std::sync::Arc;
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
    /// Epochs (default: the reference code's, 10; GA 5).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Learning rate (default: the rate the tuned tables chose for the method:
    /// Q-MUL, FT, l1-sparse 0.05; RL, SalUn 0.01; GA 5e-4).
    #[arg(long)]
    pub lr: Option<f32>,
    /// Batch size (default: 64, the tuned tables' batch); 0 picks the largest
    /// (up to 256) that fits --budget.
    #[arg(long, default_value_t = 64)]
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
    /// Learning-rate schedule: epoch (the reference code's cosine stepped once
    /// per epoch, `CosineAnnealingLR(T_max = epochs)`) or step (cosine to zero,
    /// updated every step).
    #[arg(long, default_value = "epoch")]
    pub schedule: String,
    /// Commit even if the deletion check fails (the receipt records it).
    #[arg(long)]
    pub force: bool,
    /// Memory budget of the session in MiB (default: unlimited).
    #[arg(long)]
    pub budget_mib: Option<u64>,
    /// Where the new model goes (may be --model itself: replaced crash-safely).
    #[arg(long)]
    pub out: PathBuf,
    /// Append the deletion receipt to this log (verified first).
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

/// Result of one unlearning run, still uncommitted in its session.
pub struct Outcome {
    pub session: Session,
    pub before: Scores,
    pub after: Scores,
    pub seconds: f64,
    pub logs: Vec<unlearn::EpochLog>,
    pub config: serde_json::Value,
    pub memory: MemoryReport,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A session on `model` holding the split's forget, retain and test sets.
pub fn session_for(
    model: Arc<OpenModel>,
    tr: &crate::data::Dataset,
    te: &crate::data::Dataset,
    split: &Split,
    budget: u64,
) -> Result<Session, String> {
    let s = |e: qmul_runtime::error::Error| e.to_string();
    let mut session = Session::new(model, budget).map_err(s)?;
    session.set_device(crate::device::current()?);
    session.set_forget_indices(tr, &split.forget).map_err(s)?;
    session
        .set_retain_indices(tr, Some(&split.retain))
        .map_err(s)?;
    session.set_test_indices(te, Some(&split.test)).map_err(s)?;
    Ok(session)
}

/// Runs a method on `model` for `split` (no files written): the result waits
/// in the returned session for a commit. `before` are the model's scores on
/// the split when the caller has them already (else they are evaluated).
pub fn run(
    model: Arc<OpenModel>,
    tr: &crate::data::Dataset,
    te: &crate::data::Dataset,
    split: &Split,
    a: &UnlearnArgs,
    before: Option<Scores>,
) -> Result<Outcome, String> {
    let s = |e: qmul_runtime::error::Error| e.to_string();
    let budget = a.budget_mib.map_or(u64::MAX, |m| m.saturating_mul(1 << 20));
    let classes = model.model().classes();
    let method = parse_method(
        &a.method,
        classes,
        a.variant.as_deref(),
        a.sparsity,
        a.l1_gamma,
    )?;
    let mut session = session_for(model.clone(), tr, te, split, budget)?;
    // A request of a sequence is measured on everything forgotten so far.
    let cumulative = !split.earlier.is_empty();
    let before = match before {
        Some(b) => b,
        None if cumulative => forgetting::scores(model.model(), tr, te, split)?,
        None => session.evaluate(Which::Current).map_err(s)?.0,
    };
    let t0 = Instant::now();
    match method {
        Some(method) => {
            let mut p = Config::new(method);
            p.epochs = a.epochs.unwrap_or(p.epochs);
            p.lr = a.lr.unwrap_or(p.lr);
            p.batch = a.batch;
            p.seed = a.seed;
            p.schedule = unlearn::Schedule::parse(&a.schedule)
                .ok_or_else(|| format!("unknown --schedule '{}' (step, epoch)", a.schedule))?;
            let mut bar = Progress::new(0, &format!("unlearn {}", a.method));
            let mut last = 0u64;
            session
                .unlearn(&p, &mut |p| {
                    if p.phase != unlearn::Phase::Train {
                        return true;
                    }
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
                })
                .map_err(s)?;
            bar.finish();
        }
        None => {
            let retain = tr.subset(&split.retain);
            let base = model.model();
            let mut m = Model::new(
                base.graph.clone(),
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
            let started_unix = now_unix();
            let device = crate::device::current()?;
            train::train_on(&device, &mut m, &retain, None, &tcfg, 0, None, |r| {
                eprintln!(
                    "retrain epoch {} loss {:.4} train acc {:.2}%",
                    r.epoch, r.loss, r.train_acc
                )
            })?;
            m.info = base.info.clone();
            let mut cfg = Config::new(Method::Ft);
            cfg.epochs = tcfg.epochs;
            cfg.lr = tcfg.lr;
            cfg.batch = tcfg.batch;
            cfg.seed = a.seed;
            let report = UnlearnReport {
                method: "retrain".into(),
                params: serde_json::json!({ "method": "retrain", "epochs": tcfg.epochs, "lr": tcfg.lr, "batch": tcfg.batch, "seed": a.seed }),
                config: cfg,
                logs: Vec::new(),
                seconds: t0.elapsed().as_secs_f64(),
                memory: MemoryReport::default(),
                started_unix,
            };
            session.adopt(m, report).map_err(s)?;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let after = match session.unlearned() {
        Some((m, _)) if cumulative => forgetting::scores(m, tr, te, split)?,
        _ => session.evaluate(Which::Unlearned).map_err(s)?.0,
    };
    let (_, report) = session
        .unlearned()
        .ok_or("the session holds no unlearned model")?;
    let config = report.params.clone();
    let (logs, memory) = (report.logs.clone(), report.memory);
    Ok(Outcome {
        session,
        before,
        after,
        seconds,
        logs,
        config,
        memory,
    })
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
    if let (Some(x), Some(y)) = (b.attacks, f.attacks) {
        println!(
            "other attacks (efficacy %): entropy {:.2} -> {:.2}, modified entropy {:.2} -> {:.2}, \
             loss threshold {:.2} -> {:.2}",
            x.entropy, y.entropy, x.m_entropy, y.m_entropy, x.loss, y.loss
        );
    }
}

/// One line on the session's planned and measured memory.
pub fn print_memory(m: &MemoryReport) {
    let mib = |b: u64| b as f64 / 1048576.0;
    let measured = m
        .measured
        .map_or_else(|| "not measured".into(), |b| format!("{:.1} MiB", mib(b)));
    println!(
        "memory: {:.1} MiB held, unlearning planned {:.1} MiB more, measured {measured}",
        mib(m.resident),
        mib(m.planned)
    );
}

/// Commits an outcome's model to `out` (with a receipt when `receipts` is set)
/// and prints what was written.
pub fn commit(
    o: &mut Outcome,
    out: &std::path::Path,
    receipts: Option<&std::path::Path>,
    request: &str,
    force: bool,
) -> Result<CommitReport, String> {
    let v = o.session.verify().map_err(|e| e.to_string())?;
    println!(
        "deletion check ({}): {}: {}",
        v.verdict.scenario,
        if v.verdict.passed { "passed" } else { "FAILED" },
        v.verdict.detail
    );
    let c = o
        .session
        .commit(&CommitTarget {
            model_path: Some(out),
            receipts,
            request: Some(request),
            force,
        })
        .map_err(|e| e.to_string())?;
    Ok(c)
}

pub fn unlearn_cmd(a: UnlearnArgs) -> Result<(), String> {
    let model = OpenModel::open(&a.model).map_err(|e| e.to_string())?;
    let (tr, te) = a.data.load()?;
    check_compatible(model.model(), &te)?;
    let split = forgetting::split(&ForgetSpec::parse(&a.forget)?, &tr, &te)?;
    let earlier = if split.earlier.is_empty() {
        String::new()
    } else {
        format!(
            "; {} more were forgotten by earlier requests, and the metrics cover all {}",
            split.earlier.len(),
            split.forgotten().len()
        )
    };
    eprintln!(
        "forgetting {} of {} training images ({}), method {}{earlier}",
        split.forget.len(),
        tr.len(),
        a.forget,
        a.method
    );
    // Receipts and paths are checked before any work, so nothing runs for a
    // commit that cannot happen.
    if let Some(r) = &a.receipt {
        qmul_runtime::session::check_receipt_path(r, &[&a.out, &a.model])
            .map_err(|e| e.to_string())?;
        qmul_runtime::session::receipt::preflight(r).map_err(|e| e.to_string())?;
    }
    let mut out = run(model, &tr, &te, &split, &a, None)?;
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
    let changed: Vec<String> = out
        .logs
        .iter()
        .filter_map(|l| l.codes_changed.map(|c| c.to_string()))
        .collect();
    if !changed.is_empty() {
        eprintln!("weight codes changed per epoch: {}", changed.join(", "));
    }
    print_table(&out.before, &out.after);
    print_memory(&out.memory);
    let c = commit(&mut out, &a.out, a.receipt.as_deref(), &a.forget, a.force)?;
    println!(
        "{} in {:.1}s, committed {}",
        a.method,
        out.seconds,
        c.path.display()
    );
    if let (Some(r), Some(rec)) = (&a.receipt, &c.receipt) {
        println!("receipt {} appended to {}", rec.seq, r.display());
    }
    Ok(())
}
