//! Causal grouped-query attention, FlashAttention-2 style: tiled, online softmax, the
//! logsumexp saved for backward, never a [T, T] score matrix in memory.
//!
//! Shapes: `q`, `out` [B, T, H, Dh]; `k`, `v` [B, T, KV, Dh]; `lse` [B, H, T]; `seg` [B, T].
//! Query head `i` uses KV head `i / (H / KV)` (Hugging Face `repeat_kv`). Scores are scaled by
//! `1 / sqrt(Dh)`. Token `i` sees key `j` iff `j <= i` and (no `seg`, or `seg[b,i] == seg[b,j]`):
//! `seg` holds the document id of every token of packed sequences. Every row sees itself.
//!
//! Work is split into tiles of QB query positions × KB keys (`tile::QB`, `tile::KB`). A query
//! tile stacks the G = H/KV query heads that share a KV head (row `i*G + hh`), so one K/V tile
//! serves G heads and the tile products are `[G*QB, Dh] · [Dh, KB]` through
//! `gemm::matmul_with` on one thread (any backend, e.g. bf16). Per-thread scratch is O(G*QB*(KB + Dh)), whatever T.
//!
//! - Forward: parallel over (batch, query tile); per KV group, the key tiles up to the diagonal
//!   update a running max, sum and output (online softmax); `lse = max + ln(sum)` is saved.
//! - Backward (`backward`): `Dvec = rowsum(dO * O)`, then `P = exp(S - lse)` recomputed tile by
//!   tile, on one of two race-free schedules: FlashAttention-2's split (a dQ pass over query
//!   tiles, a dK/dV pass over key tiles) or a fused sweep per (batch, KV head) that saves two of
//!   the seven tile products when B*KV tasks keep the threads busy.
//!
//! Tiles above the diagonal, or whose queries and keys share no document, are skipped; a tile
//! is trimmed to the rows at or after its first key and the keys before its last query, and
//! inside it each row touches only its causally visible prefix. Every output element is summed
//! in a fixed order by one task, so results do not depend on the number of threads.

mod backward;
mod naive;
#[cfg(test)]
mod tests;
mod tile;

pub use backward::{attention_backward, attention_backward_with};
pub use naive::attention_naive;

use crate::gemm::{matmul_with, GemmBackend, Trans};
use rayon::prelude::*;
use tile::{fwd_rows, gather_rows, visibility, Scratch, TilePos, Vis, KB, QB};

/// Attention dimensions.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    /// Batch size B.
    pub b: usize,
    /// Tokens per sequence T.
    pub t: usize,
    /// Query heads H (a multiple of `kv`).
    pub h: usize,
    /// Key/value heads KV.
    pub kv: usize,
    /// Head dim Dh.
    pub dh: usize,
}

impl AttnDims {
    /// Panics on inconsistent dimensions or slice lengths (programming errors).
    fn check(&self, q: usize, k: usize, v: usize, seg: Option<usize>) {
        let AttnDims { b, t, h, kv, dh } = *self;
        assert!(kv > 0 && h % kv == 0, "attention: h={h} is not a multiple of kv={kv}");
        assert!(dh > 0, "attention: dh must be positive");
        assert_eq!(q, b * t * h * dh, "attention: q is not [B,T,H,Dh]");
        assert_eq!(k, b * t * kv * dh, "attention: k is not [B,T,KV,Dh]");
        assert_eq!(v, b * t * kv * dh, "attention: v is not [B,T,KV,Dh]");
        if let Some(s) = seg {
            assert_eq!(s, b * t, "attention: seg is not [B,T]");
        }
    }

    /// Query heads per KV head.
    fn group(&self) -> usize {
        self.h / self.kv
    }

    fn scale(&self) -> f32 {
        1.0 / (self.dh as f32).sqrt()
    }
}

/// Splits a `[B, T, width]` buffer into chunks of `tile` positions: `(b, t0, chunk)`.
fn tile_chunks(
    buf: &mut [f32],
    t: usize,
    width: usize,
    tile: usize,
) -> impl Iterator<Item = (usize, usize, &mut [f32])> {
    buf.chunks_mut(t * width)
        .enumerate()
        .flat_map(move |(b, seq)| seq.chunks_mut(tile * width).enumerate().map(move |(i, c)| (b, i * tile, c)))
}

/// The forward's inputs, and tile gathers from them.
struct Inputs<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    seg: Option<&'a [u32]>,
    dims: AttnDims,
    /// Backend of the tile products (one thread each).
    gemm: GemmBackend,
}

impl Inputs<'_> {
    /// Document ids of sequence `b`.
    fn seg_b(&self, b: usize) -> Option<&[u32]> {
        self.seg.map(|s| &s[b * self.dims.t..][..self.dims.t])
    }

    /// `dst` [bq*G, Dh] = `mul` × rows of the G query heads of KV group `kh`, positions
    /// `q0..q0+bq` of sequence `b` of `x` ([B, T, H, Dh]: `q` or `dout`); row `i*G + hh`.
    #[allow(clippy::too_many_arguments)]
    fn gather_group(&self, dst: &mut [f32], x: &[f32], b: usize, q0: usize, bq: usize, kh: usize, mul: f32) {
        let AttnDims { t, h, dh, .. } = self.dims;
        let g = self.dims.group();
        let x_b = &x[b * t * h * dh..][..t * h * dh];
        gather_rows(dst, x_b, q0, bq, h, kh * g, g, dh, mul);
    }

    /// `kt`, `vt` [bk, Dh] = KV head `kh` of `k`, `v`, positions `k0..k0+bk` of sequence `b`.
    fn gather_kv(&self, kt: &mut [f32], vt: &mut [f32], b: usize, k0: usize, bk: usize, kh: usize) {
        let AttnDims { t, kv, dh, .. } = self.dims;
        let k_b = &self.k[b * t * kv * dh..][..t * kv * dh];
        let v_b = &self.v[b * t * kv * dh..][..t * kv * dh];
        gather_rows(kt, k_b, k0, bk, kv, kh, 1, dh, 1.0);
        gather_rows(vt, v_b, k0, bk, kv, kh, 1, dh, 1.0);
    }

    /// Trims the tile of query positions `q0..q1` × keys `k0..k0+bk` of sequence `b`: rows
    /// before `k0` and keys from `q1` on see nothing. Returns the first position that may see
    /// a key, its stacked row (`(qa - q0) * G`), the key count and the tile's visibility.
    fn trim(&self, b: usize, q0: usize, q1: usize, k0: usize, bk: usize) -> (usize, usize, usize, Vis) {
        let (qa, bk) = (q0.max(k0), bk.min(q1 - k0));
        let vis = visibility(self.seg_b(b), qa, q1, k0, k0 + bk);
        (qa, (qa - q0) * self.dims.group(), bk, vis)
    }

    /// Forward for query positions `q0..q0+bq` of sequence `b`, all heads: writes `o`
    /// [bq, H, Dh] and `l` [bq, H] (logsumexp).
    fn forward_tile(&self, sc: &mut Scratch, o: &mut [f32], l: &mut [f32], b: usize, q0: usize) {
        let AttnDims { h, kv, dh, .. } = self.dims;
        let g = self.dims.group();
        let bq = o.len() / (h * dh);
        let (q1, rows) = (q0 + bq, g * bq);
        let seg_b = self.seg_b(b);
        for kh in 0..kv {
            self.gather_group(&mut sc.q, self.q, b, q0, bq, kh, self.dims.scale());
            let acc = &mut sc.acc[..rows * dh];
            acc.fill(0.0);
            sc.m[..rows].fill(f32::NEG_INFINITY);
            sc.l[..rows].fill(0.0);
            for k0 in (0..q1).step_by(KB) {
                let (qa, r0, bk, vis) = self.trim(b, q0, q1, k0, KB);
                if vis == Vis::Skip {
                    continue;
                }
                let n = rows - r0;
                self.gather_kv(&mut sc.k, &mut sc.v, b, k0, bk, kh);
                let s = &mut sc.s[..n * bk];
                a_bt(self.gemm, s, &sc.q[r0 * dh..], &sc.k, n, dh, bk);
                let seg = seg_b.filter(|_| vis == Vis::Seg);
                let pos = TilePos { q0: qa, g, k0, bk, seg };
                let acc = &mut acc[r0 * dh..];
                fwd_rows(&pos, s, &mut sc.m[r0..rows], &mut sc.l[r0..rows], acc, dh);
                ab_acc(self.gemm, acc, s, &sc.v, n, bk, dh);
            }
            for (r, a) in acc.chunks_exact(dh).enumerate() {
                let hd = kh * g + r % g;
                let i = r / g;
                let inv = 1.0 / sc.l[r];
                let dst = &mut o[(i * h + hd) * dh..][..dh];
                dst.iter_mut().zip(a).for_each(|(d, &x)| *d = x * inv);
                l[i * h + hd] = sc.m[r] + sc.l[r].ln();
            }
        }
    }
}

/// Causal GQA forward: `out` [B, T, H, Dh] and `lse` [B, H, T] (natural-log logsumexp of each
/// row's visible scaled scores) from `q` [B, T, H, Dh], `k`, `v` [B, T, KV, Dh] and optional
/// document ids `seg` [B, T]. Panics if a slice length disagrees with `dims`.
pub fn attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seg: Option<&[u32]>,
    dims: AttnDims,
) {
    attention_forward_with(GemmBackend::Auto, out, lse, q, k, v, seg, dims);
}

/// [`attention_forward`] with its tile products on `gemm` (a bf16 backend rounds the scaled
/// queries, keys, the softmax weights and values as GEMM operands; the online softmax stays f32).
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_with(
    gemm: GemmBackend,
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seg: Option<&[u32]>,
    dims: AttnDims,
) {
    dims.check(q.len(), k.len(), v.len(), seg.map(<[u32]>::len));
    let AttnDims { b: nb, t, h, dh, .. } = dims;
    assert_eq!(out.len(), q.len(), "attention_forward: out is not [B,T,H,Dh]");
    assert_eq!(lse.len(), nb * h * t, "attention_forward: lse is not [B,H,T]");
    if q.is_empty() {
        return;
    }
    // Each task owns one (batch, query tile) of `out` and of the logsumexp in [B, T, H] order.
    let mut lse_bth = vec![0f32; nb * t * h]; // [B, T, H]
    let tasks: Vec<_> = tile_chunks(out, t, h * dh, QB)
        .zip(tile_chunks(&mut lse_bth, t, h, QB))
        .map(|((b, q0, o), (_, _, l))| (b, q0, o, l))
        .collect();
    let inp = Inputs { q, k, v, seg, dims, gemm };
    tasks
        .into_par_iter()
        .with_max_len(1)
        .for_each_init(|| Scratch::new(dims.group(), dh), |sc, (b, q0, o, l)| inp.forward_tile(sc, o, l, b, q0));
    lse.par_chunks_mut(t).enumerate().for_each(|(bh, row)| {
        let (b, hd) = (bh / h, bh % h);
        for (i, x) in row.iter_mut().enumerate() {
            *x = lse_bth[(b * t + i) * h + hd];
        }
    });
}

/// `dst[m, n] = a[m, k] · b[n, k]ᵀ` on this thread.
fn a_bt(gemm: GemmBackend, dst: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    matmul_with(gemm, 1, dst, a, b, m, k, n, Trans::No, Trans::Yes, false);
}

/// `dst[m, n] += a[m, k] · b[k, n]` on this thread.
fn ab_acc(gemm: GemmBackend, dst: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    matmul_with(gemm, 1, dst, a, b, m, k, n, Trans::No, Trans::No, true);
}

/// `dst[m, n] += a[k, m]ᵀ · b[k, n]` on this thread.
fn at_b_acc(gemm: GemmBackend, dst: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    matmul_with(gemm, 1, dst, a, b, m, k, n, Trans::Yes, Trans::No, true);
}
