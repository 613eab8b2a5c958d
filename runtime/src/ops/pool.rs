//! Global average pooling over the spatial axes of NHWC tensors.

/// `[n, hw, c] -> [n, c]`.
pub fn gap_forward(x: &[f32], n: usize, hw: usize, c: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; n * c];
    for b in 0..n {
        let yr = &mut y[b * c..(b + 1) * c];
        for p in x[b * hw * c..(b + 1) * hw * c].chunks(c) {
            for (a, &v) in yr.iter_mut().zip(p) {
                *a += v;
            }
        }
        yr.iter_mut().for_each(|v| *v /= hw as f32);
    }
    y
}

/// Spreads `dy` (`[n, c]`) evenly back over the `hw` positions.
pub fn gap_backward(dy: &[f32], n: usize, hw: usize, c: usize) -> Vec<f32> {
    let mut dx = Vec::with_capacity(n * hw * c);
    for b in 0..n {
        let d: Vec<f32> = dy[b * c..(b + 1) * c]
            .iter()
            .map(|v| v / hw as f32)
            .collect();
        for _ in 0..hw {
            dx.extend_from_slice(&d);
        }
    }
    dx
}
