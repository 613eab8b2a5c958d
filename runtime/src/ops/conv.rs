//! Convolution forward and straight-through backward as im2col GEMMs.
//!
//! Forward multiplies codes in the integer kernels; the backward computes
//! `dX = dY * W_q^T` and `dW_q = X_q^T * dY` in f32 (or, with
//! `qmul_kernels::GradPrecision::Bf16`, bf16 operands summed in f32) with the
//! code operands widened inside the GEMM, so no f32 copy of a quantized tensor
//! is ever stored. No column matrix is stored either: the forward, the
//! backward's recompute and `dW` build the columns of one tile of rows at a
//! time from the saved input codes, and `dX` scatters each tile of its column
//! gradient at once, so every tile is produced and consumed in cache.

use super::im2col::{col2im_rows_add, im2col_f32, im2col_u4_rows, im2col_u8_rows, ConvGeom};
use crate::exec::PassError;
use crate::profile::{self, time, Phase};
use qmul_kernels::{pack, BMat, QGemm, SGemm};
use std::time::{Duration, Instant};

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
    if let Some(int) = Int::of(x, w, kd) {
        forward_tiled(g, &int, &mut out)?;
        return Ok(out);
    }
    match (x, w) {
        (x, ConvWeights::F32(wf)) => {
            let xf = to_f32(x, g.n * g.h * g.w * g.cin);
            let cols = time(Phase::Im2col, || im2col_f32(g, &xf));
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
            time(Phase::FloatGemm, || qmul_kernels::sgemm(&p, &mut out))?;
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

/// An integer convolution whose output goes straight through `post` (in
/// the eval forward: BatchNorm with running statistics and the activation
/// quantizer, `post(rows of f32 outputs, their packed codes)`), one tile at a
/// time: the f32 output of the convolution is never stored, only the 4-bit
/// codes `post` writes (half a byte per output). `None` when the operands
/// are not integer or `cout` is odd (the caller then runs the nodes one by
/// one). The GEMM tiles and `post` see the same values as the unfused
/// nodes, so the codes are the same.
pub fn forward_codes(
    g: &ConvGeom,
    x: ConvInput,
    w: ConvWeights,
    post: &(dyn Fn(&[f32], &mut [u8]) + Sync),
) -> Result<Option<Vec<u8>>, PassError> {
    let (m, n, kd) = (g.m(), g.cout, g.kdim());
    if n == 0 || !n.is_multiple_of(2) {
        return Ok(None);
    }
    let Some(int) = Int::of(x, w, kd) else {
        return Ok(None);
    };
    let mut codes = vec![0u8; m * n / 2];
    forward_tiled_post(g, &int, post, &mut codes)?;
    Ok(Some(codes))
}

/// [`forward_tiled`] with each tile's outputs handed to `post` in a buffer
/// of the thread's own (in cache) instead of written to an `m x cout`
/// output; `out` holds `cout / 2` bytes per output row.
fn forward_tiled_post(
    g: &ConvGeom,
    w: &Int,
    post: &(dyn Fn(&[f32], &mut [u8]) + Sync),
    out: &mut [u8],
) -> Result<(), PassError> {
    let n = g.cout;
    let rb = w.row_bytes;
    let tile_rows = forward_tile_rows(rb);
    let on = profile::enabled();
    let wall = Instant::now();
    let parts = crate::par::split_mut(out, n / 2);
    let done = crate::par::map(parts, |(row0, part)| -> Result<[Duration; 3], PassError> {
        let mut spent = [Duration::ZERO; 3];
        let rows = part.len() / (n / 2);
        let tr = tile_rows.min(rows).max(1);
        let mut cols = vec![0u8; tr * rb];
        let mut tile = vec![0.0f32; tr * n];
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + tr).min(rows);
            let t0 = on.then(Instant::now);
            w.fill(g, row0 + r0, row0 + r1, &mut cols);
            let t1 = on.then(Instant::now);
            let p = QGemm {
                m: r1 - r0,
                n,
                row_bytes: rb,
                a: &cols,
                b: w.b,
                alpha: w.alpha,
                col_scale: w.col_scale,
                ldc: n,
                accumulate: false,
            };
            let t = &mut tile[..(r1 - r0) * n];
            (w.gemm)(&p, t)?;
            let t2 = on.then(Instant::now);
            post(t, &mut part[r0 * n / 2..r1 * n / 2]);
            if let (Some(t0), Some(t1), Some(t2)) = (t0, t1, t2) {
                spent[0] += t1 - t0;
                spent[1] += t2 - t1;
                spent[2] += t2.elapsed();
            }
            r0 = r1;
        }
        Ok(spent)
    });
    let spent = done.into_iter().collect::<Result<Vec<_>, PassError>>()?;
    if on {
        let sum = |k: usize| spent.iter().map(|t| t[k]).sum::<Duration>();
        profile::split(
            wall.elapsed(),
            &[
                (Phase::Im2col, sum(0)),
                (Phase::IntGemm, sum(1)),
                (Phase::BatchNorm, sum(2)),
            ],
        );
    }
    Ok(())
}

/// The operands of an integer convolution: the input (4-bit codes or 8-bit
/// bytes, whose columns `fill` builds), the weights' `B` rows and scales,
/// and the single-threaded kernel for their encoding.
struct Int<'a> {
    x: &'a [u8],
    int4: bool,
    row_bytes: usize,
    b: &'a [u8],
    alpha: f32,
    col_scale: &'a [f32],
    gemm: fn(&QGemm, &mut [f32]) -> Result<(), qmul_kernels::ShapeError>,
}

impl<'a> Int<'a> {
    /// The integer operand pairs (4-bit codes with 4-bit weights, 8-bit
    /// inputs with 8-bit weights); `None` for the others.
    fn of(x: ConvInput<'a>, w: ConvWeights<'a>, kd: usize) -> Option<Int<'a>> {
        match (x, w) {
            (
                ConvInput::Codes4 { packed, scale },
                ConvWeights::Int4 {
                    packed: wp,
                    scale: ws,
                },
            ) => Some(Int {
                x: packed,
                int4: true,
                row_bytes: pack::row_bytes_4bit(kd),
                b: wp,
                alpha: scale,
                col_scale: ws,
                gemm: qmul_kernels::qgemm_u4s4_single,
            }),
            (ConvInput::Bytes { data, scale }, ConvWeights::Int8 { rows, scale: ws }) => {
                Some(Int {
                    x: data,
                    int4: false,
                    row_bytes: pack::row_bytes_8bit(kd),
                    b: rows,
                    alpha: scale,
                    col_scale: ws,
                    gemm: qmul_kernels::qgemm_u8s8_single,
                })
            }
            _ => None,
        }
    }

    /// The columns of output rows `r0..r1` into `t`.
    fn fill(&self, g: &ConvGeom, r0: usize, r1: usize, t: &mut [u8]) {
        if self.int4 {
            im2col_u4_rows(g, self.x, r0, r1, t)
        } else {
            im2col_u8_rows(g, self.x, r0, r1, t)
        }
    }
}

/// Bytes of one tile of column rows in [`forward_tiled`] (64 KiB: the tile
/// stays in L2 between im2col writing it and the GEMM reading it).
const FWD_TILE_BYTES: usize = 64 << 10;

/// Rows of one forward tile: at least 256, so that packing the weights once
/// per tile stays small beside the products.
pub fn forward_tile_rows(row_bytes: usize) -> usize {
    (FWD_TILE_BYTES / row_bytes.max(1))
        .max(256)
        .next_multiple_of(8)
}

/// An integer convolution one tile of column rows at a time: each thread
/// owns a contiguous block of output rows and, per tile, builds those rows'
/// columns (`fill`) into a buffer of its own and multiplies them, so the
/// `m x kdim` column matrix is never stored (it was the largest buffer of
/// the forward, and written to memory and read back for every conv). The
/// products are exact integers scaled as before: results are unchanged.
fn forward_tiled(g: &ConvGeom, w: &Int, out: &mut [f32]) -> Result<(), PassError> {
    let n = g.cout;
    let rb = w.row_bytes;
    let tile_rows = forward_tile_rows(rb);
    let on = profile::enabled();
    let wall = Instant::now();
    let parts = crate::par::split_mut(out, n.max(1));
    let done = crate::par::map(parts, |(row0, part)| -> Result<[Duration; 2], PassError> {
        let mut spent = [Duration::ZERO; 2];
        let rows = part.len() / n.max(1);
        let tr = tile_rows.min(rows).max(1);
        let mut cols = vec![0u8; tr * rb];
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + tr).min(rows);
            let t0 = on.then(Instant::now);
            w.fill(g, row0 + r0, row0 + r1, &mut cols);
            let t1 = on.then(Instant::now);
            let p = QGemm {
                m: r1 - r0,
                n,
                row_bytes: rb,
                a: &cols,
                b: w.b,
                alpha: w.alpha,
                col_scale: w.col_scale,
                ldc: n,
                accumulate: false,
            };
            (w.gemm)(&p, &mut part[r0 * n..r1 * n])?;
            if let (Some(t0), Some(t1)) = (t0, t1) {
                spent[0] += t1 - t0;
                spent[1] += t1.elapsed();
            }
            r0 = r1;
        }
        Ok(spent)
    });
    let spent = done.into_iter().collect::<Result<Vec<_>, PassError>>()?;
    if on {
        profile::split_threads(wall.elapsed(), [Phase::Im2col, Phase::IntGemm], &spent);
    }
    Ok(())
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
    // dW = X^T * dY, with X the column matrix (codes widened inside the GEMM):
    // codes one tile of rows at a time (`dw_tiled`), f32 inputs whole.
    match x {
        ConvInput::Codes4 { packed, scale } => {
            let rb = pack::row_bytes_4bit(kd);
            dw_tiled(
                g,
                dy,
                rb,
                true,
                scale,
                &|r0, r1, t| im2col_u4_rows(g, packed, r0, r1, t),
                &mut dw,
            )?;
        }
        ConvInput::Bytes { data, scale } => {
            let rb = pack::row_bytes_8bit(kd);
            dw_tiled(
                g,
                dy,
                rb,
                false,
                scale,
                &|r0, r1, t| im2col_u8_rows(g, data, r0, r1, t),
                &mut dw,
            )?;
        }
        ConvInput::F32(xf) => {
            let cols = time(Phase::Im2col, || im2col_f32(g, xf));
            let p = SGemm {
                m: n,
                n: kd,
                k: m,
                alpha: 1.0,
                a: dy,
                a_rs: 1,
                a_cs: n,
                b: BMat::F32 {
                    data: &cols,
                    rs: kd,
                },
                beta: 0.0,
                ldc: kd,
            };
            time(Phase::FloatGemm, || qmul_kernels::sgemm_grad(&p, &mut dw))?;
        }
    }
    if !need_dx {
        return Ok((dw, None));
    }
    // dX_cols = (dY * diag(scale)) * W_codes, then scatter back with col2im;
    // the scaling is done per tile inside `dx_tiled` (no scaled copy of dY).
    let (b, scale) = match w {
        ConvWeights::Int4 { packed, scale } => (
            BMat::S4 {
                data: packed,
                rs: pack::row_bytes_4bit(kd),
            },
            Some(scale),
        ),
        ConvWeights::Int8 { rows, scale } => (
            BMat::S8 {
                data: bytemuck::cast_slice(rows),
                rs: pack::row_bytes_8bit(kd),
            },
            Some(scale),
        ),
        ConvWeights::F32(wf) => (BMat::F32 { data: wf, rs: kd }, None),
    };
    Ok((dw, Some(dx_tiled(g, dy, scale, b)?)))
}

/// A tile of input columns as the `B` of a `dW` GEMM (codes widened in it).
fn cols_bmat(int4: bool, cols: &[u8], rs: usize) -> BMat<'_> {
    if int4 {
        BMat::U4 { data: cols, rs }
    } else {
        BMat::U8 { data: cols, rs }
    }
}

/// Bytes of one tile of input columns in [`dw_tiled`] (at least 256 rows).
const DW_TILE_BYTES: usize = 64 << 10;

/// Column rows (pixels) of one `dW` tile: a multiple of 256.
pub fn dw_tile_rows(row_bytes: usize) -> usize {
    (DW_TILE_BYTES / row_bytes.max(1))
        .max(256)
        .next_multiple_of(256)
}

/// `dW = alpha * X^T dY` with the reduction over the batch's pixels split
/// into tiles of column rows: the threads take contiguous runs of tiles,
/// build each tile's columns (`fill`) into a buffer of their own, and add
/// its product into a private `dW`; the private sums are then added in
/// thread order. The input columns are never stored whole (they were the
/// backward's largest buffer after the `dX` columns), and each is widened
/// once, by the one thread that uses it.
fn dw_tiled(
    g: &ConvGeom,
    dy: &[f32],
    rb: usize,
    int4: bool,
    alpha: f32,
    fill: &(dyn Fn(usize, usize, &mut [u8]) + Sync),
    dw: &mut [f32],
) -> Result<(), PassError> {
    let (m, n, kd) = (g.m(), g.cout, g.kdim());
    let tr = dw_tile_rows(rb);
    let tiles = m.div_ceil(tr);
    let threads = qmul_kernels::par::threads();
    if dw_splits_rows(n, kd) {
        return dw_tiled_rows(g, dy, rb, int4, alpha, fill, dw);
    }
    let t = threads.min(tiles).max(1);
    let per = tiles.div_ceil(t);
    let groups: Vec<(usize, usize)> = (0..tiles)
        .step_by(per.max(1))
        .map(|t0| (t0, (t0 + per).min(tiles)))
        .collect();
    let on = profile::enabled();
    let wall = Instant::now();
    let done = crate::par::map(
        groups,
        |(t0, t1)| -> Result<(Vec<f32>, [Duration; 2]), PassError> {
            let mut spent = [Duration::ZERO; 2];
            let mut acc = vec![0.0f32; n * kd];
            let mut cols = vec![0u8; tr.min(m) * rb];
            for ti in t0..t1 {
                let (r0, r1) = (ti * tr, ((ti + 1) * tr).min(m));
                let c0 = on.then(Instant::now);
                fill(r0, r1, &mut cols);
                let c1 = on.then(Instant::now);
                let b = cols_bmat(int4, &cols, rb);
                let p = SGemm {
                    m: n,
                    n: kd,
                    k: r1 - r0,
                    alpha,
                    a: &dy[r0 * n..],
                    a_rs: 1,
                    a_cs: n,
                    b,
                    beta: if ti == t0 { 0.0 } else { 1.0 },
                    ldc: kd,
                };
                qmul_kernels::sgemm_grad_single(&p, &mut acc)?;
                if let (Some(c0), Some(c1)) = (c0, c1) {
                    spent[0] += c1 - c0;
                    spent[1] += c1.elapsed();
                }
            }
            Ok((acc, spent))
        },
    );
    let mut spent = Vec::new();
    for (k, d) in done.into_iter().enumerate() {
        let (acc, sp) = d?;
        spent.push(sp);
        if k == 0 {
            dw.copy_from_slice(&acc);
        } else {
            dw.iter_mut().zip(&acc).for_each(|(a, b)| *a += b);
        }
    }
    if on {
        profile::split_threads(wall.elapsed(), [Phase::Im2col, Phase::FloatGemm], &spent);
    }
    Ok(())
}

/// Bytes of the per-thread private `dW` sums above which [`dw_tiled`] splits
/// the output rows among the threads instead of the reduction: the late
/// layers' gradients (`512 x 4608` floats at width 64, 9.4 MB) would
/// otherwise be held once per thread, more than a layer's saved activations.
const DW_PRIVATE_BYTES: usize = 1 << 20;

/// Whether [`dw_tiled`] splits the `n x kd` gradient's rows among the threads
/// (no private sums) rather than the reduction (one private sum per thread).
pub fn dw_splits_rows(n: usize, kd: usize) -> bool {
    let t = qmul_kernels::par::threads();
    t > 1 && t * n * kd * 4 > DW_PRIVATE_BYTES && n >= 16 * t
}

/// [`dw_tiled`] for layers with many output channels: each thread owns a run
/// of `dW` rows and goes over every tile of the reduction itself (building
/// the tile's columns again: cheap beside the `rows x kdim` products it
/// feeds), so no private copy of `dW` exists, and every gradient is summed
/// over the tiles in order, whatever the thread count.
fn dw_tiled_rows(
    g: &ConvGeom,
    dy: &[f32],
    rb: usize,
    int4: bool,
    alpha: f32,
    fill: &(dyn Fn(usize, usize, &mut [u8]) + Sync),
    dw: &mut [f32],
) -> Result<(), PassError> {
    let (m, n, kd) = (g.m(), g.cout, g.kdim());
    let tr = dw_tile_rows(rb);
    let threads = qmul_kernels::par::threads();
    let rows = n.div_ceil(threads).next_multiple_of(8);
    let parts: Vec<(usize, &mut [f32])> = dw
        .chunks_mut(rows * kd)
        .enumerate()
        .map(|(i, c)| (i * rows, c))
        .collect();
    let on = profile::enabled();
    let wall = Instant::now();
    let done = crate::par::map(parts, |(c0, part)| -> Result<[Duration; 2], PassError> {
        let mut spent = [Duration::ZERO; 2];
        let mut cols = vec![0u8; tr.min(m) * rb];
        let mut r0 = 0;
        while r0 < m {
            let r1 = (r0 + tr).min(m);
            let t0 = on.then(Instant::now);
            fill(r0, r1, &mut cols);
            let t1 = on.then(Instant::now);
            let b = cols_bmat(int4, &cols, rb);
            let p = SGemm {
                m: part.len() / kd,
                n: kd,
                k: r1 - r0,
                alpha,
                a: &dy[r0 * n + c0..],
                a_rs: 1,
                a_cs: n,
                b,
                beta: if r0 == 0 { 0.0 } else { 1.0 },
                ldc: kd,
            };
            qmul_kernels::sgemm_grad_single(&p, part)?;
            if let (Some(t0), Some(t1)) = (t0, t1) {
                spent[0] += t1 - t0;
                spent[1] += t1.elapsed();
            }
            r0 = r1;
        }
        Ok(spent)
    });
    let spent = done.into_iter().collect::<Result<Vec<_>, PassError>>()?;
    if on {
        profile::split_threads(wall.elapsed(), [Phase::Im2col, Phase::FloatGemm], &spent);
    }
    Ok(())
}

/// Floats of one tile of the column gradient in [`dx_tiled`] (256 KiB: a tile
/// stays in the core's L2 between the GEMM writing it and col2im reading it).
const DX_TILE_FLOATS: usize = 1 << 16;

/// `dX = col2im((dY diag(scale)) * W)` one tile of column rows at a time:
/// each thread owns whole images of `dX` (so the scatter of neighbouring rows
/// never races) and turns each tile into input gradients before computing the
/// next, so the backward's scratch is one tile per thread instead of the
/// `m x kdim` column matrix, the largest buffer of a step before. The weight
/// scales (`scale`, one per output channel) are applied to each tile's rows of
/// `dY` in a buffer of `tile x cout` floats, not to a scaled copy of all of
/// `dY` (the same products, so the same results).
fn dx_tiled(
    g: &ConvGeom,
    dy: &[f32],
    scale: Option<&[f32]>,
    b: BMat,
) -> Result<Vec<f32>, PassError> {
    let (n, kd) = (g.cout, g.kdim());
    let img = g.h * g.w * g.cin;
    let rows_per_img = g.oh() * g.ow();
    // Rows per tile: the column tile within DX_TILE_FLOATS, and the tile's
    // scaled rows of dY within a quarter of that (1x1 convolutions have
    // `kdim < cout`).
    let tile_rows = (DX_TILE_FLOATS / kd.max(1))
        .min(DX_TILE_FLOATS / 4 / n.max(1))
        .max(1);
    let on = profile::enabled();
    let wall = Instant::now();
    let mut dx = vec![0.0f32; g.n * img];
    let parts = crate::par::split_mut(&mut dx, img.max(1));
    let done = crate::par::map(parts, |(b0, part)| -> Result<[Duration; 2], PassError> {
        let mut spent = [Duration::ZERO; 2];
        let sub = ConvGeom {
            n: part.len() / img.max(1),
            ..*g
        };
        let rows = sub.m();
        let tr = tile_rows.min(rows).max(1);
        // 64-byte aligned, so full-width vector stores never split cache lines.
        let mut buf = vec![0.0f32; tr * kd + 16];
        let off = buf.as_ptr().align_offset(64).min(16);
        let tile = &mut buf[off..off + tr * kd];
        let a = &dy[b0 * rows_per_img * n..];
        let mut scaled = vec![0.0f32; if scale.is_some() { tr * n } else { 0 }];
        let mut r0 = 0;
        while r0 < rows {
            let r1 = (r0 + tr).min(rows);
            let rows_dy = &a[r0 * n..r1 * n];
            let a_tile = match scale {
                Some(s) => {
                    let sc = &mut scaled[..rows_dy.len()];
                    scale_cols_into(rows_dy, s, sc);
                    &*sc
                }
                None => rows_dy,
            };
            let p = SGemm {
                m: r1 - r0,
                n: kd,
                k: n,
                alpha: 1.0,
                a: a_tile,
                a_rs: n,
                a_cs: 1,
                b,
                beta: 0.0,
                ldc: kd,
            };
            let t = &mut tile[..(r1 - r0) * kd];
            let t0 = on.then(Instant::now);
            qmul_kernels::sgemm_grad_single(&p, t)?;
            let t1 = on.then(Instant::now);
            col2im_rows_add(&sub, r0, r1, t, kd, part);
            if let (Some(t0), Some(t1)) = (t0, t1) {
                spent[0] += t1 - t0;
                spent[1] += t1.elapsed();
            }
            r0 = r1;
        }
        Ok(spent)
    });
    let spent = done.into_iter().collect::<Result<Vec<_>, PassError>>()?;
    if on {
        profile::split_threads(wall.elapsed(), [Phase::FloatGemm, Phase::Col2im], &spent);
    }
    Ok(dx)
}

/// `out[i][j] = dy[i][j] * s[j]` (rows of `s.len()` values).
fn scale_cols_into(dy: &[f32], s: &[f32], out: &mut [f32]) {
    for (o, r) in out
        .chunks_mut(s.len().max(1))
        .zip(dy.chunks(s.len().max(1)))
    {
        o.iter_mut()
            .zip(r.iter().zip(s))
            .for_each(|(o, (a, b))| *o = a * b);
    }
}

/// `dy[i][j] * s[j]`.
pub fn scale_cols(dy: &[f32], s: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; dy.len()];
    scale_cols_into(dy, s, &mut out);
    out
}

/// Dequantized f32 copy of any input representation (`len` elements).
pub fn to_f32(x: ConvInput, len: usize) -> Vec<f32> {
    match x {
        ConvInput::F32(v) => v[..len.min(v.len())].to_vec(),
        ConvInput::Bytes { data, scale } => {
            let data = &data[..len.min(data.len())];
            let mut v = vec![0.0f32; data.len()];
            bytes_to_f32(data, scale, &mut v);
            v
        }
        ConvInput::Codes4 { packed, scale } => {
            let len = len.min(packed.len() * 2);
            let mut v = vec![0.0f32; len];
            codes_to_f32(&packed[..len.div_ceil(2)], scale, &mut v);
            v
        }
    }
}

crate::simd::multiversion! {
    fn bytes_to_f32(data: &[u8], scale: f32, out: &mut [f32]) {
        for (o, &b) in out.iter_mut().zip(data) {
            *o = b as f32 * scale;
        }
    }
}

crate::simd::multiversion! {
    /// Unpacks nibbles (low first) times `scale` into `out` (`out.len()` codes).
    fn codes_to_f32(packed: &[u8], scale: f32, out: &mut [f32]) {
        let mut pairs = out.chunks_exact_mut(2);
        for (o, &b) in (&mut pairs).zip(packed) {
            o[0] = (b & 15) as f32 * scale;
            o[1] = (b >> 4) as f32 * scale;
        }
        if let ([last], Some(&b)) = (pairs.into_remainder(), packed.last()) {
            *last = (b & 15) as f32 * scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::im2col::col2im_add;

    /// The tiled `dX` equals the whole-column-matrix computation it replaced
    /// (one GEMM over every row, then col2im) bit for bit: each output row of
    /// the GEMM reduces over the same `k` in the same order, and col2im adds
    /// rows in the same order, so no result of the backward moved. Both sides
    /// use the gradient GEMM in the process's precision (f32 or bf16), so the
    /// test holds in either and changes no process-wide setting.
    #[test]
    fn tiled_dx_equals_the_column_matrix_path_exactly() {
        let mut r = crate::rng::Rng::new(11);
        for &(n, h, cin, cout, k, stride, pad) in &[
            (3, 28, 16, 16, 3, 1, 1),
            (5, 14, 32, 64, 3, 2, 1),
            (7, 4, 128, 128, 3, 1, 1),
            (4, 8, 16, 32, 1, 2, 0),
            (2, 9, 3, 8, 3, 1, 1),
        ] {
            let g = ConvGeom {
                n,
                h,
                w: h,
                cin,
                cout,
                k,
                stride,
                pad,
            };
            let (m, kd) = (g.m(), g.kdim());
            let rb = pack::row_bytes_4bit(kd);
            let w: Vec<u8> = (0..cout * rb).map(|_| r.below(256) as u8).collect();
            let dys: Vec<f32> = (0..m * cout).map(|_| r.uniform() as f32 - 0.5).collect();
            let b = BMat::S4 { data: &w, rs: rb };
            let mut cols = vec![0.0f32; m * kd];
            let p = SGemm {
                m,
                n: kd,
                k: cout,
                alpha: 1.0,
                a: &dys,
                a_rs: cout,
                a_cs: 1,
                b,
                beta: 0.0,
                ldc: kd,
            };
            qmul_kernels::sgemm_grad(&p, &mut cols).unwrap();
            let mut want = vec![0.0f32; n * h * h * cin];
            col2im_add(&g, &cols, kd, &mut want);
            let got = dx_tiled(&g, &dys, None, b).unwrap();
            assert!(
                want.iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{g:?}"
            );
            // The per-tile weight scaling equals scaling all of dY first.
            let s: Vec<f32> = (0..cout).map(|_| r.uniform() as f32 + 0.01).collect();
            let whole = dx_tiled(&g, &scale_cols(&dys, &s), None, b).unwrap();
            let tiled = dx_tiled(&g, &dys, Some(&s), b).unwrap();
            assert!(
                whole
                    .iter()
                    .zip(&tiled)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "scaled {g:?}"
            );
        }
    }

    /// Both splits of `dW` (the reduction over private sums, the output rows
    /// over the threads) against the tiles summed in order on one thread: the
    /// row split exactly, the reduction split within float rounding.
    #[test]
    fn dw_splits_agree_with_the_tiles_summed_in_order() {
        let mut r = crate::rng::Rng::new(5);
        for &(n, h, cin, cout) in &[(6, 16, 16, 64), (3, 8, 32, 96), (2, 5, 8, 40)] {
            let g = ConvGeom {
                n,
                h,
                w: h,
                cin,
                cout,
                k: 3,
                stride: 1,
                pad: 1,
            };
            let (m, kd) = (g.m(), g.kdim());
            let rb = pack::row_bytes_4bit(kd);
            let x: Vec<u8> = (0..n * h * h * cin / 2)
                .map(|_| r.below(256) as u8)
                .collect();
            let dy: Vec<f32> = (0..m * cout).map(|_| r.uniform() as f32 - 0.5).collect();
            let fill = |r0: usize, r1: usize, t: &mut [u8]| im2col_u4_rows(&g, &x, r0, r1, t);
            let tr = dw_tile_rows(rb);
            let mut want = vec![0.0f32; cout * kd];
            let mut cols = vec![0u8; tr.min(m) * rb];
            for r0 in (0..m).step_by(tr) {
                let r1 = (r0 + tr).min(m);
                fill(r0, r1, &mut cols);
                let p = SGemm {
                    m: cout,
                    n: kd,
                    k: r1 - r0,
                    alpha: 0.25,
                    a: &dy[r0 * cout..],
                    a_rs: 1,
                    a_cs: cout,
                    b: BMat::U4 {
                        data: &cols,
                        rs: rb,
                    },
                    beta: if r0 == 0 { 0.0 } else { 1.0 },
                    ldc: kd,
                };
                qmul_kernels::sgemm_grad_single(&p, &mut want).unwrap();
            }
            let mut rows = vec![f32::NAN; cout * kd];
            dw_tiled_rows(&g, &dy, rb, true, 0.25, &fill, &mut rows).unwrap();
            assert!(
                want.iter()
                    .zip(&rows)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "rows {g:?}"
            );
            let mut red = vec![f32::NAN; cout * kd];
            dw_tiled(&g, &dy, rb, true, 0.25, &fill, &mut red).unwrap();
            let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            assert!(
                want.iter()
                    .zip(&red)
                    .all(|(a, b)| (a - b).abs() <= 1e-5 * scale),
                "reduction {g:?}"
            );
        }
    }

    /// The eval forward's fused path (conv, BatchNorm with running
    /// statistics, quantizer, a tile at a time) gives exactly the codes of
    /// the conv output stored whole and then `bn::apply_codes`.
    #[test]
    fn fused_eval_codes_equal_the_nodes_one_by_one() {
        use crate::ops::bn;
        let mut r = crate::rng::Rng::new(9);
        for &(n, h, cin, cout, stride, int4) in &[
            (4, 28, 16, 16, 1, true),
            (3, 14, 32, 64, 2, true),
            (2, 9, 8, 24, 1, true),
            (5, 28, 1, 16, 1, false),
        ] {
            let g = ConvGeom {
                n,
                h,
                w: h,
                cin,
                cout,
                k: 3,
                stride,
                pad: 1,
            };
            let kd = g.kdim();
            let scales: Vec<f32> = (0..cout).map(|_| r.uniform() as f32 * 0.1 + 0.01).collect();
            let (wbytes, xbytes) = if int4 {
                (cout * pack::row_bytes_4bit(kd), n * h * h * cin / 2)
            } else {
                (cout * pack::row_bytes_8bit(kd), n * h * h * cin)
            };
            let wb: Vec<u8> = (0..wbytes).map(|_| r.below(256) as u8).collect();
            let xb: Vec<u8> = (0..xbytes).map(|_| r.below(256) as u8).collect();
            let (x, w) = if int4 {
                (
                    ConvInput::Codes4 {
                        packed: &xb,
                        scale: 0.3,
                    },
                    ConvWeights::Int4 {
                        packed: &wb,
                        scale: &scales,
                    },
                )
            } else {
                (
                    ConvInput::Bytes {
                        data: &xb,
                        scale: 1.0 / 255.0,
                    },
                    ConvWeights::Int8 {
                        rows: &wb,
                        scale: &scales,
                    },
                )
            };
            let mean: Vec<f32> = (0..cout).map(|_| r.uniform() as f32 - 0.5).collect();
            let var: Vec<f32> = (0..cout).map(|_| r.uniform() as f32 + 0.1).collect();
            let gamma: Vec<f32> = (0..cout).map(|_| r.uniform() as f32 + 0.5).collect();
            let beta: Vec<f32> = (0..cout).map(|_| r.uniform() as f32 - 0.5).collect();
            let st = bn::eval_stats(&mean, &var);
            let inv = 15.0 / 2.0;
            let y = forward(&g, x, w).unwrap();
            let want = bn::apply_codes(&y, &gamma, &beta, &st, inv);
            let (a, b) = bn::affine(&gamma, &beta, &st);
            let post = |t: &[f32], o: &mut [u8]| bn::codes_of_rows(t, &a, &b, inv, o);
            let got = forward_codes(&g, x, w, &post).unwrap().unwrap();
            assert_eq!(got, want, "{g:?}");
            assert!(
                want.iter().any(|&c| c != 0 && c != 0xff),
                "degenerate codes {g:?}"
            );
        }
    }
}
