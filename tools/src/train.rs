//! The training loop behind `qmul train`: SGD with momentum, weight decay and a
//! per-step cosine schedule, augmentation, per-epoch evaluation, progress, and a
//! checkpoint after every epoch so an interrupted run resumes where it stopped.

use crate::data::{Augment, Batches, Dataset};
use crate::eval;
use crate::progress::Progress;
use qmul_runtime::model_file;
use qmul_runtime::optim::{cosine_lr, Sgd};
use qmul_runtime::{Model, Targets};
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

/// Trains `model` on `train` for the epochs not yet done (`start_epoch..`),
/// evaluating on `test` after each epoch and saving a checkpoint after each.
pub fn train(
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
    if cfg.batch == 0 {
        return Err("batch size must be at least 1".into());
    }
    let mut sgd = Sgd::new(model, cfg.lr, cfg.momentum, cfg.weight_decay);
    let steps_per_epoch = train.len().div_ceil(cfg.batch);
    let total = steps_per_epoch * cfg.epochs;
    let mut reports = Vec::new();
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
            sgd.lr = cosine_lr(cfg.lr, step, total);
            let labels: Vec<u32> = batch.labels.iter().map(|&l| l as u32).collect();
            let weights = vec![1.0f32; labels.len()];
            let pass = model
                .train_pass(
                    &batch.images,
                    batch.len(),
                    Targets {
                        labels: &labels,
                        weights: &weights,
                    },
                    true,
                )
                .map_err(|e| e.to_string())?;
            if !pass.loss.is_finite() {
                return Err(format!(
                    "training diverged at epoch {} step {b} (loss {})",
                    epoch + 1,
                    pass.loss
                ));
            }
            sgd.step(model, &pass.grads, None);
            let pred = eval::argmax_rows(&pass.logits, model.classes());
            correct += pred
                .iter()
                .zip(&labels)
                .filter(|(p, l)| **p == **l as usize)
                .count();
            seen += labels.len();
            loss_sum += pass.loss as f64 * labels.len() as f64;
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
        if let Some(ck) = checkpoint {
            model_file::save(model, ck).map_err(|e| e.to_string())?;
        }
        on_epoch(&r);
        reports.push(r);
    }
    Ok(reports)
}
