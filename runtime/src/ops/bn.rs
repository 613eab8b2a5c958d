//! BatchNorm over the channel (last) axis of NHWC rows, training and eval modes.
//! Statistics accumulate in f64 so large batches of small values stay accurate.

/// Epsilon added to the variance, as in PyTorch.
pub const EPS: f32 = 1e-5;
/// Running-statistics momentum, as in PyTorch.
pub const MOMENTUM: f32 = 0.1;

/// Batch statistics kept for the backward pass.
#[derive(Clone, Debug)]
pub struct BatchStats {
    pub mean: Vec<f32>,
    pub invstd: Vec<f32>,
    /// Biased batch variance (for the running estimate).
    pub var: Vec<f32>,
}

/// Per-channel sums of `f(row)` contributions over row ranges of `c`-channel
/// rows, one range per thread, into `len` accumulators.
fn channel_sums(
    rows: usize,
    c: usize,
    len: usize,
    f: impl Fn(usize, usize, &mut [f64]) + Sync,
) -> Vec<f64> {
    let parts = crate::par::map(crate::par::ranges(rows, c), |(r0, r1)| {
        let mut acc = vec![0.0f64; len];
        f(r0, r1, &mut acc);
        acc
    });
    let mut total = vec![0.0f64; len];
    for p in parts {
        total.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
    }
    total
}

/// Per-channel mean and biased variance of `x` (`rows x c`).
fn moments(x: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = x.len() / c;
    let s = channel_sums(rows, c, c, |r0, r1, acc| {
        sum_rows(&x[r0 * c..r1 * c], c, acc)
    });
    let mean: Vec<f64> = s.iter().map(|v| v / rows as f64).collect();
    let q = channel_sums(rows, c, c, |r0, r1, acc| {
        square_deviation_rows(&x[r0 * c..r1 * c], c, &mean, acc)
    });
    let var = q.iter().map(|v| v / rows as f64).collect();
    (mean, var)
}

/// Batch statistics of `x` (`rows x c`) for training-mode normalisation.
pub fn batch_stats(x: &[f32], c: usize) -> BatchStats {
    let (mean, var) = moments(x, c);
    BatchStats {
        mean: mean.iter().map(|&m| m as f32).collect(),
        invstd: var
            .iter()
            .map(|v| (1.0 / (v + EPS as f64).sqrt()) as f32)
            .collect(),
        var: var.iter().map(|&v| v as f32).collect(),
    }
}

/// Moves running statistics towards a batch's (PyTorch semantics: the running
/// variance takes the unbiased batch variance).
pub fn update_running(
    st: &BatchStats,
    rows: usize,
    running_mean: &mut [f32],
    running_var: &mut [f32],
) {
    let unbias = if rows > 1 {
        rows as f32 / (rows - 1) as f32
    } else {
        1.0
    };
    for ch in 0..st.mean.len() {
        running_mean[ch] = (1.0 - MOMENTUM) * running_mean[ch] + MOMENTUM * st.mean[ch];
        running_var[ch] = (1.0 - MOMENTUM) * running_var[ch] + MOMENTUM * st.var[ch] * unbias;
    }
}

/// `y = gamma * (x - mean) * invstd + beta`.
pub fn apply(x: &[f32], gamma: &[f32], beta: &[f32], st: &BatchStats) -> Vec<f32> {
    let c = gamma.len();
    let (a, b) = affine(gamma, beta, st);
    let mut y = vec![0.0f32; x.len()];
    crate::par::map(crate::par::split_mut(&mut y, c), |(r0, part)| {
        affine_rows(&x[r0 * c..], c, &a, &b, part)
    });
    y
}

/// The per-channel affine map of [`apply`] (`y = x * a + b`); with
/// [`codes_of_rows`], for callers that produce `x` a tile at a time (the
/// eval forward's fused convolution).
pub fn affine(gamma: &[f32], beta: &[f32], st: &BatchStats) -> (Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = gamma.iter().zip(&st.invstd).map(|(g, i)| g * i).collect();
    let b: Vec<f32> = beta
        .iter()
        .zip(&st.mean)
        .zip(&a)
        .map(|((be, m), a)| be - m * a)
        .collect();
    (a, b)
}

/// The 4-bit codes (two per byte) of `x * a + b` under inverse scale `inv`,
/// for whole rows of `a.len()` channels (an even count): the same codes as
/// [`apply_codes`].
pub fn codes_of_rows(x: &[f32], a: &[f32], b: &[f32], inv: f32, out: &mut [u8]) {
    affine_codes_rows(x, a.len(), a, b, inv, out)
}

/// `max(apply(x), 0)`: BatchNorm and the ReLU of a float model's Act node.
pub fn apply_relu(x: &[f32], gamma: &[f32], beta: &[f32], st: &BatchStats) -> Vec<f32> {
    let mut y = apply(x, gamma, beta, st);
    y.iter_mut().for_each(|v| *v = v.max(0.0));
    y
}

/// The 4-bit codes of `apply(x)` under an activation quantizer with inverse
/// scale `inv` (tightly packed, low nibble first), without storing `apply(x)`:
/// the same operations as [`apply`] then `act::quantize_packed`, so the same
/// codes.
pub fn apply_codes(x: &[f32], gamma: &[f32], beta: &[f32], st: &BatchStats, inv: f32) -> Vec<u8> {
    let c = gamma.len();
    if !c.is_multiple_of(2) {
        let y = apply(x, gamma, beta, st);
        let mut packed = vec![0u8; y.len().div_ceil(2)];
        crate::quant::act::quantize_with_inverse(inv, &y, &mut packed);
        return packed;
    }
    let (a, b) = affine(gamma, beta, st);
    let mut packed = vec![0u8; x.len() / 2];
    crate::par::map(crate::par::split_mut(&mut packed, c / 2), |(r0, part)| {
        affine_codes_rows(&x[r0 * c..], c, &a, &b, inv, part)
    });
    packed
}

/// Eval-mode statistics from the running buffers.
pub fn eval_stats(running_mean: &[f32], running_var: &[f32]) -> BatchStats {
    BatchStats {
        mean: running_mean.to_vec(),
        invstd: running_var.iter().map(|v| 1.0 / (v + EPS).sqrt()).collect(),
        var: running_var.to_vec(),
    }
}

/// Training-mode backward: returns `dx` and adds into `dgamma`, `dbeta`.
pub fn backward(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    st: &BatchStats,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) -> Vec<f32> {
    let c = gamma.len();
    let nrows = x.len() / c;
    // Both sums in one pass over x and dy (each accumulator adds the same
    // terms in the same order as two separate passes would).
    let sums = channel_sums(nrows, c, 2 * c, |r0, r1, acc| {
        backward_sum_rows(
            &x[r0 * c..r1 * c],
            &dy[r0 * c..r1 * c],
            c,
            &st.mean,
            &st.invstd,
            acc,
        )
    });
    backward_dx(x, dy, gamma, st, &sums, dgamma, dbeta)
}

/// The rest of [`backward`] once the channel sums of `dy` and `dy * xhat`
/// (`sums`, `2c` values) are known: the parameter gradients and `dx`.
fn backward_dx(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    st: &BatchStats,
    sums: &[f64],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) -> Vec<f32> {
    let c = gamma.len();
    let rows = (x.len() / c) as f64;
    let (sdy, sdyx) = sums.split_at(c);
    for ch in 0..c {
        dgamma[ch] += sdyx[ch] as f32;
        dbeta[ch] += sdy[ch] as f32;
    }
    let k: Vec<f32> = (0..c).map(|ch| gamma[ch] * st.invstd[ch]).collect();
    let mdy: Vec<f32> = sdy.iter().map(|s| (s / rows) as f32).collect();
    let mdyx: Vec<f32> = sdyx.iter().map(|s| (s / rows) as f32).collect();
    let mut dx = vec![0.0f32; x.len()];
    // Per channel: (mean, invstd, k, mean dy, mean dy * xhat).
    let per_ch: Vec<[f32; 5]> = (0..c)
        .map(|ch| [st.mean[ch], st.invstd[ch], k[ch], mdy[ch], mdyx[ch]])
        .collect();
    crate::par::map(crate::par::split_mut(&mut dx, c), |(r0, part)| {
        let rows = part.len() / c;
        backward_dx_rows(
            &x[r0 * c..(r0 + rows) * c],
            &dy[r0 * c..(r0 + rows) * c],
            c,
            &per_ch,
            part,
        )
    });
    dx
}

/// Floats of one tile of [`backward_with_act`] (16 KiB: in L1 between its
/// three steps).
const ACT_TILE_FLOATS: usize = 4096;

/// Training-mode backward of a BatchNorm whose output only an activation
/// quantizer reads, together with that quantizer's backward, from the
/// BatchNorm's input `x` and the quantizer's output gradient `dy`: per tile
/// of rows, the BatchNorm output is recomputed (`x * a + b`, as [`apply`]
/// does), the quantizer's straight-through backward turns `dy` into the
/// BatchNorm's output gradient, and both channel sums of the BatchNorm
/// backward are taken, while the tile is in cache; then `dx`. The BatchNorm
/// output is never stored, and the unfused sequence's four passes over the
/// tensors become two. Adds into `dgamma`, `dbeta` and the quantizer's `dq`;
/// returns `dx`. Each sum adds the same terms in the same order as
/// [`crate::quant::act::backward`] then [`backward`] whenever both split the
/// rows at the same points (they do when the rows divide evenly among the
/// threads), so the results are the same.
#[allow(clippy::too_many_arguments)]
pub fn backward_with_act(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    beta: &[f32],
    st: &BatchStats,
    scheme: crate::graph::QuantScheme,
    q: &[f32],
    features: usize,
    grads: [&mut [f32]; 3],
) -> Vec<f32> {
    let [dgamma, dbeta, dq] = grads;
    let c = gamma.len();
    let (a, b) = affine(gamma, beta, st);
    // The BatchNorm output's gradient (the quantizer's input gradient).
    let mut g = vec![0.0f32; x.len()];
    let tile = (ACT_TILE_FLOATS / c.max(1)).max(1);
    let parts = crate::par::map(crate::par::split_mut(&mut g, c), |(r0, part)| {
        let rows = part.len() / c;
        let mut acc = vec![0.0f64; 2 * c];
        let mut qs = crate::quant::act::ParamSums::default();
        let mut y = vec![0.0f32; tile.min(rows) * c];
        for t0 in (0..rows).step_by(tile) {
            let t1 = (t0 + tile).min(rows);
            let (lo, hi) = ((r0 + t0) * c, (r0 + t1) * c);
            let yt = &mut y[..hi - lo];
            affine_rows(&x[lo..hi], c, &a, &b, yt);
            let gt = &mut part[t0 * c..t1 * c];
            qs = crate::quant::act::backward_range(scheme, q, yt, &dy[lo..hi], gt, qs);
            backward_sum_rows(&x[lo..hi], gt, c, &st.mean, &st.invstd, &mut acc);
        }
        (acc, qs)
    });
    let mut sums = vec![0.0f64; 2 * c];
    let mut qsums = Vec::with_capacity(parts.len());
    for (acc, qs) in parts {
        sums.iter_mut().zip(&acc).for_each(|(s, v)| *s += v);
        qsums.push(qs);
    }
    crate::quant::act::add_param_grads(scheme, &qsums, features, dq);
    backward_dx(x, &g, gamma, st, &sums, dgamma, dbeta)
}

/// Backward of BatchNorm with fixed (running) statistics: a per-channel affine
/// map, so `dx = dy * gamma * invstd`. Adds into `dgamma`, `dbeta`.
pub fn backward_frozen(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    st: &BatchStats,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) -> Vec<f32> {
    let c = gamma.len();
    let mut dx = Vec::with_capacity(x.len());
    for (xr, dr) in x.chunks(c).zip(dy.chunks(c)) {
        for ch in 0..c {
            let xhat = (xr[ch] - st.mean[ch]) * st.invstd[ch];
            dgamma[ch] += dr[ch] * xhat;
            dbeta[ch] += dr[ch];
            dx.push(dr[ch] * gamma[ch] * st.invstd[ch]);
        }
    }
    dx
}

// The loops over rows, compiled for the widest vectors the CPU has
// (`crate::simd`). Iterators, not indices: no bounds checks, so they
// vectorise across channels; each accumulator adds its terms in row order.

crate::simd::multiversion! {
    fn sum_rows(x: &[f32], c: usize, acc: &mut [f64]) {
        for r in x.chunks(c) {
            for (a, &v) in acc.iter_mut().zip(r) {
                *a += v as f64;
            }
        }
    }
}

crate::simd::multiversion! {
    fn square_deviation_rows(x: &[f32], c: usize, mean: &[f64], acc: &mut [f64]) {
        for r in x.chunks(c) {
            for ((a, &v), m) in acc.iter_mut().zip(r).zip(mean) {
                let d = v as f64 - m;
                *a += d * d;
            }
        }
    }
}

crate::simd::multiversion! {
    fn affine_rows(x: &[f32], c: usize, a: &[f32], b: &[f32], out: &mut [f32]) {
        for (yr, xr) in out.chunks_mut(c).zip(x.chunks(c)) {
            for (((o, &v), a), b) in yr.iter_mut().zip(xr).zip(a).zip(b) {
                *o = v * a + b;
            }
        }
    }
}

crate::simd::multiversion! {
    /// `acc[..c]` += dy, `acc[c..]` += dy * xhat, per channel.
    fn backward_sum_rows(
        x: &[f32],
        dy: &[f32],
        c: usize,
        mean: &[f32],
        invstd: &[f32],
        acc: &mut [f64],
    ) {
        let (ady, adyx) = acc.split_at_mut(c);
        for (xr, dr) in x.chunks(c).zip(dy.chunks(c)) {
            for ((((a1, a2), &d), &xv), (&m, &is)) in ady
                .iter_mut()
                .zip(adyx.iter_mut())
                .zip(dr)
                .zip(xr)
                .zip(mean.iter().zip(invstd))
            {
                *a1 += d as f64;
                *a2 += (d * (xv - m) * is) as f64;
            }
        }
    }
}

crate::simd::multiversion! {
    fn backward_dx_rows(x: &[f32], dy: &[f32], c: usize, per_ch: &[[f32; 5]], out: &mut [f32]) {
        for ((o, xr), dr) in out.chunks_mut(c).zip(x.chunks(c)).zip(dy.chunks(c)) {
            for (((o, &xv), &d), &[m, is, k, mdy, mdyx]) in o.iter_mut().zip(xr).zip(dr).zip(per_ch) {
                let xhat = (xv - m) * is;
                *o = k * (d - mdy - xhat * mdyx);
            }
        }
    }
}

crate::simd::multiversion! {
    /// Codes of `x * a + b` for whole rows of `c` (even) channels, two per byte.
    fn affine_codes_rows(x: &[f32], c: usize, a: &[f32], b: &[f32], inv: f32, out: &mut [u8]) {
        for (o, xr) in out.chunks_mut(c / 2).zip(x.chunks(c)) {
            let mut codes = [0u8; 64];
            for (start, chunk) in (0..c).step_by(64).zip(xr.chunks(64)) {
                let n = chunk.len();
                for (((cd, &v), &a), &b) in codes[..n]
                    .iter_mut()
                    .zip(chunk)
                    .zip(&a[start..])
                    .zip(&b[start..])
                {
                    *cd = crate::quant::act::code(v * a + b, inv);
                }
                for (o, p) in o[start / 2..].iter_mut().zip(codes[..n].chunks_exact(2)) {
                    *o = p[0] | (p[1] << 4);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::QuantScheme;
    use crate::quant::act;

    /// The fused BatchNorm + quantizer backward gives exactly what the two
    /// backward passes one after the other give (BatchNorm output stored,
    /// `act::backward`, `backward`), for every quantizer, on shapes whose
    /// rows divide evenly among the threads and on one that does not (equal
    /// within float rounding there).
    #[test]
    fn fused_act_backward_equals_the_two_passes() {
        let mut r = crate::rng::Rng::new(21);
        for (scheme, q) in [
            (QuantScheme::Pact, vec![1.5f32]),
            (QuantScheme::Lsq, vec![0.1f32]),
            (QuantScheme::Dsq, vec![1.5f32, 0.3]),
        ] {
            for &(rows, c, exact) in &[(6272, 64, true), (100352 / 8, 16, true), (4097, 32, false)]
            {
                let x: Vec<f32> = (0..rows * c)
                    .map(|_| r.uniform() as f32 * 4.0 - 1.0)
                    .collect();
                let dy: Vec<f32> = (0..rows * c).map(|_| r.uniform() as f32 - 0.5).collect();
                let gamma: Vec<f32> = (0..c).map(|_| r.uniform() as f32 + 0.5).collect();
                let beta: Vec<f32> = (0..c).map(|_| r.uniform() as f32 - 0.2).collect();
                let st = batch_stats(&x, c);
                let features = 49 * c;
                let y = apply(&x, &gamma, &beta, &st);
                let (mut g, mut dq) = (vec![0.0f32; y.len()], vec![0.0f32; q.len()]);
                act::backward(scheme, &q, &y, &dy, &mut g, &mut dq, features);
                let (mut dg, mut db) = (vec![0.0f32; c], vec![0.0f32; c]);
                let want = backward(&x, &g, &gamma, &st, &mut dg, &mut db);
                let (mut dg2, mut db2, mut dq2) =
                    (vec![0.0f32; c], vec![0.0f32; c], vec![0.0f32; q.len()]);
                let got = backward_with_act(
                    &x,
                    &dy,
                    &gamma,
                    &beta,
                    &st,
                    scheme,
                    &q,
                    features,
                    [&mut dg2, &mut db2, &mut dq2],
                );
                let close = |a: &[f32], b: &[f32]| {
                    let s = a.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
                    a.iter().zip(b).all(|(u, v)| {
                        if exact {
                            u.to_bits() == v.to_bits()
                        } else {
                            (u - v).abs() <= 1e-5 * s
                        }
                    })
                };
                let what = format!("{scheme:?} rows {rows} c {c}");
                assert!(close(&want, &got), "dx {what}");
                assert!(close(&dg, &dg2) && close(&db, &db2), "dgamma/dbeta {what}");
                assert!(close(&dq, &dq2), "dq {what}: {dq:?} vs {dq2:?}");
                assert!(dq[0] != 0.0, "quantizer gradient is zero {what}");
            }
        }
    }
}
