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
