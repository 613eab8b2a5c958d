//! The machine's compute ceilings, measured: how many int8 dot-product, f32
//! FMA and bf16 dot-product operations per second the cores can retire when
//! nothing but those instructions runs. Each loop keeps enough independent
//! accumulators in registers (12) to cover the instruction's latency on every
//! pipe, so the figure is throughput, not latency. `qmul bench` divides every
//! kernel's speed by the ceiling of the precision it computes in.
//!
//! An operation is a multiply or an add (one multiply-accumulate = 2), the
//! convention of GOP/s figures everywhere.

use std::time::{Duration, Instant};

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86_64;

/// A precision whose ceiling can be measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// int8 dot products (`vpdpbusd` on x86_64, `sdot` on aarch64).
    Int8Dot,
    /// f32 fused multiply-adds.
    F32Fma,
    /// bf16 dot products with f32 accumulation (`vdpbf16ps`).
    Bf16Dot,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::Int8Dot => "int8 dot",
            Unit::F32Fma => "f32 FMA",
            Unit::Bf16Dot => "bf16 dot",
        }
    }
}

/// One measured ceiling.
#[derive(Clone, Debug)]
pub struct Ceiling {
    pub unit: Unit,
    /// The instruction measured, e.g. `vpdpbusd zmm`.
    pub instruction: &'static str,
    /// Operations per second over all threads.
    pub ops_per_s: f64,
    pub threads: usize,
}

/// A loop body: runs `iters` iterations of 12 independent instructions and
/// returns a value that depends on every result (so nothing is optimised away).
type Loop = fn(u64) -> f32;

/// A measurable instruction of this CPU: its loop and the operations one
/// iteration performs.
struct Probe {
    unit: Unit,
    instruction: &'static str,
    ops_per_iter: f64,
    run: Loop,
}

fn probes() -> Vec<Probe> {
    #[allow(unused_mut)]
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    v.extend(x86_64::probes());
    #[cfg(target_arch = "aarch64")]
    v.extend(aarch64::probes());
    v
}

/// Measures each precision this CPU has on `threads` threads at once, each
/// running for about `time`. Precisions without a probe on this CPU are absent.
pub fn measure(threads: usize, time: Duration) -> Vec<Ceiling> {
    let threads = threads.max(1);
    probes()
        .into_iter()
        .map(|p| {
            // Calibrate the iteration count on one thread, then run all at once.
            let mut iters = 1u64 << 12;
            loop {
                let t = Instant::now();
                std::hint::black_box((p.run)(iters));
                if t.elapsed() >= time / 8 || iters >= 1 << 40 {
                    break;
                }
                iters *= 2;
            }
            let iters = iters * 8;
            let t = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| std::hint::black_box((p.run)(iters)));
                }
            });
            let wall = t.elapsed().as_secs_f64();
            Ceiling {
                unit: p.unit,
                instruction: p.instruction,
                ops_per_s: p.ops_per_iter * iters as f64 * threads as f64 / wall,
                threads,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_probe_runs_and_reports_a_positive_rate() {
        for c in super::measure(1, std::time::Duration::from_millis(20)) {
            assert!(c.ops_per_s > 1e6, "{c:?}");
        }
    }
}
