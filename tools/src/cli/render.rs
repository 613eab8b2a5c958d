//! `qmul report`: rewrites an experiment's table and chart from its
//! `results.json` alone, so a report made by an older build (or copied from
//! `docs/experiments/`) gets the current layout without rerunning anything.

use crate::report;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A report directory written by `qmul experiment` (holds results.json).
    pub dir: PathBuf,
}

pub fn render(a: ReportArgs) -> Result<(), String> {
    let results = report::load(&a.dir)?;
    if results.runs.is_empty() && results.tuning.is_empty() {
        return Err(format!(
            "{}: results.json holds no runs and no tuning trials yet",
            a.dir.display()
        ));
    }
    report::render(&a.dir, &results)?;
    print!("{}", report::markdown(&results));
    eprintln!("wrote {}/table.md, avg_gap.svg", a.dir.display());
    Ok(())
}
