//! AdamW step with torch.optim.AdamW semantics, operation by operation as kernels-cpu `adamw`.
//!
//! The per-step scalars are derived on the host in f64 (as torch does from Python floats) and
//! rounded to f32: see [`AdamWScalars`] and `ops::adamw_scalars`.

use super::grid_stride;
use crate::simt::{Gmem, Simt};

/// Per-step scalars of one AdamW update (kernel parameter struct).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct AdamWScalars {
    /// `1 - lr * wd`.
    pub decay: f32,
    /// lerp weight `1 - beta1`.
    pub w1: f32,
    /// `beta2`.
    pub b2: f32,
    /// `1 - beta2`.
    pub c2: f32,
    /// `sqrt(1 - beta2^step)`.
    pub bc2_sqrt: f32,
    /// `eps`.
    pub eps: f32,
    /// `-lr / (1 - beta1^step)`.
    pub neg_step: f32,
}

/// One AdamW step over `len` elements of `param`, `grad`, `m`, `v`:
/// `p *= decay; m = lerp(m, g, w1); v = v*b2 + c2*g*g; p += neg_step * m / (sqrt(v)/bc2_sqrt + eps)`.
/// Needs IEEE `sqrt` and division (`sqrt.rn`, `div.rn`) to match the CPU bit for bit.
///
/// Launch: grid-stride, any 1-D grid and block (GPU: 256 threads, `ceil(len / 256)` blocks capped),
/// no shared memory.
pub fn adamw_step<C: Simt>(
    ctx: &C,
    param: Gmem<f32>,
    grad: Gmem<f32>,
    m: Gmem<f32>,
    v: Gmem<f32>,
    k: AdamWScalars,
    len: usize,
) {
    // torch's vectorized lerp: small weights start from m, large ones from g.
    let (coeff, from_grad) = if k.w1.abs() < 0.5 { (k.w1, false) } else { (k.w1 - 1.0, true) };
    let (mut i, stride) = grid_stride(ctx);
    while i < len {
        // SAFETY: i < len for all four buffers; one thread per element.
        unsafe {
            let (p, g, mo, vo) = (param.read(i), grad.read(i), m.read(i), v.read(i));
            let pd = p * k.decay;
            let base = if from_grad { g } else { mo };
            let mn = C::fma(g - mo, coeff, base);
            let vn = vo * k.b2 + k.c2 * g * g;
            let denom = C::sqrt(vn) / k.bc2_sqrt + k.eps;
            param.write(i, pd + k.neg_step * mn / denom);
            m.write(i, mn);
            v.write(i, vn);
        }
        i += stride;
    }
}
