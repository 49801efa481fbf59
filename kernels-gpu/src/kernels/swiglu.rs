//! SwiGLU gating `out = silu(gate) * up`, `silu(g) = g * sigmoid(g)`, elementwise over `[N, F]`.
//!
//! The sigmoid uses `e = exp(-|g|)` so nothing overflows (as kernels-cpu `swiglu`).

use super::grid_stride;
use crate::simt::{Gmem, Simt};

/// `(sigmoid(g), silu(g))`, finite for every finite `g`.
#[inline(always)]
pub fn sigmoid_silu<C: Simt>(g: f32) -> (f32, f32) {
    let e = C::exp(-g.abs());
    let r = 1.0 / (1.0 + e);
    let s = if g >= 0.0 { r } else { e * r };
    (s, g * s)
}

/// `out[i] = silu(gate[i]) * up[i]` for `i < len`.
///
/// Launch: grid-stride, 1-D grid of any size (GPU: `ceil(len / 256)` capped at 4 x SMs x 8),
/// block 256 (any), no shared memory.
pub fn swiglu_forward<C: Simt>(ctx: &C, out: Gmem<f32>, gate: Gmem<f32>, up: Gmem<f32>, len: usize) {
    let (mut i, stride) = grid_stride(ctx);
    while i < len {
        // SAFETY: i < len, the length of all three buffers; each element is touched by one thread.
        unsafe {
            let (_, silu) = sigmoid_silu::<C>(gate.read(i));
            out.write(i, silu * up.read(i));
        }
        i += stride;
    }
}

/// Accumulates `dgate += dout * up * silu'(gate)`, `dup += dout * silu(gate)`.
///
/// Launch: as [`swiglu_forward`].
pub fn swiglu_backward<C: Simt>(
    ctx: &C,
    dgate: Gmem<f32>,
    dup: Gmem<f32>,
    dout: Gmem<f32>,
    gate: Gmem<f32>,
    up: Gmem<f32>,
    len: usize,
) {
    let (mut i, stride) = grid_stride(ctx);
    while i < len {
        // SAFETY: i < len for all five buffers; one thread per element.
        unsafe {
            let (g, u, d) = (gate.read(i), up.read(i), dout.read(i));
            let (s, silu) = sigmoid_silu::<C>(g);
            let dsilu = s * C::fma(g, 1.0 - s, 1.0);
            dgate.write(i, C::fma(d * u, dsilu, dgate.read(i)));
            dup.write(i, C::fma(d, silu, dup.read(i)));
        }
        i += stride;
    }
}

/// [`swiglu_forward`] reading gate and up from one fused projection `gu [N, 2F]` (each row is
/// `[gate(F), up(F)]`) into `out [N, F]`; `len = N * F`.
///
/// Launch: as [`swiglu_forward`] (grid-stride over `N * F`).
pub fn swiglu_fused_forward<C: Simt>(ctx: &C, out: Gmem<f32>, gu: Gmem<f32>, len: usize, f: usize) {
    let (mut i, stride) = grid_stride(ctx);
    while i < len {
        let (r, c) = (i / f, i % f);
        // SAFETY: i < N*F; the gate / up elements of (r, c) are inside row r of gu.
        unsafe {
            let (_, silu) = sigmoid_silu::<C>(gu.read(r * 2 * f + c));
            out.write(i, silu * gu.read(r * 2 * f + f + c));
        }
        i += stride;
    }
}

/// Backward of [`swiglu_fused_forward`]: accumulates into `dgu [N, 2F]` (gate half, up half).
///
/// Launch: as [`swiglu_forward`] (grid-stride over `N * F`).
pub fn swiglu_fused_backward<C: Simt>(ctx: &C, dgu: Gmem<f32>, dout: Gmem<f32>, gu: Gmem<f32>, len: usize, f: usize) {
    let (mut i, stride) = grid_stride(ctx);
    while i < len {
        let (gi, ui) = ((i / f) * 2 * f + i % f, (i / f) * 2 * f + f + i % f);
        // SAFETY: i < N*F; gi, ui < N*2F and belong to this thread only.
        unsafe {
            let (g, u, d) = (gu.read(gi), gu.read(ui), dout.read(i));
            let (s, silu) = sigmoid_silu::<C>(g);
            let dsilu = s * C::fma(g, 1.0 - s, 1.0);
            dgu.write(gi, C::fma(d * u, dsilu, dgu.read(gi)));
            dgu.write(ui, C::fma(d, silu, dgu.read(ui)));
        }
        i += stride;
    }
}
