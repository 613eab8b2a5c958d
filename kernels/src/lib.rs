//! qmul-kernels: the packed low-bit format and the compute kernels every layer of
//! qmul runs on.
//!
//! Three operations cover the forward and straight-through backward passes of
//! quantized convolutions (as im2col GEMMs) and linear layers:
//!
//! * [`qgemm_u4s4`]: `C[m][n] = alpha * col_scale[n] * sum_k A[m][k] * B[n][k]` with
//!   unsigned 4-bit activation codes `A` and signed 4-bit weight codes `B`, both
//!   packed two per byte along `k` (see [`pack`]), accumulated exactly in `i32`.
//! * [`qgemm_u8s8`]: the same with one code per byte (the 8-bit stem and classifier).
//! * [`sgemm`]: `C = alpha * A * B + beta * C` in `f32`, where `B` may be stored as
//!   f32 or as 4/8-bit codes. Codes are widened to f32 inside the kernel (exact), so
//!   `dX = dY * W_q^T` and `dW = X_q^T * dY` never materialise an f32 copy of the
//!   quantized operand.
//!
//! Each operation has a scalar reference in [`cpu::scalar`] and SIMD variants
//! chosen at run time from CPU features (override with `QMUL_KERNEL`); the public
//! functions here split the output across threads (see [`par`]).

pub mod ceiling;
pub mod cpu;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod pack;
pub mod par;
pub mod pool;

pub use cpu::{active, available, by_name, override_error, KernelSet};

/// A `B` operand of [`sgemm`]: element `(r, j)` (row `r` along the reduction,
/// column `j` along the output columns) of a row-major matrix in one of the
/// encodings qmul stores. `rs` is the row stride in elements (f32, i8, u8) or in
/// bytes for the packed 4-bit encodings.
#[derive(Clone, Copy, Debug)]
pub enum BMat<'a> {
    F32 {
        data: &'a [f32],
        rs: usize,
    },
    S8 {
        data: &'a [i8],
        rs: usize,
    },
    U8 {
        data: &'a [u8],
        rs: usize,
    },
    /// Signed 4-bit codes packed two per byte (nibble order in [`pack`]).
    S4 {
        data: &'a [u8],
        rs: usize,
    },
    /// Unsigned 4-bit codes packed two per byte.
    U4 {
        data: &'a [u8],
        rs: usize,
    },
}

impl<'a> BMat<'a> {
    /// Element `(r, j)` widened to f32 (exact for every integer encoding).
    #[inline(always)]
    pub fn get(&self, r: usize, j: usize) -> f32 {
        match *self {
            BMat::F32 { data, rs } => data[r * rs + j],
            BMat::S8 { data, rs } => data[r * rs + j] as f32,
            BMat::U8 { data, rs } => data[r * rs + j] as f32,
            BMat::S4 { data, rs } => pack::get_s4(&data[r * rs..], j) as f32,
            BMat::U4 { data, rs } => pack::get_u4(&data[r * rs..], j) as f32,
        }
    }

    /// Whether the storage holds `rows` rows of at least `cols` columns, so SIMD
    /// kernels reading `B` through raw pointers stay inside it.
    pub fn len_ok(&self, rows: usize, cols: usize) -> bool {
        let need = |rs: usize, row_len: usize, len: usize| {
            rs >= row_len
                && (rows.saturating_sub(1))
                    .checked_mul(rs)
                    .and_then(|v| v.checked_add(row_len))
                    .is_some_and(|v| len >= v)
        };
        match *self {
            BMat::F32 { data, rs } => need(rs, cols, data.len()),
            BMat::S8 { data, rs } => need(rs, cols, data.len()),
            BMat::U8 { data, rs } => need(rs, cols, data.len()),
            BMat::S4 { data, rs } | BMat::U4 { data, rs } => need(rs, cols.div_ceil(2), data.len()),
        }
    }

    /// The same matrix with its first `j0` columns dropped. For packed 4-bit
    /// encodings `j0` must be even (a whole byte).
    pub fn skip_cols(&self, j0: usize) -> BMat<'a> {
        match *self {
            BMat::F32 { data, rs } => BMat::F32 {
                data: &data[j0..],
                rs,
            },
            BMat::S8 { data, rs } => BMat::S8 {
                data: &data[j0..],
                rs,
            },
            BMat::U8 { data, rs } => BMat::U8 {
                data: &data[j0..],
                rs,
            },
            BMat::S4 { data, rs } => {
                assert!(j0.is_multiple_of(2), "packed column offset must be even");
                BMat::S4 {
                    data: &data[j0 / 2..],
                    rs,
                }
            }
            BMat::U4 { data, rs } => {
                assert!(j0.is_multiple_of(2), "packed column offset must be even");
                BMat::U4 {
                    data: &data[j0 / 2..],
                    rs,
                }
            }
        }
    }

    /// The same matrix starting at row `r0`.
    pub fn skip_rows(&self, r0: usize) -> BMat<'a> {
        match *self {
            BMat::F32 { data, rs } => BMat::F32 {
                data: &data[r0 * rs..],
                rs,
            },
            BMat::S8 { data, rs } => BMat::S8 {
                data: &data[r0 * rs..],
                rs,
            },
            BMat::U8 { data, rs } => BMat::U8 {
                data: &data[r0 * rs..],
                rs,
            },
            BMat::S4 { data, rs } => BMat::S4 {
                data: &data[r0 * rs..],
                rs,
            },
            BMat::U4 { data, rs } => BMat::U4 {
                data: &data[r0 * rs..],
                rs,
            },
        }
    }
}

/// Arguments of one integer GEMM call (shared by [`qgemm_u4s4`] and [`qgemm_u8s8`]).
///
/// `a` holds `m` rows of `row_bytes` bytes, `b` holds `n` rows of `row_bytes`
/// bytes; `row_bytes` is a multiple of [`pack::ROW_ALIGN_BYTES`] and padding codes
/// are zero, so kernels may read whole rows. Output:
/// `c[i * ldc + j] = acc(i, j) as f32 * alpha * col_scale[j]` (+ `c` if `accumulate`).
#[derive(Clone, Copy, Debug)]
pub struct QGemm<'a> {
    pub m: usize,
    pub n: usize,
    pub row_bytes: usize,
    pub a: &'a [u8],
    pub b: &'a [u8],
    pub alpha: f32,
    pub col_scale: &'a [f32],
    pub ldc: usize,
    pub accumulate: bool,
}

impl QGemm<'_> {
    /// Checks that every operand holds what the call's sizes say, so that SIMD
    /// kernels reading through raw pointers stay inside their slices.
    pub fn check(&self, c_len: usize) -> Result<(), ShapeError> {
        if !self.row_bytes.is_multiple_of(pack::ROW_ALIGN_BYTES) {
            return ShapeError::err(format!(
                "row_bytes {} is not a multiple of {}",
                self.row_bytes,
                pack::ROW_ALIGN_BYTES
            ));
        }
        need("A", self.a.len(), mul(self.m, self.row_bytes)?)?;
        need("B", self.b.len(), mul(self.n, self.row_bytes)?)?;
        need("col_scale", self.col_scale.len(), self.n)?;
        if self.ldc < self.n {
            return ShapeError::err(format!("ldc {} < n {}", self.ldc, self.n));
        }
        if self.m > 0 && self.n > 0 {
            need("C", c_len, add(mul(self.m - 1, self.ldc)?, self.n)?)?;
        }
        Ok(())
    }
}

/// What every GEMM entry point returns.
pub type KernelResult = Result<(), ShapeError>;

/// A GEMM call whose operands do not match its sizes, or a kernel variant
/// called on a CPU that lacks its instructions. Nothing was written to `C`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapeError(pub String);

impl ShapeError {
    fn err<T>(m: String) -> Result<T, ShapeError> {
        Err(ShapeError(m))
    }

    /// The error of a variant whose CPU features are missing.
    pub fn unsupported(variant: &str) -> ShapeError {
        ShapeError(format!(
            "kernel variant '{variant}' called on a CPU without its instructions"
        ))
    }
}

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kernel call: {}", self.0)
    }
}

impl std::error::Error for ShapeError {}

fn mul(a: usize, b: usize) -> Result<usize, ShapeError> {
    a.checked_mul(b)
        .ok_or_else(|| ShapeError(format!("size {a} x {b} overflows")))
}

fn add(a: usize, b: usize) -> Result<usize, ShapeError> {
    a.checked_add(b)
        .ok_or_else(|| ShapeError(format!("size {a} + {b} overflows")))
}

fn need(what: &str, len: usize, want: usize) -> Result<(), ShapeError> {
    if len < want {
        return ShapeError::err(format!(
            "{what} holds {len} elements, the call needs {want}"
        ));
    }
    Ok(())
}

/// Arguments of one [`sgemm`] call: `C[i][j] = alpha * sum_r A(i, r) * B(r, j) + beta * C[i][j]`
/// for `i < m`, `j < n`, `r < k`, with `A(i, r) = a[i * a_rs + r * a_cs]` and
/// `C[i][j] = c[i * ldc + j]`. With `beta == 0` the old `C` is never read.
#[derive(Clone, Copy, Debug)]
pub struct SGemm<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub a: &'a [f32],
    pub a_rs: usize,
    pub a_cs: usize,
    pub b: BMat<'a>,
    pub beta: f32,
    pub ldc: usize,
}

impl SGemm<'_> {
    /// Checks that every operand holds what the call's sizes and strides say.
    pub fn check(&self, c_len: usize) -> Result<(), ShapeError> {
        if self.ldc < self.n {
            return ShapeError::err(format!("ldc {} < n {}", self.ldc, self.n));
        }
        if self.m > 0 && self.n > 0 {
            need("C", c_len, add(mul(self.m - 1, self.ldc)?, self.n)?)?;
        }
        if self.m > 0 && self.k > 0 {
            let last = add(mul(self.m - 1, self.a_rs)?, mul(self.k - 1, self.a_cs)?)?;
            need("A", self.a.len(), add(last, 1)?)?;
        }
        if self.k > 0 && self.n > 0 && !self.b.len_ok(self.k, self.n) {
            return ShapeError::err(format!(
                "B does not hold {} rows of {} columns at its stride",
                self.k, self.n
            ));
        }
        Ok(())
    }
}

/// Integer GEMM on packed unsigned 4-bit activations x signed 4-bit weights,
/// multithreaded, with the active kernel variant.
pub fn qgemm_u4s4(p: &QGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    p.check(c.len())?;
    par::qgemm(p, c, active().qgemm_u4s4)
}

/// Integer GEMM on unsigned 8-bit activations x signed 8-bit weights.
pub fn qgemm_u8s8(p: &QGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    p.check(c.len())?;
    par::qgemm(p, c, active().qgemm_u8s8)
}

/// [`qgemm_u4s4`] on the calling thread only (for callers that split the work).
pub fn qgemm_u4s4_single(p: &QGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    p.check(c.len())?;
    (active().qgemm_u4s4)(p, c)
}

/// [`qgemm_u8s8`] on the calling thread only.
pub fn qgemm_u8s8_single(p: &QGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    p.check(c.len())?;
    (active().qgemm_u8s8)(p, c)
}

/// f32 GEMM whose `B` operand may be stored as codes, multithreaded.
pub fn sgemm(p: &SGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    p.check(c.len())?;
    par::sgemm(active().sgemm, p, c)
}

/// [`sgemm`] on the calling thread only, for callers that already split their
/// work across the cores (the fused `dX` tiles of the convolution backward).
pub fn sgemm_single(p: &SGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    p.check(c.len())?;
    (active().sgemm)(p, c)
}

/// Precision of the gradient GEMMs of the straight-through backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradPrecision {
    /// f32 operands and accumulation: the exact reference, and what runs
    /// wherever the CPU has no bf16 dot products.
    F32,
    /// `dY` rounded to bf16, codes exact, f32 accumulation: twice the
    /// multiply-adds per instruction where the CPU has bf16 dot products
    /// (AVX-512 BF16); elsewhere the backward stays f32. The default: on the
    /// full Fashion-MNIST training and on every unlearning method of the
    /// headline setting its results are within the seed spread of f32's
    /// (docs/performance.md, "bf16 backward").
    Bf16,
}

impl GradPrecision {
    pub fn parse(s: &str) -> Option<GradPrecision> {
        match s {
            "f32" => Some(GradPrecision::F32),
            "bf16" => Some(GradPrecision::Bf16),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GradPrecision::F32 => "f32",
            GradPrecision::Bf16 => "bf16",
        }
    }
}

/// 0: not chosen yet (read `QMUL_BACKWARD`, else bf16), 1: f32, 2: bf16.
static GRAD_PRECISION: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Chooses the gradient GEMMs' precision for the whole process (the CLI's
/// `--backward`, the C ABI's session option); `QMUL_BACKWARD=f32|bf16` sets
/// the initial choice, bf16 when it is unset.
pub fn set_grad_precision(p: GradPrecision) {
    let v = match p {
        GradPrecision::F32 => 1,
        GradPrecision::Bf16 => 2,
    };
    GRAD_PRECISION.store(v, std::sync::atomic::Ordering::Relaxed);
}

/// The precision asked for (before any fallback).
pub fn requested_grad_precision() -> GradPrecision {
    use std::sync::atomic::Ordering;
    match GRAD_PRECISION.load(Ordering::Relaxed) {
        1 => GradPrecision::F32,
        2 => GradPrecision::Bf16,
        _ => {
            let p = std::env::var("QMUL_BACKWARD")
                .ok()
                .and_then(|s| GradPrecision::parse(s.trim()))
                .unwrap_or(GradPrecision::Bf16);
            set_grad_precision(p);
            p
        }
    }
}

/// The precision the gradient GEMMs run in: bf16 only when asked for and the
/// active kernel variant has a bf16 GEMM this CPU can run.
pub fn grad_precision() -> GradPrecision {
    match requested_grad_precision() {
        GradPrecision::Bf16 if bf16_gemm().is_some() => GradPrecision::Bf16,
        _ => GradPrecision::F32,
    }
}

fn bf16_gemm() -> Option<cpu::SGemmFn> {
    let k = active();
    k.sgemm_bf16.filter(|_| (k.detect_bf16)())
}

/// A gradient GEMM of the backward (`dX`, `dW`): [`sgemm`] in the precision
/// [`grad_precision`] says, multithreaded.
pub fn sgemm_grad(p: &SGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    p.check(c.len())?;
    match grad_precision() {
        GradPrecision::Bf16 => match bf16_gemm() {
            Some(f) => par::sgemm(f, p, c),
            None => par::sgemm(active().sgemm, p, c),
        },
        GradPrecision::F32 => par::sgemm(active().sgemm, p, c),
    }
}

/// [`sgemm_grad`] on the calling thread only.
pub fn sgemm_grad_single(p: &SGemm, c: &mut [f32]) -> Result<(), ShapeError> {
    p.check(c.len())?;
    match (grad_precision(), bf16_gemm()) {
        (GradPrecision::Bf16, Some(f)) => f(p, c),
        _ => (active().sgemm)(p, c),
    }
}
