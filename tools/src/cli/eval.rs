//! `qmul eval`: test accuracy, or the forgetting metrics with `--forget`.

use super::{check_compatible, DataArgs};
use crate::forget::ForgetSpec;
use crate::forgetting;
use clap::Args;
use qmul_runtime::metrics;
use qmul_runtime::model_file;
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
    let Some(spec) = &a.forget else {
        let acc = crate::eval::accuracy(&model, &te, None).map_err(|e| e.to_string())?;
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
    let split = forgetting::split(&ForgetSpec::parse(spec)?, &tr, &te)?;
    let s = forgetting::scores(&model, &tr, &te, &split)?;
    let gap = match &a.retrain {
        Some(p) => {
            let r = model_file::load(p).map_err(|e| e.to_string())?;
            check_compatible(&r, &te)?;
            Some(metrics::avg_gap(
                &s,
                &forgetting::scores(&r, &tr, &te, &split)?,
            ))
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
