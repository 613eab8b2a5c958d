//! qmul-runtime: quantized forward and straight-through backward passes on packed
//! 4-bit models, the quantizers (PACT, LSQ, DSQ), the optimiser, and the model file.
//!
//! See ARCHITECTURE.md at the repository root for how the modules fit together.

pub mod data;
pub mod device;
pub mod durable;
pub mod error;
pub mod exec;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod graph;
pub mod metrics;
pub mod model;
pub mod model_file;
pub mod ops;
pub mod optim;
pub mod par;
pub mod profile;
pub mod ptq;
pub mod quant;
pub mod reference;
pub mod rng;
pub mod samples;
pub mod session;
pub mod simd;
pub mod unlearn;

pub use exec::{Pass, PassError, Targets, Value};
pub use graph::{Graph, Op, Precision, QuantScheme, Shape};
pub use model::{InitOptions, Model};
/// The backward's gradient-GEMM precision is chosen once per process, in the kernels.
pub use qmul_kernels::{grad_precision, set_grad_precision, GradPrecision};
