//! A C-support-vector classifier with an RBF kernel, trained by sequential
//! minimal optimisation (SMO) with second-order working-set selection, the
//! algorithm of LIBSVM (Fan, Chen and Lin, JMLR 2005), which is what the
//! reference MIA (scikit-learn's `SVC`) runs. Written for the membership
//! inference attack's features: a few dimensions, tens of thousands of samples.
//! Kernel values are computed on demand (two columns per iteration), so memory
//! stays linear in the number of samples.

/// A trained classifier: support vectors with coefficients `y_i * alpha_i` and
/// the offset `rho`; `decision(x) = sum coef_i K(sv_i, x) - rho`.
#[derive(Clone, Debug)]
pub struct Svc {
    pub gamma: f64,
    pub dim: usize,
    pub sv: Vec<f64>,
    pub coef: Vec<f64>,
    pub rho: f64,
    /// SMO iterations used.
    pub iterations: usize,
}

/// Training settings. `tol` is LIBSVM's stopping tolerance on the KKT gap.
#[derive(Clone, Copy, Debug)]
pub struct SvcParams {
    pub c: f64,
    pub gamma: f64,
    pub tol: f64,
    pub max_iter: usize,
}

impl Default for SvcParams {
    fn default() -> Self {
        SvcParams {
            c: 3.0,
            gamma: 1.0,
            tol: 1e-3,
            max_iter: 10_000_000,
        }
    }
}

fn rbf(gamma: f64, a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    (-gamma * d).exp()
}

/// Why a classifier could not be trained.
#[derive(Debug, Clone, PartialEq)]
pub struct SvmError(pub String);

impl std::fmt::Display for SvmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "svm: {}", self.0)
    }
}

impl std::error::Error for SvmError {}

impl Svc {
    /// Trains on `x` (`n x dim`, row-major) with labels `y` (true = +1).
    pub fn train(x: &[f64], dim: usize, y: &[bool], p: SvcParams) -> Result<Svc, SvmError> {
        let n = y.len();
        if dim == 0 || x.len() != n * dim {
            return Err(SvmError(format!(
                "{} features for {n} samples of dimension {dim}",
                x.len()
            )));
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(SvmError("non-finite feature".into()));
        }
        if !y.iter().any(|&v| v) || y.iter().all(|&v| v) {
            return Err(SvmError("both classes need at least one sample".into()));
        }
        let ys: Vec<f64> = y.iter().map(|&v| if v { 1.0 } else { -1.0 }).collect();
        let row = |i: usize| &x[i * dim..(i + 1) * dim];
        let mut alpha = vec![0.0f64; n];
        // Gradient of the dual objective 1/2 a'Qa - e'a at alpha = 0.
        let mut g = vec![-1.0f64; n];
        let c = p.c;
        let tau = 1e-12;
        let mut ki = vec![0.0f64; n];
        let mut kj = vec![0.0f64; n];
        let mut it = 0;
        let in_up = |a: f64, yv: f64| (yv > 0.0 && a < c) || (yv < 0.0 && a > 0.0);
        let in_low = |a: f64, yv: f64| (yv > 0.0 && a > 0.0) || (yv < 0.0 && a < c);
        while it < p.max_iter {
            // i: maximal violating index in I_up.
            let mut gmax = f64::NEG_INFINITY;
            let mut i = usize::MAX;
            for t in 0..n {
                if in_up(alpha[t], ys[t]) && -ys[t] * g[t] >= gmax {
                    gmax = -ys[t] * g[t];
                    i = t;
                }
            }
            if i == usize::MAX {
                break;
            }
            for t in 0..n {
                ki[t] = rbf(p.gamma, row(i), row(t));
            }
            // j: second-order selection in I_low.
            let mut gmin = f64::INFINITY;
            let mut obj_min = f64::INFINITY;
            let mut j = usize::MAX;
            for t in 0..n {
                if !in_low(alpha[t], ys[t]) {
                    continue;
                }
                let v = -ys[t] * g[t];
                gmin = gmin.min(v);
                let b = gmax - v;
                if b > 0.0 {
                    let a = (2.0 - 2.0 * ki[t]).max(tau);
                    let obj = -(b * b) / a;
                    if obj <= obj_min {
                        obj_min = obj;
                        j = t;
                    }
                }
            }
            if gmax - gmin < p.tol || j == usize::MAX {
                break;
            }
            for t in 0..n {
                kj[t] = rbf(p.gamma, row(j), row(t));
            }
            // Two-variable update with clipping (LIBSVM's solver).
            let (oi, oj) = (alpha[i], alpha[j]);
            let quad = (2.0 - 2.0 * ki[j]).max(tau);
            if ys[i] != ys[j] {
                let delta = (-g[i] - g[j]) / quad;
                let diff = alpha[i] - alpha[j];
                alpha[i] += delta;
                alpha[j] += delta;
                if diff > 0.0 {
                    if alpha[j] < 0.0 {
                        alpha[j] = 0.0;
                        alpha[i] = diff;
                    }
                } else if alpha[i] < 0.0 {
                    alpha[i] = 0.0;
                    alpha[j] = -diff;
                }
                if diff > 0.0 {
                    if alpha[i] > c {
                        alpha[i] = c;
                        alpha[j] = c - diff;
                    }
                } else if alpha[j] > c {
                    alpha[j] = c;
                    alpha[i] = c + diff;
                }
            } else {
                let delta = (g[i] - g[j]) / quad;
                let sum = alpha[i] + alpha[j];
                alpha[i] -= delta;
                alpha[j] += delta;
                if sum > c {
                    if alpha[i] > c {
                        alpha[i] = c;
                        alpha[j] = sum - c;
                    }
                } else if alpha[j] < 0.0 {
                    alpha[j] = 0.0;
                    alpha[i] = sum;
                }
                if sum > c {
                    if alpha[j] > c {
                        alpha[j] = c;
                        alpha[i] = sum - c;
                    }
                } else if alpha[i] < 0.0 {
                    alpha[i] = 0.0;
                    alpha[j] = sum;
                }
            }
            let (di, dj) = (alpha[i] - oi, alpha[j] - oj);
            for t in 0..n {
                g[t] += ys[t] * (ys[i] * ki[t] * di + ys[j] * kj[t] * dj);
            }
            it += 1;
        }
        // rho: mean of y*G over free vectors, or the midpoint of the feasible range.
        let (mut sum, mut nfree) = (0.0, 0usize);
        let (mut ub, mut lb) = (f64::INFINITY, f64::NEG_INFINITY);
        for t in 0..n {
            let yg = ys[t] * g[t];
            if alpha[t] > 0.0 && alpha[t] < c {
                sum += yg;
                nfree += 1;
            } else if (alpha[t] >= c && ys[t] < 0.0) || (alpha[t] <= 0.0 && ys[t] > 0.0) {
                ub = ub.min(yg);
            } else {
                lb = lb.max(yg);
            }
        }
        let rho = if nfree > 0 {
            sum / nfree as f64
        } else {
            (ub + lb) / 2.0
        };
        let mut sv = Vec::new();
        let mut coef = Vec::new();
        for t in 0..n {
            if alpha[t] > 0.0 {
                sv.extend_from_slice(row(t));
                coef.push(ys[t] * alpha[t]);
            }
        }
        Ok(Svc {
            gamma: p.gamma,
            dim,
            sv,
            coef,
            rho,
            iterations: it,
        })
    }

    /// Decision value of one sample.
    pub fn decision(&self, x: &[f64]) -> f64 {
        let s: f64 = self
            .sv
            .chunks(self.dim)
            .zip(&self.coef)
            .map(|(v, c)| c * rbf(self.gamma, v, x))
            .sum();
        s - self.rho
    }

    /// Predicted class (true = +1) of one sample.
    pub fn predict(&self, x: &[f64]) -> bool {
        self.decision(x) > 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_points_have_the_analytic_solution() {
        // x = 0 (negative), x = 1 (positive), gamma = 1: alpha = 1/(1 - e^-1), rho = 0.
        let svc = Svc::train(
            &[0.0, 1.0],
            1,
            &[false, true],
            SvcParams {
                tol: 1e-9,
                ..Default::default()
            },
        )
        .unwrap();
        let a = 1.0 / (1.0 - (-1.0f64).exp());
        assert_eq!(svc.coef.len(), 2);
        assert!(
            (svc.coef[1] - a).abs() < 1e-6 && (svc.coef[0] + a).abs() < 1e-6,
            "{:?}",
            svc.coef
        );
        assert!(svc.rho.abs() < 1e-6);
        assert!(
            (svc.decision(&[1.0]) - 1.0).abs() < 1e-6 && (svc.decision(&[0.0]) + 1.0).abs() < 1e-6
        );
        // Bound by C: alpha = C when the unconstrained solution exceeds it.
        let close = Svc::train(
            &[0.0, 0.1],
            1,
            &[false, true],
            SvcParams {
                tol: 1e-9,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(
            close.coef.iter().all(|c| (c.abs() - 3.0).abs() < 1e-9),
            "{:?}",
            close.coef
        );
    }

    #[test]
    fn random_problem_satisfies_kkt_conditions() {
        let mut r = crate::rng::Rng::new(3);
        let n = 300;
        let x: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let y: Vec<bool> = x.iter().map(|&v| v + 0.7 * r.normal() > 0.2).collect();
        let p = SvcParams {
            tol: 1e-6,
            ..Default::default()
        };
        let svc = Svc::train(&x, 1, &y, p).unwrap();
        // Recover alpha per sample and check y_i f(x_i) against alpha's bounds.
        for i in 0..n {
            let yi = if y[i] { 1.0 } else { -1.0 };
            let a = svc
                .sv
                .iter()
                .zip(&svc.coef)
                .find(|(v, _)| **v == x[i])
                .map(|(_, c)| c * yi)
                .unwrap_or(0.0);
            let m = yi * svc.decision(&[x[i]]);
            if a <= 1e-9 {
                assert!(m >= 1.0 - 1e-3, "alpha 0 needs margin >= 1, got {m}");
            } else if a >= p.c - 1e-9 {
                assert!(m <= 1.0 + 1e-3, "alpha C needs margin <= 1, got {m}");
            } else {
                assert!((m - 1.0).abs() < 1e-3, "free alpha needs margin 1, got {m}");
            }
        }
        let sum: f64 = svc.coef.iter().sum();
        assert!(sum.abs() < 1e-9, "sum y_i alpha_i = {sum}");
    }
}
