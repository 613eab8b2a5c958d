//! Vector-width dispatch for the runtime's elementwise loops.
//!
//! The runtime is compiled for the baseline of its target (SSE2 on x86_64),
//! so its plain loops (quantizers, BatchNorm, conversions, col2im) would run
//! four lanes wide on a CPU with sixteen. [`multiversion!`] compiles one
//! function body several times, for AVX-512 and AVX2 as well as the
//! baseline, and picks the widest the CPU has when called: the loops stay
//! ordinary Rust (no intrinsics), and each copy performs the same operations
//! in the same order, so results do not depend on the CPU.

use std::sync::OnceLock;

/// The widest vector extension this CPU has, as far as the runtime uses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Baseline,
    Avx2,
    Avx512,
}

/// This CPU's [`Level`] (detected once).
#[inline]
pub fn level() -> Level {
    static L: OnceLock<Level> = OnceLock::new();
    *L.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
            {
                return Level::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Level::Avx2;
            }
        }
        Level::Baseline
    })
}

/// Defines `fn NAME(args) -> R { body }` compiled for AVX-512, AVX2 and the
/// baseline, dispatching on [`level`] at each call. The body must not use
/// FMA contraction-sensitive code paths differently per ISA: Rust never
/// fuses `a * b + c` on its own, so every copy rounds the same way.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                unsafe fn v512($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v256($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                match $crate::simd::level() {
                    // SAFETY: the level says the CPU has these features.
                    $crate::simd::Level::Avx512 => return unsafe { v512($($arg),*) },
                    // SAFETY: as above.
                    $crate::simd::Level::Avx2 => return unsafe { v256($($arg),*) },
                    $crate::simd::Level::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}

pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    multiversion! {
        fn scaled_sum(x: &[f32], s: f32) -> f32 {
            x.iter().map(|v| v * s).sum()
        }
    }

    #[test]
    fn a_multiversioned_function_runs_on_this_cpu() {
        let x: Vec<f32> = (0..100).map(|i| i as f32).collect();
        assert_eq!(scaled_sum(&x, 0.5), 2475.0);
        println!("vector level: {:?}", super::level());
    }
}
