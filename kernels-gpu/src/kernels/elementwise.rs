//! Elementwise kernels of the residual stream and of column slices: `out = a + scale * b`, a copy
//! of columns `start..start + width` of a row-major `[N, C]` matrix, and its backward (add the
//! slice's gradient back into those columns).

use super::grid_stride;
use crate::simt::{Gmem, Simt};

/// `out[i] = a[i] + scale * b[i]` for `i < len` (one rounding of `scale * b` then one of the sum,
/// as `x + scale * y` in Rust; `scale == 1` gives exactly `a + b`).
///
/// Launch: grid-stride, 1-D grid of any size, any block, no shared memory.
pub fn add_scaled<C: Simt>(ctx: &C, out: Gmem<f32>, a: Gmem<f32>, b: Gmem<f32>, scale: f32, len: usize) {
    let (mut i, stride) = grid_stride(ctx);
    while i < len {
        // SAFETY: i < len, the length of all three buffers; each element is touched by one thread.
        unsafe { out.write(i, a.read(i) + scale * b.read(i)) };
        i += stride;
    }
}

/// `out [N, width] = x[:, start..start + width]` for `x [N, cols]`, over `len = N * width` outputs.
///
/// Launch: grid-stride over the outputs, any grid and block, no shared memory.
pub fn copy_cols<C: Simt>(ctx: &C, out: Gmem<f32>, x: Gmem<f32>, cols: usize, start: usize, width: usize, len: usize) {
    let (mut i, stride) = grid_stride(ctx);
    while i < len {
        let (r, j) = (i / width, i % width);
        // SAFETY: i < N * width; r < N and start + j < cols index inside x [N, cols].
        unsafe { out.write(i, x.read(r * cols + start + j)) };
        i += stride;
    }
}

/// `dx[:, start..start + width] += dy [N, width]` for `dx [N, cols]`, over `len = N * width`.
///
/// Launch: as [`copy_cols`]. Each element of `dx` is touched by one thread (no atomics).
pub fn add_cols<C: Simt>(ctx: &C, dx: Gmem<f32>, dy: Gmem<f32>, cols: usize, start: usize, width: usize, len: usize) {
    let (mut i, stride) = grid_stride(ctx);
    while i < len {
        let (r, j) = (i / width, i % width);
        let at = r * cols + start + j;
        // SAFETY: as in `copy_cols`.
        unsafe { dx.write(at, dx.read(at) + dy.read(i)) };
        i += stride;
    }
}
