//! PyTorch checkpoints in and out: safetensors files with torchvision-style
//! tensor names (`conv1`, `bn1`, `layer1.0.conv1`, ..., `fc`, plus the
//! quantizer parameters `wq` and `q`), the layout `tools/python/qmul_torch.py`
//! writes and reads (`docs/torch-interop.md`).
//!
//! * [`names`]: the naming convention and the convolution layout, one entry
//!   per tensor of a model, shared by both directions;
//! * [`read`]: a checkpoint into a [`Model`](qmul_runtime::Model): the
//!   architecture from the file's metadata (or inferred from the tensors'
//!   shapes, with flags for what shapes cannot say), every tensor checked
//!   by name, dtype, shape and value before it is used;
//! * [`write`]: a model into a checkpoint whose tensors are exactly what the
//!   model holds (latent weights reconstructed from codes and the file's
//!   sub-bin state), with the metadata that brings it back byte for byte.

pub mod names;
pub mod read;
pub mod write;

pub use read::{from_torch, from_torch_bytes, Converted, ReadOptions};
pub use write::{to_torch, to_torch_bytes};

/// `format` of a checkpoint written by `qmul_torch.export` or `qmul convert`.
pub const FORMAT: &str = "qmul-torch";
/// Its version.
pub const FORMAT_VERSION: &str = "1";
/// `input` metadata: how PyTorch feeds the network.
pub const INPUT: &str = "NCHW float32 = u8 pixel / 255";

/// What a `.qmul` file keeps of the latent weights beyond codes and scales,
/// and so what a conversion from PyTorch writes (recorded in the checkpoint's
/// `qmul_latent` metadata so that a round trip gives the same file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatentState {
    /// Codes and scales only: latent weights load at their bins' centres.
    Centres,
    /// 1/65536-step residuals (`quant::sub_bin`): the deployable default.
    SubBin,
    /// The exact f32 latent weights (format version 4): bit-exact round trips.
    Exact,
}

impl LatentState {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "centres" => Some(Self::Centres),
            "sub-bin" => Some(Self::SubBin),
            "exact" => Some(Self::Exact),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Centres => "centres",
            Self::SubBin => "sub-bin",
            Self::Exact => "exact",
        }
    }

    /// The state a loaded `.qmul` file has.
    pub fn of_file(loaded: &qmul_runtime::model_file::Loaded) -> Self {
        if loaded.exact_latent {
            Self::Exact
        } else if loaded.sub_bin {
            Self::SubBin
        } else {
            Self::Centres
        }
    }

    /// How a model in this state is written.
    pub fn write_options(self) -> qmul_runtime::model_file::WriteOptions {
        qmul_runtime::model_file::WriteOptions {
            sub_bin: self != Self::Centres,
            exact_latent: self == Self::Exact,
        }
    }
}
