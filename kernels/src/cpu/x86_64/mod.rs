//! x86_64 variants: AVX2 (+FMA) and AVX-512 VNNI. One file per kernel family;
//! this file only registers them.

use super::KernelSet;

mod avx2_qgemm;
mod avx2_sgemm;
mod avx512_bf16_gemm;
mod avx512_qgemm;
mod avx512_sgemm;

fn detect_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

fn detect_avx512vnni() -> bool {
    detect_avx2()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

pub static AVX512VNNI: KernelSet = KernelSet {
    name: "avx512vnni",
    detect: detect_avx512vnni,
    qgemm_u4s4: avx512_qgemm::qgemm_u4s4,
    qgemm_u8s8: avx512_qgemm::qgemm_u8s8,
    sgemm: avx512_sgemm::sgemm,
    sgemm_bf16: Some(avx512_bf16_gemm::sgemm_bf16),
    detect_bf16: avx512_bf16_gemm::detect,
};

pub static AVX2: KernelSet = KernelSet {
    name: "avx2",
    detect: detect_avx2,
    qgemm_u4s4: avx2_qgemm::qgemm_u4s4,
    qgemm_u8s8: avx2_qgemm::qgemm_u8s8,
    sgemm: avx2_sgemm::sgemm,
    sgemm_bf16: None,
    detect_bf16: || false,
};

/// x86_64 variants, best first.
pub static VARIANTS: [&KernelSet; 2] = [&AVX512VNNI, &AVX2];
