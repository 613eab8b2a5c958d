//! Splitting elementwise and per-row work across the cores, with the thread
//! count the kernels use (`QMUL_THREADS`). The GEMMs split themselves; this is
//! for the ops around them (quantizers, BatchNorm, im2col), which would
//! otherwise leave the second core idle for half of a training step.

/// Work items below which an op stays on the calling thread.
const MIN_ITEMS_PER_THREAD: usize = 1 << 14;

/// How many threads to use for `items` units of `weight` elements each.
fn parts(units: usize, weight: usize) -> usize {
    let t = qmul_kernels::par::threads();
    (units * weight / MIN_ITEMS_PER_THREAD)
        .clamp(1, t)
        .min(units.max(1))
}

/// Splits `0..units` into contiguous ranges, one per thread.
pub fn ranges(units: usize, weight: usize) -> Vec<(usize, usize)> {
    let p = parts(units, weight);
    let chunk = units.div_ceil(p).max(1);
    (0..units)
        .step_by(chunk)
        .map(|s| (s, (s + chunk).min(units)))
        .collect()
}

/// Splits `data` (made of `unit`-element units) into contiguous chunks of whole
/// units, one per thread, each with the index of its first unit.
pub fn split_mut<T>(data: &mut [T], unit: usize) -> Vec<(usize, &mut [T])> {
    let units = data.len() / unit.max(1);
    let mut out = Vec::new();
    let mut rest = data;
    for (s, e) in ranges(units, unit) {
        let len = if e == units {
            rest.len()
        } else {
            (e - s) * unit
        };
        let (a, b) = rest.split_at_mut(len);
        out.push((s, a));
        rest = b;
    }
    out
}

/// Runs `f` on every item as a task of the kernels' persistent worker pool
/// (the calling thread takes part), and returns the results in order.
pub fn map<I: Send, R: Send>(items: Vec<I>, f: impl Fn(I) -> R + Sync) -> Vec<R> {
    qmul_kernels::pool::map(items, f)
}

#[cfg(test)]
mod tests {
    #[test]
    fn split_covers_everything_in_order() {
        let mut v: Vec<usize> = vec![0; 100_003];
        let parts = super::split_mut(&mut v, 1);
        let starts: Vec<usize> = parts.iter().map(|p| p.0).collect();
        super::map(parts, |(s, c)| {
            c.iter_mut().enumerate().for_each(|(i, x)| *x = s + i)
        });
        assert!(v.iter().enumerate().all(|(i, &x)| i == x));
        assert_eq!(starts[0], 0);
    }
}
