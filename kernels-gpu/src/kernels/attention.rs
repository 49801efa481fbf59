//! Causal grouped-query attention with per-document segments, FlashAttention-2 style, as
//! kernels-cpu `attention` (same layouts, masking, scale and saved log-sum-exp).
//!
//! Shapes: `q`, `out`, `dout`, `dq` `[B, T, H, Dh]`; `k`, `v`, `dk`, `dv` `[B, T, KV, Dh]`;
//! `lse`, `dvec` `[B, H, T]`; `seg` `[B, T]` (u32 document ids) or null. Query head `hd` uses KV
//! head `hd / (H / KV)`. Scores are `(scale * q) · k` with the query pre-scaled (`scale = 1/sqrt(Dh)`,
//! computed by the host as kernels-cpu does). Query `i` sees key `j` iff `j <= i` and (`seg` null or
//! `seg[b, i] == seg[b, j]`): every row sees itself, so no softmax row is empty.
//!
//! The tiled kernels (all but `dvec`): block `(128, 1, 1)` (4 warps; any other block size returns at
//! once), `Dh <= 128` ([`MAX_DH`]), dynamic shared memory as each kernel's `*_shared_bytes` says (at
//! most 41 KiB at Dh = 128, under the 48 KiB default). A warp owns whole query rows (or key rows): lane `l` holds
//! output columns `l, l + 32, l + 64, l + 96` in registers; key (or query) tiles of 32 are staged in
//! shared memory with lane `l` scoring key (query) `l` of the tile, and the per-key weights are
//! broadcast with `shfl.idx`. Everything is f32 with FMA; exponentials through [`Simt::exp`].
//!
//! - [`attention_forward`]: one block per (16 query rows, head, batch); online softmax over the key
//!   tiles up to the diagonal; writes `out` and `lse = max + ln(sum)`.
//! - Backward: [`attention_backward_dvec`] (`dvec = rowsum(dO * O)`) first, then
//!   [`attention_backward_dq`] (one block per (8 query rows, head, batch), `P = exp(S - lse)`
//!   recomputed, `dS = P * (dP - dvec)`, `dq += scale * dS · K`) and [`attention_backward_dkv`] (one
//!   block per (8 keys, KV head, batch) looping over the group's query heads and the query tiles
//!   from the diagonal on: `dv += Pᵀ · dO`, `dk += dSᵀ · (scale q)`). Each gradient element is summed
//!   by one thread in a fixed order: no atomics, deterministic. The backward accumulates.

use super::reduce::{warp_max, warp_sum};
use crate::simt::{Gmem, Simt, Smem, WARP};

/// Threads per block of the tiled attention kernels (4 warps).
pub const THREADS: u32 = 128;
/// Warps per block.
const WARPS: usize = THREADS as usize / WARP as usize;
/// Largest head dimension.
pub const MAX_DH: usize = 128;
/// Output columns per lane (`MAX_DH / 32`).
const COLS: usize = MAX_DH / WARP as usize;
/// Keys (forward, dQ) or queries (dK/dV) per shared tile: one per lane.
pub const TILE: usize = WARP as usize;
/// Query rows per warp in the forward.
const FWD_ROWS: usize = 4;
/// Query rows per block in the forward.
pub const FWD_BQ: usize = WARPS * FWD_ROWS;
/// Query rows per warp in the dQ pass.
const DQ_ROWS: usize = 2;
/// Query rows per block in the dQ pass.
pub const DQ_BQ: usize = WARPS * DQ_ROWS;
/// Key rows per warp in the dK/dV pass.
const DKV_ROWS: usize = 2;
/// Key rows per block in the dK/dV pass.
pub const DKV_BK: usize = WARPS * DKV_ROWS;

/// Dynamic shared bytes of [`attention_forward`]: Q `[16, Dh]`, K `[32, Dh + 1]`, V `[32, Dh]`.
pub const fn forward_shared_bytes(dh: usize) -> usize {
    (FWD_BQ * dh + TILE * (dh + 1) + TILE * dh) * 4
}

/// Dynamic shared bytes of [`attention_backward_dq`]: Q, dO `[8, Dh]`, K, V `[32, Dh + 1]`.
pub const fn dq_shared_bytes(dh: usize) -> usize {
    (2 * DQ_BQ * dh + 2 * TILE * (dh + 1)) * 4
}

/// Dynamic shared bytes of [`attention_backward_dkv`]: K, V `[8, Dh]`, Q, dO `[32, Dh + 1]`.
pub const fn dkv_shared_bytes(dh: usize) -> usize {
    (2 * DKV_BK * dh + 2 * TILE * (dh + 1)) * 4
}

/// Whether the launch and sizes are ones the kernels handle (uniform over the block).
#[inline(always)]
fn supported<C: Simt>(ctx: &C, h: usize, kv: usize, dh: usize, shared: usize) -> bool {
    ctx.block_threads() == THREADS
        && dh > 0
        && dh <= MAX_DH
        && kv > 0
        && h.is_multiple_of(kv)
        && ctx.dyn_shared_bytes() >= shared
}

/// `sum(a[d] * b[d])` over `d < n`, in order, with FMA.
///
/// # Safety
/// `n` elements readable at both pointers.
#[inline(always)]
unsafe fn dot<C: Simt>(a: Smem<f32>, b: Smem<f32>, n: usize) -> f32 {
    let mut s = 0f32;
    for d in 0..n {
        s = C::fma(a.read(d), b.read(d), s);
    }
    s
}

/// Block-cooperative copy of head `hd` of positions `t0..t0 + rows` of sequence `bi` of a
/// `[B, T, heads, Dh]` tensor into `dst` (row stride `stride`), times `mul`; zero past `T`.
///
/// # Safety
/// `dst` holds `rows * stride` floats; `src` is `[B, T, heads, Dh]` with `bi < B`, `hd < heads`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn load_rows<C: Simt>(
    ctx: &C,
    dst: Smem<f32>,
    stride: usize,
    src: Gmem<f32>,
    bi: usize,
    t0: usize,
    rows: usize,
    t: usize,
    heads: usize,
    hd: usize,
    dh: usize,
    mul: f32,
) {
    let mut idx = ctx.thread_linear() as usize;
    while idx < rows * dh {
        let (r, d) = (idx / dh, idx % dh);
        let i = t0 + r;
        let x = if i < t { src.read(((bi * t + i) * heads + hd) * dh + d) * mul } else { 0.0 };
        dst.write(r * stride + d, x);
        idx += THREADS as usize;
    }
}

/// Whether query `i` sees key `j` (both `< T`) of sequence `bi`.
///
/// # Safety
/// `seg` is null or `[B, T]`.
#[inline(always)]
unsafe fn visible(seg: Gmem<u32>, bi: usize, t: usize, i: usize, j: usize) -> bool {
    j <= i && (seg.is_null() || seg.read(bi * t + i) == seg.read(bi * t + j))
}

/// Online-softmax state of one query row, per lane: running max, running sum, and this lane's
/// output columns.
#[derive(Clone, Copy)]
struct RowState {
    m: f32,
    l: f32,
    o: [f32; COLS],
}

/// What the forward's row steps share: the staged tiles and where they sit.
#[derive(Clone, Copy)]
struct FwdTile {
    /// Scaled query rows `[FWD_BQ, Dh]`.
    qs: Smem<f32>,
    /// Key tile `[TILE, Dh + 1]`.
    ks: Smem<f32>,
    /// Value tile `[TILE, Dh]`.
    vs: Smem<f32>,
    seg: Gmem<u32>,
    bi: usize,
    t: usize,
    dh: usize,
    q0: usize,
    k0: usize,
    lane: usize,
}

/// One online-softmax step of block row `row` (query `q0 + row`) over the staged key tile.
/// Warp-uniform control flow: every lane of the warp takes the same branches.
///
/// # Safety
/// The tiles are staged and ordered by a barrier; `seg` is null or `[B, T]`.
#[inline(always)]
unsafe fn fwd_step<C: Simt>(ctx: &C, s: &mut RowState, row: usize, f: FwdTile) {
    let FwdTile { qs, ks, vs, seg, bi, t, dh, q0, k0, lane } = f;
    let i = q0 + row;
    if i >= t || k0 > i {
        return;
    }
    let j = k0 + lane;
    let vis = visible(seg, bi, t, i, j);
    let score = if vis { dot::<C>(qs.add(row * dh), ks.add(lane * (dh + 1)), dh) } else { f32::NEG_INFINITY };
    let mx = warp_max(ctx, score);
    if mx == f32::NEG_INFINITY {
        return; // nothing visible in this tile
    }
    let m_new = if mx > s.m { mx } else { s.m };
    let alpha = C::exp(s.m - m_new); // 0 on the first visible tile
    let p = if vis { C::exp(score - m_new) } else { 0.0 };
    s.l = s.l * alpha + warp_sum(ctx, p);
    s.m = m_new;
    for o in s.o.iter_mut() {
        *o *= alpha;
    }
    let ncols = if i + 1 - k0 < TILE { i + 1 - k0 } else { TILE };
    for jj in 0..ncols {
        let pj = ctx.shfl_idx_f32(p, jj as u32);
        for (c, o) in s.o.iter_mut().enumerate() {
            let d = lane + WARP as usize * c;
            if d < dh {
                *o = C::fma(pj, vs.read(jj * dh + d), *o);
            }
        }
    }
}

/// Writes `out` and `lse` of block row `row` from its final state.
///
/// # Safety
/// `out` is `[B, T, H, Dh]`, `lse` `[B, H, T]`, `bi < B`, `hd < H`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn fwd_write<C: Simt>(
    out: Gmem<f32>,
    lse: Gmem<f32>,
    s: &RowState,
    row: usize,
    f: FwdTile,
    h: usize,
    hd: usize,
) {
    let FwdTile { bi, t, dh, q0, lane, .. } = f;
    let i = q0 + row;
    if i >= t {
        return;
    }
    let inv = 1.0 / s.l;
    let base = ((bi * t + i) * h + hd) * dh;
    for (c, &o) in s.o.iter().enumerate() {
        let d = lane + WARP as usize * c;
        if d < dh {
            out.write(base + d, o * inv);
        }
    }
    if lane == 0 {
        lse.write((bi * h + hd) * t + i, s.m + C::ln(s.l));
    }
}

/// Forward: `out` and `lse` of 16 query rows of one head (4 per warp).
///
/// Launch: grid `(ceil(T / 16), H, B)`, block `(128, 1, 1)`, dynamic shared
/// [`forward_shared_bytes`]`(Dh)` (41 088 B at Dh = 128).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward<C: Simt>(
    ctx: &C,
    out: Gmem<f32>,
    lse: Gmem<f32>,
    q: Gmem<f32>,
    k: Gmem<f32>,
    v: Gmem<f32>,
    seg: Gmem<u32>,
    t: usize,
    h: usize,
    kv: usize,
    dh: usize,
    scale: f32,
) {
    if !supported(ctx, h, kv, dh, forward_shared_bytes(dh)) {
        return;
    }
    let (lane, warp) = (ctx.lane_id() as usize, ctx.warp_id() as usize);
    let blk = ctx.block_idx();
    let (q0, hd, bi) = (blk.x as usize * FWD_BQ, blk.y as usize, blk.z as usize);
    let kh = hd / (h / kv);
    if q0 >= t {
        return;
    }
    let q_end = if q0 + FWD_BQ < t { q0 + FWD_BQ } else { t };
    let sh: Smem<f32> = ctx.dyn_shared();
    // SAFETY: the three regions fit forward_shared_bytes(dh) (checked); global indices are
    // guarded by T and come from the grid (hd < H, bi < B); barriers order the shared accesses.
    unsafe {
        let (qs, ks) = (sh, sh.add(FWD_BQ * dh));
        let vs = ks.add(TILE * (dh + 1));
        load_rows(ctx, qs, dh, q, bi, q0, FWD_BQ, t, h, hd, dh, scale);
        let mut f = FwdTile { qs, ks, vs, seg, bi, t, dh, q0, k0: 0, lane };
        // The warp's rows by constant index, so their states stay in registers (a loop over them
        // is not unrolled by LLVM and would put the states in local memory).
        let r0 = warp * FWD_ROWS;
        let empty = RowState { m: f32::NEG_INFINITY, l: 0.0, o: [0.0; COLS] };
        let [mut s0, mut s1, mut s2, mut s3] = [empty; FWD_ROWS];
        while f.k0 < q_end {
            ctx.sync_threads();
            load_rows(ctx, ks, dh + 1, k, bi, f.k0, TILE, t, kv, kh, dh, 1.0);
            load_rows(ctx, vs, dh, v, bi, f.k0, TILE, t, kv, kh, dh, 1.0);
            ctx.sync_threads();
            fwd_step(ctx, &mut s0, r0, f);
            fwd_step(ctx, &mut s1, r0 + 1, f);
            fwd_step(ctx, &mut s2, r0 + 2, f);
            fwd_step(ctx, &mut s3, r0 + 3, f);
            f.k0 += TILE;
        }
        fwd_write::<C>(out, lse, &s0, r0, f, h, hd);
        fwd_write::<C>(out, lse, &s1, r0 + 1, f, h, hd);
        fwd_write::<C>(out, lse, &s2, r0 + 2, f, h, hd);
        fwd_write::<C>(out, lse, &s3, r0 + 3, f, h, hd);
    }
}

/// `dvec[b, hd, i] = sum_d dout[b, i, hd, d] * out[b, i, hd, d]` (written), one thread per row.
///
/// Launch: grid-stride over the `B * T * H` rows (any 1-D grid and block; GPU 256), no shared
/// memory.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_dvec<C: Simt>(
    ctx: &C,
    dvec: Gmem<f32>,
    dout: Gmem<f32>,
    out: Gmem<f32>,
    b: usize,
    t: usize,
    h: usize,
    dh: usize,
) {
    let (mut row, stride) = super::grid_stride(ctx);
    while row < b * t * h {
        let (bt, hd) = (row / h, row % h);
        let (bi, i) = (bt / t, bt % t);
        // SAFETY: row < B*T*H; the row's Dh elements are in bounds; one thread per dvec entry.
        unsafe {
            let mut s = 0f32;
            for d in 0..dh {
                s = C::fma(dout.read(row * dh + d), out.read(row * dh + d), s);
            }
            dvec.write((bi * h + hd) * t + i, s);
        }
        row += stride;
    }
}

/// Backward, dQ: accumulates `dq += scale * dS · K` for 8 query rows of one head, with
/// `P = exp(scale q · k - lse)` and `dS = P * (dO · v - dvec)` recomputed key tile by key tile.
///
/// Launch: grid `(ceil(T / 8), H, B)`, block `(128, 1, 1)`, dynamic shared
/// [`dq_shared_bytes`]`(Dh)` (41 216 B at Dh = 128). Needs `dvec` from [`attention_backward_dvec`].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_dq<C: Simt>(
    ctx: &C,
    dq: Gmem<f32>,
    dout: Gmem<f32>,
    lse: Gmem<f32>,
    dvec: Gmem<f32>,
    q: Gmem<f32>,
    k: Gmem<f32>,
    v: Gmem<f32>,
    seg: Gmem<u32>,
    t: usize,
    h: usize,
    kv: usize,
    dh: usize,
    scale: f32,
) {
    if !supported(ctx, h, kv, dh, dq_shared_bytes(dh)) {
        return;
    }
    let (lane, warp) = (ctx.lane_id() as usize, ctx.warp_id() as usize);
    let blk = ctx.block_idx();
    let (q0, hd, bi) = (blk.x as usize * DQ_BQ, blk.y as usize, blk.z as usize);
    let kh = hd / (h / kv);
    if q0 >= t {
        return;
    }
    let q_end = if q0 + DQ_BQ < t { q0 + DQ_BQ } else { t };
    let sh: Smem<f32> = ctx.dyn_shared();
    // SAFETY: the four regions fit dq_shared_bytes(dh) (checked); global indices are guarded by T
    // and come from the grid; barriers order the shared accesses; each dq element has one writer.
    unsafe {
        let (qs, dos) = (sh, sh.add(DQ_BQ * dh));
        let ks = dos.add(DQ_BQ * dh);
        let vs = ks.add(TILE * (dh + 1));
        load_rows(ctx, qs, dh, q, bi, q0, DQ_BQ, t, h, hd, dh, scale);
        load_rows(ctx, dos, dh, dout, bi, q0, DQ_BQ, t, h, hd, dh, 1.0);
        // Per row: saved lse, dvec, and the dQ columns of this lane.
        let mut stat = [(0f32, 0f32); DQ_ROWS];
        for (r, st) in stat.iter_mut().enumerate() {
            let i = q0 + warp * DQ_ROWS + r;
            if i < t {
                let at = (bi * h + hd) * t + i;
                *st = (lse.read(at), dvec.read(at));
            }
        }
        let mut acc = [[0f32; COLS]; DQ_ROWS];
        let mut k0 = 0;
        while k0 < q_end {
            ctx.sync_threads();
            load_rows(ctx, ks, dh + 1, k, bi, k0, TILE, t, kv, kh, dh, 1.0);
            load_rows(ctx, vs, dh + 1, v, bi, k0, TILE, t, kv, kh, dh, 1.0);
            ctx.sync_threads();
            for (r, (a, &(l, dv))) in acc.iter_mut().zip(stat.iter()).enumerate() {
                let row = warp * DQ_ROWS + r;
                let i = q0 + row;
                if i >= t || k0 > i {
                    continue; // warp-uniform
                }
                let j = k0 + lane;
                let ds = if visible(seg, bi, t, i, j) {
                    let p = C::exp(dot::<C>(qs.add(row * dh), ks.add(lane * (dh + 1)), dh) - l);
                    let dp = dot::<C>(dos.add(row * dh), vs.add(lane * (dh + 1)), dh);
                    p * (dp - dv)
                } else {
                    0.0
                };
                if !ctx.vote_any(ds != 0.0) {
                    continue; // nothing to add (warp-uniform)
                }
                let ncols = if i + 1 - k0 < TILE { i + 1 - k0 } else { TILE };
                for jj in 0..ncols {
                    let dsj = ctx.shfl_idx_f32(ds, jj as u32);
                    for (c, x) in a.iter_mut().enumerate() {
                        let d = lane + WARP as usize * c;
                        if d < dh {
                            *x = C::fma(dsj, ks.read(jj * (dh + 1) + d), *x);
                        }
                    }
                }
            }
            k0 += TILE;
        }
        for (r, a) in acc.iter().enumerate() {
            let i = q0 + warp * DQ_ROWS + r;
            if i >= t {
                continue;
            }
            let base = ((bi * t + i) * h + hd) * dh;
            for (c, &x) in a.iter().enumerate() {
                let d = lane + WARP as usize * c;
                if d < dh {
                    dq.write(base + d, dq.read(base + d) + scale * x);
                }
            }
        }
    }
}

/// Backward, dK and dV: accumulates `dk += dSᵀ · (scale q)` and `dv += Pᵀ · dO` for 8 keys of one
/// KV head, summed over the group's `H / KV` query heads and the query tiles from the block's first
/// key to `T` (causal), `P` and `dS` recomputed as in [`attention_backward_dq`].
///
/// Launch: grid `(ceil(T / 8), KV, B)`, block `(128, 1, 1)`, dynamic shared
/// [`dkv_shared_bytes`]`(Dh)` (41 216 B at Dh = 128). Needs `dvec` from [`attention_backward_dvec`].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_dkv<C: Simt>(
    ctx: &C,
    dk: Gmem<f32>,
    dv: Gmem<f32>,
    dout: Gmem<f32>,
    lse: Gmem<f32>,
    dvec: Gmem<f32>,
    q: Gmem<f32>,
    k: Gmem<f32>,
    v: Gmem<f32>,
    seg: Gmem<u32>,
    t: usize,
    h: usize,
    kv: usize,
    dh: usize,
    scale: f32,
) {
    if !supported(ctx, h, kv, dh, dkv_shared_bytes(dh)) {
        return;
    }
    let (lane, warp) = (ctx.lane_id() as usize, ctx.warp_id() as usize);
    let blk = ctx.block_idx();
    let (k0, kh, bi) = (blk.x as usize * DKV_BK, blk.y as usize, blk.z as usize);
    let g = h / kv;
    if k0 >= t {
        return;
    }
    let sh: Smem<f32> = ctx.dyn_shared();
    // SAFETY: the four regions fit dkv_shared_bytes(dh) (checked); global indices are guarded by
    // T and come from the grid; barriers order the shared accesses; each dk / dv element has one
    // writer.
    unsafe {
        let (ks, vs) = (sh, sh.add(DKV_BK * dh));
        let qs = vs.add(DKV_BK * dh);
        let dos = qs.add(TILE * (dh + 1));
        load_rows(ctx, ks, dh, k, bi, k0, DKV_BK, t, kv, kh, dh, 1.0);
        load_rows(ctx, vs, dh, v, bi, k0, DKV_BK, t, kv, kh, dh, 1.0);
        let mut dk_acc = [[0f32; COLS]; DKV_ROWS];
        let mut dv_acc = [[0f32; COLS]; DKV_ROWS];
        for hd in kh * g..(kh + 1) * g {
            let mut q0 = k0;
            while q0 < t {
                ctx.sync_threads();
                load_rows(ctx, qs, dh + 1, q, bi, q0, TILE, t, h, hd, dh, scale);
                load_rows(ctx, dos, dh + 1, dout, bi, q0, TILE, t, h, hd, dh, 1.0);
                ctx.sync_threads();
                let i = q0 + lane;
                let (l, dvi) = if i < t {
                    let at = (bi * h + hd) * t + i;
                    (lse.read(at), dvec.read(at))
                } else {
                    (0.0, 0.0)
                };
                let nq = if t - q0 < TILE { t - q0 } else { TILE };
                for (r, (dka, dva)) in dk_acc.iter_mut().zip(dv_acc.iter_mut()).enumerate() {
                    let kr = warp * DKV_ROWS + r;
                    let j = k0 + kr;
                    if j >= t {
                        continue; // warp-uniform
                    }
                    let (p, ds) = if i < t && visible(seg, bi, t, i, j) {
                        let p = C::exp(dot::<C>(qs.add(lane * (dh + 1)), ks.add(kr * dh), dh) - l);
                        let dp = dot::<C>(dos.add(lane * (dh + 1)), vs.add(kr * dh), dh);
                        (p, p * (dp - dvi))
                    } else {
                        (0.0, 0.0)
                    };
                    if !ctx.vote_any(p != 0.0) {
                        continue; // no visible query in this tile (warp-uniform)
                    }
                    // Queries before key j see nothing of it.
                    let first = j.saturating_sub(q0);
                    for ii in first..nq {
                        let pi = ctx.shfl_idx_f32(p, ii as u32);
                        let dsi = ctx.shfl_idx_f32(ds, ii as u32);
                        for c in 0..COLS {
                            let d = lane + WARP as usize * c;
                            if d < dh {
                                dva[c] = C::fma(pi, dos.read(ii * (dh + 1) + d), dva[c]);
                                dka[c] = C::fma(dsi, qs.read(ii * (dh + 1) + d), dka[c]);
                            }
                        }
                    }
                }
                q0 += TILE;
            }
        }
        for (r, (dka, dva)) in dk_acc.iter().zip(dv_acc.iter()).enumerate() {
            let j = k0 + warp * DKV_ROWS + r;
            if j >= t {
                continue;
            }
            let base = ((bi * t + j) * kv + kh) * dh;
            for c in 0..COLS {
                let d = lane + WARP as usize * c;
                if d < dh {
                    dk.write(base + d, dk.read(base + d) + dka[c]);
                    dv.write(base + d, dv.read(base + d) + dva[c]);
                }
            }
        }
    }
}
