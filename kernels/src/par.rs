//! Splitting one GEMM across the machine's cores.
//!
//! Work is split into contiguous blocks of output rows when there are enough
//! rows. The weight-gradient GEMMs have few rows (one per output channel) and a
//! long reduction (every pixel of the batch): those split the reduction into
//! private partial sums that are added at the end. Other few-row problems split
//! the output columns. Threads come from `std::thread::scope`, one
//! per block; the count is `QMUL_THREADS` or the available parallelism. Small
//! problems run on the calling thread, where spawning would cost more than it saves.

use crate::cpu::{KernelSet, QGemmFn};
use crate::{QGemm, SGemm};
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

pub(crate) fn qgemm(_k: &KernelSet, p: &QGemm, c: &mut [f32], f: QGemmFn) {
    let t = threads();
    let macs = p.m * p.n * p.row_bytes * 2;
    if t <= 1 || macs < MIN_PARALLEL_MACS || p.m == 0 || p.n == 0 {
        return f(p, c);
    }
    if p.m >= 2 * t {
        let rs = ranges(p.m, t, 1);
        std::thread::scope(|s| {
            let mut rest = c;
            for &(i0, i1) in &rs {
                let len = if i1 == p.m {
                    rest.len()
                } else {
                    (i1 - i0) * p.ldc
                };
                let (mine, tail) = rest.split_at_mut(len.min(rest.len()));
                rest = tail;
                let q = QGemm {
                    m: i1 - i0,
                    a: &p.a[i0 * p.row_bytes..],
                    ..*p
                };
                s.spawn(move || f(&q, mine));
            }
        });
    } else {
        // Few rows: split columns into private buffers, then copy back.
        let rs = ranges(p.n, t, 1);
        let parts: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = rs
                .iter()
                .map(|&(j0, j1)| {
                    let nj = j1 - j0;
                    let mut buf = vec![0.0f32; p.m * nj];
                    if p.accumulate {
                        for i in 0..p.m {
                            buf[i * nj..(i + 1) * nj]
                                .copy_from_slice(&c[i * p.ldc + j0..i * p.ldc + j1]);
                        }
                    }
                    let q = QGemm {
                        n: nj,
                        b: &p.b[j0 * p.row_bytes..],
                        col_scale: &p.col_scale[j0..],
                        ldc: nj,
                        ..*p
                    };
                    s.spawn(move || {
                        f(&q, &mut buf);
                        buf
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("kernel thread panicked"))
                .collect()
        });
        for (&(j0, j1), buf) in rs.iter().zip(parts) {
            let nj = j1 - j0;
            for i in 0..p.m {
                c[i * p.ldc + j0..i * p.ldc + j1].copy_from_slice(&buf[i * nj..(i + 1) * nj]);
            }
        }
    }
}

pub(crate) fn sgemm(k: &KernelSet, p: &SGemm, c: &mut [f32]) {
    let f = k.sgemm;
    let t = threads();
    let macs = p.m * p.n * p.k;
    if t <= 1 || macs < MIN_PARALLEL_MACS || p.m == 0 || p.n == 0 {
        return f(p, c);
    }
    if p.m >= 8 * t {
        let rs = ranges(p.m, t, 1);
        std::thread::scope(|s| {
            let mut rest = c;
            for &(i0, i1) in &rs {
                let len = if i1 == p.m {
                    rest.len()
                } else {
                    (i1 - i0) * p.ldc
                };
                let (mine, tail) = rest.split_at_mut(len.min(rest.len()));
                rest = tail;
                let q = SGemm {
                    m: i1 - i0,
                    a: &p.a[i0 * p.a_rs..],
                    ..*p
                };
                s.spawn(move || f(&q, mine));
            }
        });
    } else if p.k >= 8 * p.n.max(p.m) {
        // Few rows and a long reduction (weight gradients: k = pixels of the
        // batch): split the reduction, each thread summing into a private C, then
        // add the partial sums. Every thread streams only its share of A and B.
        let rs = ranges(p.k, t, 1);
        let (m, n) = (p.m, p.n);
        let parts: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = rs
                .iter()
                .map(|&(r0, r1)| {
                    let q = SGemm {
                        k: r1 - r0,
                        a: &p.a[r0 * p.a_cs..],
                        b: p.b.skip_rows(r0),
                        beta: 0.0,
                        ldc: n,
                        ..*p
                    };
                    s.spawn(move || {
                        let mut buf = vec![0.0f32; m * n];
                        f(&q, &mut buf);
                        buf
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("kernel thread panicked"))
                .collect()
        });
        for i in 0..m {
            let row = &mut c[i * p.ldc..i * p.ldc + n];
            for (j, v) in row.iter_mut().enumerate() {
                let sum: f32 = parts.iter().map(|b| b[i * n + j]).sum();
                *v = if p.beta == 0.0 {
                    sum
                } else {
                    sum + p.beta * *v
                };
            }
        }
    } else {
        // Columns in multiples of 32 keep packed 4-bit offsets on whole bytes.
        let rs = ranges(p.n, t, 32);
        let parts: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = rs
                .iter()
                .map(|&(j0, j1)| {
                    let nj = j1 - j0;
                    let mut buf = vec![0.0f32; p.m * nj];
                    if p.beta != 0.0 {
                        for i in 0..p.m {
                            buf[i * nj..(i + 1) * nj]
                                .copy_from_slice(&c[i * p.ldc + j0..i * p.ldc + j1]);
                        }
                    }
                    let q = SGemm {
                        n: nj,
                        b: p.b.skip_cols(j0),
                        ldc: nj,
                        ..*p
                    };
                    s.spawn(move || {
                        f(&q, &mut buf);
                        buf
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("kernel thread panicked"))
                .collect()
        });
        for (&(j0, j1), buf) in rs.iter().zip(parts) {
            let nj = j1 - j0;
            for i in 0..p.m {
                c[i * p.ldc + j0..i * p.ldc + j1].copy_from_slice(&buf[i * nj..(i + 1) * nj]);
            }
        }
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
