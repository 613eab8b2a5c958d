//! The training loop behind `qmul train`: SGD with momentum, weight decay and a
//! per-step cosine schedule, augmentation, per-epoch evaluation, progress, and a
//! checkpoint (the model, plus its f32 latent weights and momentum) after every
//! epoch so an interrupted run resumes where it stopped, on the same trajectory.

use crate::data::{Augment, Batches, Dataset};
use crate::eval;
use crate::progress::Progress;
use qmul_runtime::model_file;
use qmul_runtime::optim::{cosine_lr, Sgd};
use qmul_runtime::{Model, Targets};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Hyper-parameters of one training run.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub seed: u64,
    pub augment: Option<Augment>,
}

impl TrainConfig {
    /// Rejects settings no training run can use (before anything is trained or written).
    pub fn check(&self) -> Result<(), String> {
        if self.epochs == 0 {
            return Err("--epochs must be at least 1 (0 would save an untrained model)".into());
        }
        if self.batch == 0 {
            return Err("batch size must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(format!("learning rate {} must be finite and >= 0", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(format!(
                "weight decay {} must be finite and >= 0",
                self.weight_decay
            ));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(format!("momentum {} must be in [0, 1)", self.momentum));
        }
        Ok(())
    }
}

/// What one epoch did.
#[derive(Clone, Debug)]
pub struct EpochReport {
    pub epoch: usize,
    pub loss: f64,
    pub train_acc: f64,
    pub test_acc: Option<f64>,
    pub seconds: f64,
    pub images_per_s: f64,
}

/// Where per-epoch checkpoints go: `<out>.ckpt` (model file, with the epochs done
/// in its info) next to the final output.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".ckpt");
    PathBuf::from(s)
}

/// Where the training state is saved beside a checkpoint: `<ckpt>.state`.
///
/// The checkpoint itself is a deployable `.qmul` file, which holds 4-bit codes,
/// not the f32 latent weights that straight-through training updates; resuming
/// from it alone would restart from the rounded weights with zero momentum.
/// The state file keeps both, so a resumed run continues the same trajectory.
pub fn state_path(checkpoint: &Path) -> PathBuf {
    let mut s = checkpoint.as_os_str().to_owned();
    s.push(".state");
    PathBuf::from(s)
}

/// Removes a finished run's checkpoint and its state file.
pub fn remove_checkpoint(checkpoint: &Path) {
    let _ = std::fs::remove_file(checkpoint);
    let _ = std::fs::remove_file(state_path(checkpoint));
}

const STATE_MAGIC: &[u8; 8] = b"QMULTRN1";

/// The state file: magic, epochs done, tensor count, then per parameter tensor
/// its length, its f32 values and its momentum (little-endian), and a SHA-256
/// of all of it, so a torn or stale file is recognised rather than trusted.
fn state_bytes<'a>(
    epochs_done: usize,
    params: impl ExactSizeIterator<Item = &'a [f32]>,
    velocity: &[Vec<f32>],
) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(STATE_MAGIC);
    b.extend_from_slice(&(epochs_done as u64).to_le_bytes());
    b.extend_from_slice(&(params.len() as u64).to_le_bytes());
    for (p, v) in params.zip(velocity) {
        b.extend_from_slice(&(p.len() as u64).to_le_bytes());
        for x in p.iter().chain(v) {
            b.extend_from_slice(&x.to_le_bytes());
        }
    }
    let h = Sha256::digest(&b);
    b.extend_from_slice(&h);
    b
}

/// What a state file holds: epochs done, parameters, momentum.
type TrainState = (usize, Vec<Vec<f32>>, Vec<Vec<f32>>);

/// Reads a state file.
fn parse_state(b: &[u8]) -> Result<TrainState, String> {
    if b.len() < 24 + 32 || &b[..8] != STATE_MAGIC {
        return Err("not a training-state file".into());
    }
    let (body, sum) = b.split_at(b.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return Err("checksum mismatch (torn or altered file)".into());
    }
    let mut at = 8;
    let u64_at = |at: &mut usize| -> Result<usize, String> {
        let s = body.get(*at..*at + 8).ok_or("truncated")?;
        *at += 8;
        usize::try_from(u64::from_le_bytes(s.try_into().map_err(|_| "truncated")?))
            .map_err(|_| "length out of range".to_string())
    };
    let floats = |at: &mut usize, len: usize| -> Result<Vec<f32>, String> {
        let bytes = len
            .checked_mul(4)
            .and_then(|l| body.get(*at..at.checked_add(l)?))
            .ok_or("truncated")?;
        *at += bytes.len();
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    let epochs = u64_at(&mut at)?;
    let n = u64_at(&mut at)?;
    let (mut params, mut velocity) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let len = u64_at(&mut at)?;
        params.push(floats(&mut at, len)?);
        velocity.push(floats(&mut at, len)?);
    }
    if at != body.len() {
        return Err("trailing bytes".into());
    }
    Ok((epochs, params, velocity))
}

/// Where a finished model's exact f32 latent weights are kept beside its file
/// (`<model>.latent`), for experiments that start unlearning from the training
/// run's own state rather than from the file's codes and residuals.
pub fn latent_path(model: &Path) -> PathBuf {
    let mut s = model.as_os_str().to_owned();
    s.push(".latent");
    PathBuf::from(s)
}

/// Saves `model`'s parameters (f32 latent weights included) in the state-file
/// format, with zero momentum.
pub fn save_latent(model: &Model, path: &Path) -> Result<(), String> {
    let zeros: Vec<Vec<f32>> = model
        .params
        .iter()
        .map(|t| vec![0.0; t.data.len()])
        .collect();
    let params = model.params.iter().map(|t| t.data.as_slice());
    model_file::write_atomic(path, &state_bytes(0, params, &zeros))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Replaces `model`'s parameters by those of a latent file, which must hold
/// the same tensors and requantize to the same codes (it belongs to this
/// model file, not to another training run).
pub fn load_latent(model: &mut Model, path: &Path) -> Result<(), String> {
    let b = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (_, params, _) = parse_state(&b).map_err(|e| format!("{}: {e}", path.display()))?;
    if params.len() != model.params.len()
        || params
            .iter()
            .zip(&model.params)
            .any(|(p, t)| p.len() != t.data.len())
        || params.iter().flatten().any(|x| !x.is_finite())
    {
        return Err(format!(
            "{}: its tensors do not match the model",
            path.display()
        ));
    }
    let codes = model.weight_codes();
    let mut exact = model.clone();
    for (t, p) in exact.params.iter_mut().zip(params) {
        t.data = p;
    }
    if exact.weight_codes() != codes {
        return Err(format!(
            "{}: its weights do not quantize to the model's codes (a latent file of another run)",
            path.display()
        ));
    }
    *model = exact;
    Ok(())
}

/// Restores the latent weights and momentum saved with the checkpoint of
/// `epochs_done` epochs, or says why the run continues from the checkpoint's
/// rounded weights with zero momentum (missing, stale, damaged, other model).
fn restore_state(model: &mut Model, sgd: &mut Sgd, checkpoint: &Path, epochs_done: usize) {
    let path = state_path(checkpoint);
    let restore = |model: &mut Model, sgd: &mut Sgd| -> Result<(), String> {
        let b = std::fs::read(&path).map_err(|e| e.to_string())?;
        let (e, params, velocity) = parse_state(&b)?;
        if e != epochs_done {
            return Err(format!(
                "it was saved after epoch {e}, the checkpoint after {epochs_done}"
            ));
        }
        if params.len() != model.params.len()
            || params
                .iter()
                .zip(&model.params)
                .any(|(p, t)| p.len() != t.data.len())
        {
            return Err("its tensors do not match the model".into());
        }
        if params.iter().flatten().any(|x| !x.is_finite()) {
            return Err("it holds a non-finite weight".into());
        }
        sgd.set_velocity(velocity)?;
        for (t, p) in model.params.iter_mut().zip(params) {
            t.data = p;
        }
        Ok(())
    };
    if let Err(why) = restore(model, sgd) {
        eprintln!(
            "warning: resuming from the checkpoint's 4-bit weights with zero momentum ({}: {why})",
            path.display()
        );
    }
}

/// The model-file info key holding the wall time spent training, in seconds,
/// summed over every run that contributed (kept in checkpoints too).
pub const TRAIN_SECONDS: &str = "train_seconds";

/// The training time a model (or checkpoint) records, if it records one.
pub fn train_seconds(model: &Model) -> Option<f64> {
    model.info.get(TRAIN_SECONDS)?.parse().ok()
}

/// What takes the training steps: SGD on the CPU model, or the model and
/// SGD's momentum resident on a GPU (brought back to `model` once an epoch,
/// for the evaluation and the checkpoint).
enum Trainer<'g> {
    Cpu(Sgd),
    #[cfg(feature = "gpu")]
    Gpu(
        Box<(
            qmul_runtime::gpu::DeviceModel<'g>,
            qmul_runtime::gpu::DeviceSgd,
        )>,
    ),
    /// Holds the GPU variant's lifetime in a build without it; it cannot be
    /// constructed (`Infallible`).
    #[allow(dead_code)]
    Never(std::convert::Infallible, std::marker::PhantomData<&'g ()>),
}

impl Trainer<'_> {
    /// One training pass at rate `lr` and, when its loss is finite, the SGD
    /// step: the loss and the logits.
    fn step(
        &mut self,
        model: &mut Model,
        images: &[u8],
        n: usize,
        t: Targets,
        lr: f32,
    ) -> Result<(f32, Vec<f32>), String> {
        match self {
            Trainer::Cpu(sgd) => {
                sgd.lr = lr;
                let pass = model
                    .train_pass(images, n, t, true)
                    .map_err(|e| e.to_string())?;
                if pass.loss.is_finite() {
                    sgd.step(model, &pass.grads, None);
                }
                Ok((pass.loss, pass.logits))
            }
            #[cfg(feature = "gpu")]
            Trainer::Gpu(b) => {
                let (dm, sgd) = &mut **b;
                sgd.lr = lr;
                let pass = dm
                    .train_pass(images, n, t, true)
                    .map_err(|e| e.to_string())?;
                if pass.loss.is_finite() {
                    sgd.step(dm, &pass.grads, None).map_err(|e| e.to_string())?;
                }
                let logits = dm
                    .gpu()
                    .download_f32(&pass.logits, n * model.classes())
                    .map_err(|e| e.to_string())?;
                Ok((pass.loss, logits))
            }
            Trainer::Never(never, _) => match *never {},
        }
    }

    /// `model` holding the trained state; the momentum buffers.
    #[cfg_attr(not(feature = "gpu"), allow(unused_variables))]
    fn sync(&self, model: &mut Model) -> Result<Vec<Vec<f32>>, String> {
        match self {
            Trainer::Cpu(sgd) => Ok(sgd.velocity().to_vec()),
            #[cfg(feature = "gpu")]
            Trainer::Gpu(b) => {
                let (dm, sgd) = &**b;
                let m = dm.to_model().map_err(|e| e.to_string())?;
                model.params = m.params;
                model.buffers = m.buffers;
                sgd.velocity(dm).map_err(|e| e.to_string())
            }
            Trainer::Never(never, _) => match *never {},
        }
    }
}

/// Trains `model` on `train` for the epochs not yet done (`start_epoch..`),
/// evaluating on `test` after each epoch and saving a checkpoint after each.
pub fn train(
    model: &mut Model,
    train: &Dataset,
    test: Option<&Dataset>,
    cfg: &TrainConfig,
    start_epoch: usize,
    checkpoint: Option<&Path>,
    on_epoch: impl FnMut(&EpochReport),
) -> Result<Vec<EpochReport>, String> {
    train_on(
        &crate::device::Device::Cpu,
        model,
        train,
        test,
        cfg,
        start_epoch,
        checkpoint,
        on_epoch,
    )
}

/// [`train`] on `device` (a GPU keeps the model and SGD's momentum for the
/// whole run; LSQ/DSQ ranges still unset are initialised by a first pass on
/// the CPU).
#[allow(clippy::too_many_arguments)]
pub fn train_on(
    device: &crate::device::Device,
    model: &mut Model,
    train: &Dataset,
    test: Option<&Dataset>,
    cfg: &TrainConfig,
    start_epoch: usize,
    checkpoint: Option<&Path>,
    mut on_epoch: impl FnMut(&EpochReport),
) -> Result<Vec<EpochReport>, String> {
    if train.is_empty() {
        return Err("the training set is empty".into());
    }
    cfg.check()?;
    let mut sgd = Sgd::new(model, cfg.lr, cfg.momentum, cfg.weight_decay);
    if let (Some(ck), true) = (checkpoint, start_epoch > 0) {
        restore_state(model, &mut sgd, ck, start_epoch);
    }
    let mut trainer = match device {
        crate::device::Device::Cpu => Trainer::Cpu(sgd),
        #[cfg(feature = "gpu")]
        crate::device::Device::Gpu(g) => {
            let first = Batches::new(train, cfg.batch, false, None, cfg.seed, 0)
                .next()
                .ok_or("the training set is empty")?;
            let labels: Vec<u32> = first.labels.iter().map(|&l| l as u32).collect();
            let weights = vec![1.0f32; labels.len()];
            let t = Targets {
                labels: &labels,
                weights: &weights,
            };
            // Sets LSQ/DSQ ranges still at 0 (nothing else changes).
            model
                .train_pass(&first.images, first.len(), t, false)
                .map_err(|e| e.to_string())?;
            let dm = qmul_runtime::gpu::DeviceModel::upload(g.as_ref(), model)
                .map_err(|e| e.to_string())?;
            let mut dsgd =
                qmul_runtime::gpu::DeviceSgd::new(&dm, cfg.lr, cfg.momentum, cfg.weight_decay)
                    .map_err(|e| e.to_string())?;
            dsgd.set_velocity(&dm, sgd.velocity())
                .map_err(|e| e.to_string())?;
            Trainer::Gpu(Box::new((dm, dsgd)))
        }
    };
    let steps_per_epoch = train.len().div_ceil(cfg.batch);
    let total = steps_per_epoch * cfg.epochs;
    let mut reports = Vec::new();
    // Wall time spent training this model so far, carried in each checkpoint so
    // that a run resumed across sessions still reports its whole cost (Retrain's
    // time is the yardstick unlearning is measured against).
    let before = if start_epoch > 0 {
        train_seconds(model)
    } else {
        Some(0.0)
    };
    let started = Instant::now();
    for epoch in start_epoch..cfg.epochs {
        let t0 = Instant::now();
        let batches = Batches::new(train, cfg.batch, true, cfg.augment, cfg.seed, epoch as u64);
        let mut bar = Progress::new(
            train.len() as u64,
            &format!("epoch {}/{}", epoch + 1, cfg.epochs),
        );
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        for (b, batch) in batches.enumerate() {
            let step = epoch * steps_per_epoch + b;
            let labels: Vec<u32> = batch.labels.iter().map(|&l| l as u32).collect();
            let weights = vec![1.0f32; labels.len()];
            let t = Targets {
                labels: &labels,
                weights: &weights,
            };
            let lr = cosine_lr(cfg.lr, step, total);
            let (loss, logits) = trainer.step(model, &batch.images, batch.len(), t, lr)?;
            if !loss.is_finite() {
                return Err(format!(
                    "training diverged at epoch {} step {b} (loss {loss})",
                    epoch + 1,
                ));
            }
            let pred = eval::argmax_rows(&logits, model.classes());
            correct += pred
                .iter()
                .zip(&labels)
                .filter(|(p, l)| **p == **l as usize)
                .count();
            seen += labels.len();
            loss_sum += loss as f64 * labels.len() as f64;
            bar.advance(
                labels.len() as u64,
                &format!(
                    "loss {:.4} acc {:.2}%",
                    loss_sum / seen as f64,
                    100.0 * correct as f64 / seen as f64
                ),
            );
        }
        bar.finish();
        let velocity = trainer.sync(model)?;
        let seconds = t0.elapsed().as_secs_f64();
        let test_acc = match test {
            Some(t) => Some(eval::accuracy(model, t, None).map_err(|e| e.to_string())?),
            None => None,
        };
        let r = EpochReport {
            epoch: epoch + 1,
            loss: loss_sum / seen as f64,
            train_acc: 100.0 * correct as f64 / seen as f64,
            test_acc,
            seconds,
            images_per_s: seen as f64 / seconds,
        };
        model
            .info
            .insert("epochs_done".into(), (epoch + 1).to_string());
        match before {
            Some(b) => model.info.insert(
                TRAIN_SECONDS.into(),
                format!("{:.1}", b + started.elapsed().as_secs_f64()),
            ),
            // A checkpoint written before times were kept: the total is unknown.
            None => model.info.remove(TRAIN_SECONDS),
        };
        if let Some(ck) = checkpoint {
            // Model first: a crash between the two leaves a stale state file,
            // which the epoch count recognises.
            model_file::save(model, ck).map_err(|e| e.to_string())?;
            let params = model.params.iter().map(|t| t.data.as_slice());
            model_file::write_atomic(&state_path(ck), &state_bytes(epoch + 1, params, &velocity))
                .map_err(|e| format!("{}: {e}", state_path(ck).display()))?;
        }
        on_epoch(&r);
        reports.push(r);
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmul_models::{resnet, ResNetConfig};
    use qmul_runtime::{InitOptions, Precision, QuantScheme};

    fn tiny() -> (Model, Dataset, TrainConfig) {
        let cfg = ResNetConfig {
            blocks: [1, 1, 1, 1],
            width: 4,
            in_h: 8,
            in_w: 8,
            in_c: 1,
            classes: 3,
            scheme: QuantScheme::Pact,
            edge_precision: Precision::Int8,
        };
        let model = Model::new(resnet(&cfg).unwrap(), InitOptions::default()).unwrap();
        let n = 24;
        let images = (0..n * 64).map(|i| (i * 37 % 251) as u8).collect();
        let labels = (0..n).map(|i| (i % 3) as u16).collect();
        let ds = Dataset::new("tiny", images, labels, n, 8, 8, 1, 3).unwrap();
        let tcfg = TrainConfig {
            epochs: 3,
            batch: 8,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            seed: 1,
            augment: None,
        };
        (model, ds, tcfg)
    }

    fn params(m: &Model) -> Vec<Vec<f32>> {
        m.params.iter().map(|t| t.data.clone()).collect()
    }

    #[test]
    fn state_file_round_trips_and_rejects_damage() {
        let p = vec![vec![1.0, -2.5], vec![], vec![3.25; 5]];
        let v = vec![vec![0.5, 0.25], vec![], vec![-1.0; 5]];
        let b = state_bytes(7, p.iter().map(Vec::as_slice), &v);
        assert_eq!(parse_state(&b).unwrap(), (7, p, v));
        for i in [0, 9, 30, b.len() - 1] {
            let mut bad = b.clone();
            bad[i] ^= 1;
            assert!(parse_state(&bad).is_err(), "flipped byte {i}");
        }
        assert!(parse_state(&b[..b.len() - 5]).is_err());
        assert!(parse_state(b"").is_err());
    }

    /// An interrupted run resumed from its epoch checkpoint ends with the same
    /// parameters, bit for bit, as one that was never interrupted; from the
    /// checkpoint's 4-bit weights alone it does not.
    #[test]
    fn resumed_training_follows_the_uninterrupted_trajectory() {
        let dir = tempfile::tempdir().unwrap();
        let (mut straight, ds, tcfg) = tiny();
        let ck = dir.path().join("run.ckpt");
        let saved = dir.path().join("after1.ckpt");
        let bare = dir.path().join("bare.ckpt");
        train(&mut straight, &ds, None, &tcfg, 0, Some(&ck), |r| {
            if r.epoch == 1 {
                std::fs::copy(&ck, &saved).unwrap();
                std::fs::copy(state_path(&ck), state_path(&saved)).unwrap();
                std::fs::copy(&ck, &bare).unwrap();
            }
        })
        .unwrap();

        let mut resumed = model_file::load(&saved).unwrap();
        // The training time so far travels in the checkpoint and keeps adding up.
        let secs = |m: &Model| train_seconds(m).unwrap();
        let after_one = secs(&resumed);
        resumed.info.insert(TRAIN_SECONDS.into(), "1000.0".into());
        train(&mut resumed, &ds, None, &tcfg, 1, Some(&saved), |_| {}).unwrap();
        assert_eq!(params(&resumed), params(&straight));
        let total = secs(&resumed);
        assert!(
            after_one >= 0.0 && (1000.0..1060.0).contains(&total),
            "{total}"
        );
        // A checkpoint without a recorded time cannot say what the whole run cost.
        let mut untimed = model_file::load(&bare).unwrap();
        untimed.info.remove(TRAIN_SECONDS);
        train(&mut untimed, &ds, None, &tcfg, 1, None, |_| {}).unwrap();
        assert!(!untimed.info.contains_key(TRAIN_SECONDS));

        let mut lossy = model_file::load(&bare).unwrap();
        train(&mut lossy, &ds, None, &tcfg, 1, Some(&bare), |_| {}).unwrap();
        assert_ne!(params(&lossy), params(&straight));
    }
}
