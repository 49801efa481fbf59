//! Host sequences of the elementwise kernels: SwiGLU, AdamW, fake quantizer.

use super::{capped_grid, elementwise_dims, ensure};
use crate::kernels::{adamw, fake_quant};
use crate::launcher::{LaunchDims, LaunchError, Launcher};

/// [`crate::kernels::swiglu::swiglu_forward`] over slices of one length.
pub fn swiglu_forward<L: Launcher>(l: &L, out: &mut [f32], gate: &[f32], up: &[f32]) -> Result<(), LaunchError> {
    let len = out.len();
    ensure(gate.len() == len && up.len() == len, || "swiglu: length mismatch".into())?;
    if len == 0 {
        return Ok(());
    }
    let (gm, um, om) = (l.input(gate)?, l.input(up)?, l.output(out, false)?);
    // SAFETY: every buffer holds `len` elements.
    unsafe { l.swiglu_forward(elementwise_dims(l, len), l.ptr(&om), l.ptr(&gm), l.ptr(&um), len) }?;
    l.read_back(&om, out)
}

/// [`crate::kernels::swiglu::swiglu_backward`]: accumulates into `dgate`, `dup`.
pub fn swiglu_backward<L: Launcher>(
    l: &L,
    dgate: &mut [f32],
    dup: &mut [f32],
    dout: &[f32],
    gate: &[f32],
    up: &[f32],
) -> Result<(), LaunchError> {
    let len = gate.len();
    ensure(dgate.len() == len && dup.len() == len && dout.len() == len && up.len() == len, || {
        "swiglu backward: length mismatch".into()
    })?;
    if len == 0 {
        return Ok(());
    }
    let (dm, gm, um) = (l.input(dout)?, l.input(gate)?, l.input(up)?);
    let (dgm, dum) = (l.output(dgate, true)?, l.output(dup, true)?);
    let (dg, du) = (l.ptr(&dgm), l.ptr(&dum));
    // SAFETY: every buffer holds `len` elements.
    unsafe { l.swiglu_backward(elementwise_dims(l, len), dg, du, l.ptr(&dm), l.ptr(&gm), l.ptr(&um), len) }?;
    l.read_back(&dgm, dgate)?;
    l.read_back(&dum, dup)
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
pub fn adamw_step<L: Launcher>(
    l: &L,
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    h: &AdamWHyper,
    step: u64,
) -> Result<(), LaunchError> {
    let len = param.len();
    ensure(grad.len() == len && m.len() == len && v.len() == len, || "adamw: length mismatch".into())?;
    ensure(step >= 1, || "adamw: step is 1-based".into())?;
    if len == 0 {
        return Ok(());
    }
    let k = adamw_scalars(h, step);
    let gm = l.input(grad)?;
    let (pm, mm, vm) = (l.output(param, true)?, l.output(m, true)?, l.output(v, true)?);
    // SAFETY: every buffer holds `len` elements.
    unsafe { l.adamw_step(elementwise_dims(l, len), l.ptr(&pm), l.ptr(&gm), l.ptr(&mm), l.ptr(&vm), k, len) }?;
    l.read_back(&pm, param)?;
    l.read_back(&mm, m)?;
    l.read_back(&vm, v)
}

fn check_quant(len: usize, clip: usize, group: usize, bits: u32) -> Result<(), LaunchError> {
    ensure(group > 0 && clip == len.div_ceil(group), || {
        format!("fake quant: clip must have ceil({len} / {group}) entries")
    })?;
    ensure((2..=8).contains(&bits), || format!("fake quant: {bits} bits not in 2..=8"))
}

/// [`fake_quant::fake_quant_forward`]: `y = fake_quant(w)` with per-group `clip`.
pub fn fake_quant_forward<L: Launcher>(
    l: &L,
    y: &mut [f32],
    w: &[f32],
    clip: &[f32],
    group: usize,
    bits: u32,
) -> Result<(), LaunchError> {
    let len = w.len();
    ensure(y.len() == len, || "fake quant: y / w length mismatch".into())?;
    check_quant(len, clip.len(), group, bits)?;
    if len == 0 {
        return Ok(());
    }
    let (wm, cm, ym) = (l.input(w)?, l.input(clip)?, l.output(y, false)?);
    let q = fake_quant::qmax(bits);
    // SAFETY: y and w hold `len` elements, clip one per group.
    unsafe { l.fake_quant_forward(elementwise_dims(l, len), l.ptr(&ym), l.ptr(&wm), l.ptr(&cm), len, group, q) }?;
    l.read_back(&ym, y)
}

/// [`fake_quant::fake_quant_backward`]: accumulates `dw` and `dclip`.
#[allow(clippy::too_many_arguments)]
pub fn fake_quant_backward<L: Launcher>(
    l: &L,
    dw: &mut [f32],
    dclip: &mut [f32],
    dy: &[f32],
    w: &[f32],
    clip: &[f32],
    group: usize,
    bits: u32,
    grad_scale: f32,
) -> Result<(), LaunchError> {
    let len = w.len();
    ensure(dw.len() == len && dy.len() == len && dclip.len() == clip.len(), || {
        "fake quant backward: length mismatch".into()
    })?;
    check_quant(len, clip.len(), group, bits)?;
    if len == 0 {
        return Ok(());
    }
    let groups = clip.len();
    let (gm, wm, cm) = (l.input(dy)?, l.input(w)?, l.input(clip)?);
    let (dm, dcm) = (l.output(dw, true)?, l.output(dclip, true)?);
    let (q, dims) = (fake_quant::qmax(bits), LaunchDims::linear(capped_grid(l, groups, 1), l.block_threads()));
    let (d, dc, g) = (l.ptr(&dm), l.ptr(&dcm), l.ptr(&gm));
    // SAFETY: dw/dy/w hold `len` elements, dclip/clip one per group.
    unsafe { l.fake_quant_backward(dims, d, dc, g, l.ptr(&wm), l.ptr(&cm), len, group, q, grad_scale) }?;
    l.read_back(&dm, dw)?;
    l.read_back(&dcm, dclip)
}

/// [`crate::kernels::swiglu::swiglu_fused_forward`]: `out [N, F]` from `gu [N, 2F]`.
pub fn swiglu_fused_forward<L: Launcher>(l: &L, out: &mut [f32], gu: &[f32], f: usize) -> Result<(), LaunchError> {
    let len = out.len();
    ensure(f > 0 && gu.len() == 2 * len && len.is_multiple_of(f), || "swiglu fused: shapes".into())?;
    if len == 0 {
        return Ok(());
    }
    let (gm, om) = (l.input(gu)?, l.output(out, false)?);
    // SAFETY: out holds N*F and gu N*2F elements.
    unsafe { l.swiglu_fused_forward(elementwise_dims(l, len), l.ptr(&om), l.ptr(&gm), len, f) }?;
    l.read_back(&om, out)
}

/// [`crate::kernels::swiglu::swiglu_fused_backward`]: accumulates into `dgu [N, 2F]` from `dout [N, F]`.
pub fn swiglu_fused_backward<L: Launcher>(
    l: &L,
    dgu: &mut [f32],
    dout: &[f32],
    gu: &[f32],
    f: usize,
) -> Result<(), LaunchError> {
    let len = dout.len();
    ensure(f > 0 && gu.len() == 2 * len && dgu.len() == gu.len() && len.is_multiple_of(f), || {
        "swiglu fused backward: shapes".into()
    })?;
    if len == 0 {
        return Ok(());
    }
    let (dm, gm, dgm) = (l.input(dout)?, l.input(gu)?, l.output(dgu, true)?);
    // SAFETY: dout holds N*F, gu and dgu N*2F elements.
    unsafe { l.swiglu_fused_backward(elementwise_dims(l, len), l.ptr(&dgm), l.ptr(&dm), l.ptr(&gm), len, f) }?;
    l.read_back(&dgm, dgu)
}

/// [`crate::kernels::elementwise::add_scaled`]: `out = a + scale * b`.
pub fn add_scaled<L: Launcher>(l: &L, out: &mut [f32], a: &[f32], b: &[f32], scale: f32) -> Result<(), LaunchError> {
    let len = out.len();
    ensure(a.len() == len && b.len() == len, || "add_scaled: length mismatch".into())?;
    if len == 0 {
        return Ok(());
    }
    let (am, bm, om) = (l.input(a)?, l.input(b)?, l.output(out, false)?);
    // SAFETY: every buffer holds `len` elements.
    unsafe { l.add_scaled(elementwise_dims(l, len), l.ptr(&om), l.ptr(&am), l.ptr(&bm), scale, len) }?;
    l.read_back(&om, out)
}

/// Checks `x [N, cols]` against a `[N, width]` slice at `start`; returns `N * width`.
fn check_cols(x: usize, slice: usize, cols: usize, start: usize, width: usize) -> Result<usize, LaunchError> {
    ensure(cols > 0 && width > 0 && start + width <= cols && x.is_multiple_of(cols), || {
        format!("columns {start}..{} of a [N, {cols}] matrix", start + width)
    })?;
    let len = x / cols * width;
    ensure(slice == len, || format!("column slice holds {slice} values, not {len}"))?;
    Ok(len)
}

/// [`crate::kernels::elementwise::copy_cols`]: `out [N, width] = x[:, start..start + width]`.
pub fn copy_cols<L: Launcher>(l: &L, out: &mut [f32], x: &[f32], cols: usize, start: usize) -> Result<(), LaunchError> {
    let width = if cols == 0 || x.is_empty() { 0 } else { out.len() / (x.len() / cols).max(1) };
    let len = check_cols(x.len(), out.len(), cols, start, width.max(1))?;
    if len == 0 {
        return Ok(());
    }
    let (xm, om) = (l.input(x)?, l.output(out, false)?);
    // SAFETY: x holds N*cols and out N*width elements (checked).
    unsafe { l.copy_cols(elementwise_dims(l, len), l.ptr(&om), l.ptr(&xm), cols, start, width, len) }?;
    l.read_back(&om, out)
}

/// [`crate::kernels::elementwise::add_cols`]: `dx[:, start..start + width] += dy [N, width]`.
pub fn add_cols<L: Launcher>(l: &L, dx: &mut [f32], dy: &[f32], cols: usize, start: usize) -> Result<(), LaunchError> {
    let width = if cols == 0 || dx.is_empty() { 0 } else { dy.len() / (dx.len() / cols).max(1) };
    let len = check_cols(dx.len(), dy.len(), cols, start, width.max(1))?;
    if len == 0 {
        return Ok(());
    }
    let (gm, dm) = (l.input(dy)?, l.output(dx, true)?);
    // SAFETY: dx holds N*cols and dy N*width elements (checked).
    unsafe { l.add_cols(elementwise_dims(l, len), l.ptr(&dm), l.ptr(&gm), cols, start, width, len) }?;
    l.read_back(&dm, dx)
}
