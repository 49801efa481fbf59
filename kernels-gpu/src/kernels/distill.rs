//! Distillation KL over rows of student and teacher logits: per-row `tau² · KL(p_t ‖ p_s)` and the
//! student's `dlogits` in one kernel, as kernels-cpu `distill` does per chunk.
//!
//! Shapes: `zs`, `zt`, `dzs` `[N, V]` (`dzs` may be `zs`: each element is read before the same
//! thread overwrites it); `targets` `[N]` (i32, [`IGNORE_INDEX`] rows take no part); `kl` `[N]`.
//! With `p = softmax(z / tau)`: `kl = tau² (Σ p_t (z_t − z_s)/tau − lse(z_t/tau) + lse(z_s/tau))`
//! (identical rows give exactly 0), `dzs = gscale · (p_s − p_t)` with the caller's
//! `gscale = scale · tau` (the gradient of `tau² KL` w.r.t. the raw student logits is
//! `tau (p_s − p_t)`); both written, zero for ignored rows.

use super::cross_entropy::IGNORE_INDEX;
use super::reduce::{block_sum, merge_max_sumexp, warp_max_sumexp};
use crate::simt::{Gmem, SharedArray, Simt, WARP};

/// Static shared scratch: per-warp running max and sum of the student and of the teacher.
pub struct KlScratch;

impl SharedArray for KlScratch {
    type Elem = f32;
    const LEN: usize = 128;
    const NAME: &'static str = "medmoe_kl_scratch";
}

/// Block-wide `(max, sum of exp)` of this thread's pair, through `scratch[base .. base + 64]`.
/// Every thread of the block must call it (two barriers).
#[inline(always)]
fn block_max_sumexp<C: Simt>(ctx: &C, m: f32, s: f32, base: usize) -> (f32, f32) {
    let scratch = ctx.static_shared::<KlScratch>();
    let (lane, warp, nwarps) = (ctx.lane_id(), ctx.warp_id() as usize, ctx.block_threads() / WARP);
    let (wm, ws) = warp_max_sumexp(ctx, m, s);
    // SAFETY: warp < 32, base + 63 < LEN; the barriers order the scratch accesses.
    unsafe {
        if lane == 0 {
            scratch.write(base + warp, wm);
            scratch.write(base + 32 + warp, ws);
        }
        ctx.sync_threads();
        let (mut m, mut s) = (f32::NEG_INFINITY, 0f32);
        for w in 0..nwarps as usize {
            (m, s) = merge_max_sumexp::<C>(m, s, scratch.read(base + w), scratch.read(base + 32 + w));
        }
        ctx.sync_threads();
        (m, s)
    }
}

/// Online update of a `(max, sum of exp(x − max))` pair with `x`.
#[inline(always)]
fn online<C: Simt>(m: &mut f32, s: &mut f32, x: f32) {
    if x > *m {
        *s = *s * C::exp(*m - x) + 1.0;
        *m = x;
    } else if x != f32::NEG_INFINITY {
        *s += C::exp(x - *m);
    }
}

/// KL and student gradient of each row.
///
/// Launch: grid `(min(N, cap), 1, 1)` (rows grid-stride over blocks), block a multiple of 32 up to
/// 1024, no dynamic shared memory (static: 128 f32 + the block-sum scratch). Pass one reads both
/// rows for the online max / sum of exponentials of `z / tau`; pass two reads them again for the
/// cross term and writes `dzs`. `want_grad == 0` skips the `dzs` writes (forward only).
#[allow(clippy::too_many_arguments)]
pub fn distill_kl_forward_backward<C: Simt>(
    ctx: &C,
    kl: Gmem<f32>,
    dzs: Gmem<f32>,
    zs: Gmem<f32>,
    zt: Gmem<f32>,
    targets: Gmem<i32>,
    n: usize,
    v: usize,
    inv_tau: f32,
    gscale: f32,
    want_grad: u32,
) {
    let (t, bd) = (ctx.thread_linear() as usize, ctx.block_threads() as usize);
    let tau = 1.0 / inv_tau;
    let mut row = ctx.block_idx().x as usize;
    while row < n {
        let base = row * v;
        // SAFETY: row < n.
        let counted = unsafe { targets.read(row) } != IGNORE_INDEX;
        let (mut ms, mut ss, mut mt, mut st) = (f32::NEG_INFINITY, 0f32, f32::NEG_INFINITY, 0f32);
        let mut j = t;
        while j < v {
            // SAFETY: j < v.
            unsafe {
                online::<C>(&mut ms, &mut ss, zs.read(base + j) * inv_tau);
                online::<C>(&mut mt, &mut st, zt.read(base + j) * inv_tau);
            }
            j += bd;
        }
        let (ms, ss) = block_max_sumexp(ctx, ms, ss, 0);
        let (mt, st) = block_max_sumexp(ctx, mt, st, 64);
        let (lse_s, lse_t) = (ms + C::ln(ss), mt + C::ln(st));
        // Cross term Σ p_t (z_t − z_s) over the scaled logits; dzs written as we go.
        let mut dot = 0f32;
        let mut j = t;
        while j < v {
            // SAFETY: j < v; each element of dzs is written by the thread that read it.
            unsafe {
                let (s, z) = (zs.read(base + j) * inv_tau, zt.read(base + j) * inv_tau);
                let pt = C::exp(z - lse_t);
                dot += pt * (z - s);
                if want_grad != 0 {
                    let d = if counted { gscale * (C::exp(s - lse_s) - pt) } else { 0.0 };
                    dzs.write(base + j, d);
                }
            }
            j += bd;
        }
        let dot = block_sum(ctx, dot);
        if t == 0 {
            let k = if counted { tau * tau * (dot - lse_t + lse_s) } else { 0.0 };
            // SAFETY: row < n.
            unsafe { kl.write(row, k) };
        }
        row += ctx.grid_dim().x as usize;
    }
}

/// Per-row hidden-state L2 `out[i] = ‖h_s[i] − h_t[i]‖² / D` for counted rows, 0 for rows whose
/// target is [`IGNORE_INDEX`] (`hs`, `ht` `[N, D]`).
///
/// Launch: grid `(min(N, cap), 1, 1)` (rows grid-stride over blocks), block a multiple of 32 up to
/// 1024, no dynamic shared memory (the block-sum scratch).
#[allow(clippy::too_many_arguments)]
pub fn hidden_l2_forward<C: Simt>(
    ctx: &C,
    out: Gmem<f32>,
    hs: Gmem<f32>,
    ht: Gmem<f32>,
    targets: Gmem<i32>,
    n: usize,
    d: usize,
) {
    let (t, bd) = (ctx.thread_linear() as usize, ctx.block_threads() as usize);
    let inv_d = 1.0 / d as f32;
    let mut row = ctx.block_idx().x as usize;
    while row < n {
        let mut acc = 0f32;
        let mut j = t;
        while j < d {
            // SAFETY: row < n, j < d.
            let diff = unsafe { hs.read(row * d + j) - ht.read(row * d + j) };
            acc += diff * diff;
            j += bd;
        }
        let sum = block_sum(ctx, acc);
        if t == 0 {
            // SAFETY: row < n.
            unsafe {
                let counted = targets.read(row) != IGNORE_INDEX;
                out.write(row, if counted { sum * inv_d } else { 0.0 });
            }
        }
        row += ctx.grid_dim().x as usize;
    }
}

/// Backward of [`hidden_l2_forward`]: `dhs[i, j] += dout[i] · 2 (h_s[i, j] − h_t[i, j]) / D`
/// over `len = N * D` elements (`dout [N]`: ignored rows carry 0). The teacher gets nothing.
///
/// Launch: grid-stride, any grid and block, no shared memory.
pub fn hidden_l2_backward<C: Simt>(
    ctx: &C,
    dhs: Gmem<f32>,
    dout: Gmem<f32>,
    hs: Gmem<f32>,
    ht: Gmem<f32>,
    d: usize,
    len: usize,
) {
    let two_over_d = 2.0 / d as f32;
    let (mut i, stride) = super::grid_stride(ctx);
    while i < len {
        // SAFETY: i < len = N * D; i / d < N indexes dout; each element is touched by one thread.
        unsafe {
            let c = dout.read(i / d) * two_over_d;
            if c != 0.0 {
                dhs.write(i, dhs.read(i) + c * (hs.read(i) - ht.read(i)));
            }
        }
        i += stride;
    }
}
