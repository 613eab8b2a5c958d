//! aarch64 variants: NEON and NEON + dotprod (sdot/udot). One file per kernel
//! family; this file only registers them.

use super::KernelSet;

pub(crate) mod dotprod_qgemm;
mod neon_qgemm;
mod neon_sgemm;

fn detect_neon() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

fn detect_dotprod() -> bool {
    detect_neon() && std::arch::is_aarch64_feature_detected!("dotprod")
}

pub static DOTPROD: KernelSet = KernelSet {
    name: "dotprod",
    detect: detect_dotprod,
    qgemm_u4s4: dotprod_qgemm::qgemm_u4s4,
    qgemm_u8s8: dotprod_qgemm::qgemm_u8s8,
    sgemm: neon_sgemm::sgemm,
    sgemm_bf16: None,
    detect_bf16: || false,
};

pub static NEON: KernelSet = KernelSet {
    name: "neon",
    detect: detect_neon,
    qgemm_u4s4: neon_qgemm::qgemm_u4s4,
    qgemm_u8s8: neon_qgemm::qgemm_u8s8,
    sgemm: neon_sgemm::sgemm,
    sgemm_bf16: None,
    detect_bf16: || false,
};

/// aarch64 variants, best first.
pub static VARIANTS: [&KernelSet; 2] = [&DOTPROD, &NEON];
