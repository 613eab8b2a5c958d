//! `qmul bench`: the machine's ceilings, the kernels on ResNet-18's layer
//! shapes as fractions of them, whole training steps, inference and a Q-MUL
//! unlearning epoch (images/s and peak RSS, each in a fresh process so the
//! peak is that workload's), a profile of one step by phase, and, with
//! `--torch PYTHON`, the same workloads in PyTorch measured in the same run,
//! with the ratios.

use crate::bench::{self, Net};
use clap::Args;
use qmul_kernels::ceiling::{self, Ceiling, Unit};
use qmul_kernels::GradPrecision;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Threads for qmul and PyTorch (default: QMUL_THREADS, else every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Batch of every whole-network workload.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Timed steps per workload (the median is reported), after 2 warm-up steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Sections to run, comma-separated: ceilings, layers, network, unlearn, profile.
    #[arg(long, default_value = "ceilings,layers,network,unlearn,profile")]
    pub only: String,
    /// Networks as WIDTHxCHANNELS (1 channel: 28x28 images, 3: 32x32).
    #[arg(long, default_value = "16x1,64x3")]
    pub nets: String,
    /// A Python with PyTorch (see benches/torch/setup.sh): runs the same
    /// workloads in PyTorch and prints the ratios.
    #[arg(long)]
    pub torch: Option<PathBuf>,
    /// The PyTorch side's script.
    #[arg(long, default_value = "benches/torch/bench.py")]
    pub torch_script: PathBuf,
    /// Also time PyTorch with torch.compile (reported separately).
    #[arg(long)]
    pub torch_compile: bool,
    /// One workload in this process, printed as one JSON line (used by the
    /// bench itself so each workload's peak RSS is its own): PHASE:WIDTH:CHANNELS.
    #[arg(long, hide = true)]
    pub child: Option<String>,
}

pub(super) fn parse_nets(s: &str) -> Result<Vec<Net>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (w, c) = p
                .trim()
                .split_once('x')
                .ok_or_else(|| format!("--nets '{p}': expected WIDTHxCHANNELS"))?;
            let width: usize = w.parse().map_err(|_| format!("--nets '{p}': bad width"))?;
            let channels: usize = c
                .parse()
                .map_err(|_| format!("--nets '{p}': bad channels"))?;
            if width == 0 || !(channels == 1 || channels == 3) {
                return Err(format!(
                    "--nets '{p}': width must be positive, channels 1 or 3"
                ));
            }
            Ok(Net { width, channels })
        })
        .collect()
}

/// A workload's figures, from a child qmul or the PyTorch script.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Figures {
    pub phase: String,
    #[serde(default)]
    pub images_per_s: f64,
    #[serde(default)]
    pub median_step_ms: f64,
    #[serde(default)]
    pub epoch_s: f64,
    #[serde(default)]
    pub peak_rss_mb: f64,
    #[serde(default)]
    pub torch: Option<String>,
}

fn child(spec: &str, batch: usize, steps: usize) -> Result<(), String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [phase, w, c] = parts[..] else {
        return Err(format!("--child '{spec}': expected PHASE:WIDTH:CHANNELS"));
    };
    let net = parse_nets(&format!("{w}x{c}"))?[0];
    let mut f = Figures {
        phase: phase.into(),
        ..Default::default()
    };
    match phase {
        "train" | "infer" => {
            let t = if phase == "train" {
                bench::train_steps(net, batch, 2, steps)?
            } else {
                bench::infer_steps(net, batch, 2, steps)?
            };
            let med = bench::median(t);
            f.median_step_ms = med * 1e3;
            f.images_per_s = batch as f64 / med;
        }
        "unlearn" => f.epoch_s = bench::unlearn_epoch(net, batch)?,
        _ => return Err(format!("--child: unknown phase '{phase}'")),
    }
    f.peak_rss_mb = bench::peak_rss_mb();
    println!("{}", serde_json::to_string(&f).map_err(|e| e.to_string())?);
    Ok(())
}

/// Runs a command that prints one JSON line of [`Figures`] last.
pub(super) fn run_json(mut cmd: Command, what: &str) -> Result<Figures, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| format!("{what} printed no JSON line"))?;
    serde_json::from_str(line).map_err(|e| format!("{what}: bad JSON '{line}': {e}"))
}

struct Runner<'a> {
    a: &'a BenchArgs,
    threads: usize,
}

impl Runner<'_> {
    fn qmul(&self, phase: &str, net: Net) -> Result<Figures, String> {
        self.qmul_with(phase, net, qmul_kernels::requested_grad_precision())
    }

    fn qmul_with(
        &self,
        phase: &str,
        net: Net,
        grad: qmul_kernels::GradPrecision,
    ) -> Result<Figures, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(exe);
        cmd.args(["bench", "--child"])
            .arg(format!("{phase}:{}:{}", net.width, net.channels))
            .args(["--batch", &self.a.batch.to_string()])
            .args(["--steps", &self.a.steps.to_string()])
            .env("QMUL_THREADS", self.threads.to_string())
            .env("QMUL_BACKWARD", grad.name());
        run_json(cmd, &format!("qmul {phase} ({})", net.label()))
    }

    fn torch(&self, phase: &str, net: Net, compile: bool) -> Option<Result<Figures, String>> {
        let py = self.a.torch.as_ref()?;
        let mut cmd = Command::new(py);
        cmd.arg(&self.a.torch_script)
            .args(["--phase", phase])
            .args(["--width", &net.width.to_string()])
            .args(["--channels", &net.channels.to_string()])
            .args(["--batch", &self.a.batch.to_string()])
            .args(["--threads", &self.threads.to_string()])
            .args(["--steps", &self.a.steps.to_string()])
            .args(["--warmup", "2"]);
        if compile {
            cmd.arg("--compile");
        }
        Some(run_json(cmd, &format!("PyTorch {phase} ({})", net.label())))
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

pub fn bench(a: BenchArgs) -> Result<(), String> {
    if a.batch == 0 || a.steps == 0 {
        return Err("--batch and --steps must be positive".into());
    }
    if let Some(spec) = &a.child {
        return child(spec, a.batch, a.steps);
    }
    if let Some(t) = a.threads {
        if t == 0 {
            return Err("--threads must be positive".into());
        }
        // Read once by the kernels; set before the first kernel call.
        std::env::set_var("QMUL_THREADS", t.to_string());
    }
    #[cfg(feature = "gpu")]
    if let crate::device::Device::Gpu(g) = crate::device::current()? {
        return super::bench_gpu::bench_gpu(&a, &g);
    }
    let threads = qmul_kernels::par::threads();
    let nets = parse_nets(&a.nets)?;
    let sections: Vec<&str> = a.only.split(',').map(str::trim).collect();
    for s in &sections {
        if !["ceilings", "layers", "network", "unlearn", "profile"].contains(s) {
            return Err(format!("--only: unknown section '{s}'"));
        }
    }
    let has = |s: &str| sections.contains(&s);
    println!("# qmul bench");
    println!(
        "machine: {} ({} logical CPUs), features: {}",
        bench::cpu_name(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        bench::cpu_features().join(" ")
    );
    println!(
        "threads: {threads}, kernels: {}, backward GEMMs: {}, batch {}, median of {} steps",
        qmul_kernels::active().name,
        qmul_kernels::grad_precision().name(),
        a.batch,
        a.steps
    );

    let ceilings = if has("ceilings") || has("layers") {
        let c = ceiling::measure(threads, Duration::from_millis(400));
        println!("\n## Ceilings ({threads} threads, 12 independent accumulators)");
        println!("| unit | instruction | G op/s |\n|---|---|---:|");
        for x in &c {
            println!(
                "| {} | {} | {:.0} |",
                x.unit.name(),
                x.instruction,
                x.ops_per_s / 1e9
            );
        }
        c
    } else {
        Vec::new()
    };
    let ceil = |u: Unit| -> Option<&Ceiling> { ceilings.iter().find(|c| c.unit == u) };

    if has("layers") {
        for &net in &nets {
            println!(
                "\n## GEMMs of the convolutions, {} at batch {} (G op/s, % of ceiling)",
                net.label(),
                a.batch
            );
            println!("| layer (m x cout x kdim) | convs | int forward | dX (f32) | dW (f32) | dX (bf16) | dW (bf16) |");
            println!("|---|---:|---:|---:|---:|---:|---:|");
            let pct = |v: f64, u: Unit| match ceil(u) {
                Some(c) => format!("{:.0} ({:.0}%)", v / 1e9, 100.0 * v / c.ops_per_s),
                None => format!("{:.0}", v / 1e9),
            };
            for l in bench::layers(net, a.batch)? {
                let s = bench::layer_speed(&l, Duration::from_millis(150))?;
                let g = l.geom;
                let b16 = |v: Option<f64>| v.map_or("-".into(), |v| pct(v, Unit::Bf16Dot));
                println!(
                    "| {} x {} x {}{} | {} | {} | {} | {} | {} | {} |",
                    g.m(),
                    g.cout,
                    g.kdim(),
                    if l.int4 { "" } else { " (8-bit)" },
                    l.count,
                    pct(s.forward, Unit::Int8Dot),
                    pct(s.dx, Unit::F32Fma),
                    pct(s.dw, Unit::F32Fma),
                    b16(s.dx_bf16),
                    b16(s.dw_bf16)
                );
            }
        }
    }

    let r = Runner { a: &a, threads };
    // The training step runs in the backward's precision in force; where the
    // CPU has bf16 dot products, a second row runs the other precision so the
    // two are measured side by side.
    let grad = qmul_kernels::grad_precision();
    let other_grad = {
        let k = qmul_kernels::active();
        (k.sgemm_bf16.is_some() && (k.detect_bf16)()).then_some(match grad {
            GradPrecision::Bf16 => GradPrecision::F32,
            GradPrecision::F32 => GradPrecision::Bf16,
        })
    };
    if has("network") {
        println!(
            "\n## Whole network, batch {}, {threads} threads (images/s, peak RSS)",
            a.batch
        );
        println!("| network | workload | qmul | PyTorch | speed ratio | RSS qmul | RSS PyTorch | RSS ratio |");
        println!("|---|---|---:|---:|---:|---:|---:|---:|");
        for &net in &nets {
            for phase in ["train", "infer"] {
                let q = r.qmul(phase, net)?;
                let t = r.torch(phase, net, false).transpose()?.unwrap_or_default();
                println!(
                    "| {} | {} | {:.0} | {} | {} | {:.0} MB | {} | {} |",
                    net.label(),
                    if phase == "train" {
                        format!("training step, {} backward", grad.name())
                    } else {
                        "inference".into()
                    },
                    q.images_per_s,
                    if t.images_per_s > 0.0 {
                        format!("{:.0}", t.images_per_s)
                    } else {
                        "-".into()
                    },
                    ratio(q.images_per_s, t.images_per_s),
                    q.peak_rss_mb,
                    if t.peak_rss_mb > 0.0 {
                        format!("{:.0} MB", t.peak_rss_mb)
                    } else {
                        "-".into()
                    },
                    ratio(t.peak_rss_mb, q.peak_rss_mb)
                );
                if let (true, Some(g)) = (phase == "train", other_grad) {
                    let b = r.qmul_with(phase, net, g)?;
                    println!(
                        "| {} | training step, {} backward | {:.0} | | {} | {:.0} MB | | {} |",
                        net.label(),
                        g.name(),
                        b.images_per_s,
                        ratio(b.images_per_s, t.images_per_s),
                        b.peak_rss_mb,
                        ratio(t.peak_rss_mb, b.peak_rss_mb)
                    );
                }
                if a.torch_compile {
                    if let Some(c) = r.torch(phase, net, true).transpose()? {
                        println!(
                            "| {} | {phase}, torch.compile | | {:.0} | {} | | {:.0} MB | |",
                            net.label(),
                            c.images_per_s,
                            ratio(q.images_per_s, c.images_per_s),
                            c.peak_rss_mb
                        );
                    }
                }
            }
        }
    }

    if has("unlearn") {
        let net = nets[0];
        println!(
            "\n## One Q-MUL unlearning epoch, {} ({} forget + {} retain batches of {}; Similar Labels and AGR passes included)",
            net.label(),
            bench::UNLEARN_FORGET_BATCHES,
            bench::UNLEARN_RETAIN_BATCHES,
            a.batch
        );
        let q = r.qmul("unlearn", net)?;
        let t = r
            .torch("unlearn", net, false)
            .transpose()?
            .unwrap_or_default();
        println!("| | qmul | PyTorch | ratio |\n|---|---:|---:|---:|");
        println!(
            "| wall time | {:.2} s | {} | {} |",
            q.epoch_s,
            if t.epoch_s > 0.0 {
                format!("{:.2} s", t.epoch_s)
            } else {
                "-".into()
            },
            ratio(t.epoch_s, q.epoch_s)
        );
        println!(
            "| peak RSS | {:.0} MB | {} | {} |",
            q.peak_rss_mb,
            if t.peak_rss_mb > 0.0 {
                format!("{:.0} MB", t.peak_rss_mb)
            } else {
                "-".into()
            },
            ratio(t.peak_rss_mb, q.peak_rss_mb)
        );
    }

    if has("profile") {
        for &net in &nets {
            let p = bench::profile_step(net, a.batch, a.steps.min(5))?;
            println!(
                "\n## One training step by phase, {} at batch {} ({:.1} ms)",
                net.label(),
                a.batch,
                p.step_s * 1e3
            );
            println!("| phase | ms | % of step |\n|---|---:|---:|");
            let mut timed = 0.0;
            for (ph, s) in &p.phases {
                timed += s;
                println!(
                    "| {} | {:.1} | {:.1} |",
                    ph.name(),
                    s * 1e3,
                    100.0 * s / p.step_s
                );
            }
            let other = (p.step_s - timed).max(0.0);
            println!(
                "| other (graph walk, allocation, copies) | {:.1} | {:.1} |",
                other * 1e3,
                100.0 * other / p.step_s
            );
            println!(
                "allocation: {:.0} minor page faults per step, {:.1} ms of system CPU time per step (all threads)",
                p.faults,
                p.sys_s * 1e3
            );
        }
    }
    Ok(())
}
