//! Host sequences of the rotary embedding kernels.

use super::{elementwise_dims, ensure};
use crate::launcher::{LaunchError, Launcher};

/// Checks the shapes shared by forward and backward; returns `max_pos`.
fn check(
    a: usize,
    b: usize,
    pos: &[u32],
    cos: &[f32],
    sin: &[f32],
    heads: usize,
    dh: usize,
) -> Result<usize, LaunchError> {
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
        return Err(LaunchError::InvalidLaunch(format!("rope: position {p} >= max_pos {max_pos}")));
    }
    Ok(max_pos)
}

/// [`crate::kernels::rope::rope_forward`]: `out = rotate(x, pos)` for `x`, `out` `[N, H, Dh]`, `pos` `[N]`, with the
/// table `cos`, `sin` `[max_pos, Dh/2]` (kernels-cpu `RopeTable`'s).
#[allow(clippy::too_many_arguments)]
pub fn rope_forward<L: Launcher>(
    l: &L,
    out: &mut [f32],
    x: &[f32],
    pos: &[u32],
    cos: &[f32],
    sin: &[f32],
    heads: usize,
    dh: usize,
) -> Result<(), LaunchError> {
    let max_pos = check(out.len(), x.len(), pos, cos, sin, heads, dh)?;
    let (n, pairs) = (pos.len(), out.len() / 2);
    if pairs == 0 {
        return Ok(());
    }
    let (xm, pm, cm, sm, om) = (l.input(x)?, l.input(pos)?, l.input(cos)?, l.input(sin)?, l.output(out, false)?);
    let (p, c, s) = (l.ptr(&pm), l.ptr(&cm), l.ptr(&sm));
    // SAFETY: out/x hold N*H*Dh, pos N, cos/sin max_pos*Dh/2 elements; positions < max_pos (checked).
    unsafe { l.rope_forward(elementwise_dims(l, pairs), l.ptr(&om), l.ptr(&xm), p, c, s, n, heads, dh, max_pos) }?;
    l.read_back(&om, out)
}

/// [`crate::kernels::rope::rope_backward`]: accumulates `dx += rotate(dout, -pos)`.
#[allow(clippy::too_many_arguments)]
pub fn rope_backward<L: Launcher>(
    l: &L,
    dx: &mut [f32],
    dout: &[f32],
    pos: &[u32],
    cos: &[f32],
    sin: &[f32],
    heads: usize,
    dh: usize,
) -> Result<(), LaunchError> {
    let max_pos = check(dx.len(), dout.len(), pos, cos, sin, heads, dh)?;
    let (n, pairs) = (pos.len(), dx.len() / 2);
    if pairs == 0 {
        return Ok(());
    }
    let (gm, pm, cm, sm, dm) = (l.input(dout)?, l.input(pos)?, l.input(cos)?, l.input(sin)?, l.output(dx, true)?);
    let (p, c, s) = (l.ptr(&pm), l.ptr(&cm), l.ptr(&sm));
    // SAFETY: dx/dout hold N*H*Dh, pos N, cos/sin max_pos*Dh/2 elements; positions < max_pos (checked).
    unsafe { l.rope_backward(elementwise_dims(l, pairs), l.ptr(&dm), l.ptr(&gm), p, c, s, n, heads, dh, max_pos) }?;
    l.read_back(&dm, dx)
}
