//! Host sequences of the row kernels: RMSNorm, softmax cross-entropy, and the fused LM head +
//! cross-entropy over row chunks.

use super::gemm::{matmul_dev, Trans};
use super::{capped_grid, ensure};
use crate::kernels::{cross_entropy, rmsnorm};
use crate::launcher::{LaunchDims, LaunchError, Launcher};
use crate::simt::Dim3;

/// [`rmsnorm::rmsnorm_forward`]: `out [N, C]`, `rstd [N]` from `x [N, C]`, `w [C]`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_forward<L: Launcher>(
    l: &L,
    out: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    c: usize,
    eps: f32,
) -> Result<(), LaunchError> {
    ensure(c > 0 && out.len() == n * c && x.len() == n * c && rstd.len() == n && w.len() == c, || {
        format!("rmsnorm: shapes do not match N={n} C={c}")
    })?;
    if n == 0 {
        return Ok(());
    }
    let (xm, wm) = (l.input(x)?, l.input(w)?);
    let (om, rm) = (l.output(out, false)?, l.output(rstd, false)?);
    let dims = LaunchDims::linear(capped_grid(l, n, 1), l.block_threads());
    // SAFETY: out/x hold N*C, rstd N, w C elements, as the kernel indexes.
    unsafe { l.rmsnorm_forward(dims, l.ptr(&om), l.ptr(&rm), l.ptr(&xm), l.ptr(&wm), n, c, eps) }?;
    l.read_back(&om, out)?;
    l.read_back(&rm, rstd)
}

/// [`rmsnorm::rmsnorm_backward_dx`] then [`rmsnorm::rmsnorm_backward_dw`]: accumulates `dx`, `dw`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward<L: Launcher>(
    l: &L,
    dx: &mut [f32],
    dw: &mut [f32],
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    n: usize,
    c: usize,
) -> Result<(), LaunchError> {
    ensure(
        c > 0
            && dx.len() == n * c
            && dout.len() == n * c
            && x.len() == n * c
            && w.len() == c
            && dw.len() == c
            && rstd.len() == n,
        || format!("rmsnorm backward: shapes do not match N={n} C={c}"),
    )?;
    if n == 0 {
        return Ok(());
    }
    let (gm, xm, wm, rm) = (l.input(dout)?, l.input(x)?, l.input(w)?, l.input(rstd)?);
    let (dxm, dwm) = (l.output(dx, true)?, l.output(dw, true)?);
    let (g, xx, r) = (l.ptr(&gm), l.ptr(&xm), l.ptr(&rm));
    let block = l.block_threads();
    let dims = LaunchDims::linear(capped_grid(l, n, 1), block);
    // SAFETY: dx/dout/x hold N*C, w and dw C, rstd N elements.
    unsafe { l.rmsnorm_backward_dx(dims, l.ptr(&dxm), g, xx, l.ptr(&wm), r, n, c) }?;
    let grid = Dim3::new(c.div_ceil(block as usize) as u32, n.div_ceil(rmsnorm::DW_ROWS) as u32, 1);
    // SAFETY: as above; the grid covers C columns by DW_ROWS-row strips.
    unsafe { l.rmsnorm_backward_dw(LaunchDims::linear(grid, block), l.ptr(&dwm), g, xx, r, n, c) }?;
    l.read_back(&dxm, dx)?;
    l.read_back(&dwm, dw)
}

/// [`cross_entropy::softmax_ce_forward_backward`]: `losses [N]` and `dlogits [N, V]` (written)
/// from `logits [N, V]` and `targets [N]`.
pub fn softmax_ce_forward_backward<L: Launcher>(
    l: &L,
    losses: &mut [f32],
    dlogits: &mut [f32],
    logits: &[f32],
    targets: &[i32],
    v: usize,
    scale: f32,
) -> Result<(), LaunchError> {
    let n = targets.len();
    ensure(v > 0 && losses.len() == n && dlogits.len() == n * v && logits.len() == n * v, || {
        format!("cross-entropy: shapes do not match N={n} V={v}")
    })?;
    if let Some(&t) = targets.iter().find(|&&t| t != cross_entropy::IGNORE_INDEX && (t < 0 || t as usize >= v)) {
        return Err(LaunchError::InvalidLaunch(format!("cross-entropy: target {t} outside vocab {v}")));
    }
    if n == 0 {
        return Ok(());
    }
    let (xm, tm) = (l.input(logits)?, l.input(targets)?);
    let (lm, dm) = (l.output(losses, false)?, l.output(dlogits, false)?);
    let dims = LaunchDims::linear(capped_grid(l, n, 1), l.block_threads());
    // SAFETY: losses/targets hold N, logits/dlogits N*V elements.
    unsafe { l.softmax_ce_forward_backward(dims, l.ptr(&lm), l.ptr(&dm), l.ptr(&xm), l.ptr(&tm), n, v, scale) }?;
    l.read_back(&lm, losses)?;
    l.read_back(&dm, dlogits)
}

/// The fused LM head + cross-entropy, chunk by chunk over rows as kernels-cpu does (`[N, V]`
/// logits are never materialised): per chunk of `chunk` rows, `logits = h_c · wᵀ` (one-group FMA
/// GEMM), the softmax-CE kernel (row losses and `dlogits = scale * (softmax - onehot)`), then,
/// when `grads = (dh [N, D], dw [V, D])` is given, `dh_c = dlogits · w` (written) and
/// `dw += dlogitsᵀ · h_c`. `w` and `dw` stay on the device across chunks.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_ce<L: Launcher>(
    l: &L,
    losses: &mut [f32],
    grads: Option<(&mut [f32], &mut [f32])>,
    h: &[f32],
    w: &[f32],
    targets: &[i32],
    d: usize,
    v: usize,
    scale: f32,
    chunk: usize,
) -> Result<(), LaunchError> {
    let (n, chunk) = (targets.len(), chunk.max(1));
    ensure(d > 0 && v > 0 && h.len() == n * d && w.len() == v * d && losses.len() == n, || {
        format!("lm head cross-entropy: shapes do not match N={n} D={d} V={v}")
    })?;
    ensure(grads.as_ref().is_none_or(|(dh, dw)| dh.len() == n * d && dw.len() == v * d), || {
        "lm head cross-entropy: dh / dw shapes".into()
    })?;
    if let Some(&t) = targets.iter().find(|&&t| t != cross_entropy::IGNORE_INDEX && (t < 0 || t as usize >= v)) {
        return Err(LaunchError::InvalidLaunch(format!("cross-entropy: target {t} outside vocab {v}")));
    }
    if n == 0 {
        return Ok(());
    }
    let rows_max = chunk.min(n);
    let (hm, wm, tm, lm) = (l.input(h)?, l.input(w)?, l.input(targets)?, l.output(losses, false)?);
    let logits = l.scratch::<f32>(rows_max * v)?; // [rows, V]
    let dlogits = l.scratch::<f32>(rows_max * v)?; // [rows, V]
    let mut grads = grads;
    let (dhm, dwm) = match grads.as_mut() {
        Some((dh, dw)) => (Some(l.output(dh, false)?), Some(l.output(dw, true)?)),
        None => (None, None),
    };
    let (hp, wp, tp, lp) = (l.ptr::<f32>(&hm), l.ptr::<f32>(&wm), l.ptr::<i32>(&tm), l.ptr::<f32>(&lm));
    let (lg, dl) = (l.ptr::<f32>(&logits), l.ptr::<f32>(&dlogits));
    for r0 in (0..n).step_by(chunk) {
        let rows = chunk.min(n - r0);
        // SAFETY (every launch of the chunk): offsets r0 * D, r0 stay inside h, targets, losses and
        // dh; logits / dlogits hold rows_max * V >= rows * V elements.
        unsafe {
            let hc = hp.add(r0 * d);
            matmul_dev(l, lg, hc, wp, (rows, d, v), (Trans::No, Trans::Yes), false)?;
            let dims = LaunchDims::linear(capped_grid(l, rows, 1), l.block_threads());
            l.softmax_ce_forward_backward(dims, lp.add(r0), dl, lg, tp.add(r0), rows, v, scale)?;
            if let (Some(dhm), Some(dwm)) = (dhm.as_ref(), dwm.as_ref()) {
                let dh = l.ptr::<f32>(dhm).add(r0 * d);
                matmul_dev(l, dh, dl, wp, (rows, v, d), (Trans::No, Trans::No), false)?;
                matmul_dev(l, l.ptr(dwm), dl, hc, (v, rows, d), (Trans::Yes, Trans::No), true)?;
            }
        }
    }
    l.read_back(&lm, losses)?;
    if let (Some((dh, dw)), Some(dhm), Some(dwm)) = (grads, dhm, dwm) {
        l.read_back(&dhm, dh)?;
        l.read_back(&dwm, dw)?;
    }
    Ok(())
}
