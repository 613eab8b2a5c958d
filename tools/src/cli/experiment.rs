//! `qmul experiment`: the full method table for one setting. Trains (or reuses,
//! by a hash of everything that determines them) the original and the Retrain
//! models, runs every method for every seed, and writes `results.json`, a
//! markdown table and an SVG chart of the Average Gap. The results file is
//! rewritten after each run, so an interrupted experiment resumes where it
//! stopped; model training resumes from its per-epoch checkpoint.

use super::plan;
use super::start::{start_model, Start};
use super::unlearn::{parse_method, run, UnlearnArgs};
use super::DataArgs;
use crate::data::{Augment, Dataset};
use crate::forget::{complement, ForgetSpec};
use crate::forgetting;
use crate::report::{self, same_lr, Results, RunResult};
use crate::train::{self, TrainConfig};
use clap::Args;
use qmul_models::{resnet, ResNetConfig};
use qmul_runtime::metrics::avg_gap;
use qmul_runtime::metrics::Scores;
use qmul_runtime::unlearn::{Config, Schedule};
use qmul_runtime::{model_file, ptq, InitOptions, Model, Precision, QuantScheme};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ExperimentArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, default_value = "resnet18")]
    pub arch: String,
    #[arg(long, default_value_t = 16)]
    pub width: usize,
    #[arg(long, default_value = "pact")]
    pub quant: String,
    #[arg(long)]
    pub forget: String,
    /// Comma-separated methods (qmul, rl, salun, ft, ga, l1, rl+sl, rl+agr).
    #[arg(long, default_value = "qmul,rl,salun,ft,ga,l1")]
    pub methods: String,
    /// Unlearning seeds 0..N per method.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Epochs for the original and Retrain models.
    #[arg(long, default_value_t = 30)]
    pub train_epochs: usize,
    #[arg(long, default_value_t = 0.1)]
    pub train_lr: f32,
    /// Train without augmentation (the models fit their training set sooner).
    #[arg(long)]
    pub no_augment: bool,
    /// Per-method overrides, e.g. `qmul:epochs=5:lr=0.02,ga:lr=1e-3` (win over tuning).
    #[arg(long, default_value = "")]
    pub set: String,
    /// Tune every method on the same grid, e.g. `lr=0.01,0.05;epochs=5,10`, scored
    /// by Average Gap on a validation scenario the evaluation does not see: a
    /// forget set drawn from the retain set (random forgetting) or the next class
    /// (class-wise), with its own Retrain model. `lrx=1,5` gives rates as
    /// multiples of each method's reference default instead. Rerunning with a
    /// wider grid reuses the trials already in the report and remakes the runs
    /// of any method whose choice changes; a grid may grow but not shrink.
    #[arg(long)]
    pub grid: Option<String>,
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Output directory (results.json, table.md, avg_gap.svg, cached models).
    #[arg(long)]
    pub report: PathBuf,
    /// Where trained original and Retrain models are cached (default: the report
    /// directory). Models are named by a hash of everything that determines them,
    /// so experiments that differ only in method settings, or a class-wise and a
    /// random experiment on the same data, can share one original model.
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// With `--quant none`: also quantize every unlearned model (and the
    /// original and Retrain) to 4 bits after the fact (post-training
    /// quantization, calibrated on retain images) and report FA and MIA
    /// before and after: whether forgetting survives deployment.
    #[arg(long)]
    pub quantize_after: bool,
    /// Print the jobs that can run now (one shell command per line, for GNU
    /// parallel, a Slurm array or Kubernetes Jobs) and exit; rerun after they
    /// finish for the next stage, then run without --plan to write the table.
    #[arg(long)]
    pub plan: bool,
    /// Run one job of a plan: model:NAME, trial:METHOD:EPOCHS:LR or run:METHOD:SEED.
    #[arg(long)]
    pub job: Option<String>,
    /// Learning-rate schedule of every method: epoch (the reference code's
    /// cosine stepped once per epoch, the default) or step (per-step cosine to
    /// zero; every report made before the default changed used it).
    #[arg(long, default_value = "epoch")]
    pub schedule: String,
    /// What unlearning starts from: file (the original's file as saved: codes
    /// and, in files written since format version 3, each weight's position in
    /// its rounding bin), codes (the codes alone, every latent weight at its
    /// bin's centre) or latent (the training run's exact f32 latent weights,
    /// kept beside the cached original as `<model>.latent`).
    #[arg(long, default_value = "file")]
    pub start: String,
}

/// `(epochs, lr)` overrides of one method from `--set`.
pub(super) fn overrides(set: &str, method: &str) -> Result<(Option<usize>, Option<f32>), String> {
    let (mut e, mut l) = (None, None);
    for item in set.split(',').filter(|s| !s.is_empty()) {
        let mut parts = item.split(':');
        if parts.next() != Some(method) {
            continue;
        }
        for kv in parts {
            match kv.split_once('=') {
                Some(("epochs", v)) => {
                    e = Some(v.parse().map_err(|_| format!("--set: bad epochs '{v}'"))?)
                }
                Some(("lr", v)) => l = Some(v.parse().map_err(|_| format!("--set: bad lr '{v}'"))?),
                _ => return Err(format!("--set: cannot read '{kv}' (epochs=N, lr=X)")),
            }
        }
    }
    Ok((e, l))
}

/// A method's reference configuration (its default epochs and rate); `None`
/// for retrain, which is not an unlearning method.
pub(super) fn reference_config(m: &str, classes: usize) -> Result<Option<Config>, String> {
    Ok(parse_method(m, classes, None, 0.5, 5e-4)?.map(|m| {
        let mut c = Config::new(m);
        (c.epochs, c.lr) = c.method.reference_schedule();
        c
    }))
}

/// A method's grid points as `(epochs, lr)`, `lrx=` rates resolved against its
/// reference default.
pub(super) fn grid_points(
    m: &str,
    classes: usize,
    grid: &[(usize, GridLr)],
) -> Result<Vec<(usize, f32)>, String> {
    let c = reference_config(m, classes)?.ok_or("--grid: retrain is not tuned")?;
    Ok(grid.iter().map(|&(e, l)| (e, l.resolve(c.lr))).collect())
}

/// Whether `trial` was run at grid point `(epochs, lr)` of method `m`.
pub(super) fn is_trial_at(trial: &report::TuneTrial, m: &str, epochs: usize, lr: f32) -> bool {
    trial.method == m && trial.epochs == epochs && same_lr(trial.lr, lr)
}

/// Whether a stored run was made with `epochs` and `lr`.
fn run_has_setting(r: &RunResult, epochs: usize, lr: f32) -> bool {
    r.setting()
        .is_some_and(|(e, l)| e == epochs && same_lr(l, lr))
}

/// A setting with its grid left out: results of a narrower grid stay valid.
fn without_grid(s: &serde_json::Value) -> serde_json::Value {
    let mut s = s.clone();
    if let Some(o) = s.as_object_mut() {
        o.remove("grid");
    }
    s
}

/// Trains a model from scratch on `train` unless a cached one exists; with it,
/// the wall time its training took, where the model records one.
/// Where `cached_model` keeps the model of `tag` and `key`.
fn cached_path(dir: &Path, tag: &str, key: &str) -> PathBuf {
    let hash: String = Sha256::digest(key.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    dir.join(format!("{tag}-{hash}.qmul"))
}

pub(super) fn cached_model(
    dir: &Path,
    tag: &str,
    key: &str,
    cfg: &ResNetConfig,
    train_set: &Dataset,
    tcfg: &TrainConfig,
) -> Result<(Model, Option<f64>), String> {
    // A model trained on a GPU is cached apart from the CPU's (their float
    // summation orders differ); CPU keys are as before.
    let device = crate::device::current()?;
    let key = &if matches!(device, crate::device::Device::Cpu) {
        key.to_string()
    } else {
        format!("{key}|device {}", device.name())
    };
    let path = cached_path(dir, tag, key);
    if path.exists() {
        let m = model_file::load(&path).map_err(|e| e.to_string())?;
        let secs = train::train_seconds(&m);
        eprintln!("reusing {} ({tag})", path.display());
        return Ok((m, secs));
    }
    let ck = train::checkpoint_path(&path);
    let (mut m, start) = if ck.exists() {
        let m = model_file::load(&ck).map_err(|e| e.to_string())?;
        let done = m
            .info
            .get("epochs_done")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (m, done)
    } else {
        let g = resnet(cfg).map_err(|e| e.to_string())?;
        (
            Model::new(
                g,
                InitOptions {
                    seed: tcfg.seed,
                    ..Default::default()
                },
            )
            .map_err(|e| e.to_string())?,
            0,
        )
    };
    eprintln!(
        "training {tag} model ({} images, {} epochs)",
        train_set.len(),
        tcfg.epochs
    );
    if start > 0 {
        eprintln!("resuming {tag} from {} after epoch {start}", ck.display());
    }
    if start > 0 && train::train_seconds(&m).is_none() {
        eprintln!(
            "warning: {} does not record how long its first {start} epochs took; \
             the {tag} model's training time will be unknown (delete the checkpoint to retrain and time it)",
            ck.display()
        );
    }
    train::train_on(
        &device,
        &mut m,
        train_set,
        None,
        tcfg,
        start,
        Some(&ck),
        |r| {
            eprintln!(
                "{tag} epoch {} loss {:.4} train acc {:.2}% ({:.0}s)",
                r.epoch, r.loss, r.train_acc, r.seconds
            )
        },
    )?;
    let secs = train::train_seconds(&m);
    m.info.insert("cache_key".into(), key.to_string());
    model_file::save(&m, &path).map_err(|e| e.to_string())?;
    if tag == "original" {
        // Unlearning may start from the exact training state (`--start latent`).
        train::save_latent(&m, &train::latent_path(&path))?;
    }
    train::remove_checkpoint(&ck);
    Ok((m, secs))
}

/// A learning rate on the tuning grid: absolute (`lr=`), or a multiple of the
/// method's reference default (`lrx=`), so that methods whose sensible rates
/// differ by orders of magnitude (GA's 1e-4 against FT's 1e-2) get the same
/// relative search.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum GridLr {
    Abs(f32),
    Times(f32),
}

impl GridLr {
    /// The rate for a method whose reference default is `default`.
    fn resolve(self, default: f32) -> f32 {
        match self {
            GridLr::Abs(l) => l,
            // From the default's shortest decimal form, so that 5 x 0.01 is the
            // f32 nearest 0.05 (and prints as such), not 0.049999997.
            GridLr::Times(x) => {
                let d: f64 = default.to_string().parse().unwrap_or(default as f64);
                (x as f64 * d) as f32
            }
        }
    }
}

/// `(epochs, lr)` settings of a grid `lr=a,b;epochs=c,d` or `lrx=a,b;epochs=c,d`.
fn parse_grid(g: &str) -> Result<Vec<(usize, GridLr)>, String> {
    let (mut lrs, mut eps) = (Vec::new(), Vec::new());
    for part in g.split(';').filter(|s| !s.trim().is_empty()) {
        let (k, vs) = part
            .split_once('=')
            .ok_or_else(|| format!("--grid: cannot read '{part}'"))?;
        for v in vs.split(',') {
            let num = |what: &str| {
                v.trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .ok_or_else(|| format!("--grid: bad {what} '{v}' (a positive number)"))
            };
            match k.trim() {
                "lr" => lrs.push(GridLr::Abs(num("lr")?)),
                "lrx" => lrs.push(GridLr::Times(num("lrx")?)),
                "epochs" => eps.push(
                    v.trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|&e| e > 0)
                        .ok_or_else(|| format!("--grid: bad epochs '{v}'"))?,
                ),
                o => return Err(format!("--grid: unknown key '{o}' (lr, lrx, epochs)")),
            }
        }
    }
    if lrs.is_empty() || eps.is_empty() {
        return Err("--grid needs lr=... (or lrx=...) and epochs=...".into());
    }
    Ok(eps
        .iter()
        .flat_map(|&e| lrs.iter().map(move |&l| (e, l)))
        .collect())
}

/// A finished run as the report keeps it, after printing its line.
#[allow(clippy::too_many_arguments)]
pub(super) fn record_run(
    what: &str,
    method: &str,
    seed: u64,
    o: super::unlearn::Outcome,
    avg_gap: f64,
    check: qmul_runtime::session::Verdict,
    request: Option<usize>,
    quantized: Option<Scores>,
) -> RunResult {
    eprintln!(
        "{what}: FA {:.2} RA {:.2} TA {:.2} MIA {:.2} AG {avg_gap:.2} ({:.0}s); deletion check {}",
        o.after.fa,
        o.after.ra,
        o.after.ta,
        o.after.mia,
        o.seconds,
        if check.passed { "passed" } else { "failed" }
    );
    RunResult {
        method: method.to_string(),
        seed,
        scores: o.after,
        avg_gap,
        seconds: o.seconds,
        config: o.config,
        epochs: o.logs,
        check: Some(check),
        request,
        quantized,
    }
}

/// The deletion check of a run from the scores `run` already measured on
/// the session's sets (a second evaluation through `verify` would give the
/// same figures).
fn deletion_check(o: &super::unlearn::Outcome) -> Result<qmul_runtime::session::Verdict, String> {
    o.session
        .judge(&(&o.before).into(), &(&o.after).into())
        .map_err(|e| e.to_string())
}

/// Calibration images for post-training quantization: 512 retain images
/// drawn with a fixed seed (never forget-set images, which would put what was
/// forgotten back into the clips).
fn calibration_images(tr: &Dataset, retain: &[usize]) -> Vec<u8> {
    let mut r = retain.to_vec();
    crate::data::Rng::new(0xca1b).shuffle(&mut r);
    r.truncate(512);
    r.iter().flat_map(|&i| tr.image(i).to_vec()).collect()
}

/// The validation scenario's forget indices: a random share of the retain set
/// the size of the evaluated forget set, or the next class.
fn validation_forget(spec: &ForgetSpec, tr: &Dataset, split: &forgetting::Split) -> Vec<usize> {
    match spec {
        ForgetSpec::Class(k) => {
            let v = (k + 1) % tr.classes;
            (0..tr.len())
                .filter(|&i| tr.label(i) as usize == v)
                .collect()
        }
        _ => {
            let mut r = split.retain.clone();
            crate::data::Rng::new(0x5a11_da7e).shuffle(&mut r);
            r.truncate(split.forget.len());
            r.sort_unstable();
            r
        }
    }
}

/// Writes the results with runs and trials in `--methods` order (then seed, or
/// epochs and rate), so remade runs do not move their method to the table's end.
pub(super) fn save_results(dir: &Path, methods: &[String], r: &mut Results) -> Result<(), String> {
    let pos = |m: &str| methods.iter().position(|x| x == m).unwrap_or(usize::MAX);
    r.runs.sort_by_key(|x| (pos(&x.method), x.seed));
    r.tuning.sort_by(|x, y| {
        (pos(&x.method), x.epochs)
            .cmp(&(pos(&y.method), y.epochs))
            .then(x.lr.total_cmp(&y.lr))
    });
    report::save(dir, r)
}

pub fn experiment(a: ExperimentArgs) -> Result<(), String> {
    let scheme =
        QuantScheme::parse(&a.quant).ok_or_else(|| format!("unknown --quant '{}'", a.quant))?;
    let blocks = match a.arch.as_str() {
        "resnet18" => [2, 2, 2, 2],
        "resnet10" => [1, 1, 1, 1],
        o => return Err(format!("unknown --arch '{o}'")),
    };
    let (tr, te) = a.data.load()?;
    let spec = ForgetSpec::parse(&a.forget)?;
    let whole_sequence = matches!(spec, ForgetSpec::Sequence { request: None, .. });
    if whole_sequence && a.grid.is_some() {
        return Err(
            "a sequence of requests runs each method at its --set or default setting \
             (tune it on a single request, e.g. --forget random:FRAC:SEED); drop --grid"
                .into(),
        );
    }
    let grid = a.grid.as_deref().map(parse_grid).transpose()?;
    let schedule = Schedule::parse(&a.schedule)
        .ok_or_else(|| format!("unknown --schedule '{}' (epoch, step)", a.schedule))?;
    let start = Start::parse(&a.start)?;
    let methods: Vec<String> = a
        .methods
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for m in &methods {
        super::unlearn::parse_method(m, tr.classes, None, 0.5, 5e-4)?;
        overrides(&a.set, m)?;
    }
    std::fs::create_dir_all(&a.report).map_err(|e| format!("{}: {e}", a.report.display()))?;
    let cache = a.models.clone().unwrap_or_else(|| a.report.clone());
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let [h, w, c] = tr.image_shape();
    let cfg = ResNetConfig {
        blocks,
        width: a.width,
        in_h: h,
        in_w: w,
        in_c: c,
        classes: tr.classes,
        scheme,
        edge_precision: Precision::Int8,
    };
    let tcfg = TrainConfig {
        epochs: a.train_epochs,
        batch: 128,
        lr: a.train_lr,
        momentum: 0.9,
        weight_decay: 5e-4,
        seed: 0,
        augment: if a.no_augment {
            None
        } else {
            Some(Augment::for_size(h, w))
        },
    };
    let base_key = format!(
        "{}|{}|{:?}|{:?}",
        a.data.describe(),
        cfg.arch_name(),
        cfg,
        tcfg
    );
    let job = a.job.as_deref().map(plan::Job::parse).transpose()?;
    if a.plan || job.is_some() {
        if whole_sequence {
            return Err("--plan and --job cover one forget set, not a sequence of requests".into());
        }
        let split = forgetting::split(&spec, &tr, &te)?;
        let mut keys = vec![
            ("original", base_key.clone(), tr.clone()),
            (
                "retrain",
                format!("{base_key}|exclude {}", a.forget),
                tr.subset(&split.retain),
            ),
        ];
        if grid.is_some() {
            let vf = validation_forget(&spec, &tr, &split);
            keys.push((
                "retrain-validation",
                format!("{base_key}|validation of {}", a.forget),
                tr.subset(&complement(tr.len(), &vf)),
            ));
        }
        let missing: Vec<&str> = keys
            .iter()
            .filter(|(tag, key, _)| !cached_path(&cache, tag, key).exists())
            .map(|(tag, _, _)| *tag)
            .collect();
        if a.plan {
            return plan::print_plan(&a, &missing, &methods, grid.as_deref(), tr.classes);
        }
        match &job {
            Some(plan::Job::Model(name)) => {
                let (tag, key, set) = keys.iter().find(|(t, _, _)| t == name).ok_or_else(|| {
                    format!("--job model:{name}: this experiment has no such model")
                })?;
                cached_model(&cache, tag, key, &cfg, set, &tcfg)?;
                return Ok(());
            }
            _ if !missing.is_empty() => {
                return Err(format!(
                    "the {} model(s) are not trained yet: run their model jobs first (see --plan)",
                    missing.join(", ")
                ))
            }
            _ => {}
        }
    }
    let (original, _) = cached_model(&cache, "original", &base_key, &cfg, &tr, &tcfg)?;
    let original_path = cached_path(&cache, "original", &base_key);
    if whole_sequence {
        let setup = super::sequence::Setup {
            cache: &cache,
            cfg: &cfg,
            tcfg: &tcfg,
            base_key: &base_key,
            original: &original,
            original_open: start_model(&original, &original_path, start)?,
            strip_each: start == Start::Codes,
            methods: &methods,
        };
        return super::sequence::run_sequence(&a, &spec, &tr, &te, &setup);
    }
    let split = forgetting::split(&spec, &tr, &te)?;
    let retain_set = tr.subset(&split.retain);
    let (retrain, retrain_secs) = cached_model(
        &cache,
        "retrain",
        &format!("{base_key}|exclude {}", a.forget),
        &cfg,
        &retain_set,
        &tcfg,
    )?;
    let results_path = a.report.join("results.json");
    let mut results: Results = if results_path.exists() {
        report::load(&a.report)?
    } else {
        Results::default()
    };
    let setting = serde_json::json!({
        "data": a.data.describe(), "arch": cfg.arch_name(), "width": a.width, "quant": a.quant, "forget": a.forget,
        "forget_count": split.forget.len(), "retain_count": split.retain.len(), "test_count": split.test.len(),
        "train_epochs": a.train_epochs, "train_lr": a.train_lr, "augment": !a.no_augment, "set": a.set, "grid": a.grid, "batch": a.batch,
        "agr_retain_estimate": "retain batches sampled to the forget loader's batch count",
    });
    // Keys that older reports lack are added only when they differ from what
    // those reports used, so that the reports stay resumable.
    let mut setting = setting;
    if schedule != Schedule::legacy() {
        setting["schedule"] = schedule.name().into();
    }
    if start != Start::File {
        setting["start"] = a.start.clone().into();
    }
    // A report's runs all come from one device (CPU reports stay as they were).
    let device = crate::device::current()?;
    if !matches!(device, crate::device::Device::Cpu) {
        setting["device"] = device.name().into();
    }
    if results.runs.is_empty() && results.tuning.is_empty() {
        results.setting = setting;
    } else if without_grid(&results.setting) != without_grid(&setting) {
        return Err(format!(
            "{} holds results of another setting; use another --report directory",
            results_path.display()
        ));
    } else if results.setting != setting {
        // Only the grid differs: a wider grid reuses every trial already run.
        for t in &results.tuning {
            let on_grid = match &grid {
                Some(g) => grid_points(&t.method, tr.classes, g)?
                    .into_iter()
                    .any(|(e, l)| is_trial_at(t, &t.method, e, l)),
                None => false,
            };
            if !on_grid {
                return Err(format!(
                    "{} has a tuning trial ({} epochs {} lr {}) outside --grid; a grid may only grow",
                    results_path.display(),
                    t.method,
                    t.epochs,
                    report::lr_text(t.lr)
                ));
            }
        }
        eprintln!(
            "grid widened to {}: reusing {} tuning trials",
            a.grid.as_deref().unwrap_or(""),
            results.tuning.len()
        );
        results.setting = setting;
    }
    let current = results.setting.clone();
    let merged = plan::merge(&a.report, &current, &mut results, |x, y| {
        without_grid(x) == without_grid(y)
    })?;
    if merged > 0 && job.is_none() {
        eprintln!("merged {merged} results written by --job runs");
    }
    // A job writes only its own result file: parallel jobs never share one.
    let in_job = job.is_some();
    let save_results = |dir: &Path, methods: &[String], r: &mut Results| {
        if in_job {
            Ok(())
        } else {
            save_results(dir, methods, r)
        }
    };
    let before = forgetting::scores(&original, &tr, &te, &split)?;
    let rt = match results.retrain {
        Some(s) => s,
        None => forgetting::scores(&retrain, &tr, &te, &split)?,
    };
    results.original = Some(before);
    results.retrain = Some(rt);
    results.retrain_seconds = retrain_secs;
    let calib = if a.quantize_after {
        if scheme != QuantScheme::None {
            return Err("--quantize-after needs a full-precision model (--quant none)".into());
        }
        Some(calibration_images(&tr, &split.retain))
    } else {
        None
    };
    let deploy = |m: &Model| -> Result<Option<Scores>, String> {
        match &calib {
            Some(images) => {
                let q = ptq::quantize(m, images, images.len() / tr.image_len())
                    .map_err(|e| e.to_string())?;
                Ok(Some(forgetting::scores(&q, &tr, &te, &split)?))
            }
            None => Ok(None),
        }
    };
    if calib.is_some() && results.original_quantized.is_none() {
        results.original_quantized = deploy(&original)?;
        results.retrain_quantized = deploy(&retrain)?;
    }
    save_results(&a.report, &methods, &mut results)?;
    let model_path = a.report.join("original.qmul");
    let unlearn_args = |m: &str, epochs, lr, seed, forget: &str| UnlearnArgs {
        model: model_path.clone(),
        data: a.data.clone(),
        forget: forget.to_string(),
        method: m.to_string(),
        epochs,
        lr,
        batch: a.batch,
        seed,
        variant: None,
        sparsity: 0.5,
        l1_gamma: 5e-4,
        schedule: a.schedule.clone(),
        force: false,
        budget_mib: None,
        out: PathBuf::new(),
        receipt: None,
    };
    let original_open = start_model(&original, &original_path, start)?;
    if let Some(grid) = &grid {
        let vf = validation_forget(&spec, &tr, &split);
        let vsplit = forgetting::Split {
            retain: complement(tr.len(), &vf),
            test: (0..te.len())
                .filter(|&i| {
                    spec.class().map(|k| (k + 1) % tr.classes) != Some(te.label(i) as usize)
                })
                .collect(),
            class: spec.class().map(|k| (k + 1) % tr.classes),
            forget: vf,
            earlier: Vec::new(),
        };
        let vretain = tr.subset(&vsplit.retain);
        let (vmodel, _) = cached_model(
            &cache,
            "retrain-validation",
            &format!("{base_key}|validation of {}", a.forget),
            &cfg,
            &vretain,
            &tcfg,
        )?;
        let vrt = forgetting::scores(&vmodel, &tr, &te, &vsplit)?;
        let vbefore = forgetting::scores(&original, &tr, &te, &vsplit)?;
        for m in &methods {
            for (epochs, lr) in grid_points(m, tr.classes, grid)? {
                if results.tuning.iter().any(|t| is_trial_at(t, m, epochs, lr)) {
                    continue;
                }
                if let Some(j) = &job {
                    let mine = matches!(j, plan::Job::Trial { method, epochs: e, lr: l }
                        if method == m && *e == epochs && same_lr(*l, lr));
                    if !mine {
                        continue;
                    }
                }
                let o = run(
                    original_open.clone(),
                    &tr,
                    &te,
                    &vsplit,
                    &unlearn_args(m, Some(epochs), Some(lr), 0, "validation"),
                    Some(vbefore),
                )?;
                let check = deletion_check(&o)?;
                let g = avg_gap(&o.after, &vrt);
                eprintln!(
                    "tuning {m} epochs {epochs} lr {}: validation AG {g:.2}",
                    report::lr_text(lr)
                );
                let trial = report::TuneTrial {
                    method: m.clone(),
                    epochs,
                    lr,
                    scores: o.after,
                    avg_gap: g,
                    seconds: o.seconds,
                    check: Some(check),
                };
                if let Some(j) = &job {
                    let out = plan::JobOutput {
                        setting: results.setting.clone(),
                        trial: Some(trial),
                        run: None,
                    };
                    return plan::write(&a.report, j, &out);
                }
                results.tuning.push(trial);
                save_results(&a.report, &methods, &mut results)?;
            }
        }
    }
    match &job {
        Some(plan::Job::Trial { .. }) => {
            eprintln!(
                "{}: already done",
                job.as_ref().map(plan::Job::text).unwrap_or_default()
            );
            return Ok(());
        }
        Some(plan::Job::Run { method, .. }) => {
            if let Some(g) = &grid {
                let points = grid_points(method, tr.classes, g)?;
                if !points
                    .iter()
                    .all(|&(e, l)| results.tuning.iter().any(|t| is_trial_at(t, method, e, l)))
                {
                    return Err(format!(
                        "{method}: its tuning trials are not all done, so its setting is not chosen yet"
                    ));
                }
            }
        }
        _ => {}
    }
    // Each method's setting: --set, else the tuning's choice, else its default.
    let mut wanted = Vec::with_capacity(methods.len());
    for m in &methods {
        let (mut epochs, mut lr) = overrides(&a.set, m)?;
        if let Some((te_, tl)) = report::chosen(&results, m) {
            epochs = epochs.or(Some(te_));
            lr = lr.or(Some(tl));
        }
        // Untuned and not set: the reference code's defaults (the protocol's
        // baseline), not qmul's own tuned defaults.
        if let Some(c) = reference_config(m, tr.classes)? {
            epochs = epochs.or(Some(c.epochs));
            lr = lr.or(Some(c.lr));
        }
        wanted.push((epochs, lr));
    }
    // A run made with another setting (the grid grew and chose anew) is stale.
    for (m, &(epochs, lr)) in methods.iter().zip(&wanted) {
        let Some(c) = reference_config(m, tr.classes)? else {
            continue;
        };
        let (e, l) = (epochs.unwrap_or(c.epochs), lr.unwrap_or(c.lr));
        let before = results.runs.len();
        results
            .runs
            .retain(|r| &r.method != m || run_has_setting(r, e, l));
        if results.runs.len() < before {
            eprintln!(
                "{m}: dropping {} runs made with another setting; rerunning with {e} epochs lr {}",
                before - results.runs.len(),
                report::lr_text(l)
            );
        }
    }
    for seed in 0..a.seeds {
        for (m, &(epochs, lr)) in methods.iter().zip(&wanted) {
            if results
                .runs
                .iter()
                .any(|r| &r.method == m && r.seed == seed)
            {
                continue;
            }
            if let Some(j) = &job {
                if !matches!(j, plan::Job::Run { method, seed: s } if method == m && *s == seed) {
                    continue;
                }
            }
            let o = run(
                original_open.clone(),
                &tr,
                &te,
                &split,
                &unlearn_args(m, epochs, lr, seed, &a.forget),
                Some(before),
            )?;
            let check = deletion_check(&o)?;
            let quantized = match o.session.unlearned() {
                Some((m, _)) => deploy(m)?,
                None => None,
            };
            let g = avg_gap(&o.after, &rt);
            let result = record_run(
                &format!("{m} seed {seed}"),
                m,
                seed,
                o,
                g,
                check,
                None,
                quantized,
            );
            if let Some(j) = &job {
                let out = plan::JobOutput {
                    setting: results.setting.clone(),
                    trial: None,
                    run: Some(result),
                };
                return plan::write(&a.report, j, &out);
            }
            results.runs.push(result);
            save_results(&a.report, &methods, &mut results)?;
        }
    }
    print!("{}", report::markdown(&results));
    println!(
        "wrote {}/results.json, table.md, avg_gap.svg",
        a.report.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_every_epochs_and_lr_pair() {
        let g = parse_grid("lr=0.01,0.05;epochs=1,2").unwrap();
        assert_eq!(
            g,
            vec![
                (1, GridLr::Abs(0.01)),
                (1, GridLr::Abs(0.05)),
                (2, GridLr::Abs(0.01)),
                (2, GridLr::Abs(0.05)),
            ]
        );
    }

    #[test]
    fn relative_rates_scale_each_methods_default() {
        let g = parse_grid("lrx=1,5;epochs=2").unwrap();
        let ga = g.iter().map(|&(_, l)| l.resolve(1e-4)).collect::<Vec<_>>();
        let ft = g.iter().map(|&(_, l)| l.resolve(1e-2)).collect::<Vec<_>>();
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-6 * y);
        assert!(close(&ga, &[1e-4, 5e-4]), "{ga:?}");
        assert!(close(&ft, &[1e-2, 5e-2]), "{ft:?}");
        assert_eq!(GridLr::Abs(0.3).resolve(1e-4), 0.3);
        assert_eq!(GridLr::Times(5.0).resolve(0.01), 0.05);
        assert!(same_lr(0.049999997, 0.05) && !same_lr(0.05, 0.0501));
    }

    #[test]
    fn bad_grids_are_errors() {
        for g in [
            "lr=0.01",
            "epochs=1",
            "lr=x;epochs=1",
            "lr=-1;epochs=1",
            "lr=0.1;epochs=0",
            "mom=1;epochs=1",
            "lr=nan;epochs=1",
        ] {
            assert!(parse_grid(g).is_err(), "{g}");
        }
    }
}
