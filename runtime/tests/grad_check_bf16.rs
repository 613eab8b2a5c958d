//! The whole-network gradient checks with the gradient GEMMs in bf16
//! (`qmul_kernels::GradPrecision::Bf16`: `dY` rounded to bf16, f32 sums), a
//! process of its own so the process-wide choice touches no other test. On a
//! CPU without bf16 dot products the backward falls back to f32 and the same
//! checks hold with room to spare.
//!
//! Budget: rounding `dY` to bf16 changes each product by at most 2^-9
//! relative; the errors of a layer add up like a random walk and compound
//! through the layers below it. Every tensor of at least 16 values stays
//! within 3% of the f64 reference and all gradients together within 1%
//! (measured on AVX-512 BF16: at most 0.85% for a tensor, 0.53% for all;
//! each test prints its figures), against 0.2%
//! for the f32 backward. Scalar quantizer gradients (a PACT clip's is a sum
//! of terms that nearly cancel) are held only through the whole-vector bound.

#[path = "common/grad.rs"]
mod grad;

use grad::{check_against_reference, Budget};
use qmul_kernels::GradPrecision;
use qmul_runtime::graph::{Precision, QuantScheme};

const TOL: Budget = Budget {
    per_tensor: 3e-2,
    min_len: 16,
    whole: 1e-2,
};

fn bf16() {
    qmul_kernels::set_grad_precision(GradPrecision::Bf16);
    println!("gradient GEMMs: {}", qmul_kernels::grad_precision().name());
}

#[test]
fn pact_gradients_in_bf16_match_f64_reference() {
    bf16();
    check_against_reference(QuantScheme::Pact, Precision::Int8, TOL);
}

#[test]
fn lsq_gradients_in_bf16_match_f64_reference() {
    bf16();
    check_against_reference(QuantScheme::Lsq, Precision::Int8, TOL);
}

#[test]
fn dsq_gradients_in_bf16_match_f64_reference() {
    bf16();
    check_against_reference(QuantScheme::Dsq, Precision::Int8, TOL);
}

#[test]
fn f32_edges_gradients_in_bf16_match_f64_reference() {
    bf16();
    check_against_reference(QuantScheme::Pact, Precision::F32, TOL);
}
