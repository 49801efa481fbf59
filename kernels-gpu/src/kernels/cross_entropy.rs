//! Fused softmax cross-entropy over rows of logits: per-row loss and `dlogits` in one kernel.
//!
//! Shapes: `logits`, `dlogits` `[N, V]` (may be the same buffer: each element is read before the
//! same thread overwrites it); `targets` `[N]` (i32, [`IGNORE_INDEX`] rows take no part);
//! `losses` `[N]`. `loss = logsumexp(row) - row[target]`, `dlogits = scale * (softmax(row) - onehot)`
//! (written, not accumulated; zero for ignored rows), as kernels-cpu `cross_entropy` does per chunk.

use super::reduce::{merge_max_sumexp, warp_max_sumexp};
use crate::simt::{Gmem, SharedArray, Simt, WARP};

/// Target of rows that take no part in the loss (HF's `ignore_index`).
pub const IGNORE_INDEX: i32 = -100;

/// Static shared scratch: per-warp running max and sum.
pub struct CeScratch;

impl SharedArray for CeScratch {
    type Elem = f32;
    const LEN: usize = 64;
    const NAME: &'static str = "medmoe_ce_scratch";
}

/// Loss and gradient of each row.
///
/// Launch: grid `(min(N, cap), 1, 1)` (rows grid-stride over blocks), block a multiple of 32 up to
/// 1024 (GPU: 512; sim: 128), no dynamic shared memory (static: 64 f32). One pass reads the row for
/// an online max / sum of exponentials; a second reads it again and writes `dlogits`.
#[allow(clippy::too_many_arguments)]
pub fn softmax_ce_forward_backward<C: Simt>(
    ctx: &C,
    losses: Gmem<f32>,
    dlogits: Gmem<f32>,
    logits: Gmem<f32>,
    targets: Gmem<i32>,
    n: usize,
    v: usize,
    scale: f32,
) {
    let (t, bd) = (ctx.thread_linear() as usize, ctx.block_threads() as usize);
    let (lane, warp, nwarps) = (ctx.lane_id(), ctx.warp_id() as usize, ctx.block_threads() / WARP);
    let scratch = ctx.static_shared::<CeScratch>();
    let mut row = ctx.block_idx().x as usize;
    while row < n {
        let base = row * v;
        // SAFETY: row < n.
        let tgt = unsafe { targets.read(row) };
        let valid = tgt >= 0 && (tgt as usize) < v;
        // Online max / sum of exp over this thread's elements.
        let (mut m, mut s) = (f32::NEG_INFINITY, 0f32);
        let mut j = t;
        while j < v {
            // SAFETY: j < v.
            let x = unsafe { logits.read(base + j) };
            if x > m {
                s = s * C::exp(m - x) + 1.0;
                m = x;
            } else if x != f32::NEG_INFINITY {
                s += C::exp(x - m);
            }
            j += bd;
        }
        let (wm, ws) = warp_max_sumexp(ctx, m, s);
        // SAFETY: warp < 32; barriers order the scratch accesses.
        let (m, s) = unsafe {
            if lane == 0 {
                scratch.write(warp, wm);
                scratch.write(32 + warp, ws);
            }
            ctx.sync_threads();
            let (mut m, mut s) = (f32::NEG_INFINITY, 0f32);
            for w in 0..nwarps as usize {
                (m, s) = merge_max_sumexp::<C>(m, s, scratch.read(w), scratch.read(32 + w));
            }
            ctx.sync_threads();
            (m, s)
        };
        let lse = m + C::ln(s);
        // SAFETY: in bounds; one thread per element (thread 0 writes the loss).
        unsafe {
            if t == 0 {
                let loss = if valid { lse - logits.read(base + tgt as usize) } else { 0.0 };
                losses.write(row, loss);
            }
            let mut j = t;
            while j < v {
                let d = if valid {
                    let p = C::exp(logits.read(base + j) - lse);
                    scale * (p - if j == tgt as usize { 1.0 } else { 0.0 })
                } else {
                    0.0
                };
                dlogits.write(base + j, d);
                j += bd;
            }
        }
        row += ctx.grid_dim().x as usize;
    }
}
