//! PLACEHOLDER: delegates to the scalar reference until the SIMD kernel lands.

use crate::SGemm;

pub fn sgemm(p: &SGemm, c: &mut [f32]) {
    crate::cpu::scalar::sgemm(p, c)
}
