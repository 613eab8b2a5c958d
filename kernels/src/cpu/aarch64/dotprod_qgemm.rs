//! PLACEHOLDER: delegates to the scalar reference until the SIMD kernel lands.

use crate::QGemm;

pub fn qgemm_u4s4(p: &QGemm, c: &mut [f32]) {
    crate::cpu::scalar::qgemm_u4s4(p, c)
}

pub fn qgemm_u8s8(p: &QGemm, c: &mut [f32]) {
    crate::cpu::scalar::qgemm_u8s8(p, c)
}
