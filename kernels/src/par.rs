//! Splitting one GEMM across the machine's cores.
//!
//! Work is split into contiguous blocks of output rows when there are enough
//! rows. The weight-gradient GEMMs have few rows (one per output channel) and a
//! long reduction (every pixel of the batch): those split the reduction into
//! private partial sums that are added at the end. Other few-row problems split
//! the output columns. Each block is a task of the persistent worker pool
//! ([`crate::pool`]); the thread count is `QMUL_THREADS` or the available parallelism. Small
//! problems run on the calling thread, where spawning would cost more than it saves.

use crate::cpu::{QGemmFn, SGemmFn};
use crate::{QGemm, SGemm, ShapeError};
use std::sync::OnceLock;

/// Multiply-accumulates below which a GEMM stays on one thread.
const MIN_PARALLEL_MACS: usize = 1 << 18;

/// Threads used by the kernels: `QMUL_THREADS`, or the available parallelism.
pub fn threads() -> usize {
    static T: OnceLock<usize> = OnceLock::new();
    *T.get_or_init(|| {
        std::env::var("QMUL_THREADS")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|&t| t > 0)
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
    })
}

/// Splits `len` into at most `parts` contiguous ranges whose starts are multiples of `align`.
fn ranges(len: usize, parts: usize, align: usize) -> Vec<(usize, usize)> {
    let chunk = len.div_ceil(parts).div_ceil(align) * align;
    let mut v = Vec::new();
    let mut s = 0;
    while s < len {
        let e = (s + chunk).min(len);
        v.push((s, e));
        s = e;
    }
    v
}

/// Runs `f(i0, i1, rows)` on contiguous blocks of C's rows, one task each on
/// the worker pool; the first error any block returned, if one did.
fn split_rows(
    m: usize,
    ldc: usize,
    c: &mut [f32],
    t: usize,
    f: impl Fn(usize, usize, &mut [f32]) -> Result<(), ShapeError> + Sync,
) -> Result<(), ShapeError> {
    let mut rest = c;
    let mut blocks = Vec::new();
    for (i0, i1) in ranges(m, t, 1) {
        let len = if i1 == m { rest.len() } else { (i1 - i0) * ldc };
        let (mine, tail) = rest.split_at_mut(len.min(rest.len()));
        rest = tail;
        blocks.push((i0, i1, mine));
    }
    crate::pool::map(blocks, |(i0, i1, rows)| f(i0, i1, rows))
        .into_iter()
        .collect()
}

/// Runs `f(part, buf)` for each part as a pool task, `buf` being a private
/// zeroed (or, with `init`, pre-filled) `rows x cols(part)` output, and returns
/// the buffers in order. Used where the threads' outputs would interleave in C.
fn private_outputs(
    parts: &[(usize, usize)],
    rows: usize,
    cols: impl Fn((usize, usize)) -> usize,
    init: impl Fn((usize, usize), &mut [f32]),
    f: impl Fn((usize, usize), &mut [f32]) -> Result<(), ShapeError> + Sync,
) -> Result<Vec<Vec<f32>>, ShapeError> {
    let items: Vec<_> = parts
        .iter()
        .map(|&part| {
            let mut buf = vec![0.0f32; rows * cols(part)];
            init(part, &mut buf);
            (part, buf)
        })
        .collect();
    crate::pool::map(items, |(part, mut buf)| f(part, &mut buf).map(|()| buf))
        .into_iter()
        .collect()
}

/// Copies C's columns `j0..j1` into a `m x (j1 - j0)` buffer.
fn read_cols(c: &[f32], ldc: usize, m: usize, (j0, j1): (usize, usize), buf: &mut [f32]) {
    let nj = j1 - j0;
    for i in 0..m {
        buf[i * nj..(i + 1) * nj].copy_from_slice(&c[i * ldc + j0..i * ldc + j1]);
    }
}

/// Copies a `m x (j1 - j0)` buffer into C's columns `j0..j1`.
fn write_cols(c: &mut [f32], ldc: usize, m: usize, (j0, j1): (usize, usize), buf: &[f32]) {
    let nj = j1 - j0;
    for i in 0..m {
        c[i * ldc + j0..i * ldc + j1].copy_from_slice(&buf[i * nj..(i + 1) * nj]);
    }
}

pub(crate) fn qgemm(p: &QGemm, c: &mut [f32], f: QGemmFn) -> Result<(), ShapeError> {
    let t = threads();
    let macs = p.m * p.n * p.row_bytes * 2;
    if t <= 1 || macs < MIN_PARALLEL_MACS || p.m == 0 || p.n == 0 {
        return f(p, c);
    }
    if p.m >= 2 * t {
        split_rows(p.m, p.ldc, c, t, |i0, i1, rows| {
            f(
                &QGemm {
                    m: i1 - i0,
                    a: &p.a[i0 * p.row_bytes..],
                    ..*p
                },
                rows,
            )
        })
    } else {
        // Few rows: split columns into private buffers, then copy back.
        let parts = ranges(p.n, t, 1);
        let old: &[f32] = c;
        let bufs = private_outputs(
            &parts,
            p.m,
            |(j0, j1)| j1 - j0,
            |part, buf| {
                if p.accumulate {
                    read_cols(old, p.ldc, p.m, part, buf)
                }
            },
            |(j0, j1), buf| {
                let q = QGemm {
                    n: j1 - j0,
                    b: &p.b[j0 * p.row_bytes..],
                    col_scale: &p.col_scale[j0..],
                    ldc: j1 - j0,
                    ..*p
                };
                f(&q, buf)
            },
        )?;
        for (&part, buf) in parts.iter().zip(bufs) {
            write_cols(c, p.ldc, p.m, part, &buf);
        }
        Ok(())
    }
}

/// `f` (one variant's single-threaded f32 or bf16 GEMM) split across the
/// pool like [`crate::sgemm`] (public so benches can time any variant).
pub fn sgemm_with(f: SGemmFn, p: &SGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    p.check(c.len())?;
    sgemm(f, p, c)
}

pub(crate) fn sgemm(f: SGemmFn, p: &SGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    let t = threads();
    let macs = p.m * p.n * p.k;
    if t <= 1 || macs < MIN_PARALLEL_MACS || p.m == 0 || p.n == 0 {
        return f(p, c);
    }
    if p.m >= 8 * t {
        split_rows(p.m, p.ldc, c, t, |i0, i1, rows| {
            f(
                &SGemm {
                    m: i1 - i0,
                    a: &p.a[i0 * p.a_rs..],
                    ..*p
                },
                rows,
            )
        })
    } else if p.k >= 8 * p.n.max(p.m) {
        // Few rows and a long reduction (weight gradients: k = pixels of the
        // batch): split the reduction, each thread summing into a private C, then
        // add the partial sums. Every thread streams only its share of A and B.
        let (m, n) = (p.m, p.n);
        let parts = ranges(p.k, t, 1);
        let bufs = private_outputs(
            &parts,
            m,
            |_| n,
            |_, _| {},
            |(r0, r1), buf| {
                let q = SGemm {
                    k: r1 - r0,
                    a: &p.a[r0 * p.a_cs..],
                    b: p.b.skip_rows(r0),
                    beta: 0.0,
                    ldc: n,
                    ..*p
                };
                f(&q, buf)
            },
        )?;
        for i in 0..m {
            for (j, v) in c[i * p.ldc..i * p.ldc + n].iter_mut().enumerate() {
                let sum: f32 = bufs.iter().map(|b| b[i * n + j]).sum();
                *v = if p.beta == 0.0 {
                    sum
                } else {
                    sum + p.beta * *v
                };
            }
        }
        Ok(())
    } else {
        // Columns in multiples of 32 keep packed 4-bit offsets on whole bytes.
        let parts = ranges(p.n, t, 32);
        let old: &[f32] = c;
        let bufs = private_outputs(
            &parts,
            p.m,
            |(j0, j1)| j1 - j0,
            |part, buf| {
                if p.beta != 0.0 {
                    read_cols(old, p.ldc, p.m, part, buf)
                }
            },
            |(j0, j1), buf| {
                f(
                    &SGemm {
                        n: j1 - j0,
                        b: p.b.skip_cols(j0),
                        ldc: j1 - j0,
                        ..*p
                    },
                    buf,
                )
            },
        )?;
        for (&part, buf) in parts.iter().zip(bufs) {
            write_cols(c, p.ldc, p.m, part, &buf);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::ranges;

    #[test]
    fn ranges_cover_and_align() {
        assert_eq!(ranges(100, 2, 32), vec![(0, 64), (64, 100)]);
        assert_eq!(ranges(5, 2, 1), vec![(0, 3), (3, 5)]);
        assert_eq!(ranges(1, 4, 1), vec![(0, 1)]);
    }
}
