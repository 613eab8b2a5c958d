//! Softmax cross-entropy with a target and a weight per sample:
//! `loss = sum_i w_i * CE(logits_i, y_i) / N`. Unit weights give the mean CE;
//! negative weights give gradient ascent; Q-MUL's reweighting sets `w_f`, `w_r`.

/// Numerically stable softmax of one row.
pub fn softmax(row: &[f32]) -> Vec<f32> {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f64> = row.iter().map(|&v| ((v - m) as f64).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| (v / s) as f32).collect()
}

/// Loss and its gradient w.r.t. the logits (`n x classes`).
pub fn weighted_ce(
    logits: &[f32],
    classes: usize,
    targets: &[u32],
    weights: &[f32],
) -> (f32, Vec<f32>) {
    let n = targets.len();
    let mut grad = vec![0.0f32; logits.len()];
    let mut loss = 0.0f64;
    for i in 0..n {
        let row = &logits[i * classes..(i + 1) * classes];
        let p = softmax(row);
        let y = targets[i] as usize;
        let w = weights[i];
        loss += -(w as f64) * (p[y].max(1e-30) as f64).ln();
        let g = &mut grad[i * classes..(i + 1) * classes];
        for (j, gj) in g.iter_mut().enumerate() {
            let t = if j == y { 1.0 } else { 0.0 };
            *gj = w * (p[j] - t) / n as f32;
        }
    }
    ((loss / n as f64) as f32, grad)
}
