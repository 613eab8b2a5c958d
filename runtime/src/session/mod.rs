//! The on-device flow, one code path for the C ABI, the `qmul` command and the
//! demo: open a model -> session with a memory budget -> forget set, retain
//! data and test set -> unlearn (progress, cancellation) -> verify (FA and MIA
//! on the forget set, before and after) -> commit to the model path -> receipt.
//!
//! Nothing is written before [`Session::commit`]. A cancelled or failed
//! unlearning leaves the model, its file and the receipt log as they were;
//! a failed commit leaves the file at the path either the old or the new model
//! (see [`crate::durable`]), and a receipt is appended only after its commit.
//!
//! Ownership and threads: an [`OpenModel`] is immutable and shared (`Arc`)
//! by any number of sessions and threads; a [`Session`] is used by one thread
//! at a time, except for [`Canceller::cancel`], which any thread may call.

pub mod alloc;
pub mod plan;
pub mod receipt;
pub mod sets;
pub mod verdict;

use crate::error::{Error, ErrorKind, Result};
use crate::graph::{Op, Precision, QuantScheme, Shape};
pub use crate::metrics::Forgetting;
use crate::metrics::{self, Scores};
use crate::model::Model;
use crate::model_file::{self, Integrity};
use crate::samples::{self, Samples, EVAL_BATCH};
use crate::unlearn::{self, Config, EpochLog, Phase};
use plan::UnlearnShape;
use receipt::Receipt;
use sets::{SampleSet, SetShape};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
pub use verdict::Verdict;

/// A model opened for use: validated, immutable, shareable between threads.
#[derive(Debug)]
pub struct OpenModel {
    model: Model,
    path: Option<PathBuf>,
    file_sha256: [u8; 32],
    integrity: Integrity,
    file_bytes: usize,
    sub_bin: bool,
}

/// What a model is, for a caller deciding how to use it.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// Architecture name from the file (`resnet18`, ...) or `unknown`.
    pub arch: String,
    pub classes: usize,
    pub input: Shape,
    /// Bits of the body's weights and activations (4), or 32 for a float model.
    pub bits: u32,
    /// Bits of the first conv and the classifier (8 or 32).
    pub edge_bits: u32,
    pub scheme: QuantScheme,
    pub parameters: usize,
    pub integrity: Integrity,
    pub file_bytes: usize,
    pub file_sha256: String,
}

fn check_kernels() -> Result<()> {
    match qmul_kernels::override_error() {
        Some(e) => Err(Error::invalid(e.to_string())),
        None => Ok(()),
    }
}

impl OpenModel {
    /// Memory-maps and validates the model at `path`. Temporary files that an
    /// interrupted commit to this path left behind are removed first.
    pub fn open(path: &Path) -> Result<Arc<OpenModel>> {
        check_kernels()?;
        crate::durable::remove_stale_temps(path);
        let loaded =
            model_file::load_checked(path).map_err(|e| Error::from(e).context(path.display()))?;
        if loaded.integrity == Integrity::Unchecked {
            log::warn!(
                "{}: format version 1 carries no checksum; `qmul upgrade` adds one",
                path.display()
            );
        }
        Ok(Arc::new(OpenModel {
            model: loaded.model,
            path: Some(path.to_path_buf()),
            file_sha256: loaded.file_sha256,
            integrity: loaded.integrity,
            file_bytes: loaded.file_bytes,
            sub_bin: loaded.sub_bin,
        }))
    }

    /// Validates a model held in a caller's buffer (copied; the buffer may be
    /// freed afterwards). Such a model has no path: commits need one.
    pub fn from_bytes(bytes: &[u8]) -> Result<Arc<OpenModel>> {
        check_kernels()?;
        let loaded = model_file::from_bytes_checked(bytes)?;
        Ok(Arc::new(OpenModel {
            model: loaded.model,
            path: None,
            file_sha256: loaded.file_sha256,
            integrity: loaded.integrity,
            file_bytes: loaded.file_bytes,
            sub_bin: loaded.sub_bin,
        }))
    }

    /// A model already in memory (trained or converted by the caller), as the
    /// file it would be saved as; it has no path until a commit gives it one.
    pub fn from_model(model: Model) -> Result<Arc<OpenModel>> {
        let bytes = model_file::to_bytes(&model)?;
        OpenModel::from_bytes(&bytes)
    }

    /// A model in memory with its exact f32 latent weights (a training run's
    /// own state, finer than the file's 1/65536-step residuals). Its identity in
    /// receipts is the file it would be saved as; sessions start from the
    /// exact weights.
    pub fn from_exact_model(model: Model) -> Result<Arc<OpenModel>> {
        let bytes = model_file::to_bytes(&model)?;
        let loaded = model_file::from_bytes_checked(&bytes)?;
        if loaded.model.weight_codes() != model.weight_codes() {
            return Err(Error::invalid(
                "the model's weights do not survive saving with the same codes",
            ));
        }
        Ok(Arc::new(OpenModel {
            model,
            path: None,
            file_sha256: loaded.file_sha256,
            integrity: loaded.integrity,
            file_bytes: loaded.file_bytes,
            sub_bin: loaded.sub_bin,
        }))
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Whether the model's file keeps each weight's place inside its rounding
    /// bin (otherwise unlearning starts at the bins' centres).
    pub fn has_sub_bin(&self) -> bool {
        self.sub_bin
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn file_sha256(&self) -> String {
        crate::model_file::write::hex(&self.file_sha256)
    }

    pub fn info(&self) -> ModelInfo {
        let m = &self.model;
        let edge = m.graph.nodes.iter().find_map(|o| match o {
            Op::Linear { prec, .. } => Some(*prec),
            _ => None,
        });
        let bits = |p: Option<Precision>| match p {
            _ if m.graph.scheme == QuantScheme::None => 32,
            Some(Precision::Int4) => 4,
            Some(Precision::Int8) => 8,
            _ => 32,
        };
        ModelInfo {
            arch: m
                .info
                .get("arch")
                .cloned()
                .unwrap_or_else(|| "unknown".into()),
            classes: m.classes(),
            input: m.graph.input_shape(),
            bits: if m.graph.scheme == QuantScheme::None {
                32
            } else {
                4
            },
            edge_bits: bits(edge),
            scheme: m.graph.scheme,
            parameters: m.param_count(),
            integrity: self.integrity,
            file_bytes: self.file_bytes,
            file_sha256: self.file_sha256(),
        }
    }

    fn set_shape(&self) -> SetShape {
        SetShape {
            input: self.model.graph.input_shape(),
            classes: self.model.classes(),
        }
    }
}

/// Logits (`n x classes`) and the predicted class of each image.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub logits: Vec<f32>,
    pub classes: Vec<u32>,
}

/// Pixel values in [0, 1] as the u8 levels the model takes (`round(255 x)`).
/// NaN, infinities and values outside [0, 1] are errors.
pub fn pixels_from_f32(images: &[f32]) -> Result<Vec<u8>> {
    if let Some((i, v)) = images
        .iter()
        .enumerate()
        .find(|(_, v)| !(v.is_finite() && (0.0..=1.0).contains(*v)))
    {
        return Err(Error::invalid(format!(
            "pixel {i} is {v}: f32 images hold values in [0, 1]"
        )));
    }
    Ok(images.iter().map(|&v| (v * 255.0).round() as u8).collect())
}

/// Largest batch the automatic choice picks.
pub const AUTO_BATCH_MAX: usize = 256;

/// Planned and measured memory of one operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// What the session held before the operation (model, sets, result).
    pub resident: u64,
    /// The operation's planned peak above that.
    pub planned: u64,
    /// The operation's measured peak above that (`None` without the counting allocator).
    pub measured: Option<u64>,
    pub budget: u64,
}

/// What one unlearning run did.
#[derive(Clone, Debug)]
pub struct UnlearnReport {
    pub method: String,
    pub config: Config,
    /// The settings as the receipt records them (the config, or what an
    /// adopted model's maker says it did).
    pub params: serde_json::Value,
    pub logs: Vec<EpochLog>,
    pub seconds: f64,
    pub memory: MemoryReport,
    pub started_unix: u64,
}

/// A finished, uncommitted unlearning result.
#[derive(Debug)]
struct Candidate {
    model: Model,
    report: UnlearnReport,
    /// FA/MIA of this result on the current sets, once computed.
    after: Option<Forgetting>,
}

/// FA and MIA on the forget set before and after an unlearning run, and
/// whether that counts as a deletion (see [`verdict`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Verification {
    pub before: Forgetting,
    pub after: Forgetting,
    pub verdict: Verdict,
}

/// Which model of a session to evaluate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// The model as opened or last committed.
    Current,
    /// The uncommitted unlearning result.
    Unlearned,
}

/// What a commit wrote.
#[derive(Clone, Debug)]
pub struct CommitReport {
    pub path: PathBuf,
    pub model_before_sha256: String,
    pub model_after_sha256: String,
    pub receipt: Option<Receipt>,
    pub memory: MemoryReport,
}

/// Where a commit goes and what the receipt says about the request.
#[derive(Clone, Debug, Default)]
pub struct CommitTarget<'a> {
    /// Model path to replace (default: the path the model was opened from).
    pub model_path: Option<&'a Path>,
    /// Receipt log to append to (none: no receipt).
    pub receipts: Option<&'a Path>,
    /// The caller's name for the request, recorded in the receipt.
    pub request: Option<&'a str>,
    /// Commit even if the deletion check fails (the receipt says so).
    pub force: bool,
}

/// Lets another thread cancel a session's unlearning.
#[derive(Clone, Debug)]
pub struct Canceller(Arc<AtomicBool>);

impl Canceller {
    /// Asks the unlearning in progress to stop at its next batch. It then
    /// returns a cancelled error and changes nothing. Without a run in progress
    /// this has no effect (each run clears the request when it starts).
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A progress report of an unlearning run (see `unlearn::Progress`).
pub use unlearn::Progress;

/// One unit of work on one model, within a memory budget.
#[derive(Debug)]
pub struct Session {
    current: Arc<OpenModel>,
    budget: u64,
    forget: Option<SampleSet>,
    retain: Option<SampleSet>,
    test: Option<SampleSet>,
    candidate: Option<Candidate>,
    /// FA/MIA of the current model on the current sets.
    baseline: Option<Forgetting>,
    cancel: Arc<AtomicBool>,
    /// Where unlearning trains (the CPU unless [`Session::set_device`]).
    device: crate::device::Device,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn budget_error(what: &str, need: u64, budget: u64) -> Error {
    Error::new(
        ErrorKind::BudgetExceeded,
        format!(
            "{what} needs {} bytes ({:.1} MiB) by plan, more than the session's budget of {} bytes \
             ({:.1} MiB)",
            need,
            need as f64 / 1048576.0,
            budget,
            budget as f64 / 1048576.0
        ),
    )
}

impl Session {
    /// A session on `model` that plans all its work within `budget` bytes
    /// (`u64::MAX`: unlimited). The model itself must fit.
    pub fn new(model: Arc<OpenModel>, budget: u64) -> Result<Session> {
        alloc::keep_freed_memory();
        if budget == 0 {
            return Err(Error::invalid("a session needs a budget above 0 bytes"));
        }
        let s = Session {
            current: model,
            budget,
            forget: None,
            retain: None,
            test: None,
            candidate: None,
            baseline: None,
            cancel: Arc::new(AtomicBool::new(false)),
            device: crate::device::Device::Cpu,
        };
        if s.resident() > budget {
            return Err(budget_error("holding the model", s.resident(), budget));
        }
        Ok(s)
    }

    pub fn model(&self) -> &Arc<OpenModel> {
        &self.current
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    pub fn canceller(&self) -> Canceller {
        Canceller(self.cancel.clone())
    }

    /// Bytes the session holds between operations.
    pub fn resident(&self) -> u64 {
        let sets: u64 = [&self.forget, &self.retain, &self.test]
            .iter()
            .filter_map(|s| s.as_ref().map(SampleSet::bytes))
            .sum();
        let cand = self
            .candidate
            .as_ref()
            .map_or(0, |c| plan::model_bytes(&c.model));
        plan::model_bytes(self.current.model()) + sets + cand
    }

    fn shape(&self) -> SetShape {
        self.current.set_shape()
    }

    /// Stores a set if it fits the budget beside everything else held. A new
    /// forget or retain set discards an uncommitted result: it was computed
    /// from the old sets, and its receipt would name the wrong samples.
    fn store(&mut self, slot: Slot, set: SampleSet) -> Result<()> {
        let old = self.slot(slot).as_ref().map_or(0, SampleSet::bytes);
        let need = self.resident() - old + set.bytes();
        if need > self.budget {
            return Err(budget_error("holding the sets", need, self.budget));
        }
        *self.slot_mut(slot) = Some(set);
        self.baseline = None;
        if matches!(slot, Slot::Forget | Slot::Retain) {
            self.candidate = None;
        } else if let Some(c) = &mut self.candidate {
            c.after = None;
        }
        Ok(())
    }

    fn slot(&self, s: Slot) -> &Option<SampleSet> {
        match s {
            Slot::Forget => &self.forget,
            Slot::Retain => &self.retain,
            Slot::Test => &self.test,
        }
    }

    fn slot_mut(&mut self, s: Slot) -> &mut Option<SampleSet> {
        match s {
            Slot::Forget => &mut self.forget,
            Slot::Retain => &mut self.retain,
            Slot::Test => &mut self.test,
        }
    }

    /// The samples to forget, from caller buffers (copied).
    pub fn set_forget(&mut self, images: &[u8], labels: &[u32]) -> Result<()> {
        let s = SampleSet::from_buffers("forget set", images, labels, self.shape())?;
        self.store(Slot::Forget, s)
    }

    /// The data to keep, from caller buffers (copied).
    pub fn set_retain(&mut self, images: &[u8], labels: &[u32]) -> Result<()> {
        let s = SampleSet::from_buffers("retain set", images, labels, self.shape())?;
        self.store(Slot::Retain, s)
    }

    /// Held-out data (test set): TA, and the non-members of the MIA.
    pub fn set_test(&mut self, images: &[u8], labels: &[u32]) -> Result<()> {
        let s = SampleSet::from_buffers("test set", images, labels, self.shape())?;
        self.store(Slot::Test, s)
    }

    /// The forget set as indices into a training set read from a file.
    pub fn set_forget_indices(&mut self, ds: &crate::data::Dataset, idx: &[usize]) -> Result<()> {
        let s = SampleSet::from_dataset("forget set", ds, Some(idx), self.shape())?;
        self.store(Slot::Forget, s)
    }

    /// The retain set as indices into a data set (`None`: all of it).
    pub fn set_retain_indices(
        &mut self,
        ds: &crate::data::Dataset,
        idx: Option<&[usize]>,
    ) -> Result<()> {
        let s = SampleSet::from_dataset("retain set", ds, idx, self.shape())?;
        self.store(Slot::Retain, s)
    }

    /// The retain set as every sample of `ds` not in the forget set (which must
    /// have been chosen by index into the same data set).
    pub fn set_retain_rest(&mut self, ds: &crate::data::Dataset) -> Result<()> {
        let forget = self
            .forget
            .as_ref()
            .and_then(|f| f.indices())
            .ok_or_else(|| {
                Error::invalid("set the forget set by indices into this data set first")
            })?;
        sets::check_indices("forget set", forget, ds.len())?;
        let rest = sets::complement(ds.len(), forget);
        if rest.is_empty() {
            return Err(Error::invalid(
                "the forget set is the whole training set: nothing is left to retain \
                 (train a new model instead)",
            ));
        }
        let s = SampleSet::from_dataset("retain set", ds, Some(&rest), self.shape())?;
        self.store(Slot::Retain, s)
    }

    /// The test set as indices into a data set (`None`: all of it).
    pub fn set_test_indices(
        &mut self,
        ds: &crate::data::Dataset,
        idx: Option<&[usize]>,
    ) -> Result<()> {
        let s = SampleSet::from_dataset("test set", ds, idx, self.shape())?;
        self.store(Slot::Test, s)
    }

    pub fn forget_set(&self) -> Option<&SampleSet> {
        self.forget.as_ref()
    }

    fn model_of(&self, which: Which) -> Result<&Model> {
        match which {
            Which::Current => Ok(self.current.model()),
            Which::Unlearned => self
                .candidate
                .as_ref()
                .map(|c| &c.model)
                .ok_or_else(|| Error::invalid("nothing unlearned yet in this session")),
        }
    }

    /// Predicts a batch of `n` u8 images (NHWC). Planned against the budget.
    pub fn predict(&self, images: &[u8], n: usize) -> Result<(Prediction, MemoryReport)> {
        let m = self.current.model();
        let need = plan::forward(m).at(n) + 8 * (m.classes() * n) as u64;
        let mem = self.admit("predicting", need)?;
        let probe = alloc::Probe::start();
        let logits = m.forward(images, n)?;
        let classes = samples::argmax_rows(&logits, m.classes())
            .into_iter()
            .map(|c| c as u32)
            .collect();
        let mem = MemoryReport {
            measured: probe.peak(),
            ..mem
        };
        Ok((Prediction { logits, classes }, mem))
    }

    /// Checks that `need` more bytes fit beside what is held.
    fn admit(&self, what: &str, need: u64) -> Result<MemoryReport> {
        let resident = self.resident();
        if resident.saturating_add(need) > self.budget {
            return Err(budget_error(
                what,
                resident.saturating_add(need),
                self.budget,
            ));
        }
        Ok(MemoryReport {
            resident,
            planned: need,
            measured: None,
            budget: self.budget,
        })
    }

    fn sets(&self) -> Result<(Samples<'_>, Option<Samples<'_>>, Option<Samples<'_>>)> {
        let f = self
            .forget
            .as_ref()
            .ok_or_else(|| Error::invalid("no forget set: set one first"))?;
        Ok((
            f.samples(),
            self.retain.as_ref().map(SampleSet::samples),
            self.test.as_ref().map(SampleSet::samples),
        ))
    }

    /// FA, RA, TA and MIA of a model of this session on its three sets (FA and
    /// MIA are kept for the receipt, so a commit need not compute them again).
    pub fn evaluate(&mut self, which: Which) -> Result<(Scores, MemoryReport)> {
        let (f, r, t) = self.sets()?;
        let (r, t) = match (r, t) {
            (Some(r), Some(t)) => (r, t),
            _ => return Err(Error::invalid("evaluation needs retain and test sets")),
        };
        let m = self.model_of(which)?;
        let need = plan::evaluate(m, f.len(), r.len(), t.len(), EVAL_BATCH);
        let mem = self.admit("evaluating", need)?;
        let probe = alloc::Probe::start();
        let s = metrics::scores(m, f, r, t, EVAL_BATCH)?;
        let measured = probe.peak();
        let seen = Forgetting::from(&s);
        match which {
            Which::Current => self.baseline = Some(seen),
            Which::Unlearned => {
                if let Some(c) = &mut self.candidate {
                    c.after = Some(seen);
                }
            }
        }
        Ok((s, MemoryReport { measured, ..mem }))
    }

    /// FA and (with retain and test sets) MIA of `m` on the forget set.
    fn forgetting(&self, m: &Model) -> Result<Forgetting> {
        let (f, r, t) = self.sets()?;
        let need = plan::evaluate(
            m,
            f.len(),
            r.map_or(0, |r| r.len()),
            t.map_or(0, |t| t.len()),
            EVAL_BATCH,
        );
        self.admit("verifying", need)?;
        metrics::forgetting(m, f, r, t, EVAL_BATCH)
    }

    /// FA and MIA on the forget set before and after the uncommitted result.
    pub fn verify(&mut self) -> Result<Verification> {
        let before = match self.baseline {
            Some(b) => b,
            None => {
                let b = self.forgetting(self.current.model())?;
                self.baseline = Some(b);
                b
            }
        };
        let after = match self.candidate.as_ref().and_then(|c| c.after) {
            Some(a) => a,
            None => {
                let a = self.forgetting(self.model_of(Which::Unlearned)?)?;
                if let Some(c) = &mut self.candidate {
                    c.after = Some(a);
                }
                a
            }
        };
        let verdict = self.judge(&before, &after)?;
        Ok(Verification {
            before,
            after,
            verdict,
        })
    }

    /// The deletion check of this session's sets on figures already measured
    /// on them (what [`Session::verify`] measures; a caller that evaluated the
    /// same sets, as an experiment does, need not evaluate them again).
    pub fn judge(&self, before: &Forgetting, after: &Forgetting) -> Result<Verdict> {
        let n = self.forget.as_ref().map_or(0, SampleSet::len);
        Ok(verdict::judge(self.scenario()?, before, after, n))
    }

    /// Which deletion check applies to the session's sets.
    fn scenario(&self) -> Result<verdict::Scenario> {
        let f = self
            .forget
            .as_ref()
            .ok_or_else(|| Error::invalid("no forget set"))?;
        let retain = self.retain.as_ref().map(|r| r.samples().labels);
        Ok(verdict::Scenario::of(
            f.samples().labels,
            retain,
            self.current.model().classes(),
        ))
    }

    /// The batch a run uses: the one asked for, or (0) the largest up to
    /// [`AUTO_BATCH_MAX`] whose plan fits beside what the session holds.
    fn plan_unlearn(&self, p: &Config, shape: UnlearnShape) -> Result<(usize, MemoryReport)> {
        let m = self.current.model();
        let cost = plan::unlearn(m, shape);
        let resident = self.resident();
        let room = self.budget.saturating_sub(resident);
        let batch = if p.batch > 0 {
            p.batch
        } else {
            let fit = room
                .saturating_sub(cost.fixed)
                .checked_div(cost.per_image)
                .unwrap_or(AUTO_BATCH_MAX as u64);
            let most = shape.forget.max(shape.retain).max(1);
            (fit as usize).min(AUTO_BATCH_MAX).min(most)
        };
        if batch == 0 || resident.saturating_add(cost.at(batch)) > self.budget {
            let what = if p.batch == 0 {
                "unlearning at batch 1".to_string()
            } else {
                format!("unlearning at batch {batch}")
            };
            return Err(budget_error(
                &what,
                resident.saturating_add(cost.at(batch.max(1))),
                self.budget,
            ));
        }
        Ok((
            batch,
            MemoryReport {
                resident,
                planned: cost.at(batch),
                measured: None,
                budget: self.budget,
            },
        ))
    }

    /// Runs an unlearning method on the current model. `p.batch` 0 asks for
    /// the largest batch (up to [`AUTO_BATCH_MAX`]) the budget allows.
    /// `progress` is called after every batch of every pass and cancels by
    /// returning `false`; so does [`Canceller::cancel`]. An uncommitted earlier
    /// result is discarded first. On error nothing else changes.
    pub fn unlearn(
        &mut self,
        p: &Config,
        progress: &mut dyn FnMut(&Progress) -> bool,
    ) -> Result<&UnlearnReport> {
        self.cancel.store(false, Ordering::SeqCst);
        let (forget, retain) = (self.forget.as_ref(), self.retain.as_ref());
        let (needs_forget, needs_retain) = p.method.uses_sets();
        let empty = Samples {
            images: &[],
            labels: &[],
        };
        let f = match forget {
            Some(f) => f.samples(),
            None if needs_forget => return Err(Error::invalid("no forget set: set one first")),
            None => empty,
        };
        let r = match retain {
            Some(r) => r.samples(),
            None if needs_retain => return Err(Error::invalid("no retain set: set one first")),
            None => empty,
        };
        Config {
            batch: p.batch.max(1),
            ..p.clone()
        }
        .check()?;
        self.candidate = None;
        let shape = UnlearnShape {
            forget: f.len(),
            retain: r.len(),
            saliency: p.method.uses_saliency(),
            similar_labels: p.method.uses_similar_labels(),
        };
        let (batch, mem) = self.plan_unlearn(p, shape)?;
        let cfg = Config { batch, ..p.clone() };
        let cancel = self.cancel.clone();
        let started_unix = now_unix();
        let t0 = Instant::now();
        let probe = alloc::Probe::start();
        let out = unlearn::unlearn_on(&self.device, self.current.model(), f, r, &cfg, &mut |pr| {
            !cancel.load(Ordering::SeqCst) && progress(&pr)
        })?;
        let report = UnlearnReport {
            method: cfg.method.name(),
            params: serde_json::to_value(&cfg).unwrap_or_default(),
            config: cfg,
            logs: out.logs,
            seconds: t0.elapsed().as_secs_f64(),
            memory: MemoryReport {
                measured: probe.peak(),
                ..mem
            },
            started_unix,
        };
        let c = self.candidate.insert(Candidate {
            model: out.model,
            report,
            after: None,
        });
        Ok(&c.report)
    }

    /// Chooses where this session's unlearning trains. Evaluation,
    /// verification and the memory plan stay on the CPU (the budget is the
    /// host's memory).
    pub fn set_device(&mut self, device: crate::device::Device) {
        self.device = device;
    }

    /// Where this session's unlearning trains.
    pub fn device(&self) -> &crate::device::Device {
        &self.device
    }

    /// Adopts a model made elsewhere (the `qmul` command's Retrain baseline)
    /// as this session's unlearning result, to be verified and committed like
    /// any other. Its graph must be the current model's.
    pub fn adopt(&mut self, model: Model, report: UnlearnReport) -> Result<()> {
        if model.graph != self.current.model().graph {
            return Err(Error::invalid("the adopted model has another graph"));
        }
        self.candidate = Some(Candidate {
            model,
            report,
            after: None,
        });
        Ok(())
    }

    /// The uncommitted result's report, if there is one.
    pub fn unlearned(&self) -> Option<(&Model, &UnlearnReport)> {
        self.candidate.as_ref().map(|c| (&c.model, &c.report))
    }

    /// Writes the unlearned model to the model path crash-safely and, with a
    /// receipt log, appends its deletion receipt. The receipt log must verify
    /// and differ from the model path; both are checked before anything is
    /// written. Afterwards the session works on the committed model.
    pub fn commit(&mut self, target: &CommitTarget) -> Result<CommitReport> {
        let path = target
            .model_path
            .or(self.current.path())
            .ok_or_else(|| {
                Error::invalid("the model was opened from a buffer: give a path to commit to")
            })?
            .to_path_buf();
        if self.candidate.is_none() {
            return Err(Error::invalid("nothing to commit: unlearn first"));
        }
        if let Some(r) = target.receipts {
            let mut paths = vec![path.as_path()];
            paths.extend(self.current.path());
            check_receipt_path(r, &paths)?;
            receipt::preflight(r)?;
        }
        // The deletion is checked before anything is written: a failed check
        // commits only when the caller forces it, and the receipt says so.
        let mut verification = self.verify()?;
        if !verification.verdict.passed {
            if !target.force {
                return Err(Error::new(
                    ErrorKind::NotForgotten,
                    format!(
                        "the deletion check failed ({}: {}); nothing was written. Unlearn \
                         longer or with a larger rate, or force the commit",
                        verification.verdict.scenario, verification.verdict.detail
                    ),
                ));
            }
            verification.verdict.forced = true;
        }
        let cand = self
            .candidate
            .as_ref()
            .ok_or_else(|| Error::invalid("nothing to commit: unlearn first"))?;
        let need = plan::commit(&cand.model);
        let mem = self.admit("committing", need)?;
        let probe = alloc::Probe::start();
        let bytes = model_file::to_bytes(&cand.model)?;
        let loaded = model_file::from_bytes_checked(&bytes).map_err(|e| {
            Error::internal(format!("the serialized model does not load back: {e}"))
        })?;
        let before_sha = self.current.file_sha256();
        let after_sha = crate::model_file::write::hex(&loaded.file_sha256);
        let rec = target.receipts.map(|_| {
            self.receipt_for(
                &path,
                target.request,
                verification.clone(),
                &before_sha,
                &after_sha,
            )
        });
        crate::durable::replace(&path, &bytes).map_err(Error::from)?;
        drop(bytes);
        self.current = Arc::new(OpenModel {
            model: loaded.model,
            path: Some(path.clone()),
            file_sha256: loaded.file_sha256,
            integrity: loaded.integrity,
            file_bytes: loaded.file_bytes,
            sub_bin: loaded.sub_bin,
        });
        self.candidate = None;
        self.baseline = None;
        let measured = probe.peak();
        // The model is committed either way; a receipt that cannot be written
        // is reported as such.
        let receipt = match (target.receipts, rec) {
            (Some(log), Some(rec)) => Some(receipt::append(log, rec).map_err(|e| {
                e.context(format!(
                    "{} was committed but its receipt was not written",
                    path.display()
                ))
            })?),
            _ => None,
        };
        Ok(CommitReport {
            path,
            model_before_sha256: before_sha,
            model_after_sha256: after_sha,
            receipt,
            memory: MemoryReport { measured, ..mem },
        })
    }

    /// The receipt of committing the current result to `path`.
    fn receipt_for(
        &self,
        path: &Path,
        request: Option<&str>,
        v: Verification,
        before_sha: &str,
        after_sha: &str,
    ) -> Receipt {
        let forget = self.forget.as_ref();
        let report = self.candidate.as_ref().map(|c| &c.report);
        Receipt {
            kind: String::new(),
            version: 0,
            seq: 0,
            prev: String::new(),
            forget_count: forget.map_or(0, SampleSet::len),
            forget_sha256: forget.map(SampleSet::content_sha256).unwrap_or_default(),
            forget_ids_sha256: forget.and_then(|f| f.indices()).map(receipt::ids_sha256),
            forget_source: forget.map(|f| f.source().to_string()).unwrap_or_default(),
            request: request.map(str::to_string),
            method: report.map(|r| r.method.clone()).unwrap_or_default(),
            params: report.map(|r| r.params.clone()).unwrap_or_default(),
            before: v.before,
            after: v.after,
            verdict: Some(v.verdict),
            model_path: path.display().to_string(),
            model_before_sha256: before_sha.to_string(),
            model_after_sha256: after_sha.to_string(),
            started_unix: report.map_or(0, |r| r.started_unix),
            finished_unix: now_unix(),
            unlearn_seconds: report.map_or(0.0, |r| r.seconds),
            codes_changed: report
                .map(|r| r.logs.iter().filter_map(|l| l.codes_changed).collect())
                .unwrap_or_default(),
            library: String::new(),
            checksum: String::new(),
        }
    }
}

#[derive(Clone, Copy)]
enum Slot {
    Forget,
    Retain,
    Test,
}

/// A receipt log must be a file of its own, not one of the model paths.
pub fn check_receipt_path(receipts: &Path, models: &[&Path]) -> Result<()> {
    match models.iter().find(|m| same_file(receipts, m)) {
        Some(m) => Err(Error::invalid(format!(
            "the receipt log {} is the model file {}: receipts go in a file of their own",
            receipts.display(),
            m.display()
        ))),
        None => Ok(()),
    }
}

/// Whether two paths name the same file (also when one does not exist yet).
fn same_file(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| -> Option<PathBuf> {
        if let Ok(c) = p.canonicalize() {
            return Some(c);
        }
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.canonicalize().ok()?,
            _ => std::env::current_dir().ok()?,
        };
        Some(parent.join(p.file_name()?))
    };
    match (canon(a), canon(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

impl Phase {
    /// A short name for progress displays.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Saliency => "saliency",
            Phase::SimilarLabels => "similar labels",
            Phase::GradientNorms => "gradient norms",
            Phase::Train => "train",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Graph, Op, Precision};
    use crate::{InitOptions, Model};

    fn tiny() -> Arc<OpenModel> {
        let g = Graph {
            nodes: vec![
                Op::Input { h: 4, w: 4, c: 1 },
                Op::Conv {
                    name: "c".into(),
                    input: 0,
                    cout: 4,
                    k: 3,
                    stride: 1,
                    pad: 1,
                    prec: Precision::Int8,
                },
                Op::BatchNorm {
                    name: "bn".into(),
                    input: 1,
                },
                Op::Act {
                    name: "a".into(),
                    input: 2,
                },
                Op::GlobalAvgPool { input: 3 },
                Op::Linear {
                    name: "fc".into(),
                    input: 4,
                    out: 3,
                    prec: Precision::Int8,
                },
            ],
            scheme: QuantScheme::Pact,
            classes: 3,
        };
        OpenModel::from_model(Model::new(g, InitOptions::default()).unwrap()).unwrap()
    }

    #[test]
    fn a_result_never_outlives_the_sets_it_was_made_from() {
        let mut s = Session::new(tiny(), u64::MAX).unwrap();
        let (img, lab) = (vec![50u8; 6 * 16], vec![0u32, 1, 2, 0, 1, 2]);
        s.set_forget(&img[..32], &lab[..2]).unwrap();
        s.set_retain(&img, &lab).unwrap();
        let mut p = Config::new(unlearn::Method::Ft);
        p.epochs = 1;
        p.batch = 2;
        s.unlearn(&p, &mut |_| true).unwrap();
        assert!(s.unlearned().is_some());
        s.set_test(&img, &lab).unwrap();
        assert!(s.unlearned().is_some(), "a new test set keeps the result");
        s.set_forget(&img[..16], &lab[..1]).unwrap();
        assert!(s.unlearned().is_none(), "a new forget set discards it");
        let e = s.commit(&CommitTarget::default()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        // A cancelled run leaves the session without a result, and says so.
        let canceller = s.canceller();
        let e = s
            .unlearn(&p, &mut |_| {
                canceller.cancel();
                true
            })
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Cancelled);
        assert!(s.unlearned().is_none());
    }
}
