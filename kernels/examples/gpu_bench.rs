//! Times the GPU GEMMs on the convolution shapes of the CIFAR ResNet-18
//! (width 64, 3x32x32 inputs) with every operand resident on the device:
//! the integer forward (`m x cout x kdim`, 4-bit codes; the stem 8-bit),
//! `dX` (`m x kdim x cout`, the weights' 4-bit codes widened in the kernel)
//! and `dW` (`cout x kdim x m`, the input codes widened). Prints the device
//! and its copy bandwidth, and per shape, milliseconds and G op/s (2 ops
//! per multiply-add).
//!
//!     cargo run --release -p qmul-kernels --features gpu --example gpu_bench -- [BATCH] [wgpu|cuda]
//!
//! `benches/gpu/run.sh` runs it on a machine with an NVIDIA GPU.

use qmul_kernels::gpu::{BEnc, Backend, Gpu, QGemmDims, SGemmDims, Tile};
use qmul_kernels::pack;
use std::time::Instant;

/// `(name, m per image, cout, kdim, 8-bit input, how many convs of the shape)`.
const SHAPES: [(&str, usize, usize, usize, bool, usize); 10] = [
    ("stem 3x3", 1024, 64, 27, true, 1),
    ("stage 1 3x3", 1024, 64, 576, false, 4),
    ("stage 2 3x3 /2", 256, 128, 576, false, 1),
    ("stage 2 3x3", 256, 128, 1152, false, 3),
    ("stage 2 1x1 /2", 256, 128, 64, false, 1),
    ("stage 3 3x3 /2", 64, 256, 1152, false, 1),
    ("stage 3 3x3", 64, 256, 2304, false, 3),
    ("stage 4 3x3 /2", 16, 512, 2304, false, 1),
    ("stage 4 3x3", 16, 512, 4608, false, 3),
    ("stage 4 1x1 /2", 16, 512, 256, false, 1),
];

fn time(gpu: &Gpu, reps: usize, mut f: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    f()?;
    gpu.sync().map_err(|e| e.to_string())?;
    let t = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    gpu.sync().map_err(|e| e.to_string())?;
    Ok(t.elapsed().as_secs_f64() / reps as f64)
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let batch: usize = args
        .get(1)
        .map_or(Ok(256), |s| s.parse())
        .map_err(|e| format!("batch: {e}"))?;
    let backend = match args.get(2).map(String::as_str) {
        None => Backend::Wgpu,
        Some(s) => Backend::parse(s).ok_or(format!("unknown backend '{s}' (wgpu, cuda)"))?,
    };
    let gpu = Gpu::open(backend).map_err(|e| e.to_string())?;
    println!("# GPU GEMMs of ResNet-18 (width 64, 3x32x32), batch {batch}");
    println!("device: {}", gpu.name());
    // The device's memory bandwidth as this code reaches it: a copy of
    // 64 MiB (read + write; past any L2) with the element kernels' launch
    // shape.
    let n = 16 << 20;
    let (src, dst) = (
        gpu.zeros(n).map_err(|e| e.to_string())?,
        gpu.scratch(n).unwrap(),
    );
    let s = time(&gpu, 5, || {
        gpu.copy(&src, &dst, n).map_err(|e| e.to_string())
    })?;
    println!(
        "copy bandwidth: {:.0} GB/s (64 MiB read and written in {:.3} ms)",
        2.0 * 4.0 * n as f64 / s / 1e9,
        s * 1e3
    );
    // The integer multiply-add ceiling the unpacked int4/int8 dot products
    // run against (no dp4a or tensor cores in these kernels).
    let units = 1 << 20;
    let peak = gpu.imad_peak(units, 4096).map_err(|e| e.to_string())?;
    println!(
        "i32 multiply-add ceiling: {peak:.0} G op/s ({units} units, 8 independent chains each)"
    );
    println!();
    println!("| layer (m x cout x kdim) | convs | int forward ms | G op/s | dX f32 ms | GFLOP/s | dW f32 ms | GFLOP/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let qt = Tile::DEFAULT;
    let st = Tile {
        tm: 64,
        tn: 64,
        kw: 16,
        rm: 4,
        rn: 4,
    };
    let mut totals = [0.0f64; 3];
    for (name, per_image, cout, kd, eight, count) in SHAPES {
        let m = per_image * batch;
        let (rb, bits) = if eight {
            (pack::row_bytes_8bit(kd), 8)
        } else {
            (pack::row_bytes_4bit(kd), 4)
        };
        let ops = 2.0 * (m * cout * kd) as f64;
        let reps = ((2e10 / ops) as usize).clamp(2, 50);
        // Forward: A = input columns (m rows of codes), B = weights.
        let a = gpu.upload_bytes(&vec![0x35u8; m * rb]).unwrap();
        let w = gpu.upload_bytes(&vec![0x7au8; cout * rb]).unwrap();
        let s = gpu.upload_f32(&vec![0.01; cout]).unwrap();
        let c = gpu.upload_f32(&vec![0.0; m * cout]).unwrap();
        let d = QGemmDims {
            m,
            n: cout,
            row_bytes: rb,
            ldc: cout,
            alpha: 0.5,
            bits,
        };
        let fwd = time(&gpu, reps, || {
            gpu.qgemm_on_device(d, &a, &w, &s, &c, qt)
                .map_err(|e| e.to_string())
        })?;
        drop(c);
        // dX = dY (m x cout) * W codes (cout rows of kd): skipped for the stem.
        let dx = if eight {
            None
        } else {
            let dy = gpu.upload_f32(&vec![0.001; m * cout]).unwrap();
            let cols = gpu.upload_f32(&vec![0.0; m * kd]).unwrap();
            let d = SGemmDims {
                m,
                n: kd,
                k: cout,
                a_rs: cout,
                a_cs: 1,
                b_rs: rb,
                b: BEnc::S4,
                ldc: kd,
                alpha: 1.0,
                beta: 0.0,
            };
            Some(time(&gpu, reps, || {
                gpu.sgemm_on_device(d, &dy, &w, &cols, st)
                    .map_err(|e| e.to_string())
            })?)
        };
        // dW = dY^T (cout x m) * input codes (m rows of kd).
        let dy = gpu.upload_f32(&vec![0.001; m * cout]).unwrap();
        let dw = gpu.upload_f32(&vec![0.0; cout * kd]).unwrap();
        let d = SGemmDims {
            m: cout,
            n: kd,
            k: m,
            a_rs: 1,
            a_cs: cout,
            b_rs: rb,
            b: if eight { BEnc::U8 } else { BEnc::U4 },
            ldc: kd,
            alpha: 1.0,
            beta: 0.0,
        };
        let dwt = time(&gpu, reps, || {
            gpu.sgemm_on_device(d, &dy, &a, &dw, st)
                .map_err(|e| e.to_string())
        })?;
        let g = |t: f64| ops / t / 1e9;
        totals[0] += fwd * count as f64;
        totals[1] += dx.unwrap_or(0.0) * count as f64;
        totals[2] += dwt * count as f64;
        println!(
            "| {name}: {m} x {cout} x {kd} | {count} | {:.3} | {:.0} | {} | {} | {:.3} | {:.0} |",
            fwd * 1e3,
            g(fwd),
            dx.map_or("-".into(), |t| format!("{:.3}", t * 1e3)),
            dx.map_or("-".into(), |t| format!("{:.0}", g(t))),
            dwt * 1e3,
            g(dwt)
        );
    }
    println!();
    println!(
        "all convolutions of one step: forward {:.2} ms, dX {:.2} ms, dW {:.2} ms",
        totals[0] * 1e3,
        totals[1] * 1e3,
        totals[2] * 1e3
    );
    Ok(())
}
