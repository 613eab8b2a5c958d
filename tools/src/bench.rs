//! Measurements behind `qmul bench`: the kernels on ResNet-18's layer shapes,
//! whole training steps and inference, a Q-MUL unlearning epoch, and the
//! per-phase profile of a step. Every workload is defined here once, and the
//! PyTorch script (`benches/torch/bench.py`) runs the same one: the same
//! network, batch, thread count and image shape, random data.

use qmul_kernels::{pack, BMat, QGemm, SGemm};
use qmul_models::resnet::{resnet, ResNetConfig};
use qmul_runtime::exec::Targets;
use qmul_runtime::graph::{Op, QuantScheme};
use qmul_runtime::model::{InitOptions, Model};
use qmul_runtime::ops::im2col::ConvGeom;
use qmul_runtime::optim::Sgd;
use qmul_runtime::profile::{self, Phase};
use qmul_runtime::rng::Rng;
use qmul_runtime::unlearn::{self, Config, Method, Samples};
use std::time::{Duration, Instant};

/// A network configuration of the bench: ResNet-18 at `width` on
/// `channels x side x side` images (1 channel: 28x28, 3: 32x32), 10 classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    pub width: usize,
    pub channels: usize,
}

impl Net {
    pub fn side(&self) -> usize {
        if self.channels == 1 {
            28
        } else {
            32
        }
    }

    pub fn label(&self) -> String {
        let s = self.side();
        format!("width {}, {}x{s}x{s}", self.width, self.channels)
    }

    /// The 4-bit PACT model (8-bit stem and classifier), freshly initialised.
    pub fn model(&self) -> Result<Model, String> {
        let s = self.side();
        let g = resnet(&ResNetConfig::resnet18(
            self.width,
            s,
            s,
            self.channels,
            10,
            QuantScheme::Pact,
        ))
        .map_err(|e| e.to_string())?;
        Model::new(g, InitOptions::default()).map_err(|e| e.to_string())
    }

    /// `n` seeded random images and labels of this shape.
    pub fn data(&self, n: usize, seed: u64) -> (Vec<u8>, Vec<u32>) {
        let mut r = Rng::new(seed);
        let len = n * self.side() * self.side() * self.channels;
        let images = (0..len).map(|_| r.below(256) as u8).collect();
        let labels = (0..n).map(|_| r.below(10) as u32).collect();
        (images, labels)
    }
}

/// Median of a set of durations, in seconds.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Seconds of each of `steps` training steps (forward, loss, straight-through
/// backward, SGD with momentum) after `warmup` steps.
pub fn train_steps(
    net: Net,
    batch: usize,
    warmup: usize,
    steps: usize,
) -> Result<Vec<f64>, String> {
    let mut m = net.model()?;
    let mut sgd = Sgd::new(&m, 0.01, 0.9, 5e-4);
    let (images, labels) = net.data(batch, 1);
    let weights = vec![1.0f32; batch];
    let mut out = Vec::new();
    for s in 0..warmup + steps {
        let t = Instant::now();
        let p = m
            .train_pass(
                &images,
                batch,
                Targets {
                    labels: &labels,
                    weights: &weights,
                },
                true,
            )
            .map_err(|e| e.to_string())?;
        sgd.step(&mut m, &p.grads, None);
        if s >= warmup {
            out.push(t.elapsed().as_secs_f64());
        }
    }
    Ok(out)
}

/// Seconds of each of `steps` eval-mode forward passes after `warmup`.
pub fn infer_steps(
    net: Net,
    batch: usize,
    warmup: usize,
    steps: usize,
) -> Result<Vec<f64>, String> {
    let m = net.model()?;
    let (images, _) = net.data(batch, 2);
    let mut out = Vec::new();
    for s in 0..warmup + steps {
        let t = Instant::now();
        std::hint::black_box(m.forward(&images, batch).map_err(|e| e.to_string())?);
        if s >= warmup {
            out.push(t.elapsed().as_secs_f64());
        }
    }
    Ok(out)
}

/// Forget and retain batches of the unlearning epoch (`benches/torch/bench.py`
/// uses the same): 10 forget batches and 30 retain batches.
pub const UNLEARN_FORGET_BATCHES: usize = 10;
pub const UNLEARN_RETAIN_BATCHES: usize = 30;

/// Wall seconds of one Q-MUL epoch (Similar Labels pass, AGR's gradient-norm
/// passes, then the forget and retain passes, sequential variant) at `batch`.
pub fn unlearn_epoch(net: Net, batch: usize) -> Result<f64, String> {
    let m = net.model()?;
    let (fi, fl) = net.data(UNLEARN_FORGET_BATCHES * batch, 3);
    let (ri, rl) = net.data(UNLEARN_RETAIN_BATCHES * batch, 4);
    let mut cfg = Config::new(Method::qmul(10));
    cfg.epochs = 1;
    cfg.batch = batch;
    let t = Instant::now();
    unlearn::unlearn(
        &m,
        Samples {
            images: &fi,
            labels: &fl,
        },
        Samples {
            images: &ri,
            labels: &rl,
        },
        &cfg,
        &mut |_| true,
    )
    .map_err(|e| e.to_string())?;
    Ok(t.elapsed().as_secs_f64())
}

/// Peak resident set of this process so far, in MB (0 where unknown): Linux's
/// VmHWM, this process's own high-water mark. `ru_maxrss` is only the
/// fallback: Linux carries a parent's peak into it across fork and exec, so a
/// child of the bench would report the bench's own peak.
pub fn peak_rss_mb() -> f64 {
    if let Ok(s) = std::fs::read_to_string("/proc/self/status") {
        if let Some(kb) = s
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        {
            return kb / 1024.0;
        }
    }
    #[cfg(unix)]
    {
        // SAFETY: getrusage fills the struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } == 0 {
            // Linux reports kilobytes.
            return u.ru_maxrss as f64 / 1024.0;
        }
    }
    0.0
}

/// `(minor page faults, system CPU seconds)` of this process so far.
pub fn faults_and_sys() -> (u64, f64) {
    #[cfg(unix)]
    {
        // SAFETY: getrusage fills the struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } == 0 {
            let sys = u.ru_stime.tv_sec as f64 + u.ru_stime.tv_usec as f64 * 1e-6;
            return (u.ru_minflt as u64, sys);
        }
    }
    (0, 0.0)
}

/// One training step's time by phase (averaged over `steps` steps after one
/// warm-up), with the step's wall time, its minor page faults and the
/// system CPU time they and everything else in the kernel cost.
pub struct StepProfile {
    pub step_s: f64,
    pub phases: Vec<(Phase, f64)>,
    pub faults: f64,
    pub sys_s: f64,
}

pub fn profile_step(net: Net, batch: usize, steps: usize) -> Result<StepProfile, String> {
    let steps = steps.max(1);
    let mut m = net.model()?;
    let mut sgd = Sgd::new(&m, 0.01, 0.9, 5e-4);
    let (images, labels) = net.data(batch, 1);
    let weights = vec![1.0f32; batch];
    let mut step = |m: &mut Model| -> Result<(), String> {
        let p = m
            .train_pass(
                &images,
                batch,
                Targets {
                    labels: &labels,
                    weights: &weights,
                },
                true,
            )
            .map_err(|e| e.to_string())?;
        sgd.step(m, &p.grads, None);
        Ok(())
    };
    step(&mut m)?;
    profile::reset();
    profile::enable(true);
    let (f0, s0) = faults_and_sys();
    let t = Instant::now();
    let r = (0..steps).try_for_each(|_| step(&mut m));
    let wall = t.elapsed().as_secs_f64();
    profile::enable(false);
    r?;
    let (f1, s1) = faults_and_sys();
    let k = steps as f64;
    Ok(StepProfile {
        step_s: wall / k,
        phases: profile::totals()
            .into_iter()
            .map(|(p, d)| (p, d.as_secs_f64() / k))
            .collect(),
        faults: (f1 - f0) as f64 / k,
        sys_s: (s1 - s0) / k,
    })
}

/// One distinct convolution of a network at a batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layer {
    pub geom: ConvGeom,
    /// How many convolutions of the network have this shape.
    pub count: usize,
    /// 4-bit input codes (the stem reads 8-bit pixels).
    pub int4: bool,
}

/// The network's convolutions at `batch`, one entry per distinct shape.
pub fn layers(net: Net, batch: usize) -> Result<Vec<Layer>, String> {
    let m = net.model()?;
    let mut out: Vec<Layer> = Vec::new();
    for op in &m.graph.nodes {
        if let Op::Conv {
            input,
            cout,
            k,
            stride,
            pad,
            ..
        } = op
        {
            let x = m.shapes[*input];
            let geom = ConvGeom {
                n: batch,
                h: x.h,
                w: x.w,
                cin: x.c,
                cout: *cout,
                k: *k,
                stride: *stride,
                pad: *pad,
            };
            let int4 = !matches!(m.graph.nodes[*input], Op::Input { .. });
            match out.iter_mut().find(|l| l.geom == geom) {
                Some(l) => l.count += 1,
                None => out.push(Layer {
                    geom,
                    count: 1,
                    int4,
                }),
            }
        }
    }
    Ok(out)
}

/// Operations per second of the three GEMMs of one layer: the integer
/// forward (`m x cout x kdim`), `dX` (`m x kdim x cout`, weights as 4-bit
/// codes) and `dW` (`cout x kdim x m`, input codes widened in the kernel).
pub struct LayerSpeed {
    pub forward: f64,
    pub dx: f64,
    pub dw: f64,
    /// The same two GEMMs with bf16 operands, where the CPU has them.
    pub dx_bf16: Option<f64>,
    pub dw_bf16: Option<f64>,
}

/// Repeats `f` for at least `min` (and 2 calls), returning seconds per call.
fn time_per_call(min: Duration, mut f: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    f()?;
    let t = Instant::now();
    let mut n = 0u32;
    while n < 2 || t.elapsed() < min {
        f()?;
        n += 1;
    }
    Ok(t.elapsed().as_secs_f64() / n as f64)
}

pub fn layer_speed(l: &Layer, min: Duration) -> Result<LayerSpeed, String> {
    let g = l.geom;
    let (m, n, kd) = (g.m(), g.cout, g.kdim());
    let ops = 2.0 * (m * n * kd) as f64;
    let mut r = Rng::new(7);
    let rb = if l.int4 {
        pack::row_bytes_4bit(kd)
    } else {
        pack::row_bytes_8bit(kd)
    };
    let a: Vec<u8> = (0..m * rb).map(|_| r.below(256) as u8).collect();
    let b: Vec<u8> = (0..n * rb).map(|_| r.below(256) as u8).collect();
    let scale = vec![0.01f32; n];
    let mut c = vec![0.0f32; m * n];
    let e = |e: qmul_kernels::ShapeError| e.to_string();
    let fwd = time_per_call(min, || {
        let p = QGemm {
            m,
            n,
            row_bytes: rb,
            a: &a,
            b: &b,
            alpha: 1.0,
            col_scale: &scale,
            ldc: n,
            accumulate: false,
        };
        if l.int4 {
            qmul_kernels::qgemm_u4s4(&p, &mut c).map_err(e)
        } else {
            qmul_kernels::qgemm_u8s8(&p, &mut c).map_err(e)
        }
    })?;
    let dy: Vec<f32> = (0..m * n).map(|_| r.uniform() as f32 - 0.5).collect();
    let w4: Vec<u8> = (0..n * pack::row_bytes_4bit(kd))
        .map(|_| r.below(256) as u8)
        .collect();
    let k = qmul_kernels::active();
    let bf16 = k.sgemm_bf16.filter(|_| (k.detect_bf16)());
    let w4b = BMat::S4 {
        data: &w4,
        rs: pack::row_bytes_4bit(kd),
    };
    let bm = if l.int4 {
        BMat::U4 { data: &a, rs: rb }
    } else {
        BMat::U8 { data: &a, rs: rb }
    };
    let dx_p = SGemm {
        m,
        n: kd,
        k: n,
        alpha: 1.0,
        a: &dy,
        a_rs: n,
        a_cs: 1,
        b: w4b,
        beta: 0.0,
        ldc: kd,
    };
    let dw_p = SGemm {
        m: n,
        n: kd,
        k: m,
        alpha: 1.0,
        a: &dy,
        a_rs: 1,
        a_cs: n,
        b: bm,
        beta: 0.0,
        ldc: kd,
    };
    // dX: the backward computes it in tiles of column rows per thread; the
    // GEMM itself is measured here over the whole batch, threaded.
    let mut cols = vec![0.0f32; m * kd];
    let mut dw = vec![0.0f32; n * kd];
    let mut run = |f: Option<qmul_kernels::cpu::SGemmFn>| -> Result<(f64, f64), String> {
        let gemm = |p: &SGemm, c: &mut [f32]| match f {
            Some(f) => qmul_kernels::par::sgemm_with(f, p, c).map_err(e),
            None => qmul_kernels::sgemm(p, c).map_err(e),
        };
        let dx = time_per_call(min, || gemm(&dx_p, &mut cols))?;
        let dwt = time_per_call(min, || gemm(&dw_p, &mut dw))?;
        Ok((ops / dx, ops / dwt))
    };
    let (dx, dwt) = run(None)?;
    let b16 = match bf16 {
        Some(f) => Some(run(Some(f))?),
        None => None,
    };
    Ok(LayerSpeed {
        forward: ops / fwd,
        dx,
        dw: dwt,
        dx_bf16: b16.map(|b| b.0),
        dw_bf16: b16.map(|b| b.1),
    })
}

/// The CPU's model name (from `/proc/cpuinfo` on Linux).
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// The CPU features that matter to qmul's kernels, as the CPU reports them.
pub fn cpu_features() -> Vec<&'static str> {
    #[allow(unused_mut)]
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let f = [
            ("avx2", is_x86_feature_detected!("avx2")),
            ("fma", is_x86_feature_detected!("fma")),
            ("avx-vnni", is_x86_feature_detected!("avxvnni")),
            ("avx512f", is_x86_feature_detected!("avx512f")),
            ("avx512-vnni", is_x86_feature_detected!("avx512vnni")),
            ("avx512-bf16", is_x86_feature_detected!("avx512bf16")),
        ];
        v.extend(f.iter().filter(|x| x.1).map(|x| x.0));
    }
    #[cfg(target_arch = "aarch64")]
    {
        let f = [
            ("neon", std::arch::is_aarch64_feature_detected!("neon")),
            (
                "dotprod",
                std::arch::is_aarch64_feature_detected!("dotprod"),
            ),
            ("i8mm", std::arch::is_aarch64_feature_detected!("i8mm")),
            ("bf16", std::arch::is_aarch64_feature_detected!("bf16")),
        ];
        v.extend(f.iter().filter(|x| x.1).map(|x| x.0));
    }
    v
}
