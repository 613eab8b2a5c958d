//! DSQ's soft quantizer on the GPU, shared by the activation and the weight
//! quantizers' backward (the runtime's `quant::dsq` is the reference, in the
//! same order of operations).
#![allow(clippy::manual_clamp)] // cube code: the CPU's comparisons, spelled out

use cubecl::prelude::*;

/// The per-tensor constants of the soft quantizer for one `alpha`
/// (`dsq::Sharpness`).
#[derive(CubeType, Clone, Copy)]
pub(super) struct Sharpness {
    c: f32,
    s: f32,
    ds_dc: f32,
    dc_dalpha: f32,
}

/// Derivatives of the soft quantizer at one in-range input (`dsq::SoftGrad`).
#[derive(CubeType, Clone, Copy)]
pub(super) struct SoftGrad {
    pub dx: f32,
    pub dd: f32,
    pub dalpha: f32,
}

#[cube]
pub(super) fn sharpness(alpha: f32) -> Sharpness {
    let c = (2.0 / alpha - 1.0).ln();
    let half_c = 0.5 * c;
    let sh = half_c.sinh();
    Sharpness {
        c,
        s: 1.0 / half_c.tanh(),
        ds_dc: -0.5 / (sh * sh),
        dc_dalpha: -2.0 / (alpha * (2.0 - alpha)),
    }
}

/// `Sharpness::grad` at `x` (inside the range) for interval `d`, offset `o`.
#[cube]
pub(super) fn soft_grad(k: Sharpness, x: f32, d: f32, o: f32) -> SoftGrad {
    let v = x / d + o;
    let mut i = v.floor();
    if i < 0.0 {
        i = 0.0;
    }
    if i > 14.0 {
        i = 14.0;
    }
    let t = v - i - 0.5;
    let th = (k.c * t).tanh();
    let sech2 = 1.0 - th * th;
    let dx = 0.5 * k.s * k.c * sech2;
    let dd = (i - o + 0.5 + 0.5 * k.s * th) - (x / d) * dx;
    let dq_dc = 0.5 * d * (k.ds_dc * th + k.s * t * sech2);
    SoftGrad {
        dx,
        dd,
        dalpha: dq_dc * k.dc_dalpha,
    }
}
