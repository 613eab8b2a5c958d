//! Scalar reference kernels: the definition every SIMD variant is tested against.
//! Written for clarity, not speed.

use super::KernelSet;
use crate::pack::{get_s4, get_u4};
use crate::{QGemm, SGemm, ShapeError};

pub static SCALAR: KernelSet = KernelSet {
    name: "scalar",
    detect: || true,
    qgemm_u4s4,
    qgemm_u8s8,
    sgemm,
    sgemm_bf16: Some(sgemm_bf16),
    detect_bf16: || true,
};

fn store(p: &QGemm, c: &mut [f32], i: usize, j: usize, acc: i32) {
    let v = acc as f32 * p.alpha * p.col_scale[j];
    let dst = &mut c[i * p.ldc + j];
    *dst = if p.accumulate { *dst + v } else { v };
}

/// Packed u4 x s4 dot products over whole (padded) rows.
pub fn qgemm_u4s4(p: &QGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    p.check(c.len())?;
    let kc = p.row_bytes * 2;
    for i in 0..p.m {
        let a = &p.a[i * p.row_bytes..(i + 1) * p.row_bytes];
        for j in 0..p.n {
            let b = &p.b[j * p.row_bytes..(j + 1) * p.row_bytes];
            let acc: i32 = (0..kc)
                .map(|k| get_u4(a, k) as i32 * get_s4(b, k) as i32)
                .sum();
            store(p, c, i, j, acc);
        }
    }
    Ok(())
}

/// u8 x s8 dot products over whole (padded) rows.
pub fn qgemm_u8s8(p: &QGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    p.check(c.len())?;
    for i in 0..p.m {
        let a = &p.a[i * p.row_bytes..(i + 1) * p.row_bytes];
        for j in 0..p.n {
            let b = &p.b[j * p.row_bytes..(j + 1) * p.row_bytes];
            let acc: i32 = a
                .iter()
                .zip(b)
                .map(|(&x, &w)| x as i32 * (w as i8) as i32)
                .sum();
            store(p, c, i, j, acc);
        }
    }
    Ok(())
}

/// f32 GEMM with `B` widened element by element.
pub fn sgemm(p: &SGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    p.check(c.len())?;
    for i in 0..p.m {
        for j in 0..p.n {
            let mut acc = 0.0f32;
            for r in 0..p.k {
                acc += p.a[i * p.a_rs + r * p.a_cs] * p.b.get(r, j);
            }
            let dst = &mut c[i * p.ldc + j];
            *dst = if p.beta == 0.0 {
                p.alpha * acc
            } else {
                p.alpha * acc + p.beta * *dst
            };
        }
    }
    Ok(())
}

/// bf16 bits of `x`, rounded to nearest even (NaN stays NaN).
#[inline(always)]
pub fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    if x.is_nan() {
        return (b >> 16) | 0x40;
    }
    (b + 0x7fff + ((b >> 16) & 1)) >> 16
}

/// `x` rounded to bf16 and back to f32.
pub fn to_bf16(x: f32) -> f32 {
    f32::from_bits(bf16_bits(x) << 16)
}

/// The bf16 GEMM's definition: [`sgemm`] with `A` and `B` rounded to bf16
/// (round to nearest even) and each pair of reduction steps `(2q, 2q + 1)`
/// added to the f32 accumulator odd step first, as `vdpbf16ps` specifies.
/// The products of two bf16 values are exact in f32.
pub fn sgemm_bf16(p: &SGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    p.check(c.len())?;
    for i in 0..p.m {
        for j in 0..p.n {
            let term = |r: usize| {
                if r < p.k {
                    to_bf16(p.a[i * p.a_rs + r * p.a_cs]) * to_bf16(p.b.get(r, j))
                } else {
                    0.0
                }
            };
            let mut acc = 0.0f32;
            for q in 0..p.k.div_ceil(2) {
                acc += term(2 * q + 1);
                acc += term(2 * q);
            }
            let dst = &mut c[i * p.ldc + j];
            *dst = if p.beta == 0.0 {
                p.alpha * acc
            } else {
                p.alpha * acc + p.beta * *dst
            };
        }
    }
    Ok(())
}
