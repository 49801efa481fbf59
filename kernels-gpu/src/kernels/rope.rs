//! Rotary position embedding, Hugging Face Qwen3 "rotate_half" convention, as kernels-cpu `rope`.
//!
//! Each head vector of length Dh is split into halves `x1 = x[..Dh/2]`, `x2 = x[Dh/2..]`; pair `c`
//! of a row at position `p` rotates by the table's angle: with `cs = cos[p, c]`, `sn = sin[p, c]`,
//! `out[c] = x1*cs - x2*sn`, `out[c + Dh/2] = x2*cs + x1*sn`.
//!
//! Shapes: `x`, `out`, `dx`, `dout` `[N, H, Dh]` (N rows, H heads); `pos` `[N]` (u32); `cos`, `sin`
//! `[max_pos, Dh/2]`, the kernels-cpu `RopeTable` (built on the host, uploaded once). Not in place.
//!
//! The products and sums are plain f32 `*`, `-`, `+` in the CPU's order (no `fma`), so the simulator
//! reproduces kernels-cpu bit for bit; the PTX has them as `mul.rn` / `sub.rn` / `add.rn`, which
//! ptxas never contracts into FMAs, so the GPU does too.

use super::grid_stride;
use crate::simt::{Gmem, Simt};

/// `out = rotate(x, pos)`: one thread per (row, head, pair) of the `N * H * Dh/2` pairs. Rows whose
/// position is `>= max_pos` are left unwritten (the host rejects them).
///
/// Launch: grid-stride over `N * H * Dh/2` (any 1-D grid and block; GPU 256 threads,
/// `ceil(pairs / 256)` blocks capped), no shared memory.
#[allow(clippy::too_many_arguments)]
pub fn rope_forward<C: Simt>(
    ctx: &C,
    out: Gmem<f32>,
    x: Gmem<f32>,
    pos: Gmem<u32>,
    cos: Gmem<f32>,
    sin: Gmem<f32>,
    n: usize,
    heads: usize,
    dh: usize,
    max_pos: usize,
) {
    let half = dh / 2;
    let per_row = heads * half;
    let pairs = n * per_row;
    let (mut i, stride) = grid_stride(ctx);
    while i < pairs {
        let (row, rem) = (i / per_row, i % per_row);
        let (hd, c) = (rem / half, rem % half);
        // SAFETY: row < N, c < Dh/2, p < max_pos (checked); the pair's two elements belong to this
        // thread only.
        unsafe {
            let p = pos.read(row) as usize;
            if p < max_pos {
                let base = (row * heads + hd) * dh;
                let (a, b) = (x.read(base + c), x.read(base + c + half));
                let (cs, sn) = (cos.read(p * half + c), sin.read(p * half + c));
                out.write(base + c, a * cs - b * sn);
                out.write(base + c + half, b * cs + a * sn);
            }
        }
        i += stride;
    }
}

/// Accumulates `dx += rotate(dout, -pos)` (the transpose rotation):
/// `dx1 += d1*cs + d2*sn`, `dx2 += d2*cs - d1*sn`.
///
/// Launch: as [`rope_forward`].
#[allow(clippy::too_many_arguments)]
pub fn rope_backward<C: Simt>(
    ctx: &C,
    dx: Gmem<f32>,
    dout: Gmem<f32>,
    pos: Gmem<u32>,
    cos: Gmem<f32>,
    sin: Gmem<f32>,
    n: usize,
    heads: usize,
    dh: usize,
    max_pos: usize,
) {
    let half = dh / 2;
    let per_row = heads * half;
    let pairs = n * per_row;
    let (mut i, stride) = grid_stride(ctx);
    while i < pairs {
        let (row, rem) = (i / per_row, i % per_row);
        let (hd, c) = (rem / half, rem % half);
        // SAFETY: as in rope_forward.
        unsafe {
            let p = pos.read(row) as usize;
            if p < max_pos {
                let base = (row * heads + hd) * dh;
                let (a, b) = (dout.read(base + c), dout.read(base + c + half));
                let (cs, sn) = (cos.read(p * half + c), sin.read(p * half + c));
                dx.write(base + c, dx.read(base + c) + (a * cs + b * sn));
                dx.write(base + c + half, dx.read(base + c + half) + (b * cs - a * sn));
            }
        }
        i += stride;
    }
}
