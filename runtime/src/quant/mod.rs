//! Quantizers with their straight-through backward passes, exactly as in
//! `reference/qmul-method.md`: PACT, LSQ and DSQ for activations (unsigned 4-bit,
//! ReLU included) and LSQ, DSQ and per-channel max-abs for weights (signed).

pub mod act;
pub mod dsq;
pub mod sub_bin;
pub mod weight;

/// Round half to even, as PyTorch's `torch.round`, so codes match across tools.
///
/// Adding and subtracting 1.5 * 2^23 rounds to an integer in the current (ties
/// to even) mode with two plain additions, which the compiler vectorises; the
/// library call behind `round_ties_even` does not. Exact for |x| < 2^22.
#[inline(always)]
pub fn round(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    if x.abs() < 4_194_304.0 {
        (x + MAGIC) - MAGIC
    } else {
        x.round_ties_even()
    }
}

/// [`round`] for inputs already clamped to a small range (|x| < 2^22): no branch,
/// so quantizing a tensor vectorises.
#[inline(always)]
pub fn round_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_matches_ties_even() {
        for i in -4000..4000 {
            let x = i as f32 * 0.25 + 0.001 * (i % 3) as f32;
            assert_eq!(super::round(x), x.round_ties_even(), "{x}");
        }
        assert_eq!(super::round(2.5), 2.0);
        assert_eq!(super::round(-0.5), -0.0);
    }
}
