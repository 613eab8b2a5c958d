//! Progress display for long commands: a bar with throughput and ETA on a
//! terminal, and plain periodic lines when output goes to a log file.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::Instant;

pub struct Progress {
    bar: Option<ProgressBar>,
    unit: &'static str,
    label: String,
    total: u64,
    done: u64,
    start: Instant,
    last_line: Instant,
}

/// Seconds between plain progress lines when not on a terminal.
const LINE_EVERY_S: f64 = 30.0;

impl Progress {
    /// A display for `total` units; with `total == 0` (not known yet) it shows nothing.
    pub fn new(total: u64, label: &str) -> Self {
        let bar =
            if std::io::stderr().is_terminal() && std::env::var_os("QMUL_NO_PROGRESS").is_none() {
                let b = ProgressBar::new(total);
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {pos}/{len} {per_sec} ETA {eta} {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                b.set_prefix(label.to_string());
                Some(b)
            } else {
                None
            };
        Progress {
            bar,
            unit: "img",
            label: label.to_string(),
            total,
            done: 0,
            start: Instant::now(),
            last_line: Instant::now(),
        }
    }

    /// Names what is counted in the plain progress lines (default `img`).
    pub fn unit(mut self, unit: &'static str) -> Self {
        self.unit = unit;
        self
    }

    pub fn advance(&mut self, n: u64, msg: &str) {
        self.done += n;
        match &self.bar {
            Some(b) => {
                b.set_message(msg.to_string());
                b.inc(n);
            }
            None => {
                if self.total > 0 && self.last_line.elapsed().as_secs_f64() >= LINE_EVERY_S {
                    self.last_line = Instant::now();
                    let el = self.start.elapsed().as_secs_f64();
                    let rate = self.done as f64 / el.max(1e-9);
                    let eta = (self.total.saturating_sub(self.done)) as f64 / rate.max(1e-9);
                    eprintln!(
                        "{} {}/{} {:.1} {}/s ETA {:.0}s {}",
                        self.label, self.done, self.total, rate, self.unit, eta, msg
                    );
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
