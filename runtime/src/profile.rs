//! Where a pass's time goes, without a profiler: wall-clock time per phase
//! (integer GEMMs, f32 GEMMs, im2col, col2im, quantizers, BatchNorm, loss,
//! optimiser, the elementwise glue), summed over every call made on the
//! calling thread while profiling is on. `qmul bench` prints it for one
//! training step, so the next person sees the breakdown a `perf` session
//! would give.
//!
//! Off by default: then each timed region costs one relaxed atomic load.
//! Phases are timed on the thread that drives the pass (around the
//! multithreaded calls), so they add up to wall time, not CPU time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One kind of work in a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Integer GEMMs of the forward (4-bit and 8-bit codes).
    IntGemm,
    /// f32 GEMMs of the backward (`dX`, `dW`) and of float layers.
    FloatGemm,
    Im2col,
    Col2im,
    /// Activation quantizers, forward and backward.
    ActQuant,
    /// Weight quantization for the pass and the weight quantizers' backward.
    WeightQuant,
    BatchNorm,
    /// Softmax cross-entropy.
    Loss,
    /// The SGD update.
    Optimiser,
    /// Residual adds, pooling, code-to-f32 conversion, gradient accumulation.
    Elementwise,
}

/// Every phase, in report order.
pub const PHASES: [Phase; 10] = [
    Phase::IntGemm,
    Phase::FloatGemm,
    Phase::Im2col,
    Phase::Col2im,
    Phase::ActQuant,
    Phase::WeightQuant,
    Phase::BatchNorm,
    Phase::Loss,
    Phase::Optimiser,
    Phase::Elementwise,
];

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::IntGemm => "integer GEMM (forward)",
            Phase::FloatGemm => "f32 GEMM (backward)",
            Phase::Im2col => "im2col",
            Phase::Col2im => "col2im",
            Phase::ActQuant => "activation quantizers",
            Phase::WeightQuant => "weight quantizers",
            Phase::BatchNorm => "BatchNorm",
            Phase::Loss => "loss",
            Phase::Optimiser => "optimiser",
            Phase::Elementwise => "adds, pooling, conversions",
        }
    }

    fn index(self) -> usize {
        PHASES.iter().position(|&p| p == self).unwrap_or(0)
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static NANOS: [AtomicU64; PHASES.len()] = [const { AtomicU64::new(0) }; PHASES.len()];

/// Turns timing on or off (process-wide).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether timing is on.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Zeroes every phase's total.
pub fn reset() {
    NANOS.iter().for_each(|n| n.store(0, Ordering::Relaxed));
}

/// Each phase's total since the last [`reset`].
pub fn totals() -> Vec<(Phase, Duration)> {
    PHASES
        .iter()
        .map(|&p| {
            (
                p,
                Duration::from_nanos(NANOS[p.index()].load(Ordering::Relaxed)),
            )
        })
        .collect()
}

/// Adds `d` to phase `p`.
pub fn add(p: Phase, d: Duration) {
    NANOS[p.index()].fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
}

/// Runs `f`, adding its wall time to `p` when profiling is on.
#[inline]
pub fn time<R>(p: Phase, f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    let t = Instant::now();
    let r = f();
    add(p, t.elapsed());
    r
}

/// Splits the wall time of a region whose threads interleave several phases
/// (the fused `dX` tiles: a GEMM, then col2im, per tile) in proportion to
/// the time the threads spent in each.
pub fn split(wall: Duration, parts: &[(Phase, Duration)]) {
    let total: f64 = parts.iter().map(|(_, d)| d.as_secs_f64()).sum();
    if total <= 0.0 {
        return;
    }
    for &(p, d) in parts {
        add(p, wall.mul_f64(d.as_secs_f64() / total));
    }
}

/// [`split`] for a tiled region whose threads each timed two alternating
/// phases: adds up the threads' `[first, second]` times, then splits `wall`.
pub fn split_threads(wall: Duration, phases: [Phase; 2], threads: &[[Duration; 2]]) {
    let sum = |k: usize| threads.iter().map(|t| t[k]).sum::<Duration>();
    split(wall, &[(phases[0], sum(0)), (phases[1], sum(1))]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_adds_up_only_while_enabled() {
        reset();
        time(Phase::Loss, || std::thread::sleep(Duration::from_millis(2)));
        assert_eq!(totals()[Phase::Loss.index()].1, Duration::ZERO);
        enable(true);
        time(Phase::Loss, || std::thread::sleep(Duration::from_millis(2)));
        split(
            Duration::from_millis(4),
            &[
                (Phase::FloatGemm, Duration::from_millis(3)),
                (Phase::Col2im, Duration::from_millis(1)),
            ],
        );
        enable(false);
        let t = totals();
        assert!(t[Phase::Loss.index()].1 >= Duration::from_millis(2));
        assert!(t[Phase::FloatGemm.index()].1 >= Duration::from_millis(3));
        assert!(t[Phase::Col2im.index()].1 >= Duration::from_millis(1));
        reset();
    }
}
