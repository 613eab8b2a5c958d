//! `qmul experiment --start`: what the unlearning runs start from (the
//! original's file as saved, its codes alone, or the training run's exact
//! f32 latent weights).

use crate::train;
use qmul_runtime::model_file;
use qmul_runtime::session::OpenModel;
use qmul_runtime::Model;
use std::path::Path;

/// What an experiment's unlearning runs start from (`--start`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    File,
    Codes,
    Latent,
}

impl Start {
    pub fn parse(s: &str) -> Result<Start, String> {
        match s {
            "file" => Ok(Start::File),
            "codes" => Ok(Start::Codes),
            "latent" => Ok(Start::Latent),
            o => Err(format!("unknown --start '{o}' (file, codes, latent)")),
        }
    }
}

/// The session's view of the original for `start`.
pub fn start_model(
    original: &Model,
    path: &Path,
    start: Start,
) -> Result<std::sync::Arc<OpenModel>, String> {
    let e = |e: qmul_runtime::error::Error| e.to_string();
    match start {
        Start::File => {
            let open = OpenModel::from_model(original.clone()).map_err(e)?;
            // A full-precision model keeps its f32 weights: no bins to start in.
            let quantized = original.graph.scheme != qmul_runtime::QuantScheme::None;
            if quantized && !open.has_sub_bin() {
                eprintln!(
                    "note: {} keeps no sub-bin state (written before format version 3): \
                     unlearning starts at the bins' centres",
                    path.display()
                );
            }
            Ok(open)
        }
        Start::Codes => {
            let plain = model_file::to_bytes_with(original, model_file::WriteOptions::CENTRES)
                .map_err(|e| e.to_string())?;
            OpenModel::from_bytes(&plain).map_err(e)
        }
        Start::Latent => {
            let mut m = original.clone();
            let lp = train::latent_path(path);
            if !lp.exists() {
                return Err(format!(
                    "--start latent: {} is missing (the original was trained before latent \
                     files were kept; delete {} to retrain it)",
                    lp.display(),
                    path.display()
                ));
            }
            train::load_latent(&mut m, &lp)?;
            OpenModel::from_exact_model(m).map_err(e)
        }
    }
}
