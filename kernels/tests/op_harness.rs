//! The op harness: every kernel variant this CPU supports, run on random inputs
//! and compared with the scalar reference.
//!
//! * `qgemm_u4s4` and `qgemm_u8s8` accumulate exactly in i32 and scale with the
//!   same f32 operations as the reference, so their outputs must be bitwise equal.
//! * `sgemm` may reassociate its sums (SIMD lanes, FMA), so it must agree within
//!   `1e-4 * sum |terms| + 1e-6` per output, for every encoding of `B`, with `A`
//!   row-major and transposed, `beta` zero and nonzero.
//!
//! Each variant's entry points are called directly, and the public multithreaded
//! functions (which run the active variant through the thread split in `par`)
//! are called on shapes large enough to take both the row and the column split.
//! Outputs are compared over the whole C buffer, so writes outside the `m x n`
//! window (the `ldc` gap) are caught too; with `beta == 0` or without
//! `accumulate` the old C is NaN, so a kernel that reads it is caught as well.

use qmul_kernels::cpu::scalar;
use qmul_kernels::cpu::QGemmFn;
use qmul_kernels::{available, pack, par, BMat, KernelSet, QGemm, SGemm, ShapeError};

#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

/// Which codes to draw: uniform, or every code at the extreme that maximises
/// |products| (catches saturating multiply-adds).
#[derive(Clone, Copy, Debug)]
enum Fill {
    Random,
    Extreme,
}

/// `par`'s threshold below which a GEMM stays on the calling thread (private
/// there, repeated here): the thread-split tests must stay above it.
const MIN_PARALLEL_MACS: usize = 1 << 18;

fn variants() -> Vec<&'static KernelSet> {
    let v = available();
    assert_eq!(
        v.last().map(|k| k.name),
        Some("scalar"),
        "scalar must be the last variant"
    );
    v
}

fn same_bits(got: &[f32], want: &[f32]) -> Result<(), String> {
    for (idx, (g, w)) in got.iter().zip(want).enumerate() {
        if g.to_bits() != w.to_bits() {
            return Err(format!("element {idx}: got {g:e}, want {w:e}"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- integer GEMMs

#[derive(Clone, Copy, Debug, PartialEq)]
enum QOp {
    U4S4,
    U8S8,
}

/// Inputs of one integer GEMM, owning its buffers.
struct QCase {
    m: usize,
    n: usize,
    k: usize,
    row_bytes: usize,
    a: Vec<u8>,
    b: Vec<u8>,
    col_scale: Vec<f32>,
    alpha: f32,
    ldc: usize,
    accumulate: bool,
    c0: Vec<f32>,
}

impl QCase {
    fn new(
        rng: &mut Rng,
        op: QOp,
        (m, n, k): (usize, usize, usize),
        fill: Fill,
        accumulate: bool,
    ) -> QCase {
        let (a, b, row_bytes) = match op {
            QOp::U4S4 => {
                let (a, b): (Vec<u8>, Vec<i8>) = match fill {
                    Fill::Random => (
                        (0..m * k).map(|_| rng.int(0, 15) as u8).collect(),
                        (0..n * k).map(|_| rng.int(-8, 7) as i8).collect(),
                    ),
                    Fill::Extreme => (vec![15; m * k], vec![-8; n * k]),
                };
                (
                    pack::pack_u4(&a, m, k).unwrap(),
                    pack::pack_s4(&b, n, k).unwrap(),
                    pack::row_bytes_4bit(k),
                )
            }
            QOp::U8S8 => {
                let (a, b): (Vec<u8>, Vec<u8>) = match fill {
                    Fill::Random => (
                        (0..m * k).map(|_| rng.int(0, 255) as u8).collect(),
                        (0..n * k).map(|_| rng.int(-128, 127) as i8 as u8).collect(),
                    ),
                    Fill::Extreme => (vec![255; m * k], vec![(-128i8) as u8; n * k]),
                };
                (
                    pack::pad_rows_8bit(&a, m, k).unwrap(),
                    pack::pad_rows_8bit(&b, n, k).unwrap(),
                    pack::row_bytes_8bit(k),
                )
            }
        };
        // Odd shapes also get a gap between C rows.
        let ldc = if n % 2 == 1 { n + 3 } else { n };
        let c_len = if m == 0 { 0 } else { (m - 1) * ldc + n };
        let c0 = if accumulate {
            rng.f32s(c_len)
        } else {
            vec![f32::NAN; c_len]
        };
        QCase {
            m,
            n,
            k,
            row_bytes,
            a,
            b,
            col_scale: (0..n).map(|_| 0.5 + rng.f32().abs()).collect(),
            alpha: 0.0137 + 0.01 * rng.f32(),
            ldc,
            accumulate,
            c0,
        }
    }

    fn params(&self) -> QGemm<'_> {
        QGemm {
            m: self.m,
            n: self.n,
            row_bytes: self.row_bytes,
            a: &self.a,
            b: &self.b,
            alpha: self.alpha,
            col_scale: &self.col_scale,
            ldc: self.ldc,
            accumulate: self.accumulate,
        }
    }

    fn run(&self, f: impl Fn(&QGemm, &mut [f32]) -> Result<(), ShapeError>) -> Vec<f32> {
        let mut c = self.c0.clone();
        f(&self.params(), &mut c).expect("operands match the sizes");
        c
    }
}

fn entry(ks: &KernelSet, op: QOp) -> QGemmFn {
    match op {
        QOp::U4S4 => ks.qgemm_u4s4,
        QOp::U8S8 => ks.qgemm_u8s8,
    }
}

fn public_entry(op: QOp) -> QGemmFn {
    match op {
        QOp::U4S4 => qmul_kernels::qgemm_u4s4,
        QOp::U8S8 => qmul_kernels::qgemm_u8s8,
    }
}

/// `(m, n, k)` of the integer GEMMs: edge cases first, then layer-like shapes.
const Q_SHAPES: &[(usize, usize, usize)] = &[
    (0, 3, 5),
    (3, 0, 5),
    (2, 3, 0),
    (1, 1, 1),
    (1, 5, 7),
    (3, 1, 33),
    (2, 3, 31),
    (5, 7, 16),
    (4, 4, 32),
    (9, 17, 45),
    (7, 9, 64),
    (17, 13, 100),
    (26, 7, 1),
    (27, 13, 45),
    (33, 31, 100),
    (5, 6, 1152),
    (9, 17, 1152),
    (3, 5, 8200), // several chunks of i16 sums (AVX2, NEON), with extreme codes too
    // ResNet-like im2col GEMMs: (pixels, out channels, in channels * 9).
    (784, 16, 144),
    (196, 32, 288),
    (49, 64, 576),
    (16, 128, 1152),
    (9, 130, 2300), // more than one block of B panels
    (24, 50, 2300),
    (256, 16, 27), // 8-bit stem
    (2, 10, 64),   // classifier
];

fn check_qgemm(op: QOp, ks: &KernelSet, case: &QCase, want: &[f32]) {
    let got = case.run(entry(ks, op));
    if let Err(e) = same_bits(&got, want) {
        panic!(
            "{op:?} variant {} differs from scalar at m={} n={} k={} accumulate={}: {e}",
            ks.name, case.m, case.n, case.k, case.accumulate
        );
    }
}

#[test]
fn qgemm_every_variant_matches_scalar_bitwise() {
    let vs = variants();
    println!(
        "qgemm: testing variants {:?}",
        vs.iter().map(|k| k.name).collect::<Vec<_>>()
    );
    let mut rng = Rng(0x5eed_0001);
    for op in [QOp::U4S4, QOp::U8S8] {
        for &shape in Q_SHAPES {
            for (fill, accumulate) in [
                (Fill::Random, false),
                (Fill::Random, true),
                (Fill::Extreme, true),
            ] {
                let case = QCase::new(&mut rng, op, shape, fill, accumulate);
                let want = case.run(match op {
                    QOp::U4S4 => scalar::qgemm_u4s4,
                    QOp::U8S8 => scalar::qgemm_u8s8,
                });
                for &ks in &vs {
                    check_qgemm(op, ks, &case, &want);
                }
            }
        }
    }
}

/// The public functions split large problems across threads; the split must not
/// change a single bit.
#[test]
fn qgemm_thread_split_matches_scalar_bitwise() {
    let t = par::threads();
    println!(
        "qgemm thread split: {t} threads, active variant {}",
        qmul_kernels::active().name
    );
    if t < 2 {
        println!("only one thread: the split branches are not exercised");
    }
    let mut rng = Rng(0x5eed_0002);
    // Row split (m >= 2 * threads), then column split (m < 2 * threads).
    let shapes = [(4 * t + 3, 40, 700), (1, 1000, 512), (3, 257, 1152)];
    for op in [QOp::U4S4, QOp::U8S8] {
        for shape in shapes {
            for accumulate in [false, true] {
                let case = QCase::new(&mut rng, op, shape, Fill::Random, accumulate);
                let macs = case.m * case.n * case.row_bytes * 2;
                assert!(
                    macs >= MIN_PARALLEL_MACS,
                    "{op:?} {shape:?} would stay on one thread"
                );
                let want = case.run(match op {
                    QOp::U4S4 => scalar::qgemm_u4s4,
                    QOp::U8S8 => scalar::qgemm_u8s8,
                });
                let got = case.run(public_entry(op));
                if let Err(e) = same_bits(&got, &want) {
                    panic!("public {op:?} differs from scalar at {shape:?} accumulate={accumulate}: {e}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------- sgemm

#[derive(Clone, Copy, Debug, PartialEq)]
enum Enc {
    F32,
    S8,
    U8,
    S4,
    U4,
}

const ENCODINGS: [Enc; 5] = [Enc::F32, Enc::S8, Enc::U8, Enc::S4, Enc::U4];

/// The `k x n` B operand of an sgemm in one encoding, with its row stride.
enum BData {
    F32(Vec<f32>, usize),
    I8(Vec<i8>, usize),
    U8(Vec<u8>, usize),
    S4(Vec<u8>, usize),
    U4(Vec<u8>, usize),
}

impl BData {
    fn new(rng: &mut Rng, enc: Enc, k: usize, n: usize) -> BData {
        // Row strides larger than n where the encoding allows it.
        let rs = n + 5;
        match enc {
            Enc::F32 => BData::F32(rng.f32s(k * rs), rs),
            Enc::S8 => BData::I8((0..k * rs).map(|_| rng.int(-128, 127) as i8).collect(), rs),
            Enc::U8 => BData::U8((0..k * rs).map(|_| rng.int(0, 255) as u8).collect(), rs),
            Enc::S4 => {
                let codes: Vec<i8> = (0..k * n).map(|_| rng.int(-8, 7) as i8).collect();
                BData::S4(
                    pack::pack_s4(&codes, k, n).unwrap(),
                    pack::row_bytes_4bit(n),
                )
            }
            Enc::U4 => {
                let codes: Vec<u8> = (0..k * n).map(|_| rng.int(0, 15) as u8).collect();
                BData::U4(
                    pack::pack_u4(&codes, k, n).unwrap(),
                    pack::row_bytes_4bit(n),
                )
            }
        }
    }

    fn mat(&self) -> BMat<'_> {
        match self {
            BData::F32(d, rs) => BMat::F32 { data: d, rs: *rs },
            BData::I8(d, rs) => BMat::S8 { data: d, rs: *rs },
            BData::U8(d, rs) => BMat::U8 { data: d, rs: *rs },
            BData::S4(d, rs) => BMat::S4 { data: d, rs: *rs },
            BData::U4(d, rs) => BMat::U4 { data: d, rs: *rs },
        }
    }
}

struct SCase {
    m: usize,
    n: usize,
    k: usize,
    a: Vec<f32>,
    a_rs: usize,
    a_cs: usize,
    b: BData,
    alpha: f32,
    beta: f32,
    ldc: usize,
    c0: Vec<f32>,
}

impl SCase {
    fn new(
        rng: &mut Rng,
        (m, n, k): (usize, usize, usize),
        enc: Enc,
        a_transposed: bool,
        beta: f32,
    ) -> SCase {
        let (a_rs, a_cs) = if a_transposed { (1, m) } else { (k, 1) };
        let ldc = if n % 2 == 1 { n + 3 } else { n };
        let c_len = if m == 0 { 0 } else { (m - 1) * ldc + n };
        SCase {
            m,
            n,
            k,
            a: rng.f32s(m * k),
            a_rs,
            a_cs,
            b: BData::new(rng, enc, k, n),
            alpha: 0.75 + 0.5 * rng.f32(),
            beta,
            ldc,
            c0: if beta == 0.0 {
                vec![f32::NAN; c_len]
            } else {
                rng.f32s(c_len)
            },
        }
    }

    fn params(&self) -> SGemm<'_> {
        SGemm {
            m: self.m,
            n: self.n,
            k: self.k,
            alpha: self.alpha,
            a: &self.a,
            a_rs: self.a_rs,
            a_cs: self.a_cs,
            b: self.b.mat(),
            beta: self.beta,
            ldc: self.ldc,
        }
    }

    fn run(&self, f: impl Fn(&SGemm, &mut [f32]) -> Result<(), ShapeError>) -> Vec<f32> {
        let mut c = self.c0.clone();
        f(&self.params(), &mut c).expect("operands match the sizes");
        c
    }

    /// Per output, the sum of the magnitudes of its terms: the scale of the
    /// rounding error any summation order may make.
    fn magnitudes(&self) -> Vec<f64> {
        let p = self.params();
        let mut out = vec![0.0f64; self.c0.len()];
        for i in 0..self.m {
            for j in 0..self.n {
                let mut s = 0.0f64;
                for r in 0..self.k {
                    s +=
                        (self.a[i * self.a_rs + r * self.a_cs] as f64 * p.b.get(r, j) as f64).abs();
                }
                let idx = i * self.ldc + j;
                out[idx] = (self.alpha as f64).abs() * s;
                if self.beta != 0.0 {
                    out[idx] += (self.beta as f64 * self.c0[idx] as f64).abs();
                }
            }
        }
        out
    }

    fn compare(&self, got: &[f32], want: &[f32], mags: &[f64]) -> Result<(), String> {
        for i in 0..self.m {
            for j in 0..self.n {
                let idx = i * self.ldc + j;
                let d = (got[idx] as f64 - want[idx] as f64).abs();
                let tol = 1e-4 * mags[idx] + 1e-6;
                if d.is_nan() || d > tol {
                    return Err(format!(
                        "C[{i}][{j}]: got {:e}, want {:e} (tolerance {tol:e})",
                        got[idx], want[idx]
                    ));
                }
            }
        }
        // Nothing outside the m x n window may be written.
        for (idx, (g, w)) in got.iter().zip(want).enumerate() {
            if idx % self.ldc >= self.n && g.to_bits() != w.to_bits() {
                return Err(format!("element {idx} in the ldc gap was written"));
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let enc = match self.b {
            BData::F32(..) => "F32",
            BData::I8(..) => "S8",
            BData::U8(..) => "U8",
            BData::S4(..) => "S4",
            BData::U4(..) => "U4",
        };
        let layout = if self.a_cs == 1 {
            "row-major"
        } else {
            "transposed"
        };
        format!(
            "m={} n={} k={} B={enc} A {layout} beta={}",
            self.m, self.n, self.k, self.beta
        )
    }
}

/// `(m, n, k)` of the f32 GEMMs: edge cases, then backward-pass-like shapes.
const S_SHAPES: &[(usize, usize, usize)] = &[
    (0, 3, 5),
    (3, 0, 5),
    (2, 3, 0),
    (1, 1, 1),
    (1, 7, 1),
    (5, 1, 9),
    (3, 33, 17),
    (17, 31, 64),
    (8, 64, 37),
    (13, 67, 129),
    (1, 100, 300),
    // dX = dY * W^T: (pixels, in channels * 9, out channels)
    (196, 144, 16),
    // dW = dY^T * X: (out channels, in channels * 9, pixels)
    (32, 144, 196),
];

#[test]
fn sgemm_every_variant_matches_scalar() {
    let vs = variants();
    println!(
        "sgemm: testing variants {:?}",
        vs.iter().map(|k| k.name).collect::<Vec<_>>()
    );
    let mut rng = Rng(0x5eed_0003);
    for &shape in S_SHAPES {
        for enc in ENCODINGS {
            for a_transposed in [false, true] {
                for beta in [0.0, -0.625] {
                    let case = SCase::new(&mut rng, shape, enc, a_transposed, beta);
                    let want = case.run(scalar::sgemm);
                    let mags = case.magnitudes();
                    for &ks in &vs {
                        let got = case.run(ks.sgemm);
                        if let Err(e) = case.compare(&got, &want, &mags) {
                            panic!(
                                "sgemm variant {} differs from scalar at {}: {e}",
                                ks.name,
                                case.describe()
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn sgemm_thread_split_matches_scalar() {
    let t = par::threads();
    println!(
        "sgemm thread split: {t} threads, active variant {}",
        qmul_kernels::active().name
    );
    let mut rng = Rng(0x5eed_0004);
    // Row split (m >= 8 * threads), column split (fewer rows, columns in
    // blocks of 32), reduction split (few rows, k >= 8 * max(m, n)).
    let shapes = [(8 * t + 5, 70, 600), (3, 200, 600), (5, 40, 4001)];
    for shape in shapes {
        assert!(
            shape.0 * shape.1 * shape.2 >= MIN_PARALLEL_MACS,
            "{shape:?} would stay on one thread"
        );
        for enc in ENCODINGS {
            for a_transposed in [false, true] {
                for beta in [0.0, 1.5] {
                    let case = SCase::new(&mut rng, shape, enc, a_transposed, beta);
                    let want = case.run(scalar::sgemm);
                    let got = case.run(qmul_kernels::sgemm);
                    if let Err(e) = case.compare(&got, &want, &case.magnitudes()) {
                        panic!(
                            "public sgemm differs from scalar at {}: {e}",
                            case.describe()
                        );
                    }
                }
            }
        }
    }
}

/// The bf16 GEMM of every variant that has one (AVX-512 BF16) against the
/// scalar bf16 reference (operands rounded to bf16, f32 accumulation): the
/// same budget as `sgemm`, since only the summation order may differ. The
/// reference itself stays within the bf16 rounding budget of the f32 result:
/// `2^-8 * sum |terms|` (each operand off by at most 2^-9 relative).
#[test]
fn sgemm_bf16_every_variant_matches_its_reference() {
    let vs: Vec<&KernelSet> = variants()
        .into_iter()
        .filter(|k| k.sgemm_bf16.is_some() && (k.detect_bf16)())
        .collect();
    println!(
        "sgemm_bf16: testing variants {:?}",
        vs.iter().map(|k| k.name).collect::<Vec<_>>()
    );
    let mut rng = Rng(0x5eed_0007);
    let mut shapes = S_SHAPES.to_vec();
    shapes.extend([(40, 1152, 64), (16, 160, 700), (9, 48, 33)]);
    for &shape in &shapes {
        for enc in ENCODINGS {
            for a_transposed in [false, true] {
                for beta in [0.0, -0.625] {
                    let case = SCase::new(&mut rng, shape, enc, a_transposed, beta);
                    let want = case.run(scalar::sgemm_bf16);
                    let mags = case.magnitudes();
                    let exact = case.run(scalar::sgemm);
                    for i in 0..case.m {
                        for j in 0..case.n {
                            let idx = i * case.ldc + j;
                            let d = (want[idx] as f64 - exact[idx] as f64).abs();
                            assert!(
                                d <= 2f64.powi(-8) * mags[idx] + 1e-6,
                                "bf16 reference off by {d:e} at {}",
                                case.describe()
                            );
                        }
                    }
                    for &ks in &vs {
                        let f = ks.sgemm_bf16.expect("filtered");
                        let got = case.run(f);
                        if let Err(e) = case.compare(&got, &want, &mags) {
                            panic!(
                                "sgemm_bf16 variant {} differs from its reference at {}: {e}",
                                ks.name,
                                case.describe()
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The public gradient GEMM in bf16 (threaded) against the reference, where
/// the CPU has bf16; elsewhere it must equal the f32 GEMM (the fallback).
#[test]
fn grad_gemm_in_bf16_matches_the_reference_or_falls_back_to_f32() {
    use qmul_kernels::GradPrecision;
    let before = qmul_kernels::requested_grad_precision();
    qmul_kernels::set_grad_precision(GradPrecision::Bf16);
    let bf16 = qmul_kernels::grad_precision() == GradPrecision::Bf16;
    println!("grad gemm: bf16 on this CPU: {bf16}");
    let mut rng = Rng(0x5eed_0008);
    let t = par::threads();
    for shape in [(8 * t + 5, 70, 600), (3, 200, 600), (5, 40, 4001)] {
        for enc in ENCODINGS {
            let case = SCase::new(&mut rng, shape, enc, false, 0.0);
            let want = if bf16 {
                case.run(scalar::sgemm_bf16)
            } else {
                case.run(scalar::sgemm)
            };
            let got = case.run(qmul_kernels::sgemm_grad);
            let got1 = case.run(qmul_kernels::sgemm_grad_single);
            for g in [got, got1] {
                if let Err(e) = case.compare(&g, &want, &case.magnitudes()) {
                    panic!("grad gemm differs at {}: {e}", case.describe());
                }
            }
        }
    }
    qmul_kernels::set_grad_precision(before);
}

/// A call whose operands are shorter than its sizes say (or whose sizes
/// overflow) is an error from every entry point, and `C` is left untouched.
#[test]
fn short_operands_are_errors_in_every_variant() {
    let rb = pack::ROW_ALIGN_BYTES;
    let (a, b, s) = (vec![0u8; 4 * rb], vec![0u8; 3 * rb], vec![1.0f32; 3]);
    let good = QGemm {
        m: 4,
        n: 3,
        row_bytes: rb,
        a: &a,
        b: &b,
        alpha: 1.0,
        col_scale: &s,
        ldc: 3,
        accumulate: false,
    };
    let bad = [
        QGemm { m: 5, ..good },
        QGemm { n: 4, ..good },
        QGemm {
            row_bytes: rb + 1,
            ..good
        },
        QGemm { ldc: 2, ..good },
        QGemm {
            col_scale: &s[..2],
            ..good
        },
        QGemm {
            m: usize::MAX / 2,
            ..good
        },
    ];
    let a32 = vec![1.0f32; 12];
    let b32 = vec![1.0f32; 9];
    let sgood = SGemm {
        m: 4,
        n: 3,
        k: 3,
        alpha: 1.0,
        a: &a32,
        a_rs: 3,
        a_cs: 1,
        b: BMat::F32 { data: &b32, rs: 3 },
        beta: 0.0,
        ldc: 3,
    };
    let sbad = [
        SGemm { m: 5, ..sgood },
        SGemm { k: 4, ..sgood },
        SGemm {
            a_rs: usize::MAX,
            ..sgood
        },
        SGemm {
            b: BMat::F32 { data: &b32, rs: 2 },
            ..sgood
        },
        SGemm { ldc: 1, ..sgood },
    ];
    let mut entries: Vec<(String, QGemmFn)> = vec![
        ("public u4s4".into(), qmul_kernels::qgemm_u4s4),
        ("public u8s8".into(), qmul_kernels::qgemm_u8s8),
    ];
    for ks in variants() {
        entries.push((format!("{} u4s4", ks.name), ks.qgemm_u4s4));
        entries.push((format!("{} u8s8", ks.name), ks.qgemm_u8s8));
    }
    for (name, f) in &entries {
        let mut c = vec![7.0f32; 12];
        f(&good, &mut c).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (i, p) in bad.iter().enumerate() {
            let mut c = vec![7.0f32; 12];
            assert!(f(p, &mut c).is_err(), "{name}: bad call {i} accepted");
            assert!(c.iter().all(|&v| v == 7.0), "{name}: bad call {i} wrote C");
        }
        let mut short = vec![7.0f32; 11];
        assert!(f(&good, &mut short).is_err(), "{name}: short C accepted");
    }
    let mut sentries: Vec<(String, qmul_kernels::cpu::SGemmFn)> = vec![
        ("public sgemm".into(), qmul_kernels::sgemm),
        ("public sgemm_grad".into(), qmul_kernels::sgemm_grad),
    ];
    for ks in variants() {
        sentries.push((format!("{} sgemm", ks.name), ks.sgemm));
        if let Some(f) = ks.sgemm_bf16.filter(|_| (ks.detect_bf16)()) {
            sentries.push((format!("{} sgemm_bf16", ks.name), f));
        }
    }
    for (name, f) in &sentries {
        let mut c = vec![7.0f32; 12];
        f(&sgood, &mut c).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (i, p) in sbad.iter().enumerate() {
            let mut c = vec![7.0f32; 12];
            assert!(f(p, &mut c).is_err(), "{name}: bad call {i} accepted");
            assert!(c.iter().all(|&v| v == 7.0), "{name}: bad call {i} wrote C");
        }
    }
}
