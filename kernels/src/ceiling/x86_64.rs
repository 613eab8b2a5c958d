//! x86_64 ceiling loops: AVX-512 VNNI / BF16 and AVX2 (+FMA, AVX-VNNI).

use super::{Probe, Unit};
use std::arch::x86_64::*;

/// Twelve independent accumulators updated by `$op` each iteration.
macro_rules! twelve {
    ($acc:ident, $op:expr) => {
        for a in $acc.iter_mut() {
            *a = $op(*a);
        }
    };
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni512(iters: u64) -> f32 {
    let a = std::hint::black_box(_mm512_set1_epi8(3));
    let b = std::hint::black_box(_mm512_set1_epi8(-2));
    let mut acc = [_mm512_setzero_si512(); 12];
    for _ in 0..iters {
        twelve!(acc, |x| _mm512_dpbusd_epi32(x, a, b));
    }
    let s = acc
        .iter()
        .fold(_mm512_setzero_si512(), |s, &x| _mm512_add_epi32(s, x));
    _mm512_reduce_add_epi32(s) as f32
}

#[target_feature(enable = "avx512f")]
unsafe fn fma512(iters: u64) -> f32 {
    let a = std::hint::black_box(_mm512_set1_ps(0.999));
    let b = std::hint::black_box(_mm512_set1_ps(1e-3));
    let mut acc = [_mm512_set1_ps(1.0); 12];
    for _ in 0..iters {
        twelve!(acc, |x| _mm512_fmadd_ps(x, a, b));
    }
    let s = acc
        .iter()
        .fold(_mm512_setzero_ps(), |s, &x| _mm512_add_ps(s, x));
    _mm512_reduce_add_ps(s)
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_512(iters: u64) -> f32 {
    let a = std::hint::black_box(_mm512_cvtne2ps_pbh(
        _mm512_set1_ps(0.5),
        _mm512_set1_ps(0.25),
    ));
    let b = std::hint::black_box(_mm512_cvtne2ps_pbh(
        _mm512_set1_ps(1e-3),
        _mm512_set1_ps(2e-3),
    ));
    let mut acc = [_mm512_setzero_ps(); 12];
    for _ in 0..iters {
        twelve!(acc, |x| _mm512_dpbf16_ps(x, a, b));
    }
    let s = acc
        .iter()
        .fold(_mm512_setzero_ps(), |s, &x| _mm512_add_ps(s, x));
    _mm512_reduce_add_ps(s)
}

#[target_feature(enable = "avx2,avxvnni")]
unsafe fn vnni256(iters: u64) -> f32 {
    let a = std::hint::black_box(_mm256_set1_epi8(3));
    let b = std::hint::black_box(_mm256_set1_epi8(-2));
    let mut acc = [_mm256_setzero_si256(); 12];
    for _ in 0..iters {
        twelve!(acc, |x| _mm256_dpbusd_avx_epi32(x, a, b));
    }
    let s = acc
        .iter()
        .fold(_mm256_setzero_si256(), |s, &x| _mm256_add_epi32(s, x));
    _mm256_extract_epi32::<0>(s) as f32
}

/// `vpmaddubsw` + `vpmaddwd` + `vpaddd`: the int8 dot product of AVX2 without VNNI.
#[target_feature(enable = "avx2")]
unsafe fn madd256(iters: u64) -> f32 {
    let a = std::hint::black_box(_mm256_set1_epi8(3));
    let b = std::hint::black_box(_mm256_set1_epi8(-2));
    let one = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); 12];
    for _ in 0..iters {
        twelve!(acc, |x| _mm256_add_epi32(
            x,
            _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), one)
        ));
    }
    let s = acc
        .iter()
        .fold(_mm256_setzero_si256(), |s, &x| _mm256_add_epi32(s, x));
    _mm256_extract_epi32::<0>(s) as f32
}

#[target_feature(enable = "avx2,fma")]
unsafe fn fma256(iters: u64) -> f32 {
    let a = std::hint::black_box(_mm256_set1_ps(0.999));
    let b = std::hint::black_box(_mm256_set1_ps(1e-3));
    let mut acc = [_mm256_set1_ps(1.0); 12];
    for _ in 0..iters {
        twelve!(acc, |x| _mm256_fmadd_ps(x, a, b));
    }
    let s = acc
        .iter()
        .fold(_mm256_setzero_ps(), |s, &x| _mm256_add_ps(s, x));
    let mut out = [0.0f32; 8];
    // SAFETY: `out` holds the 8 floats stored.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    out.iter().sum()
}

fn has(f: &[&str]) -> bool {
    f.iter().all(|&f| match f {
        "avx2" => is_x86_feature_detected!("avx2"),
        "fma" => is_x86_feature_detected!("fma"),
        "avx512f" => is_x86_feature_detected!("avx512f"),
        "avx512bw" => is_x86_feature_detected!("avx512bw"),
        "avx512vnni" => is_x86_feature_detected!("avx512vnni"),
        "avx512bf16" => is_x86_feature_detected!("avx512bf16"),
        "avxvnni" => is_x86_feature_detected!("avxvnni"),
        _ => false,
    })
}

// SAFETY (every closure below): the probe is listed only after `has` confirmed
// the CPU features its `target_feature` function needs.
pub(super) fn probes() -> Vec<Probe> {
    let mut v = Vec::new();
    if has(&["avx512f", "avx512bw", "avx512vnni"]) {
        v.push(Probe {
            unit: Unit::Int8Dot,
            instruction: "vpdpbusd zmm",
            ops_per_iter: 12.0 * 64.0 * 2.0,
            run: |n| unsafe { vnni512(n) },
        });
    } else if has(&["avx2", "avxvnni"]) {
        v.push(Probe {
            unit: Unit::Int8Dot,
            instruction: "vpdpbusd ymm (AVX-VNNI)",
            ops_per_iter: 12.0 * 32.0 * 2.0,
            run: |n| unsafe { vnni256(n) },
        });
    } else if has(&["avx2"]) {
        v.push(Probe {
            unit: Unit::Int8Dot,
            instruction: "vpmaddubsw+vpmaddwd ymm",
            ops_per_iter: 12.0 * 32.0 * 2.0,
            run: |n| unsafe { madd256(n) },
        });
    }
    if has(&["avx512f"]) {
        v.push(Probe {
            unit: Unit::F32Fma,
            instruction: "vfmadd zmm",
            ops_per_iter: 12.0 * 16.0 * 2.0,
            run: |n| unsafe { fma512(n) },
        });
    } else if has(&["avx2", "fma"]) {
        v.push(Probe {
            unit: Unit::F32Fma,
            instruction: "vfmadd ymm",
            ops_per_iter: 12.0 * 8.0 * 2.0,
            run: |n| unsafe { fma256(n) },
        });
    }
    if has(&["avx512f", "avx512bf16"]) {
        v.push(Probe {
            unit: Unit::Bf16Dot,
            instruction: "vdpbf16ps zmm",
            ops_per_iter: 12.0 * 32.0 * 2.0,
            run: |n| unsafe { bf16_512(n) },
        });
    }
    v
}
