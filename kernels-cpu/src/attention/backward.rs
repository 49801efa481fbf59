//! Backward of causal GQA attention, two race-free schedules that recompute
//! `P = exp(S - lse)` tile by tile from the saved logsumexp, with `Dvec = rowsum(dO * O)`:
//!
//! - [`BwdPath::Split`] (FlashAttention-2's CPU-friendly split): one pass parallel over
//!   (batch, query tile) producing dQ, one parallel over (batch, key tile) producing dK, dV.
//!   Many tasks, but S, dP and the softmax gradient are computed twice: 7 tile products.
//! - [`BwdPath::Fused`]: one task per (batch, KV head) owns that group's rows of dQ, dK and dV
//!   and does everything in one sweep: 5 tile products. Used when B*KV tasks keep every
//!   thread busy.
//!
//! Both sum every gradient element in the same order, so they agree to rounding of the GEMM.

use super::tile::{bwd_rows, Scratch, TilePos, Vis, KB, QB};
use super::{a_bt, ab_acc, at_b_acc, tile_chunks, AttnDims, Inputs};
use crate::gemm::GemmBackend;
use rayon::prelude::*;

/// Which backward schedule runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BwdPath {
    /// dQ pass over query tiles, then dK/dV pass over key tiles.
    Split,
    /// One sweep per (batch, KV head).
    Fused,
}

impl BwdPath {
    /// Fused when the (batch, KV head) tasks spread evenly over the pool's threads.
    pub(super) fn choose(tasks: usize, threads: usize) -> Self {
        if tasks >= 4 * threads || (tasks >= threads && tasks.is_multiple_of(threads)) {
            BwdPath::Fused
        } else {
            BwdPath::Split
        }
    }
}

/// Causal GQA backward: **accumulates** `dq` [B, T, H, Dh], `dk`, `dv` [B, T, KV, Dh] from
/// `dout` [B, T, H, Dh] and the forward's `out`, `lse` [B, H, T] and inputs. Panics if a
/// slice length disagrees with `dims`.
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
    attention_backward_with(GemmBackend::Auto, dq, dk, dv, dout, out, lse, q, k, v, seg, dims);
}

/// [`attention_backward`] with its tile products on `gemm` (a bf16 backend rounds their
/// operands, the recomputed softmax weights and their gradients included).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_with(
    gemm: GemmBackend,
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
    let path = BwdPath::choose(dims.b * dims.kv, rayon::current_num_threads());
    backward_with(gemm, path, dq, dk, dv, dout, out, lse, q, k, v, seg, dims);
}

/// [`attention_backward`] on a chosen schedule.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_with(
    gemm: GemmBackend,
    path: BwdPath,
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
    let AttnDims { b: nb, t, h, kv, dh } = dims;
    let what = "attention_backward: wrong length of";
    assert_eq!(dq.len(), q.len(), "{what} dq [B,T,H,Dh]");
    assert_eq!(dk.len(), k.len(), "{what} dk [B,T,KV,Dh]");
    assert_eq!(dv.len(), v.len(), "{what} dv [B,T,KV,Dh]");
    assert_eq!(dout.len(), q.len(), "{what} dout [B,T,H,Dh]");
    assert_eq!(out.len(), q.len(), "{what} out [B,T,H,Dh]");
    assert_eq!(lse.len(), nb * h * t, "{what} lse [B,H,T]");
    if q.is_empty() {
        return;
    }
    let g = dims.group();
    // Dvec = rowsum(dO * O): [B, T, H].
    let mut dvec = vec![0f32; nb * t * h];
    dvec.par_chunks_mut(h).enumerate().for_each(|(row, d)| {
        for (hd, x) in d.iter_mut().enumerate() {
            let o = (row * h + hd) * dh;
            *x = crate::fastmath::dot8(&dout[o..o + dh], &out[o..o + dh]);
        }
    });
    let inp = Inputs { q, k, v, seg, dims, gemm };
    let bwd = Bwd { inp, dout, lse, dvec: &dvec };
    let scratch = || Scratch::new(g, dh);
    match path {
        BwdPath::Split => {
            let dq_tasks: Vec<_> = tile_chunks(dq, t, h * dh, QB).collect();
            dq_tasks.into_par_iter().with_max_len(1).for_each_init(scratch, |sc, (b, q0, c)| bwd.dq_tile(sc, c, b, q0));
            let dkv_tasks: Vec<_> = tile_chunks(dk, t, kv * dh, KB)
                .zip(tile_chunks(dv, t, kv * dh, KB))
                .map(|((b, k0, ck), (_, _, cv))| (b, k0, ck, cv))
                .collect();
            dkv_tasks
                .into_par_iter()
                .with_max_len(1)
                .for_each_init(scratch, |sc, (b, k0, ck, cv)| bwd.dkv_tile(sc, ck, cv, b, k0));
        }
        BwdPath::Fused => {
            // Hand each (batch, KV head) its rows: dq pieces [G*Dh] and dk, dv pieces [Dh],
            // one per position.
            let mut groups: Vec<GroupRows> = (0..nb * kv).map(|_| GroupRows::new(t)).collect();
            for (p, piece) in dq.chunks_mut(g * dh).enumerate() {
                groups[p / (t * kv) * kv + p % kv].dq.push(piece);
            }
            for (p, (pk, pv)) in dk.chunks_mut(dh).zip(dv.chunks_mut(dh)).enumerate() {
                let gr = &mut groups[p / (t * kv) * kv + p % kv];
                gr.dk.push(pk);
                gr.dv.push(pv);
            }
            groups
                .into_par_iter()
                .enumerate()
                .with_max_len(1)
                .for_each_init(scratch, |sc, (bk, rows)| bwd.group_sweep(sc, rows, bk / kv, bk % kv));
        }
    }
}

/// The gradient rows one (batch, KV head) owns, by position.
struct GroupRows<'a> {
    /// [T] pieces of [G*Dh]: the group's query heads at each position.
    dq: Vec<&'a mut [f32]>,
    /// [T] pieces of [Dh].
    dk: Vec<&'a mut [f32]>,
    /// [T] pieces of [Dh].
    dv: Vec<&'a mut [f32]>,
}

impl GroupRows<'_> {
    fn new(t: usize) -> Self {
        let v = || Vec::with_capacity(t);
        Self { dq: v(), dk: v(), dv: v() }
    }
}

/// Read-only inputs of the backward passes.
struct Bwd<'a> {
    inp: Inputs<'a>,
    /// [B, T, H, Dh]
    dout: &'a [f32],
    /// [B, H, T]
    lse: &'a [f32],
    /// rowsum(dO * O): [B, T, H]
    dvec: &'a [f32],
}

impl Bwd<'_> {
    /// Gathers the query side of KV group `kh`, positions `q0..q0+bq` of sequence `b`: scaled Q,
    /// dO, and the logsumexp and Dvec of each stacked row (`i*G + hh`).
    fn gather_query_side(&self, sc: &mut Scratch, b: usize, q0: usize, bq: usize, kh: usize) {
        let AttnDims { t, h, .. } = self.inp.dims;
        let g = self.inp.dims.group();
        let scale = self.inp.dims.scale();
        self.inp.gather_group(&mut sc.q, self.inp.q, b, q0, bq, kh, scale);
        self.inp.gather_group(&mut sc.d_o, self.dout, b, q0, bq, kh, 1.0);
        for i in 0..bq {
            let d = &self.dvec[(b * t + q0 + i) * h + kh * g..][..g];
            sc.l[i * g..(i + 1) * g].copy_from_slice(d);
            for hh in 0..g {
                sc.m[i * g + hh] = self.lse[(b * h + kh * g + hh) * t + q0 + i];
            }
        }
    }

    /// With both sides gathered, for stacked rows `r0..r0+n` (position `qa` at row `r0`) and
    /// keys `k0..k0+bk`: `sc.s` = P and `sc.dp` = dS, both [n, bk].
    #[allow(clippy::too_many_arguments)]
    fn probs_and_grads(
        &self,
        sc: &mut Scratch,
        b: usize,
        qa: usize,
        r0: usize,
        n: usize,
        k0: usize,
        bk: usize,
        vis: Vis,
    ) {
        let dh = self.inp.dims.dh;
        let g = self.inp.dims.group();
        let s = &mut sc.s[..n * bk];
        let dp = &mut sc.dp[..n * bk];
        a_bt(self.inp.gemm, s, &sc.q[r0 * dh..], &sc.k, n, dh, bk);
        a_bt(self.inp.gemm, dp, &sc.d_o[r0 * dh..], &sc.v, n, dh, bk);
        let seg = self.inp.seg_b(b).filter(|_| vis == Vis::Seg);
        let pos = TilePos { q0: qa, g, k0, bk, seg };
        bwd_rows(&pos, s, dp, &sc.m[r0..r0 + n], &sc.l[r0..r0 + n]);
    }

    /// dQ `+=` scale · `acc` (the scores are scale · Q·Kᵀ): `acc` holds [G*Dh] per position,
    /// `dst` yields the matching [G*Dh] pieces of dq.
    fn add_dq<'d>(&self, acc: &[f32], dst: impl Iterator<Item = &'d mut [f32]>) {
        let gd = self.inp.dims.group() * self.inp.dims.dh;
        let scale = self.inp.dims.scale();
        for (piece, a) in dst.zip(acc.chunks_exact(gd)) {
            piece.iter_mut().zip(a).for_each(|(d, &x)| *d += scale * x);
        }
    }

    /// Split schedule, dQ for query positions `q0..q0+bq` of sequence `b`, all heads:
    /// `c` [bq, H, Dh] `+=`.
    fn dq_tile(&self, sc: &mut Scratch, c: &mut [f32], b: usize, q0: usize) {
        let AttnDims { h, kv, dh, .. } = self.inp.dims;
        let g = self.inp.dims.group();
        let bq = c.len() / (h * dh);
        let (q1, rows) = (q0 + bq, g * bq);
        for kh in 0..kv {
            self.gather_query_side(sc, b, q0, bq, kh);
            sc.acc[..rows * dh].fill(0.0);
            for k0 in (0..q1).step_by(KB) {
                let (qa, r0, bk, vis) = self.inp.trim(b, q0, q1, k0, KB);
                if vis == Vis::Skip {
                    continue;
                }
                let n = rows - r0;
                self.inp.gather_kv(&mut sc.k, &mut sc.v, b, k0, bk, kh);
                self.probs_and_grads(sc, b, qa, r0, n, k0, bk, vis);
                ab_acc(self.inp.gemm, &mut sc.acc[r0 * dh..], &sc.dp[..n * bk], &sc.k, n, bk, dh);
            }
            let pieces = c.chunks_exact_mut(h * dh).map(|p| &mut p[kh * g * dh..][..g * dh]);
            self.add_dq(&sc.acc[..rows * dh], pieces);
        }
    }

    /// Split schedule, dK, dV for key positions `k0..k0+bk` of sequence `b`, all KV heads:
    /// `ck`, `cv` [bk, KV, Dh] `+=`.
    fn dkv_tile(&self, sc: &mut Scratch, ck: &mut [f32], cv: &mut [f32], b: usize, k0: usize) {
        let AttnDims { t, kv, dh, .. } = self.inp.dims;
        let g = self.inp.dims.group();
        let bk = ck.len() / (kv * dh);
        for kh in 0..kv {
            self.inp.gather_kv(&mut sc.k, &mut sc.v, b, k0, bk, kh);
            sc.acc[..bk * dh].fill(0.0);
            sc.acc2[..bk * dh].fill(0.0);
            for q0 in (k0 / QB * QB..t).step_by(QB) {
                let q1 = q0 + QB.min(t - q0);
                let (qa, _, bkq, vis) = self.inp.trim(b, q0, q1, k0, bk);
                if vis == Vis::Skip {
                    continue;
                }
                let n = (q1 - qa) * g;
                self.gather_query_side(sc, b, qa, q1 - qa, kh);
                self.probs_and_grads(sc, b, qa, 0, n, k0, bkq, vis);
                let (p, ds) = (&sc.s[..n * bkq], &sc.dp[..n * bkq]);
                // dV += Pᵀ·dO and dK += dSᵀ·(scale Q): the stacking sums over the group's heads.
                at_b_acc(self.inp.gemm, &mut sc.acc2, p, &sc.d_o, bkq, n, dh);
                at_b_acc(self.inp.gemm, &mut sc.acc, ds, &sc.q, bkq, n, dh);
            }
            let (da, va) = (&sc.acc[..bk * dh], &sc.acc2[..bk * dh]);
            for (j, (a, w)) in da.chunks_exact(dh).zip(va.chunks_exact(dh)).enumerate() {
                let o = (j * kv + kh) * dh;
                ck[o..o + dh].iter_mut().zip(a).for_each(|(d, &x)| *d += x);
                cv[o..o + dh].iter_mut().zip(w).for_each(|(d, &x)| *d += x);
            }
        }
    }

    /// Fused schedule: dQ, dK, dV of KV group `kh` of sequence `b` (query tiles outer, key
    /// tiles inner), `+=` into the group's `rows`.
    fn group_sweep(&self, sc: &mut Scratch, rows: GroupRows, b: usize, kh: usize) {
        let AttnDims { t, dh, .. } = self.inp.dims;
        let g = self.inp.dims.group();
        let GroupRows { dq: mut dq_rows, dk: mut dk_rows, dv: mut dv_rows } = rows;
        // dK, dV of the whole sequence for this KV head: [T, Dh] each.
        let mut dk_acc = vec![0f32; t * dh];
        let mut dv_acc = vec![0f32; t * dh];
        for q0 in (0..t).step_by(QB) {
            let bq = QB.min(t - q0);
            let (q1, nrows) = (q0 + bq, g * bq);
            self.gather_query_side(sc, b, q0, bq, kh);
            sc.acc[..nrows * dh].fill(0.0);
            for k0 in (0..q1).step_by(KB) {
                let (qa, r0, bk, vis) = self.inp.trim(b, q0, q1, k0, KB);
                if vis == Vis::Skip {
                    continue;
                }
                let n = nrows - r0;
                self.inp.gather_kv(&mut sc.k, &mut sc.v, b, k0, bk, kh);
                self.probs_and_grads(sc, b, qa, r0, n, k0, bk, vis);
                let (p, ds) = (&sc.s[..n * bk], &sc.dp[..n * bk]);
                ab_acc(self.inp.gemm, &mut sc.acc[r0 * dh..], ds, &sc.k, n, bk, dh);
                at_b_acc(self.inp.gemm, &mut dv_acc[k0 * dh..], p, &sc.d_o[r0 * dh..], bk, n, dh);
                at_b_acc(self.inp.gemm, &mut dk_acc[k0 * dh..], ds, &sc.q[r0 * dh..], bk, n, dh);
            }
            let pieces = dq_rows[q0..q1].iter_mut().map(|p| &mut **p);
            self.add_dq(&sc.acc[..nrows * dh], pieces);
        }
        let pieces = dk_rows.iter_mut().zip(dv_rows.iter_mut());
        for (j, (pk, pv)) in pieces.enumerate() {
            let src = j * dh..(j + 1) * dh;
            pk.iter_mut().zip(&dk_acc[src.clone()]).for_each(|(d, &x)| *d += x);
            pv.iter_mut().zip(&dv_acc[src]).for_each(|(d, &x)| *d += x);
        }
    }
}
