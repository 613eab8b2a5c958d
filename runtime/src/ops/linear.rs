//! Fully connected layer with bias, f32 or 8-bit.
//!
//! The 8-bit path quantizes each input row to u8 with its own scale
//! (`max(x_row) / 255`): the classifier reads globally pooled ReLU outputs, which
//! are non-negative, and a per-row scale keeps every sample's logits independent
//! of what else is in the batch. The backward treats that rounding as identity.

use crate::exec::PassError;
use qmul_kernels::{pack, BMat, QGemm, SGemm};

/// Weights of one linear layer (`out x cin`).
#[derive(Clone, Copy, Debug)]
pub enum LinearWeights<'a> {
    /// Signed 8-bit rows of `row_bytes_8bit(cin)` bytes, per-output scale.
    Int8 {
        rows: &'a [u8],
        scale: &'a [f32],
    },
    F32(&'a [f32]),
}

/// Input rows quantized for the 8-bit path: codes and per-row scales.
pub fn quantize_rows(x: &[f32], n: usize, cin: usize) -> (Vec<u8>, Vec<f32>) {
    let rb = pack::row_bytes_8bit(cin);
    let mut codes = vec![0u8; n * rb];
    let mut scales = Vec::with_capacity(n);
    for b in 0..n {
        let row = &x[b * cin..(b + 1) * cin];
        let mx = row.iter().fold(0.0f32, |a, &v| a.max(v));
        let s = if mx > 0.0 { mx / 255.0 } else { 1.0 };
        for (d, &v) in codes[b * rb..b * rb + cin].iter_mut().zip(row) {
            *d = crate::quant::round((v / s).clamp(0.0, 255.0)) as u8;
        }
        scales.push(s);
    }
    (codes, scales)
}

/// Logits `[n, out]`.
pub fn forward(
    x: &[f32],
    n: usize,
    cin: usize,
    out: usize,
    w: LinearWeights,
    bias: &[f32],
) -> Result<Vec<f32>, PassError> {
    let mut y = vec![0.0f32; n * out];
    match w {
        LinearWeights::Int8 { rows, scale } => {
            let (codes, rs) = quantize_rows(x, n, cin);
            let p = QGemm {
                m: n,
                n: out,
                row_bytes: pack::row_bytes_8bit(cin),
                a: &codes,
                b: rows,
                alpha: 1.0,
                col_scale: scale,
                ldc: out,
                accumulate: false,
            };
            qmul_kernels::qgemm_u8s8(&p, &mut y)?;
            for (row, s) in y.chunks_mut(out).zip(&rs) {
                row.iter_mut().for_each(|v| *v *= s);
            }
        }
        LinearWeights::F32(wf) => {
            // B(r, j) = W[j][r]: read W transposed through the strides of A instead.
            let p = SGemm {
                m: n,
                n: out,
                k: cin,
                alpha: 1.0,
                a: x,
                a_rs: cin,
                a_cs: 1,
                b: BMat::F32 {
                    data: &super::transpose(wf, out, cin),
                    rs: out,
                },
                beta: 0.0,
                ldc: out,
            };
            qmul_kernels::sgemm(&p, &mut y)?;
        }
    }
    for row in y.chunks_mut(out) {
        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
    }
    Ok(y)
}

/// Gradients of a linear layer: `(dwq, dbias, dx)`.
pub type LinearGrads = (Vec<f32>, Vec<f32>, Vec<f32>);

/// Returns `(dwq, dbias, dx)` for output gradient `dy`.
pub fn backward(
    x: &[f32],
    n: usize,
    cin: usize,
    out: usize,
    w: LinearWeights,
    dy: &[f32],
) -> Result<LinearGrads, PassError> {
    let mut db = vec![0.0f32; out];
    for row in dy.chunks(out) {
        db.iter_mut().zip(row).for_each(|(a, b)| *a += b);
    }
    // The 8-bit path's dW uses the dequantized inputs the forward multiplied.
    let xin: Vec<f32> = match w {
        LinearWeights::Int8 { .. } => {
            let (codes, rs) = quantize_rows(x, n, cin);
            let rb = pack::row_bytes_8bit(cin);
            let mut v = Vec::with_capacity(n * cin);
            for b in 0..n {
                v.extend(
                    codes[b * rb..b * rb + cin]
                        .iter()
                        .map(|&c| c as f32 * rs[b]),
                );
            }
            v
        }
        LinearWeights::F32(_) => x.to_vec(),
    };
    let mut dw = vec![0.0f32; out * cin];
    let p = SGemm {
        m: out,
        n: cin,
        k: n,
        alpha: 1.0,
        a: dy,
        a_rs: 1,
        a_cs: out,
        b: BMat::F32 {
            data: &xin,
            rs: cin,
        },
        beta: 0.0,
        ldc: cin,
    };
    qmul_kernels::sgemm_grad(&p, &mut dw)?;
    let mut dx = vec![0.0f32; n * cin];
    match w {
        LinearWeights::Int8 { rows, scale } => {
            let dys = super::conv::scale_cols(dy, scale);
            let b = BMat::S8 {
                data: bytemuck::cast_slice(rows),
                rs: pack::row_bytes_8bit(cin),
            };
            let p = SGemm {
                m: n,
                n: cin,
                k: out,
                alpha: 1.0,
                a: &dys,
                a_rs: out,
                a_cs: 1,
                b,
                beta: 0.0,
                ldc: cin,
            };
            qmul_kernels::sgemm_grad(&p, &mut dx)?;
        }
        LinearWeights::F32(wf) => {
            let p = SGemm {
                m: n,
                n: cin,
                k: out,
                alpha: 1.0,
                a: dy,
                a_rs: out,
                a_cs: 1,
                b: BMat::F32 { data: wf, rs: cin },
                beta: 0.0,
                ldc: cin,
            };
            qmul_kernels::sgemm_grad(&p, &mut dx)?;
        }
    }
    Ok((dw, db, dx))
}
