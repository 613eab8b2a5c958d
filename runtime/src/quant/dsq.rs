//! DSQ (Differentiable Soft Quantization) math shared by the activation and weight
//! quantizers.
//!
//! Levels are `D * (j - o)` for `j = 0..=15`, with `D` the interval, `o` the code
//! offset (0 for unsigned activations, 8 for signed weights). For an input `x`
//! inside the range, `i = min(floor(x/D + o), 14)` is its interval and
//! `t = x/D + o - i - 1/2` its position in the interval (-1/2..1/2). The soft
//! quantizer is `Q_s = D * (i - o + 1/2 + 1/2 * s * tanh(c t))` with `c = k D =
//! ln(2/alpha - 1)` and `s = 1/tanh(c/2)`; the forward is the hard quantizer
//! (`round(x/D)`), the backward follows `Q_s`.

/// Derivatives of the DSQ soft quantizer at one in-range input.
#[derive(Clone, Copy, Debug)]
pub struct SoftGrad {
    /// dQ/dx
    pub dx: f32,
    /// dQ/dD
    pub dd: f32,
    /// dQ/dalpha
    pub dalpha: f32,
}

/// `c = ln(2/alpha - 1)`; alpha is kept inside (0, 0.5) by the optimiser.
pub fn sharpness(alpha: f32) -> f32 {
    (2.0 / alpha - 1.0).ln()
}

/// The per-tensor constants of the soft quantizer for one alpha, computed once
/// per tensor rather than per element (they cost a log and three hyperbolics).
#[derive(Clone, Copy, Debug)]
pub struct Sharpness {
    c: f32,
    s: f32,
    ds_dc: f32,
    dc_dalpha: f32,
}

impl Sharpness {
    pub fn new(alpha: f32) -> Self {
        let c = sharpness(alpha);
        let half_c = 0.5 * c;
        let sh = half_c.sinh();
        Sharpness {
            c,
            s: 1.0 / half_c.tanh(),
            ds_dc: -0.5 / (sh * sh),
            dc_dalpha: -2.0 / (alpha * (2.0 - alpha)),
        }
    }

    /// Derivatives of `Q_s` at `x` (inside the range) for interval `d`, offset `o`.
    #[inline]
    pub fn grad(&self, x: f32, d: f32, o: f32) -> SoftGrad {
        let Sharpness {
            c,
            s,
            ds_dc,
            dc_dalpha,
        } = *self;
        let v = x / d + o;
        let i = v.floor().clamp(0.0, 14.0);
        let t = v - i - 0.5;
        let th = (c * t).tanh();
        let sech2 = 1.0 - th * th;
        let dx = 0.5 * s * c * sech2;
        let dd = (i - o + 0.5 + 0.5 * s * th) - (x / d) * dx;
        let dq_dc = 0.5 * d * (ds_dc * th + s * t * sech2);
        SoftGrad {
            dx,
            dd,
            dalpha: dq_dc * dc_dalpha,
        }
    }
}

/// Derivatives of `Q_s` at `x` (inside the range) for interval `d`, offset `o`.
pub fn soft_grad(x: f32, d: f32, o: f32, alpha: f32) -> SoftGrad {
    Sharpness::new(alpha).grad(x, d, o)
}

/// The soft quantizer itself (used to check [`soft_grad`] by finite differences).
pub fn soft_value(x: f32, d: f32, o: f32, alpha: f32, i_fixed: f32) -> f32 {
    let c = sharpness(alpha);
    let s = 1.0 / (0.5 * c).tanh();
    let t = x / d + o - i_fixed - 0.5;
    d * (i_fixed - o + 0.5 + 0.5 * s * (c * t).tanh())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd(f: impl Fn(f64) -> f64, x: f64) -> f64 {
        let h = 1e-4;
        (f(x + h) - f(x - h)) / (2.0 * h)
    }

    #[test]
    fn soft_grad_matches_finite_differences() {
        for &(x, d, o, a) in &[
            (0.37f32, 0.2f32, 0.0f32, 0.2f32),
            (-0.55, 0.1, 8.0, 0.3),
            (1.01, 0.25, 0.0, 0.1),
        ] {
            let v = x / d + o;
            let i = v.floor().clamp(0.0, 14.0);
            let g = soft_grad(x, d, o, a);
            let gx = fd(|xx| soft_value(xx as f32, d, o, a, i) as f64, x as f64);
            let ga = fd(|aa| soft_value(x, d, o, aa as f32, i) as f64, a as f64);
            let gd = fd(|dd| soft_value(x, dd as f32, o, a, i) as f64, d as f64);
            assert!(
                (g.dx as f64 - gx).abs() < 2e-2 * gx.abs().max(1.0),
                "dx {} vs {gx}",
                g.dx
            );
            assert!(
                (g.dalpha as f64 - ga).abs() < 2e-2 * ga.abs().max(0.05),
                "dalpha {} vs {ga}",
                g.dalpha
            );
            assert!(
                (g.dd as f64 - gd).abs() < 2e-2 * gd.abs().max(0.5),
                "dd {} vs {gd}",
                g.dd
            );
        }
    }

    #[test]
    fn soft_quantizer_hits_levels_at_interval_ends() {
        let (d, a) = (0.3f32, 0.2f32);
        for i in 0..15 {
            let lo = soft_value(d * i as f32, d, 0.0, a, i as f32);
            let hi = soft_value(d * (i + 1) as f32 - 1e-6, d, 0.0, a, i as f32);
            assert!((lo - d * i as f32).abs() < 1e-4 && (hi - d * (i + 1) as f32).abs() < 1e-4);
        }
    }
}
