//! Tables beyond one machine: `qmul experiment --plan` prints every job that
//! can run now as one shell command per line (for GNU parallel, a Slurm array,
//! Kubernetes Jobs), each the same experiment command with `--job UNIT`. A job
//! trains one model into the shared `--models` directory (named by a hash of
//! everything that determines it), or runs one tuning trial or one run and
//! writes it to `<report>/jobs/`. Jobs of a stage are independent; the next
//! stage's jobs appear in a later `--plan` once their inputs exist (models,
//! then tuning trials, then runs, which need the tuning's choice). A plain
//! `qmul experiment` merges what the jobs wrote and finishes the table.

use super::experiment::{grid_points, is_trial_at, ExperimentArgs, GridLr};
use crate::report::{self, Results, RunResult, TuneTrial};
use std::path::{Path, PathBuf};

/// One unit of work.
#[derive(Clone, Debug, PartialEq)]
pub enum Job {
    /// Train (or find) one cached model: `original`, `retrain` or `retrain-validation`.
    Model(String),
    Trial {
        method: String,
        epochs: usize,
        lr: f32,
    },
    Run {
        method: String,
        seed: u64,
    },
}

impl Job {
    pub fn parse(s: &str) -> Result<Job, String> {
        let p: Vec<&str> = s.split(':').collect();
        let bad = || format!("--job '{s}': model:NAME, trial:METHOD:EPOCHS:LR or run:METHOD:SEED");
        match p.as_slice() {
            ["model", n @ ("original" | "retrain" | "retrain-validation")] => {
                Ok(Job::Model(n.to_string()))
            }
            ["trial", m, e, l] => Ok(Job::Trial {
                method: m.to_string(),
                epochs: e.parse().map_err(|_| bad())?,
                lr: l.parse().map_err(|_| bad())?,
            }),
            ["run", m, seed] => Ok(Job::Run {
                method: m.to_string(),
                seed: seed.parse().map_err(|_| bad())?,
            }),
            _ => Err(bad()),
        }
    }

    pub fn text(&self) -> String {
        match self {
            Job::Model(n) => format!("model:{n}"),
            Job::Trial { method, epochs, lr } => {
                format!("trial:{method}:{epochs}:{}", report::lr_text(*lr))
            }
            Job::Run { method, seed } => format!("run:{method}:{seed}"),
        }
    }

    /// Where a trial or run job writes its result.
    pub fn output(&self, report_dir: &Path) -> Option<PathBuf> {
        let name = match self {
            Job::Model(_) => return None,
            Job::Trial { method, epochs, lr } => {
                format!("trial-{method}-{epochs}-{}.json", report::lr_text(*lr))
            }
            Job::Run { method, seed } => format!("run-{method}-{seed}.json"),
        };
        Some(report_dir.join("jobs").join(name.replace('+', "_")))
    }
}

/// What a job wrote: its result and the setting it was made under.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct JobOutput {
    pub setting: serde_json::Value,
    pub trial: Option<TuneTrial>,
    pub run: Option<RunResult>,
}

/// Writes a job's result (crash-safely; a rerun of the same job replaces it).
pub fn write(report_dir: &Path, job: &Job, out: &JobOutput) -> Result<(), String> {
    let path = job
        .output(report_dir)
        .ok_or("a model job writes no result")?;
    std::fs::create_dir_all(report_dir.join("jobs"))
        .map_err(|e| format!("{}: {e}", report_dir.display()))?;
    let bytes = serde_json::to_vec_pretty(out).map_err(|e| e.to_string())?;
    qmul_runtime::model_file::write_atomic(&path, &bytes)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Adds every job result in `<report>/jobs/` made under `setting` (compared
/// without its grid) that `results` lacks. Returns how many were added.
pub fn merge(
    report_dir: &Path,
    setting: &serde_json::Value,
    results: &mut Results,
    same: impl Fn(&serde_json::Value, &serde_json::Value) -> bool,
) -> Result<usize, String> {
    let dir = report_dir.join("jobs");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut added = 0;
    for f in files {
        let bytes = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let out: JobOutput =
            serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", f.display()))?;
        if !same(&out.setting, setting) {
            return Err(format!(
                "{} was made for another setting; remove it or use another --report",
                f.display()
            ));
        }
        if let Some(t) = out.trial {
            if !results.tuning.iter().any(|x| {
                x.method == t.method && x.epochs == t.epochs && report::same_lr(x.lr, t.lr)
            }) {
                results.tuning.push(t);
                added += 1;
            }
        }
        if let Some(r) = out.run {
            if !results
                .runs
                .iter()
                .any(|x| x.method == r.method && x.seed == r.seed)
            {
                results.runs.push(r);
                added += 1;
            }
        }
    }
    Ok(added)
}

/// A shell word, single-quoted when it needs to be.
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// This process's command line with `--plan` replaced by `--job JOB`.
pub fn command_for(job: &Job) -> String {
    let mut words: Vec<String> = std::env::args()
        .filter(|a| a != "--plan")
        .map(|a| quote(&a))
        .collect();
    words.push("--job".into());
    words.push(quote(&job.text()));
    words.join(" ")
}

/// `--plan`: the jobs of the first stage that is not finished (models, then
/// tuning trials, then runs), one shell command per line on stdout; what
/// comes after goes to stderr.
pub fn print_plan(
    a: &ExperimentArgs,
    missing_models: &[&str],
    methods: &[String],
    grid: Option<&[(usize, GridLr)]>,
    classes: usize,
) -> Result<(), String> {
    let print = |j: Job| println!("{}", command_for(&j));
    if !missing_models.is_empty() {
        for m in missing_models {
            print(Job::Model(m.to_string()));
        }
        eprintln!("# stage 1 of 3 (models); rerun --plan when these jobs have finished");
        return Ok(());
    }
    let mut results: Results = if a.report.join("results.json").exists() {
        report::load(&a.report)?
    } else {
        Results::default()
    };
    let setting = results.setting.clone();
    merge(&a.report, &setting, &mut results, |_, _| true)?;
    let mut trials = 0;
    if let Some(g) = grid {
        for m in methods {
            for (epochs, lr) in grid_points(m, classes, g)? {
                if !results.tuning.iter().any(|t| is_trial_at(t, m, epochs, lr)) {
                    print(Job::Trial {
                        method: m.clone(),
                        epochs,
                        lr,
                    });
                    trials += 1;
                }
            }
        }
    }
    if trials > 0 {
        eprintln!("# stage 2 of 3 (tuning trials); rerun --plan when these jobs have finished");
        return Ok(());
    }
    let mut runs = 0;
    for seed in 0..a.seeds {
        for m in methods {
            if !results
                .runs
                .iter()
                .any(|r| &r.method == m && r.seed == seed)
            {
                print(Job::Run {
                    method: m.clone(),
                    seed,
                });
                runs += 1;
            }
        }
    }
    if runs > 0 {
        eprintln!("# stage 3 of 3 (runs); then run the command without --plan to write the table");
    } else {
        eprintln!("# nothing left to run: the command without --plan merges the jobs' results and writes the table");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_round_trip_and_quote() {
        for s in ["model:original", "trial:qmul:2:0.05", "run:rl+sl:3"] {
            assert_eq!(Job::parse(s).unwrap().text(), s);
        }
        for s in ["model:other", "trial:qmul:x:1", "run:qmul", "nothing"] {
            assert!(Job::parse(s).is_err(), "{s}");
        }
        assert_eq!(quote("lrx=1,5;epochs=1"), "'lrx=1,5;epochs=1'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("--grid"), "--grid");
    }
}
