//! The layer operations, each forward and backward, on NHWC f32 values or packed
//! codes, built on the qmul-kernels GEMMs.

pub mod bn;
pub mod conv;
pub mod im2col;
pub mod linear;
pub mod loss;
pub mod pool;

/// Row-major `rows x cols` -> `cols x rows`.
pub(crate) fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}
