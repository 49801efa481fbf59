//! RMSNorm `y = x / sqrt(mean(x^2) + eps) * w` over rows of `[N, C]`, as kernels-cpu `rmsnorm`.
//!
//! Shapes: `x`, `out`, `dx`, `dout` `[N, C]`; `w`, `dw` `[C]`; saved `rstd` `[N]`.

use super::reduce::block_sum;
use crate::simt::{Gmem, Simt};

/// `out = x * rstd * w` per row, saving `rstd = 1 / sqrt(sum(x^2) / C + eps)`.
///
/// Launch: grid `(min(N, cap), 1, 1)` (rows grid-stride over blocks), block a multiple of 32 up to
/// 1024 (GPU: 256; sim: 128), no dynamic shared memory (static: 32 f32 reduce scratch).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_forward<C: Simt>(
    ctx: &C,
    out: Gmem<f32>,
    rstd: Gmem<f32>,
    x: Gmem<f32>,
    w: Gmem<f32>,
    n: usize,
    c: usize,
    eps: f32,
) {
    let (t, bd) = (ctx.thread_linear() as usize, ctx.block_threads() as usize);
    let mut row = ctx.block_idx().x as usize;
    while row < n {
        let base = row * c;
        let mut ss = 0f32;
        let mut j = t;
        while j < c {
            // SAFETY: j < c, row < n.
            let v = unsafe { x.read(base + j) };
            ss = C::fma(v, v, ss);
            j += bd;
        }
        let total = block_sum(ctx, ss);
        let s = 1.0 / C::sqrt(total / c as f32 + eps);
        // SAFETY: indices in bounds; each output element written by one thread.
        unsafe {
            if t == 0 {
                rstd.write(row, s);
            }
            let mut j = t;
            while j < c {
                out.write(base + j, x.read(base + j) * s * w.read(j));
                j += bd;
            }
        }
        row += ctx.grid_dim().x as usize;
    }
}

/// Accumulates `dx += s * (dout * w) - x * s^3 * sum(dout * w * x) / C` per row (`s = rstd`).
///
/// Launch: as [`rmsnorm_forward`].
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward_dx<C: Simt>(
    ctx: &C,
    dx: Gmem<f32>,
    dout: Gmem<f32>,
    x: Gmem<f32>,
    w: Gmem<f32>,
    rstd: Gmem<f32>,
    n: usize,
    c: usize,
) {
    let (t, bd) = (ctx.thread_linear() as usize, ctx.block_threads() as usize);
    let mut row = ctx.block_idx().x as usize;
    while row < n {
        let base = row * c;
        let mut acc = 0f32;
        let mut j = t;
        while j < c {
            // SAFETY: in bounds.
            unsafe { acc = C::fma(dout.read(base + j) * w.read(j), x.read(base + j), acc) };
            j += bd;
        }
        let sum = block_sum(ctx, acc);
        // SAFETY: in bounds; one thread per element.
        unsafe {
            let s = rstd.read(row);
            let k = s * s * s * sum / c as f32;
            let mut j = t;
            while j < c {
                let v = s * (dout.read(base + j) * w.read(j)) - k * x.read(base + j);
                dx.write(base + j, dx.read(base + j) + v);
                j += bd;
            }
        }
        row += ctx.grid_dim().x as usize;
    }
}

/// Rows per block of [`rmsnorm_backward_dw`].
pub const DW_ROWS: usize = 64;

/// Accumulates `dw[j] += sum over rows of dout * (x * rstd)`: block `(bx, by)` sums rows
/// `by * DW_ROWS ..` for columns `bx * blockDim.x + tid`, then one atomic add per column.
///
/// Launch: grid `(ceil(C / block), ceil(N / DW_ROWS), 1)`, block `(any <= 1024, 1, 1)` (GPU 256),
/// no shared memory.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward_dw<C: Simt>(
    ctx: &C,
    dw: Gmem<f32>,
    dout: Gmem<f32>,
    x: Gmem<f32>,
    rstd: Gmem<f32>,
    n: usize,
    c: usize,
) {
    let j = ctx.block_idx().x as usize * ctx.block_dim().x as usize + ctx.thread_idx().x as usize;
    let r0 = ctx.block_idx().y as usize * DW_ROWS;
    if j >= c || r0 >= n {
        return;
    }
    let r1 = if r0 + DW_ROWS < n { r0 + DW_ROWS } else { n };
    let mut acc = 0f32;
    // SAFETY: j < c, rows < n; dw is only touched atomically.
    unsafe {
        for r in r0..r1 {
            acc = C::fma(dout.read(r * c + j), x.read(r * c + j) * rstd.read(r), acc);
        }
        ctx.atomic_add_f32(dw, j, acc);
    }
}
