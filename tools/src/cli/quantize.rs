//! `qmul quantize`: post-training quantization of a full-precision model into
//! the packed 4-bit PACT model (`qmul_runtime::ptq`: per-channel max-abs
//! weights, MSE-optimal activation clips calibrated layer by layer), with the
//! test accuracy before and after.

use super::{check_compatible, DataArgs};
use crate::data::Rng;
use clap::Args;
use qmul_runtime::{model_file, ptq};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// A full-precision model: a `.qmul` file (`qmul train --quant none`) or
    /// a float PyTorch ResNet checkpoint (`.safetensors`: qmul_torch's
    /// `scheme="none"` export, or a plain CIFAR-style ResNet state dict, whose
    /// input size is taken from the data set).
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Training images the activation clips are calibrated on (drawn at random).
    #[arg(long, default_value_t = 512)]
    pub calib: usize,
    /// Seed of the calibration draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn quantize(a: QuantizeArgs) -> Result<(), String> {
    let (tr, te) = a.data.load()?;
    let float = if a.model.extension().is_some_and(|e| e == "safetensors") {
        let [h, w, _] = te.image_shape();
        // A qmul-torch file states its input; the data set's only fills in.
        let opts = crate::torch::ReadOptions {
            input_fallback: Some((h, w)),
            ..Default::default()
        };
        let c = crate::torch::from_torch(&a.model, &opts)?;
        println!("{}: {}", a.model.display(), c.description);
        c.model
    } else {
        model_file::load(&a.model).map_err(|e| format!("{}: {e}", a.model.display()))?
    };
    check_compatible(&float, &te)?;
    if a.calib == 0 {
        return Err("--calib must be at least 1".into());
    }
    let mut idx: Vec<usize> = (0..tr.len()).collect();
    Rng::new(a.seed).shuffle(&mut idx);
    idx.truncate(a.calib.min(tr.len()));
    let images: Vec<u8> = idx.iter().flat_map(|&i| tr.image(i).to_vec()).collect();
    let q = ptq::quantize(&float, &images, idx.len()).map_err(|e| e.to_string())?;
    let before = crate::eval::accuracy(&float, &te, None).map_err(|e| e.to_string())?;
    let after = crate::eval::accuracy(&q, &te, None).map_err(|e| e.to_string())?;
    model_file::save(&q, &a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    println!(
        "test accuracy {before:.2}% (full precision) -> {after:.2}% (4-bit PACT: per-channel \
         max-abs weights, MSE-optimal activation clips on {} calibration images; Banner et al. \
         2019, Nagel et al. 2021); wrote {}",
        idx.len(),
        a.out.display()
    );
    Ok(())
}
