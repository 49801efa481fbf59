//! Token permutation by expert (stable counting sort), gather into per-expert blocks and the
//! weighted combine back, forward and backward, as kernels-cpu `moe::permute` (top-1, K = 1).
//!
//! Shapes: `expert_of_token` `[N]` ([`NONE`] or an id `>= E`: no expert); `order` `[N]` (the first
//! `Nk = offsets[E]` entries used: token of each permuted row, grouped by expert, token order inside
//! a group); `offsets` `[E+1]` (u32); `inv` `[N]` (permuted row of each token or `NONE`);
//! `x`, `out`, `dx`, `dout` `[N, D]`; `xp`, `yp`, `dxp`, `dyp` `[Nk, D]`; `weights`, `dweights` `[Nk]`.

use super::grid_stride;
use super::reduce::block_sum;
use crate::simt::{Gmem, Simt, Smem, WARP};

/// Marks a token without an expert.
pub const NONE: u32 = u32::MAX;

/// Dynamic shared bytes of [`sort_by_expert`] for `e` experts and `block_threads` threads.
pub const fn sort_shared_bytes(e: usize, block_threads: usize) -> usize {
    (block_threads / WARP as usize + 1) * e * 4
}

/// Stable counting sort of the tokens by expert, in one block: fills `offsets`, `order`, `inv`.
///
/// Tokens are taken in chunks of blockDim; per chunk, each warp counts (and ranks) its tokens of
/// each expert with one ballot per expert, and the per-warp counts are combined in shared memory,
/// so the result is deterministic and equal to the sequential sort.
///
/// Launch: grid `(1, 1, 1)`, block a multiple of 32 up to 1024 (GPU 1024, sim 128), dynamic shared
/// [`sort_shared_bytes`]`(E, block)`.
#[allow(clippy::too_many_arguments)]
pub fn sort_by_expert<C: Simt>(
    ctx: &C,
    order: Gmem<u32>,
    offsets: Gmem<u32>,
    inv: Gmem<u32>,
    expert_of_token: Gmem<u32>,
    n: usize,
    e: usize,
) {
    let (t, bd) = (ctx.thread_linear() as usize, ctx.block_threads() as usize);
    let (lane, warp, nwarps) = (ctx.lane_id(), ctx.warp_id() as usize, bd / WARP as usize);
    // Shared: warp_cnt[nwarps][E] then base[E].
    let sh: Smem<u32> = ctx.dyn_shared();
    // SAFETY: all shared indices are < (nwarps + 1) * E; barriers order writers and readers.
    unsafe {
        let base = sh.add(nwarps * e);
        let mut j = t;
        while j < e {
            base.write(j, 0);
            j += bd;
        }
        ctx.sync_threads();
        for pass in 0..2 {
            let mut chunk = 0;
            while chunk < n {
                let tok = chunk + t;
                let mut ex = if tok < n { expert_of_token.read(tok) } else { NONE };
                if ex != NONE && ex as usize >= e {
                    ex = NONE;
                }
                let mut rank = 0;
                for j in 0..e {
                    let mask = ctx.vote_ballot(ex == j as u32);
                    if ex == j as u32 {
                        rank = (mask & ((1u32 << lane) - 1)).count_ones();
                    }
                    if lane == 0 {
                        sh.write(warp * e + j, mask.count_ones());
                    }
                }
                ctx.sync_threads();
                if pass == 1 && tok < n {
                    if ex == NONE {
                        inv.write(tok, NONE);
                    } else {
                        let mut pos = base.read(ex as usize) + rank;
                        for w in 0..warp {
                            pos += sh.read(w * e + ex as usize);
                        }
                        order.write(pos as usize, tok as u32);
                        inv.write(tok, pos);
                    }
                }
                ctx.sync_threads();
                let mut j = t;
                while j < e {
                    let mut c = base.read(j);
                    for w in 0..nwarps {
                        c += sh.read(w * e + j);
                    }
                    base.write(j, c);
                    j += bd;
                }
                ctx.sync_threads();
                chunk += bd;
            }
            if pass == 0 {
                // Exclusive scan of the counts: offsets and the start of each expert's block.
                if t == 0 {
                    let mut acc = 0u32;
                    for j in 0..e {
                        let c = base.read(j);
                        offsets.write(j, acc);
                        base.write(j, acc);
                        acc += c;
                    }
                    offsets.write(e, acc);
                }
                ctx.sync_threads();
            }
        }
    }
}

/// `xp[p] = x[order[p]]` for the `Nk = offsets[E]` permuted rows.
///
/// Launch: grid-stride over `Nk * D` (any 1-D grid and block; the kernel reads `Nk` from
/// `offsets[E]`), no shared memory.
pub fn gather_forward<C: Simt>(
    ctx: &C,
    xp: Gmem<f32>,
    x: Gmem<f32>,
    order: Gmem<u32>,
    offsets: Gmem<u32>,
    e: usize,
    d: usize,
) {
    // SAFETY: offsets has E+1 entries; p < Nk <= N entries of order; rows of x are in bounds.
    unsafe {
        let len = offsets.read(e) as usize * d;
        let (mut i, stride) = grid_stride(ctx);
        while i < len {
            let (p, c) = (i / d, i % d);
            xp.write(i, x.read(order.read(p) as usize * d + c));
            i += stride;
        }
    }
}

/// Accumulates `dx[t] += dxp[inv[t]]` for tokens with a row.
///
/// Launch: grid-stride over `N * D`, no shared memory.
pub fn gather_backward<C: Simt>(ctx: &C, dx: Gmem<f32>, dxp: Gmem<f32>, inv: Gmem<u32>, n: usize, d: usize) {
    let (mut i, stride) = grid_stride(ctx);
    while i < n * d {
        // SAFETY: i < N*D; inv entries are NONE or rows < Nk.
        unsafe {
            let p = inv.read(i / d);
            if p != NONE {
                dx.write(i, dx.read(i) + dxp.read(p as usize * d + i % d));
            }
        }
        i += stride;
    }
}

/// `out[t] = weights[inv[t]] * yp[inv[t]]` (`weights` null: 1), zero rows for tokens without one.
///
/// Launch: grid-stride over `N * D`, no shared memory.
#[allow(clippy::too_many_arguments)]
pub fn combine_forward<C: Simt>(
    ctx: &C,
    out: Gmem<f32>,
    yp: Gmem<f32>,
    weights: Gmem<f32>,
    inv: Gmem<u32>,
    n: usize,
    d: usize,
) {
    let (mut i, stride) = grid_stride(ctx);
    while i < n * d {
        // SAFETY: as in gather_backward.
        unsafe {
            let p = inv.read(i / d);
            let v = if p == NONE {
                0.0
            } else {
                let w = if weights.is_null() { 1.0 } else { weights.read(p as usize) };
                w * yp.read(p as usize * d + i % d)
            };
            out.write(i, v);
        }
        i += stride;
    }
}

/// Accumulates `dyp[p] += weights[p] * dout[order[p]]` and `dweights[p] += <dout[order[p]], yp[p]>`
/// (`dweights` null: skipped) for the `Nk = offsets[E]` rows; one block per row.
///
/// Launch: grid `(min(Nk, cap), 1, 1)` (rows grid-stride over blocks; the host may use N as a bound),
/// block a multiple of 32 (GPU 128), no dynamic shared memory (static: 32 f32).
#[allow(clippy::too_many_arguments)]
pub fn combine_backward<C: Simt>(
    ctx: &C,
    dyp: Gmem<f32>,
    dweights: Gmem<f32>,
    dout: Gmem<f32>,
    yp: Gmem<f32>,
    weights: Gmem<f32>,
    order: Gmem<u32>,
    offsets: Gmem<u32>,
    e: usize,
    d: usize,
) {
    let (t, bd) = (ctx.thread_linear() as usize, ctx.block_threads() as usize);
    // SAFETY: p < Nk; rows in bounds; row p of dyp / dweights belongs to this block.
    unsafe {
        let nk = offsets.read(e) as usize;
        let mut p = ctx.block_idx().x as usize;
        while p < nk {
            let (tok, w) = (order.read(p) as usize, if weights.is_null() { 1.0 } else { weights.read(p) });
            let mut dot = 0f32;
            let mut j = t;
            while j < d {
                let g = dout.read(tok * d + j);
                dyp.write(p * d + j, C::fma(w, g, dyp.read(p * d + j)));
                dot = C::fma(g, yp.read(p * d + j), dot);
                j += bd;
            }
            let total = block_sum(ctx, dot);
            if t == 0 && !dweights.is_null() {
                dweights.write(p, dweights.read(p) + total);
            }
            p += ctx.grid_dim().x as usize;
        }
    }
}
