//! `qmul upgrade FILE...`: rewrites model files in the current format (adding
//! the tensor-data checksum to files written before it existed). Each file is
//! validated first and replaced crash-safely; the model inside is unchanged.

use clap::Args;
use qmul_runtime::model_file::{self, Integrity};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// Model files to rewrite in place.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

pub fn upgrade(a: UpgradeArgs) -> Result<(), String> {
    for f in &a.files {
        let loaded = model_file::load_checked(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let before = model_file::to_bytes(&loaded.model).map_err(|e| e.to_string())?;
        let probe = model_file::from_bytes(&before).map_err(|e| e.to_string())?;
        if probe.params != loaded.model.params || probe.buffers != loaded.model.buffers {
            return Err(format!(
                "{}: the model would change; not rewritten",
                f.display()
            ));
        }
        if loaded.integrity == Integrity::Verified
            && loaded.format_version.to_string() == model_file::FORMAT_VERSION
        {
            println!("{}: already current (checksum verified)", f.display());
            continue;
        }
        model_file::write_atomic(f, &before).map_err(|e| format!("{}: {e}", f.display()))?;
        println!(
            "{}: rewritten as format version {} with a data checksum",
            f.display(),
            model_file::FORMAT_VERSION
        );
    }
    Ok(())
}
