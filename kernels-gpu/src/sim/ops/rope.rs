//! Host helpers of the rotary embedding kernels.

use super::{capped_grid, ensure, rd, wr, SIM_BLOCK};
use crate::kernels::rope;
use crate::sim::{launch, SimError};
use crate::simt::Dim3;

/// Checks the shapes shared by forward and backward; returns `max_pos`.
fn check(
    a: usize,
    b: usize,
    pos: &[u32],
    cos: &[f32],
    sin: &[f32],
    heads: usize,
    dh: usize,
) -> Result<usize, SimError> {
    let n = pos.len();
    ensure(dh > 0 && dh.is_multiple_of(2), || format!("rope: head dim {dh} must be even and positive"))?;
    let half = dh / 2;
    ensure(cos.len() == sin.len() && cos.len().is_multiple_of(half), || {
        format!("rope: cos / sin must both be [max_pos, {half}]")
    })?;
    ensure(a == n * heads * dh && b == n * heads * dh, || {
        format!("rope: buffers are not [N={n}, H={heads}, Dh={dh}]")
    })?;
    let max_pos = cos.len() / half;
    if let Some(&p) = pos.iter().find(|&&p| p as usize >= max_pos) {
        return Err(SimError::InvalidLaunch(format!("rope: position {p} >= max_pos {max_pos}")));
    }
    Ok(max_pos)
}

/// [`rope::rope_forward`]: `out = rotate(x, pos)` for `x`, `out` `[N, H, Dh]`, `pos` `[N]`, with the
/// table `cos`, `sin` `[max_pos, Dh/2]` (kernels-cpu `RopeTable`'s).
pub fn rope_forward(
    out: &mut [f32],
    x: &[f32],
    pos: &[u32],
    cos: &[f32],
    sin: &[f32],
    heads: usize,
    dh: usize,
) -> Result<(), SimError> {
    let max_pos = check(out.len(), x.len(), pos, cos, sin, heads, dh)?;
    let (n, pairs) = (pos.len(), out.len() / 2);
    if pairs == 0 {
        return Ok(());
    }
    let (o, xx, p, c, s) = (wr(out), rd(x), rd(pos), rd(cos), rd(sin));
    launch(capped_grid(pairs, SIM_BLOCK as usize), Dim3::x(SIM_BLOCK), 0, |ctx| {
        rope::rope_forward(ctx, o, xx, p, c, s, n, heads, dh, max_pos)
    })
}

/// [`rope::rope_backward`]: accumulates `dx += rotate(dout, -pos)`.
pub fn rope_backward(
    dx: &mut [f32],
    dout: &[f32],
    pos: &[u32],
    cos: &[f32],
    sin: &[f32],
    heads: usize,
    dh: usize,
) -> Result<(), SimError> {
    let max_pos = check(dx.len(), dout.len(), pos, cos, sin, heads, dh)?;
    let (n, pairs) = (pos.len(), dx.len() / 2);
    if pairs == 0 {
        return Ok(());
    }
    let (g, d, p, c, s) = (wr(dx), rd(dout), rd(pos), rd(cos), rd(sin));
    launch(capped_grid(pairs, SIM_BLOCK as usize), Dim3::x(SIM_BLOCK), 0, |ctx| {
        rope::rope_backward(ctx, g, d, p, c, s, n, heads, dh, max_pos)
    })
}
