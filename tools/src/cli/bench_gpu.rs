//! `qmul --device wgpu|cuda bench`: the whole network on a GPU (training
//! step: forward, loss, straight-through backward and SGD, all resident;
//! inference), images/s per network, and with `--torch PYTHON` PyTorch's
//! CUDA fake-quant step of the same network, batch and image shape side by
//! side. Each step's time includes its wait for the device (the loss or the
//! logits are read back).

use super::bench::{parse_nets, BenchArgs, Figures};
use crate::bench::{median, Net};
use qmul_kernels::gpu::Gpu;
use qmul_runtime::gpu::{DeviceModel, DeviceSgd};
use qmul_runtime::Targets;
use std::process::Command;
use std::time::Instant;

const WARMUP: usize = 2;

fn train_steps(gpu: &Gpu, net: Net, batch: usize, steps: usize) -> Result<f64, String> {
    let mut m = net.model()?;
    let (images, labels) = net.data(batch, 1);
    let weights = vec![1.0f32; batch];
    let t = Targets {
        labels: &labels,
        weights: &weights,
    };
    // The activation ranges of LSQ/DSQ need a first (CPU) pass; PACT's are set.
    m.train_pass(&images, batch, t, false)
        .map_err(|e| e.to_string())?;
    let mut dm = DeviceModel::upload(gpu, &m).map_err(|e| e.to_string())?;
    let mut sgd = DeviceSgd::new(&dm, 0.01, 0.9, 5e-4).map_err(|e| e.to_string())?;
    let mut ts = Vec::new();
    for s in 0..WARMUP + steps {
        let t0 = Instant::now();
        let p = dm
            .train_pass(&images, batch, t, true)
            .map_err(|e| e.to_string())?;
        sgd.step(&mut dm, &p.grads, None)
            .map_err(|e| e.to_string())?;
        gpu.sync().map_err(|e| e.to_string())?;
        if s >= WARMUP {
            ts.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(batch as f64 / median(ts))
}

fn infer_steps(gpu: &Gpu, net: Net, batch: usize, steps: usize) -> Result<f64, String> {
    let m = net.model()?;
    let (images, _) = net.data(batch, 2);
    let dm = DeviceModel::upload(gpu, &m).map_err(|e| e.to_string())?;
    let mut ts = Vec::new();
    for s in 0..WARMUP + steps {
        let t0 = Instant::now();
        std::hint::black_box(dm.forward(&images, batch).map_err(|e| e.to_string())?);
        if s >= WARMUP {
            ts.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(batch as f64 / median(ts))
}

fn torch(a: &BenchArgs, phase: &str, net: Net) -> Option<Result<Figures, String>> {
    let py = a.torch.as_ref()?;
    let mut cmd = Command::new(py);
    cmd.arg(&a.torch_script)
        .args(["--phase", phase, "--device", "cuda"])
        .args(["--width", &net.width.to_string()])
        .args(["--channels", &net.channels.to_string()])
        .args(["--batch", &a.batch.to_string()])
        .args(["--steps", &a.steps.to_string()]);
    Some(super::bench::run_json(
        cmd,
        &format!("PyTorch CUDA {phase} ({})", net.label()),
    ))
}

pub fn bench_gpu(a: &BenchArgs, gpu: &Gpu) -> Result<(), String> {
    let nets = parse_nets(&a.nets)?;
    println!("# qmul bench on a GPU");
    println!("device: {}", gpu.name());
    println!(
        "\n## Whole network on the GPU, batch {}, median of {} steps after {WARMUP} (images/s)",
        a.batch, a.steps
    );
    println!("| network | workload | qmul | PyTorch CUDA | ratio |");
    println!("|---|---|---:|---:|---:|");
    for &net in &nets {
        for phase in ["train", "infer"] {
            let q = if phase == "train" {
                train_steps(gpu, net, a.batch, a.steps)?
            } else {
                infer_steps(gpu, net, a.batch, a.steps)?
            };
            let t = torch(a, phase, net).transpose()?;
            let tv = t.map(|f| f.images_per_s).filter(|v| *v > 0.0);
            println!(
                "| {} | {} | {q:.0} | {} | {} |",
                net.label(),
                if phase == "train" {
                    "training step (f32 backward)"
                } else {
                    "inference"
                },
                tv.map_or("-".into(), |v| format!("{v:.0}")),
                tv.map_or("-".into(), |v| format!("{:.2}x", q / v))
            );
        }
    }
    Ok(())
}
