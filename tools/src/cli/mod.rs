//! Argument types and bodies of the `qmul` subcommands, one module each.

mod bench;
#[cfg(feature = "gpu")]
mod bench_gpu;
mod convert;
mod demo;
mod eval;
mod experiment;
mod inspect;
mod plan;
mod quantize;
mod receipts;
mod render;
mod sequence;
mod start;
mod train;
pub mod unlearn;
mod upgrade;

pub use bench::{bench, BenchArgs};
pub use convert::{convert, ConvertArgs};
pub use demo::{demo, DemoArgs};
pub use eval::{eval, EvalArgs};
pub use experiment::{experiment, ExperimentArgs};
pub use inspect::{inspect, InspectArgs};
pub use quantize::{quantize, QuantizeArgs};
pub use receipts::{receipts, ReceiptsArgs};
pub use render::{render, ReportArgs};
pub use train::{train, TrainArgs};
pub use unlearn::{unlearn_cmd, UnlearnArgs};
pub use upgrade::{upgrade, UpgradeArgs};

use crate::data::{self, Dataset};
use clap::Args;
use qmul_runtime::Model;

/// Where the data come from, shared by every command.
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data set: fashion-mnist[:DIR], mnist:DIR, cifar10:DIR, cifar100:DIR, subset.
    #[arg(long, default_value = "fashion-mnist")]
    pub data: String,
    /// Use a seeded, stratified subset of the training set: N:SEED (N images, equal per class).
    #[arg(long)]
    pub train_subset: Option<String>,
}

impl DataArgs {
    /// Training and test sets.
    pub fn load(&self) -> Result<(Dataset, Dataset), String> {
        let (tr, te) = data::load(&self.data).map_err(|e| e.to_string())?;
        let tr = match &self.train_subset {
            None => tr,
            Some(s) => {
                let (n, seed) = s
                    .split_once(':')
                    .and_then(|(n, seed)| {
                        Some((n.parse::<usize>().ok()?, seed.parse::<u64>().ok()?))
                    })
                    .ok_or_else(|| format!("--train-subset '{s}': expected N:SEED"))?;
                if n == 0 || n % tr.classes != 0 {
                    return Err(format!(
                        "--train-subset {n} must be a positive multiple of the {} classes",
                        tr.classes
                    ));
                }
                tr.stratified_subset(n / tr.classes, seed)
                    .map_err(|e| e.to_string())?
            }
        };
        Ok((tr, te))
    }

    /// The data description recorded in model files and reports.
    pub fn describe(&self) -> String {
        match &self.train_subset {
            None => self.data.clone(),
            Some(s) => format!("{} (train subset {s})", self.data),
        }
    }
}

/// Rejects a data set whose image shape or class count the model cannot take.
pub fn check_compatible(model: &Model, ds: &Dataset) -> Result<(), String> {
    let s = model.graph.input_shape();
    if [s.h, s.w, s.c] != ds.image_shape() || model.classes() != ds.classes {
        return Err(format!(
            "model takes {}x{}x{} images and {} classes; data set '{}' has {:?} and {}",
            s.h,
            s.w,
            s.c,
            model.classes(),
            ds.name,
            ds.image_shape(),
            ds.classes
        ));
    }
    Ok(())
}
