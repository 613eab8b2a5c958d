//! aarch64 variants (NEON, dotprod). Filled in per kernel file.

use super::KernelSet;

/// aarch64 variants, best first.
pub static VARIANTS: [&KernelSet; 0] = [];
