//! Host sequences of distillation: the fused LM-head KL over row chunks and the hidden-state L2.

use super::gemm::{matmul_dev, Trans};
use super::{capped_grid, elementwise_dims, ensure};
use crate::launcher::{LaunchDims, LaunchError, Launcher};

/// Sizes of a distillation call: rows, student width, teacher width, vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KlShape {
    /// N: rows.
    pub n: usize,
    /// D: student hidden width.
    pub d: usize,
    /// Dt: teacher hidden width.
    pub dt: usize,
    /// V: vocabulary.
    pub v: usize,
}

/// The fused LM-head distillation KL, chunk by chunk over rows as kernels-cpu `distill` does
/// (`[N, V]` logits are never materialised): per chunk of `chunk` rows, student and teacher
/// logits (`h · wᵀ`), the KL kernel (per-row `tau² KL(p_t ‖ p_s)` and `dlogits = scale · tau ·
/// (p_s − p_t)`), then, when `grads = (dhs [N, D], dws [V, D])` is given, `dhs_c += dlogits · w_s`
/// and `dws += dlogitsᵀ · hs_c` (accumulated, as the CPU op does); ignored rows get 0 and no
/// gradient. The weights and `dws` stay on the device across chunks.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_kl<L: Launcher>(
    l: &L,
    kl: &mut [f32],
    grads: Option<(&mut [f32], &mut [f32])>,
    hs: &[f32],
    ws: &[f32],
    ht: &[f32],
    wt: &[f32],
    targets: &[i32],
    shape: KlShape,
    tau: f32,
    scale: f32,
    chunk: usize,
) -> Result<(), LaunchError> {
    let KlShape { n, d, dt, v } = shape;
    let chunk = chunk.max(1);
    ensure(
        d > 0
            && dt > 0
            && v > 0
            && kl.len() == n
            && targets.len() == n
            && hs.len() == n * d
            && ws.len() == v * d
            && ht.len() == n * dt
            && wt.len() == v * dt,
        || format!("lm head distillation: shapes do not match {shape:?}"),
    )?;
    ensure(grads.as_ref().is_none_or(|(dh, dw)| dh.len() == n * d && dw.len() == v * d), || {
        "lm head distillation: dhs / dws shapes".into()
    })?;
    ensure(tau > 0.0 && tau.is_finite(), || format!("lm head distillation: tau {tau} must be positive"))?;
    if n == 0 {
        return Ok(());
    }
    let rows_max = chunk.min(n);
    let (hsm, wsm, htm, wtm) = (l.input(hs)?, l.input(ws)?, l.input(ht)?, l.input(wt)?);
    let (tm, km) = (l.input(targets)?, l.output(kl, false)?);
    let zs = l.scratch::<f32>(rows_max * v)?; // [rows, V], becomes dlogits in place
    let zt = l.scratch::<f32>(rows_max * v)?; // [rows, V]
    let mut grads = grads;
    let (dhm, dwm) = match grads.as_mut() {
        Some((dh, dw)) => (Some(l.output(dh, true)?), Some(l.output(dw, true)?)),
        None => (None, None),
    };
    let (hsp, wsp, htp, wtp) = (l.ptr::<f32>(&hsm), l.ptr::<f32>(&wsm), l.ptr::<f32>(&htm), l.ptr::<f32>(&wtm));
    let (tp, kp, zsp, ztp) = (l.ptr::<i32>(&tm), l.ptr::<f32>(&km), l.ptr::<f32>(&zs), l.ptr::<f32>(&zt));
    let want_grad = u32::from(dhm.is_some());
    for r0 in (0..n).step_by(chunk) {
        let rows = chunk.min(n - r0);
        // SAFETY (every launch of the chunk): offsets r0 * D, r0 * Dt, r0 stay inside hs, ht,
        // targets, kl and dhs; zs / zt hold rows_max * V >= rows * V elements.
        unsafe {
            let (hsc, htc) = (hsp.add(r0 * d), htp.add(r0 * dt));
            matmul_dev(l, zsp, hsc, wsp, (rows, d, v), (Trans::No, Trans::Yes), false)?;
            matmul_dev(l, ztp, htc, wtp, (rows, dt, v), (Trans::No, Trans::Yes), false)?;
            let dims = LaunchDims::linear(capped_grid(l, rows, 1), l.block_threads());
            l.distill_kl_forward_backward(
                dims,
                kp.add(r0),
                zsp,
                zsp,
                ztp,
                tp.add(r0),
                rows,
                v,
                1.0 / tau,
                scale * tau,
                want_grad,
            )?;
            if let (Some(dhm), Some(dwm)) = (dhm.as_ref(), dwm.as_ref()) {
                let dh = l.ptr::<f32>(dhm).add(r0 * d);
                matmul_dev(l, dh, zsp, wsp, (rows, v, d), (Trans::No, Trans::No), true)?;
                matmul_dev(l, l.ptr(dwm), zsp, hsc, (v, rows, d), (Trans::Yes, Trans::No), true)?;
            }
        }
    }
    l.read_back(&km, kl)?;
    if let (Some((dh, dw)), Some(dhm), Some(dwm)) = (grads, dhm, dwm) {
        l.read_back(&dhm, dh)?;
        l.read_back(&dwm, dw)?;
    }
    Ok(())
}

/// [`crate::kernels::distill::hidden_l2_forward`]: per-row `out [N]` from `hs`, `ht` `[N, D]` and `targets [N]`.
pub fn hidden_l2_forward<L: Launcher>(
    l: &L,
    out: &mut [f32],
    hs: &[f32],
    ht: &[f32],
    targets: &[i32],
    d: usize,
) -> Result<(), LaunchError> {
    let n = targets.len();
    ensure(d > 0 && out.len() == n && hs.len() == n * d && ht.len() == n * d, || {
        format!("hidden l2: shapes do not match N={n} D={d}")
    })?;
    if n == 0 {
        return Ok(());
    }
    let (hm, tm, gm) = (l.input(hs)?, l.input(ht)?, l.input(targets)?);
    let om = l.output(out, false)?;
    let dims = LaunchDims::linear(capped_grid(l, n, 1), l.block_threads());
    // SAFETY: hs/ht hold N*D, out/targets N elements.
    unsafe { l.hidden_l2_forward(dims, l.ptr(&om), l.ptr(&hm), l.ptr(&tm), l.ptr(&gm), n, d) }?;
    l.read_back(&om, out)
}

/// [`crate::kernels::distill::hidden_l2_backward`]: accumulates `dhs [N, D]` from `dout [N]`.
pub fn hidden_l2_backward<L: Launcher>(
    l: &L,
    dhs: &mut [f32],
    dout: &[f32],
    hs: &[f32],
    ht: &[f32],
    d: usize,
) -> Result<(), LaunchError> {
    let n = dout.len();
    ensure(d > 0 && dhs.len() == n * d && hs.len() == n * d && ht.len() == n * d, || {
        format!("hidden l2 backward: shapes do not match N={n} D={d}")
    })?;
    if n == 0 {
        return Ok(());
    }
    let (gm, hm, tm) = (l.input(dout)?, l.input(hs)?, l.input(ht)?);
    let dm = l.output(dhs, true)?;
    let dims = elementwise_dims(l, n * d);
    // SAFETY: dhs/hs/ht hold N*D, dout N elements.
    unsafe { l.hidden_l2_backward(dims, l.ptr(&dm), l.ptr(&gm), l.ptr(&hm), l.ptr(&tm), d, n * d) }?;
    l.read_back(&dm, dhs)
}
