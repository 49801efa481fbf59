//! Host helpers of the elementwise kernels: SwiGLU, AdamW, fake quantizer.

use super::{capped_grid, ensure, rd, wr, SIM_BLOCK};
use crate::kernels::{adamw, fake_quant, swiglu};
use crate::sim::{launch, SimError};
use crate::simt::Dim3;

/// [`swiglu::swiglu_forward`] over slices of one length.
pub fn swiglu_forward(out: &mut [f32], gate: &[f32], up: &[f32]) -> Result<(), SimError> {
    let len = out.len();
    ensure(gate.len() == len && up.len() == len, || "swiglu: length mismatch".into())?;
    let (o, g, u) = (wr(out), rd(gate), rd(up));
    launch(capped_grid(len, SIM_BLOCK as usize), Dim3::x(SIM_BLOCK), 0, |ctx| swiglu::swiglu_forward(ctx, o, g, u, len))
}

/// [`swiglu::swiglu_backward`]: accumulates into `dgate`, `dup`.
pub fn swiglu_backward(
    dgate: &mut [f32],
    dup: &mut [f32],
    dout: &[f32],
    gate: &[f32],
    up: &[f32],
) -> Result<(), SimError> {
    let len = gate.len();
    ensure(dgate.len() == len && dup.len() == len && dout.len() == len && up.len() == len, || {
        "swiglu backward: length mismatch".into()
    })?;
    let (dg, du, d, g, u) = (wr(dgate), wr(dup), rd(dout), rd(gate), rd(up));
    launch(capped_grid(len, SIM_BLOCK as usize), Dim3::x(SIM_BLOCK), 0, |ctx| {
        swiglu::swiglu_backward(ctx, dg, du, d, g, u, len)
    })
}

/// AdamW hyperparameters (torch.optim.AdamW names).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWHyper {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
}

/// The f64 a config author meant by an f32 hyperparameter (shortest decimal that rounds to it).
fn intended_f64(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

/// The per-step scalars, derived in f64 as torch does and rounded to f32 (`step` is 1-based).
pub fn adamw_scalars(h: &AdamWHyper, step: u64) -> adamw::AdamWScalars {
    let (lr, b1, b2) = (intended_f64(h.lr), intended_f64(h.beta1), intended_f64(h.beta2));
    let (wd, eps) = (intended_f64(h.weight_decay), intended_f64(h.eps));
    let bc1 = 1.0 - b1.powf(step as f64);
    let bc2 = 1.0 - b2.powf(step as f64);
    adamw::AdamWScalars {
        decay: (1.0 - lr * wd) as f32,
        w1: (1.0 - b1) as f32,
        b2: b2 as f32,
        c2: (1.0 - b2) as f32,
        bc2_sqrt: bc2.powf(0.5) as f32,
        eps: eps as f32,
        neg_step: (-(lr / bc1)) as f32,
    }
}

/// [`adamw::adamw_step`]: one update of `param`, `m`, `v` (`step` is 1-based).
pub fn adamw_step(
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    h: &AdamWHyper,
    step: u64,
) -> Result<(), SimError> {
    let len = param.len();
    ensure(grad.len() == len && m.len() == len && v.len() == len, || "adamw: length mismatch".into())?;
    ensure(step >= 1, || "adamw: step is 1-based".into())?;
    let k = adamw_scalars(h, step);
    let (p, g, mm, vv) = (wr(param), rd(grad), wr(m), wr(v));
    launch(capped_grid(len, SIM_BLOCK as usize), Dim3::x(SIM_BLOCK), 0, |ctx| {
        adamw::adamw_step(ctx, p, g, mm, vv, k, len)
    })
}

fn check_quant(len: usize, clip: usize, group: usize, bits: u32) -> Result<(), SimError> {
    ensure(group > 0 && clip == len.div_ceil(group), || {
        format!("fake quant: clip must have ceil({len} / {group}) entries")
    })?;
    ensure((2..=8).contains(&bits), || format!("fake quant: {bits} bits not in 2..=8"))
}

/// [`fake_quant::fake_quant_forward`]: `y = fake_quant(w)` with per-group `clip`.
pub fn fake_quant_forward(y: &mut [f32], w: &[f32], clip: &[f32], group: usize, bits: u32) -> Result<(), SimError> {
    let len = w.len();
    ensure(y.len() == len, || "fake quant: y / w length mismatch".into())?;
    check_quant(len, clip.len(), group, bits)?;
    let (yy, ww, cc, q) = (wr(y), rd(w), rd(clip), fake_quant::qmax(bits));
    launch(capped_grid(len, SIM_BLOCK as usize), Dim3::x(SIM_BLOCK), 0, |ctx| {
        fake_quant::fake_quant_forward(ctx, yy, ww, cc, len, group, q)
    })
}

/// [`fake_quant::fake_quant_backward`]: accumulates `dw` and `dclip`.
#[allow(clippy::too_many_arguments)]
pub fn fake_quant_backward(
    dw: &mut [f32],
    dclip: &mut [f32],
    dy: &[f32],
    w: &[f32],
    clip: &[f32],
    group: usize,
    bits: u32,
    grad_scale: f32,
) -> Result<(), SimError> {
    let len = w.len();
    ensure(dw.len() == len && dy.len() == len && dclip.len() == clip.len(), || {
        "fake quant backward: length mismatch".into()
    })?;
    check_quant(len, clip.len(), group, bits)?;
    let groups = clip.len();
    let (d, dc, g, ww, cc, q) = (wr(dw), wr(dclip), rd(dy), rd(w), rd(clip), fake_quant::qmax(bits));
    launch(capped_grid(groups, 1), Dim3::x(SIM_BLOCK), 0, |ctx| {
        fake_quant::fake_quant_backward(ctx, d, dc, g, ww, cc, len, group, q, grad_scale)
    })
}

/// [`swiglu::swiglu_fused_forward`]: `out [N, F]` from `gu [N, 2F]`.
pub fn swiglu_fused_forward(out: &mut [f32], gu: &[f32], f: usize) -> Result<(), SimError> {
    let len = out.len();
    ensure(f > 0 && gu.len() == 2 * len && len.is_multiple_of(f), || "swiglu fused: shapes".into())?;
    let (o, g) = (wr(out), rd(gu));
    launch(capped_grid(len, SIM_BLOCK as usize), Dim3::x(SIM_BLOCK), 0, |ctx| {
        swiglu::swiglu_fused_forward(ctx, o, g, len, f)
    })
}

/// [`swiglu::swiglu_fused_backward`]: accumulates into `dgu [N, 2F]` from `dout [N, F]`.
pub fn swiglu_fused_backward(dgu: &mut [f32], dout: &[f32], gu: &[f32], f: usize) -> Result<(), SimError> {
    let len = dout.len();
    ensure(f > 0 && gu.len() == 2 * len && dgu.len() == gu.len() && len.is_multiple_of(f), || {
        "swiglu fused backward: shapes".into()
    })?;
    let (dg, d, g) = (wr(dgu), rd(dout), rd(gu));
    launch(capped_grid(len, SIM_BLOCK as usize), Dim3::x(SIM_BLOCK), 0, |ctx| {
        swiglu::swiglu_fused_backward(ctx, dg, d, g, len, f)
    })
}
