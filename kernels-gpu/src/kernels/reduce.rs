//! Warp and block reductions shared by the kernels.

use crate::simt::{SharedArray, Simt, WARP};

/// Static shared scratch of the block reductions: one f32 per warp (32 warps at most).
pub struct ReduceScratch;

impl SharedArray for ReduceScratch {
    type Elem = f32;
    const LEN: usize = 32;
    const NAME: &'static str = "medmoe_reduce_scratch";
}

/// Sum over the warp (every lane gets it). The warp must be full.
#[inline(always)]
pub fn warp_sum<C: Simt>(ctx: &C, mut v: f32) -> f32 {
    let mut m = WARP / 2;
    while m > 0 {
        v += ctx.shfl_xor_f32(v, m);
        m /= 2;
    }
    v
}

/// Max over the warp (every lane gets it). The warp must be full.
#[inline(always)]
pub fn warp_max<C: Simt>(ctx: &C, mut v: f32) -> f32 {
    let mut m = WARP / 2;
    while m > 0 {
        v = v.max(ctx.shfl_xor_f32(v, m));
        m /= 2;
    }
    v
}

/// Sum over the block (every thread gets it). Block size a multiple of 32; contains two barriers,
/// so every thread of the block must call it.
#[inline(always)]
pub fn block_sum<C: Simt>(ctx: &C, v: f32) -> f32 {
    let s = ctx.static_shared::<ReduceScratch>();
    let (lane, warp, nwarps) = (ctx.lane_id(), ctx.warp_id(), ctx.block_threads() / WARP);
    let w = warp_sum(ctx, v);
    // SAFETY: warp < 32 = LEN; the barriers order the writes and reads.
    unsafe {
        if lane == 0 {
            s.write(warp as usize, w);
        }
        ctx.sync_threads();
        let x = if lane < nwarps { s.read(lane as usize) } else { 0.0 };
        let total = warp_sum(ctx, x);
        ctx.sync_threads();
        total
    }
}

/// Online-softmax pair `(max, sum of exp(x - max))` merged over the warp.
#[inline(always)]
pub fn warp_max_sumexp<C: Simt>(ctx: &C, mut m: f32, mut s: f32) -> (f32, f32) {
    let mut k = WARP / 2;
    while k > 0 {
        let om = ctx.shfl_xor_f32(m, k);
        let os = ctx.shfl_xor_f32(s, k);
        let (nm, ns) = merge_max_sumexp::<C>(m, s, om, os);
        m = nm;
        s = ns;
        k /= 2;
    }
    (m, s)
}

/// Merges two online-softmax pairs (a pair with `max = -inf` is empty).
#[inline(always)]
pub fn merge_max_sumexp<C: Simt>(m1: f32, s1: f32, m2: f32, s2: f32) -> (f32, f32) {
    let m = m1.max(m2);
    if m == f32::NEG_INFINITY {
        return (m, 0.0);
    }
    (m, s1 * C::exp(m1 - m) + s2 * C::exp(m2 - m))
}
