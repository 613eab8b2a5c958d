//! `qmul eval`: test accuracy, or the forgetting metrics with `--forget`.

use super::{check_compatible, DataArgs};
use crate::data::Dataset;
use crate::device::Device;
use crate::forget::ForgetSpec;
use crate::forgetting;
use clap::Args;
use qmul_runtime::metrics;
use qmul_runtime::model_file;
use qmul_runtime::samples::Forward;
use qmul_runtime::Model;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Forget set (random:FRAC:SEED, class:K, indices:FILE): report FA, RA, TA and MIA.
    #[arg(long)]
    pub forget: Option<String>,
    /// A model retrained without the forget set: also report the Average Gap to it.
    #[arg(long, requires = "forget")]
    pub retrain: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn eval(a: EvalArgs) -> Result<(), String> {
    let model = model_file::load(&a.model).map_err(|e| e.to_string())?;
    let (tr, te) = a.data.load()?;
    check_compatible(&model, &te)?;
    let device = crate::device::current()?;
    if !a.json && !matches!(device, Device::Cpu) {
        eprintln!("device: {}", device.name());
    }
    with_forward(&device, &model, |f| eval_on(&a, &device, f, &tr, &te))
}

/// Runs `f` with the model's forward on `device` (uploaded once for a GPU).
fn with_forward(
    device: &Device,
    model: &Model,
    f: impl FnOnce(&dyn Forward) -> Result<(), String>,
) -> Result<(), String> {
    match device {
        Device::Cpu => f(model),
        #[cfg(feature = "gpu")]
        Device::Gpu(g) => {
            let dm = qmul_runtime::gpu::DeviceModel::upload(g.as_ref(), model)
                .map_err(|e| e.to_string())?;
            f(&dm)
        }
    }
}

fn eval_on(
    a: &EvalArgs,
    device: &Device,
    model: &dyn Forward,
    tr: &Dataset,
    te: &Dataset,
) -> Result<(), String> {
    let Some(spec) = &a.forget else {
        let acc = crate::eval::accuracy(model, te, None).map_err(|e| e.to_string())?;
        if a.json {
            println!(
                "{}",
                serde_json::json!({ "test_acc": acc, "test_images": te.len(), "model": a.model.display().to_string() })
            );
        } else {
            println!("test accuracy {acc:.2}% on {} images", te.len());
        }
        return Ok(());
    };
    let split = forgetting::split(&ForgetSpec::parse(spec)?, tr, te)?;
    let s = forgetting::scores(model, tr, te, &split)?;
    let gap = match &a.retrain {
        Some(p) => {
            let r = model_file::load(p).map_err(|e| e.to_string())?;
            check_compatible(&r, te)?;
            let mut rs = None;
            with_forward(device, &r, |f| {
                rs = Some(forgetting::scores(f, tr, te, &split)?);
                Ok(())
            })?;
            rs.map(|r| metrics::avg_gap(&s, &r))
        }
        None => None,
    };
    if a.json {
        let mut v = serde_json::json!({
            "fa": s.fa, "ra": s.ra, "ta": s.ta, "mia": s.mia,
            "forget": split.forgotten().len(), "retain": split.retain.len(), "test": split.test.len(),
        });
        if let Some(g) = gap {
            v["avg_gap"] = g.into();
        }
        println!("{v}");
    } else {
        println!(
            "FA {:.2}%  RA {:.2}%  TA {:.2}%  MIA {:.2}%  (forget {}, retain {}, test {})",
            s.fa,
            s.ra,
            s.ta,
            s.mia,
            split.forgotten().len(),
            split.retain.len(),
            split.test.len()
        );
        if let Some(g) = gap {
            println!("Average Gap to retrain: {g:.2}");
        }
    }
    Ok(())
}
