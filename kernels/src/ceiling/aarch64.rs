//! aarch64 ceiling loops: `sdot` (dotprod; issued with inline assembly, as
//! the dotprod kernel does, since `vdotq_s32` is not stable) and NEON `fmla`.

use super::{Probe, Unit};
use crate::cpu::aarch64::dotprod_qgemm::sdot as sdot_acc;
use std::arch::aarch64::*;

#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot(iters: u64) -> f32 {
    let a = std::hint::black_box(vdupq_n_s8(3));
    let b = std::hint::black_box(vdupq_n_s8(-2));
    let mut acc = [vdupq_n_s32(0); 12];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            // SAFETY: this function runs with dotprod.
            *x = unsafe { sdot_acc(*x, a, b) };
        }
    }
    acc.iter().map(|&x| vaddvq_s32(x) as f32).sum()
}

#[target_feature(enable = "neon")]
unsafe fn fmla(iters: u64) -> f32 {
    let a = std::hint::black_box(vdupq_n_f32(0.999));
    let b = std::hint::black_box(vdupq_n_f32(1e-3));
    let mut acc = [vdupq_n_f32(1.0); 12];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = vfmaq_f32(*x, a, b);
        }
    }
    acc.iter().map(|&x| vaddvq_f32(x)).sum()
}

// SAFETY (each closure): listed only when the CPU reports the features.
pub(super) fn probes() -> Vec<Probe> {
    let mut v = Vec::new();
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        v.push(Probe {
            unit: Unit::Int8Dot,
            instruction: "sdot v.4s",
            ops_per_iter: 12.0 * 16.0 * 2.0,
            run: |n| unsafe { sdot(n) },
        });
    }
    if std::arch::is_aarch64_feature_detected!("neon") {
        v.push(Probe {
            unit: Unit::F32Fma,
            instruction: "fmla v.4s",
            ops_per_iter: 12.0 * 4.0 * 2.0,
            run: |n| unsafe { fmla(n) },
        });
    }
    v
}
