//! The GPU kernels against the scalar CPU reference (feature `gpu`).
//!
//! Runs on the first wgpu adapter (lavapipe in CI, installed by `.ci/run`),
//! or on CUDA with `QMUL_GPU_BACKEND=cuda` (`benches/gpu/run.sh`).
//! Without one the tests print why and pass, unless `QMUL_GPU_REQUIRED=1`
//! (set by `.ci/run`), where a missing device is a failure: CI must not go
//! green on a GPU path it never ran.
#![cfg(feature = "gpu")]

use qmul_kernels::cpu::scalar;
use qmul_kernels::gpu::Tile;
use qmul_kernels::{pack, QGemm};

#[path = "common/gpu.rs"]
mod gpu_device;
use gpu_device::gpu;

#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

/// Random operands of an `m x n x k` integer GEMM (`bits` 4 or 8), the
/// padding of every row included (the kernels sum whole rows).
fn operands(
    r: &mut Rng,
    m: usize,
    n: usize,
    k: usize,
    bits: u32,
) -> (usize, Vec<u8>, Vec<u8>, Vec<f32>) {
    let rb = if bits == 4 {
        pack::row_bytes_4bit(k)
    } else {
        pack::row_bytes_8bit(k)
    };
    let a = (0..m * rb).map(|_| r.below(256) as u8).collect();
    let b = (0..n * rb).map(|_| r.below(256) as u8).collect();
    let s = (0..n).map(|_| r.unit() * 0.02 + 1e-4).collect();
    (rb, a, b, s)
}

/// Integer GEMMs, both widths, several tile shapes, shapes with partial
/// tiles in every direction, `ldc > n`: bit for bit the scalar reference,
/// and the outputs the call does not cover left as they were.
#[test]
fn integer_gemms_equal_the_scalar_reference_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let mut r = Rng(7);
    let tiles = [
        Tile::DEFAULT,
        Tile {
            tm: 32,
            tn: 32,
            kw: 2,
            rm: 2,
            rn: 4,
        },
        Tile {
            tm: 16,
            tn: 64,
            kw: 8,
            rm: 1,
            rn: 4,
        },
    ];
    let shapes = [
        (1, 1, 1),
        (7, 5, 33),
        (64, 64, 144),
        (100, 16, 144),
        (65, 130, 288),
        (300, 64, 576),
        (33, 512, 4608),
    ];
    let mut checked = 0;
    for bits in [4u32, 8] {
        for &(m, n, k) in &shapes {
            for tile in tiles {
                let (rb, a, b, s) = operands(&mut r, m, n, k, bits);
                let ldc = n + r.below(3);
                let p = QGemm {
                    m,
                    n,
                    row_bytes: rb,
                    a: &a,
                    b: &b,
                    alpha: 0.37,
                    col_scale: &s,
                    ldc,
                    accumulate: false,
                };
                let len = (m - 1) * ldc + n;
                let mut want = vec![f32::NAN; len];
                let mut got = vec![f32::NAN; len];
                if bits == 4 {
                    scalar::qgemm_u4s4(&p, &mut want).unwrap();
                } else {
                    scalar::qgemm_u8s8(&p, &mut want).unwrap();
                }
                gpu.qgemm(&p, bits, tile, &mut got).unwrap();
                for i in 0..len {
                    assert_eq!(
                        want[i].to_bits(),
                        got[i].to_bits(),
                        "{bits}-bit {m}x{n}x{k} {tile:?}: C[{}][{}] = {} on the GPU, {} on the CPU",
                        i / ldc,
                        i % ldc,
                        got[i],
                        want[i]
                    );
                }
                checked += 1;
            }
        }
    }
    eprintln!("{checked} GEMMs equal bit for bit");
}

/// Bad operands are errors, as on the CPU; nothing panics.
#[test]
fn bad_integer_gemm_calls_are_errors() {
    let Some(gpu) = gpu() else { return };
    let a = vec![0u8; 32];
    let b = vec![0u8; 32];
    let s = vec![1.0f32; 2];
    let p = QGemm {
        m: 2,
        n: 2,
        row_bytes: 16,
        a: &a,
        b: &b,
        alpha: 1.0,
        col_scale: &s,
        ldc: 2,
        accumulate: false,
    };
    let mut c = vec![0.0f32; 4];
    assert!(gpu.qgemm(&p, 3, Tile::DEFAULT, &mut c).is_err());
    assert!(gpu
        .qgemm(
            &QGemm {
                accumulate: true,
                ..p
            },
            4,
            Tile::DEFAULT,
            &mut c
        )
        .is_err());
    assert!(gpu
        .qgemm(&QGemm { m: 3, ..p }, 4, Tile::DEFAULT, &mut c)
        .is_err());
    let bad = Tile {
        tm: 30,
        ..Tile::DEFAULT
    };
    assert!(gpu.qgemm(&p, 4, bad, &mut c).is_err());
    assert!(gpu.qgemm(&p, 4, Tile::DEFAULT, &mut c[..3]).is_err());
}

/// The f32 GEMM with every encoding of `B` (f32, 4- and 8-bit codes signed
/// and unsigned), transposed and strided `A`, `beta` 0 and not, partial
/// tiles, `k` of 0: within the same rounding budget as the CPU variants
/// (`k` roundings of the products' magnitudes), and how many outputs came
/// out bit for bit is printed.
#[test]
fn float_gemms_match_the_scalar_reference() {
    use qmul_kernels::{BMat, SGemm};
    let Some(gpu) = gpu() else { return };
    let mut r = Rng(11);
    let tiles = [
        Tile {
            tm: 64,
            tn: 64,
            kw: 16,
            rm: 4,
            rn: 4,
        },
        Tile {
            tm: 32,
            tn: 16,
            kw: 8,
            rm: 2,
            rn: 2,
        },
    ];
    let shapes = [
        (1, 1, 1),
        (5, 7, 0),
        (9, 33, 17),
        (64, 144, 16),
        (130, 65, 300),
        (16, 576, 1000),
    ];
    let (mut exact, mut total) = (0usize, 0usize);
    for enc in 0..5 {
        for &(m, n, k) in &shapes {
            for tile in tiles {
                let trans = r.below(2) == 1;
                let (a_rs, a_cs) = if trans {
                    (1, m + r.below(3))
                } else {
                    (k + r.below(3), 1)
                };
                let a_len = if k == 0 {
                    1
                } else {
                    (m - 1) * a_rs + (k - 1) * a_cs + 1
                };
                let a: Vec<f32> = (0..a_len).map(|_| r.unit() - 0.5).collect();
                let rs_codes = pack::row_bytes_4bit(n).max(pack::row_bytes_8bit(n));
                let bytes: Vec<u8> = (0..k.max(1) * rs_codes)
                    .map(|_| r.below(256) as u8)
                    .collect();
                let sbytes: Vec<i8> = bytes.iter().map(|&b| b as i8).collect();
                let floats: Vec<f32> = (0..k.max(1) * (n + 2)).map(|_| r.unit() - 0.5).collect();
                let b = match enc {
                    0 => BMat::F32 {
                        data: &floats,
                        rs: n + 2,
                    },
                    1 => BMat::U4 {
                        data: &bytes,
                        rs: rs_codes,
                    },
                    2 => BMat::S4 {
                        data: &bytes,
                        rs: rs_codes,
                    },
                    3 => BMat::U8 {
                        data: &bytes,
                        rs: rs_codes,
                    },
                    _ => BMat::S8 {
                        data: &sbytes,
                        rs: rs_codes,
                    },
                };
                let beta = [0.0f32, 1.0, -0.5][r.below(3)];
                let ldc = n + r.below(2);
                let p = SGemm {
                    m,
                    n,
                    k,
                    alpha: 0.75,
                    a: &a,
                    a_rs,
                    a_cs,
                    b,
                    beta,
                    ldc,
                };
                let len = (m - 1) * ldc + n;
                let c0: Vec<f32> = (0..len).map(|_| r.unit()).collect();
                let (mut want, mut got) = (c0.clone(), c0.clone());
                scalar::sgemm(&p, &mut want).unwrap();
                gpu.sgemm(&p, tile, &mut got).unwrap();
                for i in 0..m {
                    for j in 0..n {
                        let mag: f32 = (0..k)
                            .map(|q| (a[i * a_rs + q * a_cs] * b.get(q, j)).abs())
                            .sum();
                        let at = i * ldc + j;
                        let tol =
                            1e-6 * (k as f32 + 1.0) * (0.75 * mag + (beta * c0[at]).abs()) + 1e-30;
                        assert!(
                            (want[at] - got[at]).abs() <= tol,
                            "enc {enc} {m}x{n}x{k} {tile:?} trans {trans} beta {beta}: C[{i}][{j}] = {} on the GPU, {} on the CPU",
                            got[at],
                            want[at]
                        );
                        exact += (want[at].to_bits() == got[at].to_bits()) as usize;
                        total += 1;
                    }
                }
                // Outside the call's outputs nothing moved (the ldc gaps).
                for i in 0..len {
                    if i % ldc >= n {
                        assert_eq!(got[i].to_bits(), c0[i].to_bits(), "gap {i} written");
                    }
                }
            }
        }
    }
    eprintln!(
        "float GEMMs: {exact} of {total} outputs bit for bit the reference, all within budget"
    );
}
