//! Per-thread tile machinery shared by the attention passes: scratch buffers, gathers of one
//! head's rows into contiguous tiles, tile visibility (causal + packed documents) and the
//! per-row softmax steps on a score tile.

/// Query positions per tile: a tile stacks the G query heads of one KV group, G*QB rows.
/// Measured flat between 32 and 256 (x KB 32..128) at Dh=32 and Dh=128 on AVX2; 64 x 64 was
/// at or near the best for both and keeps the scratch small.
pub(super) const QB: usize = 64;
/// Key positions per tile.
pub(super) const KB: usize = 64;

/// Per-thread scratch: every buffer is sized for the largest tile, O(G * QB * (KB + Dh)).
pub(super) struct Scratch {
    /// Query tile, pre-scaled by 1/sqrt(Dh): [G*QB, Dh] (row `i*G + hh`: position, then head).
    pub q: Vec<f32>,
    /// Output-gradient tile: [G*QB, Dh].
    pub d_o: Vec<f32>,
    /// Key tile: [KB, Dh].
    pub k: Vec<f32>,
    /// Value tile: [KB, Dh].
    pub v: Vec<f32>,
    /// Scores, then probabilities: [G*QB, KB].
    pub s: Vec<f32>,
    /// dP = dO·Vᵀ, then dS: [G*QB, KB].
    pub dp: Vec<f32>,
    /// Output (forward) or dQ / dK accumulator: [max(G*QB, KB), Dh].
    pub acc: Vec<f32>,
    /// dV accumulator: [KB, Dh].
    pub acc2: Vec<f32>,
    /// Running max (forward) or saved logsumexp (backward) per tile row: [G*QB].
    pub m: Vec<f32>,
    /// Running sum (forward) or Dvec = rowsum(dO*O) (backward) per tile row: [G*QB].
    pub l: Vec<f32>,
}

impl Scratch {
    /// Scratch for groups of `g` query heads per KV head and head dim `dh`.
    pub fn new(g: usize, dh: usize) -> Self {
        let rows = g * QB;
        Self {
            q: vec![0.0; rows * dh],
            d_o: vec![0.0; rows * dh],
            k: vec![0.0; KB * dh],
            v: vec![0.0; KB * dh],
            s: vec![0.0; rows * KB],
            dp: vec![0.0; rows * KB],
            acc: vec![0.0; rows.max(KB) * dh],
            acc2: vec![0.0; KB * dh],
            m: vec![0.0; rows],
            l: vec![0.0; rows],
        }
    }
}

/// Copies heads `head0..head0 + width` of positions `t0..t0 + n` of a `[T, heads, Dh]` slice
/// into `dst` [n * width, Dh] (row `i * width + w`), times `mul`: `n` contiguous runs.
#[allow(clippy::too_many_arguments)]
pub(super) fn gather_rows(
    dst: &mut [f32],
    src: &[f32],
    t0: usize,
    n: usize,
    heads: usize,
    head0: usize,
    width: usize,
    dh: usize,
    mul: f32,
) {
    let run = width * dh;
    for (i, d) in dst[..n * run].chunks_exact_mut(run).enumerate() {
        let s = &src[((t0 + i) * heads + head0) * dh..][..run];
        if mul == 1.0 {
            d.copy_from_slice(s);
        } else {
            d.iter_mut().zip(s).for_each(|(a, &b)| *a = b * mul);
        }
    }
}

/// How much of a (query tile, key tile) pair can be visible.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Vis {
    /// No pair is visible: skip the tile.
    Skip,
    /// Only the causal rule applies (no document boundary inside the tile pair).
    Causal,
    /// Document ids must be compared element by element.
    Seg,
}

fn min_max(s: &[u32]) -> (u32, u32) {
    s.iter().fold((u32::MAX, 0), |(a, b), &x| (a.min(x), b.max(x)))
}

/// Visibility of queries `q0..q1` against keys `k0..k1` of one sequence with document ids `seg`.
pub(super) fn visibility(seg: Option<&[u32]>, q0: usize, q1: usize, k0: usize, k1: usize) -> Vis {
    if k0 >= q1 {
        return Vis::Skip;
    }
    let Some(s) = seg else { return Vis::Causal };
    let (qa, qz) = min_max(&s[q0..q1]);
    let (ka, kz) = min_max(&s[k0..k1]);
    if qz < ka || kz < qa {
        Vis::Skip
    } else if qa == qz && ka == kz {
        Vis::Causal
    } else {
        Vis::Seg
    }
}

/// Number of keys of a tile starting at `k0` (width `bk`) that query position `t` may see causally.
#[inline(always)]
fn causal_cols(t: usize, k0: usize, bk: usize) -> usize {
    (t + 1).saturating_sub(k0).min(bk)
}

/// Largest element (-inf for an empty slice), eight lanes so it vectorises.
#[inline(always)]
fn row_max(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    lanes.iter().chain(rest).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// Masks `s[j]` to -inf where key document `sk[j]` differs from the query's `sq`.
#[inline(always)]
fn mask_seg(s: &mut [f32], seg: Option<(u32, &[u32])>) {
    if let Some((sq, sk)) = seg {
        for (x, &kseg) in s.iter_mut().zip(sk) {
            if kseg != sq {
                *x = f32::NEG_INFINITY;
            }
        }
    }
}

/// One online-softmax step for a query row: turns the scaled scores `s[..ncol]` (the causally
/// visible keys; `seg` masks more) into `exp(s - m_new)`, zeroes `s[ncol..]`, and updates the
/// running max `m` and sum `l`. Returns the factor the row's output accumulator must be scaled
/// by before this tile's `P·V` is added.
#[inline(always)]
fn online_softmax_row(s: &mut [f32], ncol: usize, seg: Option<(u32, &[u32])>, m: &mut f32, l: &mut f32) -> f32 {
    let (live, dead) = s.split_at_mut(ncol);
    dead.fill(0.0);
    mask_seg(live, seg);
    let mx = row_max(live);
    if mx == f32::NEG_INFINITY {
        // Nothing visible in this tile for this row.
        live.fill(0.0);
        return 1.0;
    }
    let m_new = if mx > *m { mx } else { *m };
    let alpha = (*m - m_new).exp(); // 0 on the first visible tile (m = -inf)
    let mut lanes = [0f32; 8];
    let mut chunks = live.chunks_exact_mut(8);
    for c in &mut chunks {
        for (x, acc) in c.iter_mut().zip(lanes.iter_mut()) {
            let p = crate::fastmath::exp_fast(*x - m_new);
            *x = p;
            *acc += p;
        }
    }
    let mut sum = 0f32;
    for x in chunks.into_remainder() {
        let p = crate::fastmath::exp_fast(*x - m_new);
        *x = p;
        sum += p;
    }
    sum += lanes.iter().sum::<f32>();
    *l = *l * alpha + sum;
    *m = m_new;
    alpha
}

/// Backward step for a query row: `s` (scaled scores) becomes `P = exp(s - lse)` and `dp`
/// (dO·Vᵀ) becomes `dS = P * (dP - d)`, both zero past `ncol` and where `seg` masks.
#[inline(always)]
fn softmax_grad_row(s: &mut [f32], dp: &mut [f32], ncol: usize, seg: Option<(u32, &[u32])>, lse: f32, d: f32) {
    let (live, dead) = s.split_at_mut(ncol);
    dead.fill(0.0);
    let (dlive, ddead) = dp.split_at_mut(ncol);
    ddead.fill(0.0);
    mask_seg(live, seg);
    for (x, g) in live.iter_mut().zip(dlive.iter_mut()) {
        let p = crate::fastmath::exp_fast(*x - lse);
        *x = p;
        *g = p * (*g - d);
    }
}

/// Where a score tile sits: stacked row `r` is query position `q0 + r / g` (the G heads of a KV
/// group are adjacent rows), columns are key positions `k0..k0+bk`, and `seg` holds the
/// sequence's document ids when they must be compared.
#[derive(Clone, Copy)]
pub(super) struct TilePos<'a> {
    pub q0: usize,
    pub g: usize,
    pub k0: usize,
    pub bk: usize,
    /// Document ids of the whole sequence [T], only for [`Vis::Seg`] tiles.
    pub seg: Option<&'a [u32]>,
}

impl TilePos<'_> {
    /// Causally visible columns and document mask of stacked row `r`.
    #[inline(always)]
    fn row(&self, r: usize) -> (usize, Option<(u32, &[u32])>) {
        let t = self.q0 + r / self.g;
        let seg = self.seg.map(|s| (s[t], &s[self.k0..self.k0 + self.bk]));
        (causal_cols(t, self.k0, self.bk), seg)
    }
}

/// Forward row sweep of a score tile `s` [rows, bk]: online-softmax step per row (running max
/// `m`, sum `l`), rescaling that row of the output accumulator `acc` [rows, dh].
#[inline(always)]
fn fwd_rows_body(pos: &TilePos, s: &mut [f32], m: &mut [f32], l: &mut [f32], acc: &mut [f32], dh: usize) {
    for (r, srow) in s.chunks_exact_mut(pos.bk).enumerate() {
        let (ncol, seg) = pos.row(r);
        let alpha = online_softmax_row(srow, ncol, seg, &mut m[r], &mut l[r]);
        if alpha != 1.0 {
            acc[r * dh..(r + 1) * dh].iter_mut().for_each(|x| *x *= alpha);
        }
    }
}

/// Backward row sweep of a tile: `s` (scores) becomes P and `dp` (dO·Vᵀ) becomes dS, from the
/// rows' saved logsumexp `lse` and `d` = rowsum(dO * O).
#[inline(always)]
fn bwd_rows_body(pos: &TilePos, s: &mut [f32], dp: &mut [f32], lse: &[f32], d: &[f32]) {
    let rows = s.chunks_exact_mut(pos.bk).zip(dp.chunks_exact_mut(pos.bk));
    for (r, (srow, dprow)) in rows.enumerate() {
        let (ncol, seg) = pos.row(r);
        softmax_grad_row(srow, dprow, ncol, seg, lse[r], d[r]);
    }
}

crate::isa_dispatch!(
    /// [`fwd_rows_body`], compiled for the row ISA of the moment. Every ISA gives identical
    /// bits: the same operations in the same order (Rust never contracts `a * b + c`).
    pub(super) fn fwd_rows(pos: &TilePos, s: &mut [f32], m: &mut [f32], l: &mut [f32], acc: &mut [f32], dh: usize)
        => fwd_rows_body
);

crate::isa_dispatch!(
    /// [`bwd_rows_body`], compiled for the row ISA of the moment (identical bits, as [`fwd_rows`]).
    pub(super) fn bwd_rows(pos: &TilePos, s: &mut [f32], dp: &mut [f32], lse: &[f32], d: &[f32]) => bwd_rows_body
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::rand_vec;

    /// The dispatched (AVX2 where available) and portable row sweeps give identical bits.
    #[test]
    fn row_sweeps_match_portable_build_bitwise() {
        let (g, bq, bk, dh) = (2, 9, 13, 5);
        let seg: Vec<u32> = (0..40).map(|i| (i / 11) as u32).collect();
        for seg in [None, Some(&seg[..])] {
            let pos = TilePos { q0: 20, g, k0: 15, bk, seg };
            let n = g * bq;
            let s0: Vec<f32> = rand_vec(n * bk, 1).iter().map(|x| 8.0 * x).collect();
            let (mut s1, mut s2) = (s0.clone(), s0.clone());
            let (mut m1, mut l1) = (vec![0.5; n], vec![2.0; n]);
            let (mut m2, mut l2) = (m1.clone(), l1.clone());
            let (mut a1, mut a2) = (rand_vec(n * dh, 2), rand_vec(n * dh, 2));
            fwd_rows(&pos, &mut s1, &mut m1, &mut l1, &mut a1, dh);
            fwd_rows_body(&pos, &mut s2, &mut m2, &mut l2, &mut a2, dh);
            assert_eq!((&s1, &m1, &l1, &a1), (&s2, &m2, &l2, &a2), "forward rows");
            let (lse, d) = (rand_vec(n, 3), rand_vec(n, 4));
            let (mut s1, mut s2) = (s0.clone(), s0);
            let (mut p1, mut p2) = (rand_vec(n * bk, 5), rand_vec(n * bk, 5));
            bwd_rows(&pos, &mut s1, &mut p1, &lse, &d);
            bwd_rows_body(&pos, &mut s2, &mut p2, &lse, &d);
            assert_eq!((&s1, &p1), (&s2, &p2), "backward rows");
        }
    }
}
