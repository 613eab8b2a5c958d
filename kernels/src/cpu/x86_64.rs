//! x86_64 variants (AVX2, AVX-512 VNNI). Filled in per kernel file.

use super::KernelSet;

/// x86_64 variants, best first.
pub static VARIANTS: [&KernelSet; 0] = [];
