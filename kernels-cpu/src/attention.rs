//! Causal grouped-query attention, FlashAttention-2 style: tiled, online softmax, the
//! logsumexp saved for backward, never a [T, T] score matrix in memory.
//!
//! Shapes: `q`, `out` [B, T, H, Dh]; `k`, `v` [B, T, KV, Dh]; `lse` [B, H, T]; `seg` [B, T].
//! Query head `i` uses KV head `i / (H / KV)` (Hugging Face `repeat_kv`). Scores are scaled by
//! `1 / sqrt(Dh)`. Token `i` sees key `j` iff `j <= i` and (no `seg`, or `seg[b,i] == seg[b,j]`):
//! `seg` holds the document id of every token of packed sequences. Every row sees itself.
//!
//! Work is split into tiles of [`QB`](tile::QB) query positions × [`KB`](tile::KB) keys; a query
//! tile stacks the G = H/KV query heads that share a KV head, so one K/V tile serves G heads and
//! the tile products are `[G*QB, Dh] · [Dh, KB]`. Per-thread scratch is O(G*QB*(KB + Dh)).
//!
//! - Forward: parallel over (batch, query tile); for each KV group, key tiles up to the diagonal
//!   update running max / sum / output (online softmax).
//! - Backward (FlashAttention-2 split, no races): `Dvec = rowsum(dO * O)`; one pass parallel over
//!   (batch, query tile) producing dQ, one over (batch, key tile) producing dK, dV (summed over
//!   the group's query heads by the stacking). Both recompute `P = exp(S - lse)` tile by tile.
//!
//! Tiles entirely above the diagonal, or whose queries and keys share no document, are skipped;
//! inside a diagonal tile only the causally visible prefix of each row is touched.

mod naive;
#[cfg(test)]
mod tests;
mod tile;

pub use naive::attention_naive;

use crate::gemm::{matmul_single, Trans};
use rayon::prelude::*;
use tile::{bwd_rows, fwd_rows, gather_rows, visibility, Scratch, TilePos, Vis, KB, QB};

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
        assert!(
            kv > 0 && h % kv == 0,
            "attention: h={h} is not a multiple of kv={kv}"
        );
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
    dims.check(q.len(), k.len(), v.len(), seg.map(<[u32]>::len));
    let AttnDims {
        b: nb, t, h, dh, ..
    } = dims;
    assert_eq!(
        out.len(),
        q.len(),
        "attention_forward: out is not [B,T,H,Dh]"
    );
    assert_eq!(
        lse.len(),
        nb * h * t,
        "attention_forward: lse is not [B,H,T]"
    );
    if nb * t == 0 {
        return;
    }
    // Each task owns the rows of one (batch, query tile) of `out` and of lse in [B, T, H] order.
    let mut lse_bth = vec![0f32; nb * t * h]; // [B, T, H]
    let tasks: Vec<(usize, usize, &mut [f32], &mut [f32])> = out
        .chunks_mut(t * h * dh)
        .zip(lse_bth.chunks_mut(t * h))
        .enumerate()
        .flat_map(|(b, (ob, lb))| {
            ob.chunks_mut(QB * h * dh)
                .zip(lb.chunks_mut(QB * h))
                .enumerate()
                .map(move |(i, (o, l))| (b, i * QB, o, l))
        })
        .collect();
    tasks.into_par_iter().with_max_len(1).for_each_init(
        || Scratch::new(dims.group(), dh),
        |sc, (b, q0, o, l)| forward_tile(sc, o, l, q, k, v, seg, dims, b, q0),
    );
    for b in 0..nb {
        for i in 0..t {
            for hd in 0..h {
                lse[(b * h + hd) * t + i] = lse_bth[(b * t + i) * h + hd];
            }
        }
    }
}

/// Forward for query positions `q0..q0+bq` of sequence `b`, all heads: writes `o` [bq, H, Dh]
/// and `l` [bq, H].
#[allow(clippy::too_many_arguments)]
fn forward_tile(
    sc: &mut Scratch,
    o: &mut [f32],
    l: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seg: Option<&[u32]>,
    dims: AttnDims,
    b: usize,
    q0: usize,
) {
    let AttnDims { t, h, kv, dh, .. } = dims;
    let g = dims.group();
    let bq = o.len() / (h * dh);
    let q1 = q0 + bq;
    let rows = g * bq;
    let q_b = &q[b * t * h * dh..][..t * h * dh];
    let k_b = &k[b * t * kv * dh..][..t * kv * dh];
    let v_b = &v[b * t * kv * dh..][..t * kv * dh];
    let seg_b = seg.map(|s| &s[b * t..][..t]);
    for kh in 0..kv {
        for hh in 0..g {
            let qs = &mut sc.q[hh * bq * dh..][..bq * dh];
            gather_rows(qs, q_b, q0, bq, h, kh * g + hh, dh, dims.scale());
        }
        let acc = &mut sc.acc[..rows * dh];
        acc.fill(0.0);
        sc.m[..rows].fill(f32::NEG_INFINITY);
        sc.l[..rows].fill(0.0);
        for k0 in (0..q1).step_by(KB) {
            let bk = KB.min(t - k0);
            let vis = visibility(seg_b, q0, q1, k0, k0 + bk);
            if vis == Vis::Skip {
                continue;
            }
            gather_rows(&mut sc.k, k_b, k0, bk, kv, kh, dh, 1.0);
            gather_rows(&mut sc.v, v_b, k0, bk, kv, kh, dh, 1.0);
            let s = &mut sc.s[..rows * bk];
            matmul_single(s, &sc.q, &sc.k, rows, dh, bk, Trans::No, Trans::Yes, false);
            let seg = seg_b.filter(|_| vis == Vis::Seg);
            let pos = TilePos {
                q0,
                bq,
                k0,
                bk,
                seg,
            };
            fwd_rows(&pos, s, &mut sc.m[..rows], &mut sc.l[..rows], acc, dh);
            matmul_single(acc, s, &sc.v, rows, bk, dh, Trans::No, Trans::No, true);
        }
        for r in 0..rows {
            let (hd, i) = (kh * g + r / bq, r % bq);
            let inv = 1.0 / sc.l[r];
            let dst = &mut o[(i * h + hd) * dh..][..dh];
            dst.iter_mut()
                .zip(&acc[r * dh..(r + 1) * dh])
                .for_each(|(d, &a)| *d = a * inv);
            l[i * h + hd] = sc.m[r] + sc.l[r].ln();
        }
    }
}

/// Causal GQA backward: **accumulates** `dq` [B, T, H, Dh], `dk`, `dv` [B, T, KV, Dh] from
/// `dout` [B, T, H, Dh] and the forward's `out`, `lse` and inputs. Panics if a slice length
/// disagrees with `dims`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    out: &[f32],
    lse: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seg: Option<&[u32]>,
    dims: AttnDims,
) {
    dims.check(q.len(), k.len(), v.len(), seg.map(<[u32]>::len));
    let AttnDims {
        b: nb,
        t,
        h,
        kv,
        dh,
    } = dims;
    assert_eq!(
        dq.len(),
        q.len(),
        "attention_backward: dq is not [B,T,H,Dh]"
    );
    assert_eq!(
        dk.len(),
        k.len(),
        "attention_backward: dk is not [B,T,KV,Dh]"
    );
    assert_eq!(
        dv.len(),
        v.len(),
        "attention_backward: dv is not [B,T,KV,Dh]"
    );
    assert_eq!(
        dout.len(),
        q.len(),
        "attention_backward: dout is not [B,T,H,Dh]"
    );
    assert_eq!(
        out.len(),
        q.len(),
        "attention_backward: out is not [B,T,H,Dh]"
    );
    assert_eq!(
        lse.len(),
        nb * h * t,
        "attention_backward: lse is not [B,H,T]"
    );
    if nb * t == 0 {
        return;
    }
    // Dvec = rowsum(dO * O): [B, T, H].
    let mut dvec = vec![0f32; nb * t * h];
    dvec.par_chunks_mut(h).enumerate().for_each(|(row, d)| {
        for (hd, x) in d.iter_mut().enumerate() {
            let o = (row * h + hd) * dh;
            *x = tile::dot(&dout[o..o + dh], &out[o..o + dh]);
        }
    });
    let bwd = Bwd {
        dout,
        lse,
        dvec: &dvec,
        q,
        k,
        v,
        seg,
        dims,
    };

    let dq_tasks: Vec<(usize, usize, &mut [f32])> = dq
        .chunks_mut(t * h * dh)
        .enumerate()
        .flat_map(|(b, db)| {
            db.chunks_mut(QB * h * dh)
                .enumerate()
                .map(move |(i, c)| (b, i * QB, c))
        })
        .collect();
    dq_tasks.into_par_iter().with_max_len(1).for_each_init(
        || Scratch::new(dims.group(), dh),
        |sc, (b, q0, c)| bwd.dq_tile(sc, c, b, q0),
    );

    let dkv_tasks: Vec<(usize, usize, &mut [f32], &mut [f32])> = dk
        .chunks_mut(t * kv * dh)
        .zip(dv.chunks_mut(t * kv * dh))
        .enumerate()
        .flat_map(|(b, (kb, vb))| {
            kb.chunks_mut(KB * kv * dh)
                .zip(vb.chunks_mut(KB * kv * dh))
                .enumerate()
                .map(move |(i, (ck, cv))| (b, i * KB, ck, cv))
        })
        .collect();
    dkv_tasks.into_par_iter().with_max_len(1).for_each_init(
        || Scratch::new(dims.group(), dh),
        |sc, (b, k0, ck, cv)| bwd.dkv_tile(sc, ck, cv, b, k0),
    );
}

/// Read-only inputs of the backward passes.
struct Bwd<'a> {
    dout: &'a [f32],
    lse: &'a [f32],
    dvec: &'a [f32],
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    seg: Option<&'a [u32]>,
    dims: AttnDims,
}

impl Bwd<'_> {
    /// Gathers the query-side tile of KV group `kh` for positions `q0..q0+bq` of sequence `b`:
    /// scaled Q, dO, lse and Dvec for the `g * bq` stacked rows.
    fn gather_query_side(&self, sc: &mut Scratch, b: usize, q0: usize, bq: usize, kh: usize) {
        let AttnDims { t, h, dh, .. } = self.dims;
        let g = self.dims.group();
        let q_b = &self.q[b * t * h * dh..][..t * h * dh];
        let do_b = &self.dout[b * t * h * dh..][..t * h * dh];
        for hh in 0..g {
            let hd = kh * g + hh;
            gather_rows(
                &mut sc.q[hh * bq * dh..],
                q_b,
                q0,
                bq,
                h,
                hd,
                dh,
                self.dims.scale(),
            );
            gather_rows(&mut sc.d_o[hh * bq * dh..], do_b, q0, bq, h, hd, dh, 1.0);
            for i in 0..bq {
                sc.m[hh * bq + i] = self.lse[(b * h + hd) * t + q0 + i];
                sc.l[hh * bq + i] = self.dvec[(b * t + q0 + i) * h + hd];
            }
        }
    }

    /// Gathers K and V tiles of KV head `kh` for key positions `k0..k0+bk` of sequence `b`.
    fn gather_key_side(&self, sc: &mut Scratch, b: usize, k0: usize, bk: usize, kh: usize) {
        let AttnDims { t, kv, dh, .. } = self.dims;
        let k_b = &self.k[b * t * kv * dh..][..t * kv * dh];
        let v_b = &self.v[b * t * kv * dh..][..t * kv * dh];
        gather_rows(&mut sc.k, k_b, k0, bk, kv, kh, dh, 1.0);
        gather_rows(&mut sc.v, v_b, k0, bk, kv, kh, dh, 1.0);
    }

    /// With the tiles gathered: `sc.s` = P and `sc.dp` = dS, both [g*bq, bk].
    fn probs_and_grads(
        &self,
        sc: &mut Scratch,
        b: usize,
        q0: usize,
        bq: usize,
        k0: usize,
        bk: usize,
        vis: Vis,
    ) {
        let AttnDims { t, dh, .. } = self.dims;
        let rows = self.dims.group() * bq;
        let s = &mut sc.s[..rows * bk];
        let dp = &mut sc.dp[..rows * bk];
        matmul_single(s, &sc.q, &sc.k, rows, dh, bk, Trans::No, Trans::Yes, false);
        matmul_single(
            dp,
            &sc.d_o,
            &sc.v,
            rows,
            dh,
            bk,
            Trans::No,
            Trans::Yes,
            false,
        );
        let seg_b = self.seg.map(|s| &s[b * t..][..t]);
        let seg = seg_b.filter(|_| vis == Vis::Seg);
        let pos = TilePos {
            q0,
            bq,
            k0,
            bk,
            seg,
        };
        bwd_rows(&pos, s, dp, &sc.m[..rows], &sc.l[..rows]);
    }

    /// dQ for query positions `q0..q0+bq` of sequence `b`, all heads: `c` [bq, H, Dh] `+=`.
    fn dq_tile(&self, sc: &mut Scratch, c: &mut [f32], b: usize, q0: usize) {
        let AttnDims { t, h, kv, dh, .. } = self.dims;
        let g = self.dims.group();
        let bq = c.len() / (h * dh);
        let (q1, rows) = (q0 + bq, g * bq);
        let seg_b = self.seg.map(|s| &s[b * t..][..t]);
        for kh in 0..kv {
            self.gather_query_side(sc, b, q0, bq, kh);
            sc.acc[..rows * dh].fill(0.0);
            for k0 in (0..q1).step_by(KB) {
                let bk = KB.min(t - k0);
                let vis = visibility(seg_b, q0, q1, k0, k0 + bk);
                if vis == Vis::Skip {
                    continue;
                }
                self.gather_key_side(sc, b, k0, bk, kh);
                self.probs_and_grads(sc, b, q0, bq, k0, bk, vis);
                let ds = &sc.dp[..rows * bk];
                matmul_single(
                    &mut sc.acc,
                    ds,
                    &sc.k,
                    rows,
                    bk,
                    dh,
                    Trans::No,
                    Trans::No,
                    true,
                );
            }
            let scale = self.dims.scale();
            for r in 0..rows {
                let (hd, i) = (kh * g + r / bq, r % bq);
                let dst = &mut c[(i * h + hd) * dh..][..dh];
                dst.iter_mut()
                    .zip(&sc.acc[r * dh..(r + 1) * dh])
                    .for_each(|(d, &a)| *d += scale * a);
            }
        }
    }

    /// dK, dV for key positions `k0..k0+bk` of sequence `b`, all KV heads: `ck`, `cv`
    /// [bk, KV, Dh] `+=`.
    fn dkv_tile(&self, sc: &mut Scratch, ck: &mut [f32], cv: &mut [f32], b: usize, k0: usize) {
        let AttnDims { t, kv, dh, .. } = self.dims;
        let g = self.dims.group();
        let bk = ck.len() / (kv * dh);
        let seg_b = self.seg.map(|s| &s[b * t..][..t]);
        for kh in 0..kv {
            self.gather_key_side(sc, b, k0, bk, kh);
            sc.acc[..bk * dh].fill(0.0);
            sc.acc2[..bk * dh].fill(0.0);
            for q0 in (k0 / QB * QB..t).step_by(QB) {
                let bq = QB.min(t - q0);
                let vis = visibility(seg_b, q0, q0 + bq, k0, k0 + bk);
                if vis == Vis::Skip {
                    continue;
                }
                let rows = g * bq;
                self.gather_query_side(sc, b, q0, bq, kh);
                self.probs_and_grads(sc, b, q0, bq, k0, bk, vis);
                let (p, ds) = (&sc.s[..rows * bk], &sc.dp[..rows * bk]);
                // dV += Pᵀ·dO, dK += dSᵀ·(scale Q): sums over the group's heads by stacking.
                matmul_single(
                    &mut sc.acc2,
                    p,
                    &sc.d_o,
                    bk,
                    rows,
                    dh,
                    Trans::Yes,
                    Trans::No,
                    true,
                );
                matmul_single(
                    &mut sc.acc,
                    ds,
                    &sc.q,
                    bk,
                    rows,
                    dh,
                    Trans::Yes,
                    Trans::No,
                    true,
                );
            }
            for j in 0..bk {
                let o = (j * kv + kh) * dh;
                let src = j * dh..(j + 1) * dh;
                ck[o..o + dh]
                    .iter_mut()
                    .zip(&sc.acc[src.clone()])
                    .for_each(|(d, &a)| *d += a);
                cv[o..o + dh]
                    .iter_mut()
                    .zip(&sc.acc2[src])
                    .for_each(|(d, &a)| *d += a);
            }
        }
    }
}
