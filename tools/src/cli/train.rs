//! `qmul train`: a model from scratch, saved as a .qmul file.

use super::DataArgs;
use crate::data::Augment;
use crate::forget::{complement, ForgetSpec};
use crate::train::{self, TrainConfig};
use clap::Args;
use qmul_models::{resnet, ResNetConfig};
use qmul_runtime::{model_file, InitOptions, Model, Precision, QuantScheme};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Architecture: resnet18 or resnet10.
    #[arg(long, default_value = "resnet18")]
    pub arch: String,
    /// Channels of the first stage (64 = the paper's ResNet-18).
    #[arg(long, default_value_t = 16)]
    pub width: usize,
    /// Quantization scheme: pact, lsq, dsq, or none (full precision).
    #[arg(long, default_value = "pact")]
    pub quant: String,
    /// Bits of weights and activations (4 is what the kernels implement).
    #[arg(long, default_value_t = 4)]
    pub bits: u32,
    /// Precision of the stem conv and the classifier: 8 or 32.
    #[arg(long, default_value_t = 8)]
    pub edge_bits: u32,
    #[arg(long, default_value_t = 15)]
    pub epochs: usize,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    #[arg(long, default_value_t = 0.1)]
    pub lr: f32,
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Initial PACT clip value.
    #[arg(long, default_value_t = 6.0)]
    pub pact_init: f32,
    /// Disable random-crop and flip augmentation.
    #[arg(long)]
    pub no_augment: bool,
    /// Train on the rest only: random:FRAC:SEED, class:K or indices:FILE.
    #[arg(long)]
    pub exclude: Option<String>,
    /// Use only the first N training images (quick runs).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Output model file.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue from `<out>.ckpt` if it exists.
    #[arg(long)]
    pub resume: bool,
}

pub fn train(a: TrainArgs) -> Result<(), String> {
    let scheme = QuantScheme::parse(&a.quant)
        .ok_or_else(|| format!("unknown --quant '{}' (pact, lsq, dsq, none)", a.quant))?;
    if scheme != QuantScheme::None && a.bits != 4 {
        return Err(format!(
            "--bits {} is not supported: the packed kernels are 4-bit",
            a.bits
        ));
    }
    let edge = match a.edge_bits {
        8 => Precision::Int8,
        32 => Precision::F32,
        b => return Err(format!("--edge-bits {b}: use 8 or 32")),
    };
    if !(a.pact_init.is_finite() && a.pact_init > 0.0) {
        return Err(format!(
            "--pact-init {} must be finite and > 0",
            a.pact_init
        ));
    }
    if a.width == 0 {
        return Err("--width must be at least 1".into());
    }
    let (mut tr, te) = a.data.load()?;
    if let Some(l) = a.limit {
        let idx: Vec<usize> = (0..l.min(tr.len())).collect();
        tr = tr.subset(&idx);
    }
    let full_len = tr.len();
    if let Some(ex) = &a.exclude {
        let spec = ForgetSpec::parse(ex)?;
        // A request of a sequence leaves out every part forgotten so far.
        let removed = crate::forgetting::union(&spec.indices(&tr)?, &spec.earlier(&tr));
        tr = tr.subset(&complement(tr.len(), &removed));
        eprintln!(
            "excluding {} of {full_len} training images ({ex})",
            removed.len()
        );
    }
    let blocks = match a.arch.as_str() {
        "resnet18" => [2, 2, 2, 2],
        "resnet10" => [1, 1, 1, 1],
        o => return Err(format!("unknown --arch '{o}' (resnet18, resnet10)")),
    };
    let [h, w, c] = tr.image_shape();
    let cfg = ResNetConfig {
        blocks,
        width: a.width,
        in_h: h,
        in_w: w,
        in_c: c,
        classes: tr.classes,
        scheme,
        edge_precision: edge,
    };
    let ck = train::checkpoint_path(&a.out);
    let (mut model, start) = if a.resume && ck.exists() {
        let m = model_file::load(&ck).map_err(|e| e.to_string())?;
        let done: usize = m
            .info
            .get("epochs_done")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        eprintln!("resuming from {} after epoch {done}", ck.display());
        (m, done)
    } else {
        let g = resnet(&cfg).map_err(|e| e.to_string())?;
        (
            Model::new(
                g,
                InitOptions {
                    seed: a.seed,
                    pact_init: a.pact_init,
                },
            )
            .map_err(|e| e.to_string())?,
            0,
        )
    };
    let info = &mut model.info;
    info.insert("arch".into(), cfg.arch_name());
    info.insert("width".into(), a.width.to_string());
    info.insert("data".into(), a.data.describe());
    info.insert("train_images".into(), tr.len().to_string());
    info.insert("exclude".into(), a.exclude.clone().unwrap_or_default());
    // The precision the backward's gradient GEMMs actually ran in.
    info.insert(
        "backward".into(),
        qmul_kernels::grad_precision().name().to_string(),
    );
    info.insert(
        "command".into(),
        std::env::args().collect::<Vec<_>>().join(" "),
    );
    let tcfg = TrainConfig {
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr,
        momentum: 0.9,
        weight_decay: a.weight_decay,
        seed: a.seed,
        augment: if a.no_augment {
            None
        } else {
            Some(Augment::for_size(h, w))
        },
    };
    println!(
        "training {} width {} ({}, {} params) on {} images, {} epochs, batch {}, lr {}, kernels {}",
        cfg.arch_name(),
        a.width,
        scheme.name(),
        model.param_count(),
        tr.len(),
        a.epochs,
        a.batch,
        a.lr,
        qmul_kernels::active().name
    );
    let device = crate::device::current()?;
    if !matches!(device, crate::device::Device::Cpu) {
        println!("training on {}", device.name());
    }
    let reports = train::train_on(
        &device,
        &mut model,
        &tr,
        Some(&te),
        &tcfg,
        start,
        Some(&ck),
        |r| {
            println!(
                "epoch {:>3}  loss {:.4}  train acc {:.2}%  test acc {:.2}%  {:.1}s  {:.0} img/s",
                r.epoch,
                r.loss,
                r.train_acc,
                r.test_acc.unwrap_or(f64::NAN),
                r.seconds,
                r.images_per_s
            );
        },
    )?;
    if let Some(r) = reports.last() {
        model.info.insert(
            "test_acc".into(),
            format!("{:.2}", r.test_acc.unwrap_or(f64::NAN)),
        );
        model
            .info
            .insert("train_acc_last_epoch".into(), format!("{:.2}", r.train_acc));
    }
    model_file::save(&model, &a.out).map_err(|e| e.to_string())?;
    train::remove_checkpoint(&ck);
    println!("saved {}", a.out.display());
    Ok(())
}
