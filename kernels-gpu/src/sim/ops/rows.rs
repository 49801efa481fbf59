//! Host helpers of the row kernels: RMSNorm, softmax cross-entropy.

use super::{capped_grid, ensure, rd, wr, SIM_BLOCK};
use crate::kernels::{cross_entropy, rmsnorm};
use crate::sim::{launch, SimError};
use crate::simt::Dim3;

/// [`rmsnorm::rmsnorm_forward`]: `out [N, C]`, `rstd [N]` from `x [N, C]`, `w [C]`.
pub fn rmsnorm_forward(
    out: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    c: usize,
    eps: f32,
) -> Result<(), SimError> {
    ensure(c > 0 && out.len() == n * c && x.len() == n * c && rstd.len() == n && w.len() == c, || {
        format!("rmsnorm: shapes do not match N={n} C={c}")
    })?;
    if n == 0 {
        return Ok(());
    }
    let (o, r, xx, ww) = (wr(out), wr(rstd), rd(x), rd(w));
    launch(capped_grid(n, 1), Dim3::x(SIM_BLOCK), 0, |ctx| rmsnorm::rmsnorm_forward(ctx, o, r, xx, ww, n, c, eps))
}

/// [`rmsnorm::rmsnorm_backward_dx`] then [`rmsnorm::rmsnorm_backward_dw`]: accumulates `dx`, `dw`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    dx: &mut [f32],
    dw: &mut [f32],
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    n: usize,
    c: usize,
) -> Result<(), SimError> {
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
    let (d, dww, g, xx, ww, r) = (wr(dx), wr(dw), rd(dout), rd(x), rd(w), rd(rstd));
    launch(capped_grid(n, 1), Dim3::x(SIM_BLOCK), 0, |ctx| rmsnorm::rmsnorm_backward_dx(ctx, d, g, xx, ww, r, n, c))?;
    let grid = Dim3::new(c.div_ceil(SIM_BLOCK as usize) as u32, n.div_ceil(rmsnorm::DW_ROWS) as u32, 1);
    launch(grid, Dim3::x(SIM_BLOCK), 0, |ctx| rmsnorm::rmsnorm_backward_dw(ctx, dww, g, xx, r, n, c))
}

/// [`cross_entropy::softmax_ce_forward_backward`]: `losses [N]` and `dlogits [N, V]` (written)
/// from `logits [N, V]` and `targets [N]`.
pub fn softmax_ce_forward_backward(
    losses: &mut [f32],
    dlogits: &mut [f32],
    logits: &[f32],
    targets: &[i32],
    v: usize,
    scale: f32,
) -> Result<(), SimError> {
    let n = targets.len();
    ensure(v > 0 && losses.len() == n && dlogits.len() == n * v && logits.len() == n * v, || {
        format!("cross-entropy: shapes do not match N={n} V={v}")
    })?;
    if let Some(&t) = targets.iter().find(|&&t| t != cross_entropy::IGNORE_INDEX && (t < 0 || t as usize >= v)) {
        return Err(SimError::InvalidLaunch(format!("cross-entropy: target {t} outside vocab {v}")));
    }
    if n == 0 {
        return Ok(());
    }
    let (l, d, x, t) = (wr(losses), wr(dlogits), rd(logits), rd(targets));
    launch(capped_grid(n, 1), Dim3::x(SIM_BLOCK), 0, |ctx| {
        cross_entropy::softmax_ce_forward_backward(ctx, l, d, x, t, n, v, scale)
    })
}
