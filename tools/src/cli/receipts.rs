//! `qmul receipts FILE`: lists a deletion-receipt log and verifies every
//! record's checksum and the chain between them (exit status 1 if it fails).

use clap::Args;
use qmul_runtime::session::receipt;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ReceiptsArgs {
    /// The receipt log (JSON lines).
    pub file: PathBuf,
    /// Print each record as its stored JSON line.
    #[arg(long)]
    pub json: bool,
}

pub fn receipts(a: ReceiptsArgs) -> Result<(), String> {
    if !a.file.exists() {
        return Err(format!("{}: no such receipt log", a.file.display()));
    }
    let log = receipt::read_log(&a.file).map_err(|e| e.to_string())?;
    let mia = |m: Option<f64>| m.map_or_else(|| "-".into(), |v| format!("{v:.2}"));
    for (r, line) in log.records.iter().zip(&log.lines) {
        if a.json {
            println!("{line}");
            continue;
        }
        println!(
            "#{:<3} {}  {:<7} forgot {:>6} samples ({})  FA {:.2} -> {:.2}  MIA {} -> {}  {}",
            r.seq,
            r.finished_unix,
            r.method,
            r.forget_count,
            r.request.as_deref().unwrap_or(&r.forget_source),
            r.before.fa,
            r.after.fa,
            mia(r.before.mia),
            mia(r.after.mia),
            r.model_path
        );
        println!(
            "     samples sha256 {}  model {} -> {}",
            r.forget_sha256, r.model_before_sha256, r.model_after_sha256
        );
        if !r.codes_changed.is_empty() {
            println!("     weight codes changed per epoch {:?}", r.codes_changed);
        }
        if let Some(v) = &r.verdict {
            println!(
                "     deletion check {}{}: {}: {}",
                if v.passed { "passed" } else { "failed" },
                if v.forced {
                    " (committed by force)"
                } else {
                    ""
                },
                v.scenario,
                v.detail
            );
        }
    }
    if log.torn_tail > 0 {
        println!(
            "a torn last record ({} bytes, from an interrupted write) is ignored",
            log.torn_tail
        );
    }
    if log.is_valid() {
        println!(
            "{}: {} records; every checksum and the chain verify",
            a.file.display(),
            log.records.len()
        );
        Ok(())
    } else {
        for p in &log.problems {
            println!("PROBLEM: {p}");
        }
        Err(format!(
            "{}: the receipt log does not verify ({} problems)",
            a.file.display(),
            log.problems.len()
        ))
    }
}
