//! Convolution forward and straight-through backward as im2col GEMMs.
//!
//! Forward multiplies codes in the integer kernels; the backward computes
//! `dX = dY * W_q^T` and `dW_q = X_q^T * dY` in f32 with the code operands widened
//! inside the GEMM, so no f32 copy of a quantized tensor is ever stored. The
//! backward rebuilds the column matrix from the saved input codes instead of
//! keeping it from the forward pass.

use super::im2col::{col2im_add, im2col_f32, im2col_u4, im2col_u8, ConvGeom};
use crate::exec::PassError;
use qmul_kernels::{pack, BMat, QGemm, SGemm};

/// A convolution input in one of the representations the graph produces.
#[derive(Clone, Copy, Debug)]
pub enum ConvInput<'a> {
    /// Tightly packed unsigned 4-bit codes; value = code * scale.
    Codes4 {
        packed: &'a [u8],
        scale: f32,
    },
    /// u8 values; value = byte * scale (pixels: scale 1/255).
    Bytes {
        data: &'a [u8],
        scale: f32,
    },
    F32(&'a [f32]),
}

impl ConvInput<'_> {
    fn kind(&self) -> &'static str {
        match self {
            ConvInput::Codes4 { .. } => "4-bit",
            ConvInput::Bytes { .. } => "8-bit",
            ConvInput::F32(_) => "f32",
        }
    }
}

/// Quantized or float weights of one layer, rows = output channels.
#[derive(Clone, Copy, Debug)]
pub enum ConvWeights<'a> {
    /// Packed signed 4-bit rows of `row_bytes_4bit(kdim)` bytes.
    Int4 { packed: &'a [u8], scale: &'a [f32] },
    /// Signed 8-bit rows of `row_bytes_8bit(kdim)` bytes (as u8 storage).
    Int8 { rows: &'a [u8], scale: &'a [f32] },
    /// `cout x kdim` floats.
    F32(&'a [f32]),
}

impl ConvWeights<'_> {
    fn kind(&self) -> &'static str {
        match self {
            ConvWeights::Int4 { .. } => "4-bit",
            ConvWeights::Int8 { .. } => "8-bit",
            ConvWeights::F32(_) => "f32",
        }
    }
}

/// Output `[m, cout]` (NHWC) of the convolution.
pub fn forward(g: &ConvGeom, x: ConvInput, w: ConvWeights) -> Result<Vec<f32>, PassError> {
    let (m, n, kd) = (g.m(), g.cout, g.kdim());
    let mut out = vec![0.0f32; m * n];
    match (x, w) {
        (
            ConvInput::Codes4 { packed, scale },
            ConvWeights::Int4 {
                packed: wp,
                scale: ws,
            },
        ) => {
            let cols = im2col_u4(g, packed);
            let p = QGemm {
                m,
                n,
                row_bytes: pack::row_bytes_4bit(kd),
                a: &cols,
                b: wp,
                alpha: scale,
                col_scale: ws,
                ldc: n,
                accumulate: false,
            };
            qmul_kernels::qgemm_u4s4(&p, &mut out)?;
        }
        (ConvInput::Bytes { data, scale }, ConvWeights::Int8 { rows, scale: ws }) => {
            let cols = im2col_u8(g, data);
            let p = QGemm {
                m,
                n,
                row_bytes: pack::row_bytes_8bit(kd),
                a: &cols,
                b: rows,
                alpha: scale,
                col_scale: ws,
                ldc: n,
                accumulate: false,
            };
            qmul_kernels::qgemm_u8s8(&p, &mut out)?;
        }
        (x, ConvWeights::F32(wf)) => {
            let xf = to_f32(x, g.n * g.h * g.w * g.cin);
            let cols = im2col_f32(g, &xf);
            let wt = super::transpose(wf, n, kd);
            let p = SGemm {
                m,
                n,
                k: kd,
                alpha: 1.0,
                a: &cols,
                a_rs: kd,
                a_cs: 1,
                b: BMat::F32 { data: &wt, rs: n },
                beta: 0.0,
                ldc: n,
            };
            qmul_kernels::sgemm(&p, &mut out)?;
        }
        (x, w) => {
            return Err(PassError(format!(
                "unsupported conv operand pair: {} input with {} weights",
                x.kind(),
                w.kind()
            )))
        }
    }
    Ok(out)
}

/// Gradients of a convolution: `dwq` (`cout x kdim`, w.r.t. the quantized weight
/// values) and, if `need_dx`, the gradient w.r.t. the input values (NHWC).
pub fn backward(
    g: &ConvGeom,
    x: ConvInput,
    w: ConvWeights,
    dy: &[f32],
    need_dx: bool,
) -> Result<(Vec<f32>, Option<Vec<f32>>), PassError> {
    let (m, n, kd) = (g.m(), g.cout, g.kdim());
    let mut dw = vec![0.0f32; n * kd];
    // dW = X^T * dY, with X the column matrix (codes widened inside the GEMM).
    {
        let (cols_u8, cols_f32);
        let (b, alpha) = match x {
            ConvInput::Codes4 { packed, scale } => {
                cols_u8 = im2col_u4(g, packed);
                (
                    BMat::U4 {
                        data: &cols_u8,
                        rs: pack::row_bytes_4bit(kd),
                    },
                    scale,
                )
            }
            ConvInput::Bytes { data, scale } => {
                cols_u8 = im2col_u8(g, data);
                (
                    BMat::U8 {
                        data: &cols_u8,
                        rs: pack::row_bytes_8bit(kd),
                    },
                    scale,
                )
            }
            ConvInput::F32(xf) => {
                cols_f32 = im2col_f32(g, xf);
                (
                    BMat::F32 {
                        data: &cols_f32,
                        rs: kd,
                    },
                    1.0,
                )
            }
        };
        let p = SGemm {
            m: n,
            n: kd,
            k: m,
            alpha,
            a: dy,
            a_rs: 1,
            a_cs: n,
            b,
            beta: 0.0,
            ldc: kd,
        };
        qmul_kernels::sgemm(&p, &mut dw)?;
    }
    if !need_dx {
        return Ok((dw, None));
    }
    // dX_cols = (dY * diag(scale)) * W_codes, then scatter back with col2im.
    let (b, dys) = match w {
        ConvWeights::Int4 { packed, scale } => (
            BMat::S4 {
                data: packed,
                rs: pack::row_bytes_4bit(kd),
            },
            scale_cols(dy, scale),
        ),
        ConvWeights::Int8 { rows, scale } => (
            BMat::S8 {
                data: bytemuck::cast_slice(rows),
                rs: pack::row_bytes_8bit(kd),
            },
            scale_cols(dy, scale),
        ),
        ConvWeights::F32(wf) => (BMat::F32 { data: wf, rs: kd }, dy.to_vec()),
    };
    // The column gradient is the largest write of a step: give the GEMM a
    // 64-byte-aligned output so full-width vector stores never split cache lines.
    let mut buf = vec![0.0f32; m * kd + 16];
    let off = buf.as_ptr().align_offset(64).min(16);
    let cols = &mut buf[off..off + m * kd];
    let p = SGemm {
        m,
        n: kd,
        k: n,
        alpha: 1.0,
        a: &dys,
        a_rs: n,
        a_cs: 1,
        b,
        beta: 0.0,
        ldc: kd,
    };
    qmul_kernels::sgemm(&p, cols)?;
    let mut dx = vec![0.0f32; g.n * g.h * g.w * g.cin];
    col2im_add(g, cols, kd, &mut dx);
    Ok((dw, Some(dx)))
}

/// `dy[i][j] * s[j]`.
pub fn scale_cols(dy: &[f32], s: &[f32]) -> Vec<f32> {
    // Sized up front: a collected `flat_map` would grow by doubling, up to
    // twice the bytes of the largest buffer of a step (and of the memory plan).
    let mut out = Vec::with_capacity(dy.len());
    for r in dy.chunks(s.len().max(1)) {
        out.extend(r.iter().zip(s).map(|(a, b)| a * b));
    }
    out
}

/// Dequantized f32 copy of any input representation (`len` elements).
pub fn to_f32(x: ConvInput, len: usize) -> Vec<f32> {
    match x {
        ConvInput::F32(v) => v[..len.min(v.len())].to_vec(),
        ConvInput::Bytes { data, scale } => data[..len.min(data.len())]
            .iter()
            .map(|&b| b as f32 * scale)
            .collect(),
        ConvInput::Codes4 { packed, scale } => {
            let mut v = Vec::with_capacity(packed.len() * 2);
            for &b in packed {
                v.push((b & 15) as f32 * scale);
                v.push((b >> 4) as f32 * scale);
            }
            v.truncate(len);
            v
        }
    }
}
