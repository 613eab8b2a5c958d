//! The CPU kernel registry.
//!
//! A variant is data: a [`KernelSet`] naming its entry points and how to detect
//! the CPU features it needs. [`available`] lists the variants this CPU can run,
//! best first; [`active`] is the best one, or the one forced by the environment
//! variable `QMUL_KERNEL` (`scalar`, `avx2`, `avx512vnni`, `neon`, `dotprod`).
//! One binary can therefore A/B its own kernels, and the op harness runs every
//! variant against [`scalar`].

use crate::{QGemm, SGemm, ShapeError};
use std::sync::OnceLock;

pub mod scalar;
mod scratch;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod sgemm_blocking;

#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(target_arch = "aarch64")]
pub mod aarch64;

/// Integer GEMM entry point of one variant: single-threaded, whole problem.
/// Checks its operands (and the CPU's features) before touching them.
pub type QGemmFn = fn(&QGemm, &mut [f32]) -> Result<(), ShapeError>;
/// f32 GEMM entry point of one variant: single-threaded, whole problem.
pub type SGemmFn = fn(&SGemm, &mut [f32]) -> Result<(), ShapeError>;

/// One kernel variant: its name, its CPU-feature check and its entry points.
/// Entry points are safe to call once `detect()` returned true.
pub struct KernelSet {
    pub name: &'static str,
    pub detect: fn() -> bool,
    pub qgemm_u4s4: QGemmFn,
    pub qgemm_u8s8: QGemmFn,
    pub sgemm: SGemmFn,
    /// The same contract with both operands rounded to bf16 and f32
    /// accumulation (the optional lower-precision backward), where the variant
    /// has one; usable when `detect_bf16()` is true.
    pub sgemm_bf16: Option<SGemmFn>,
    pub detect_bf16: fn() -> bool,
}

impl std::fmt::Debug for KernelSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every variant compiled into this binary, best first.
fn registry() -> Vec<&'static KernelSet> {
    #[allow(unused_mut)]
    let mut v: Vec<&'static KernelSet> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    v.extend(x86_64::VARIANTS.iter());
    #[cfg(target_arch = "aarch64")]
    v.extend(aarch64::VARIANTS.iter());
    v.push(&scalar::SCALAR);
    v
}

/// The variants this CPU supports, best first (the scalar reference is last).
pub fn available() -> Vec<&'static KernelSet> {
    registry().into_iter().filter(|k| (k.detect)()).collect()
}

/// The variant called `name`, if compiled in and supported by this CPU.
pub fn by_name(name: &str) -> Result<&'static KernelSet, String> {
    let all = registry();
    match all.iter().find(|k| k.name == name) {
        None => Err(format!(
            "unknown kernel variant '{name}' (compiled in: {})",
            all.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
        )),
        Some(k) if !(k.detect)() => Err(format!(
            "kernel variant '{name}' is not supported by this CPU"
        )),
        Some(k) => Ok(*k),
    }
}

/// The variant in use: `QMUL_KERNEL` if set and usable, else the best available
/// (see [`override_error`] for a setting that could not be honoured).
pub fn active() -> &'static KernelSet {
    selection().0
}

/// Why `QMUL_KERNEL` was not honoured, when it is set to a variant that is not
/// compiled in or not supported here. Library callers (the `qmul` command, the
/// C ABI's model open) turn this into an error rather than run another variant
/// than the one asked for.
pub fn override_error() -> Option<&'static str> {
    selection().1.as_deref()
}

fn selection() -> &'static (&'static KernelSet, Option<String>) {
    static ACTIVE: OnceLock<(&'static KernelSet, Option<String>)> = OnceLock::new();
    ACTIVE.get_or_init(|| {
        let best = available().first().copied().unwrap_or(&scalar::SCALAR);
        match std::env::var("QMUL_KERNEL") {
            Ok(name) if !name.trim().is_empty() => match by_name(name.trim()) {
                Ok(k) => (k, None),
                Err(e) => {
                    log::warn!("QMUL_KERNEL ignored: {e}");
                    (best, Some(format!("QMUL_KERNEL={}: {e}", name.trim())))
                }
            },
            _ => (best, None),
        }
    })
}
