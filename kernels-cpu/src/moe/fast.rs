//! The fast path: router GEMM, routing, stable counting sort by expert, capacity, gather into
//! per-expert blocks, grouped expert GEMMs, weighted combine; and its backward.

use super::experts::{experts_backward, experts_forward};
use super::permute::{
    apply_capacity, combine_backward, combine_forward, dense_layout, gather_rows_backward, gather_rows_forward,
    inverse_positions, sort_by_expert,
};
use super::router::{
    choice_counts, dropout_sample, gate_backward, lb_loss_backward, lb_loss_forward, route_forward,
    router_logits_backward, router_logits_forward, router_stats, z_loss_backward, z_loss_forward, NONE,
};
use super::{capacity, AuxLoss, MoeDims, MoeForward, MoeParams, MoeSaved, RouterWeighting};
use crate::buffer::zeroed;

/// What the fast forward keeps for backward.
pub struct FastSaved {
    params: MoeParams,
    /// Raw router logits [N, E].
    logits: Vec<f32>,
    /// Routing probabilities or sigmoid scores [N, E].
    probs: Vec<f32>,
    /// Log-sum-exp of the raw logits `[N]`.
    lse: Vec<f32>,
    /// Top-1 choices per expert `[E]`.
    counts: Vec<usize>,
    /// Kept expert per token `[N]`.
    expert_of_token: Vec<u32>,
    /// Token of each permuted row `[Nk]` and expert block offsets `[E+1]`.
    order: Vec<u32>,
    offsets: Vec<usize>,
    /// Permuted row of each token's slots [N, k].
    inv: Vec<u32>,
    k: usize,
    /// Routed weight of each permuted row `[Nk]`.
    weights: Vec<f32>,
    /// Gathered inputs and expert outputs [Nk, D].
    xp: Vec<f32>,
    y: Vec<f32>,
    /// Gate / up pre-activations [Nk, 2W] (per row gate then up) and SwiGLU output [Nk, W].
    hgu: Vec<f32>,
    a: Vec<f32>,
}

pub(super) fn fast_forward(
    x: &[f32],
    router: &[f32],
    experts: &[f32],
    bias: Option<&[f32]>,
    dims: MoeDims,
    params: &MoeParams,
) -> MoeForward {
    let MoeDims { n, d, e, w } = dims;
    let mut logits = zeroed(n * e);
    router_logits_forward(&mut logits, x, router, n, d, e);
    let (mut probs, mut choice, mut lse, mut entropy) = (zeroed(n * e), vec![0u32; n], zeroed(n), zeroed(n));
    route_forward(&mut probs, &mut choice, &mut lse, &mut entropy, &logits, bias, e, params);
    let counts = choice_counts(&choice, e);
    let lb_loss = lb_loss_forward(&probs, &counts, e, params.weighting);
    let z_loss = z_loss_forward(&lse);

    let mut expert_of_token = choice;
    let (order, offsets, inv, k, weights, overflowed, dropped) = if params.dense_equivalent {
        let (order, offsets, inv) = dense_layout(n, e);
        (order, offsets, inv, e, vec![1f32; n * e], 0, 0)
    } else {
        let mut dropped_out = 0;
        if params.expert_dropout > 0.0 {
            for (t, ex) in expert_of_token.iter_mut().enumerate() {
                if dropout_sample(params.seed, t) < params.expert_dropout {
                    *ex = NONE;
                    dropped_out += 1;
                }
            }
        }
        let (mut order, mut offsets) = sort_by_expert(&expert_of_token, e);
        let cap = capacity(params.capacity_factor, n, e);
        let score = |t: usize, ex: u32| if ex == NONE { 0.0 } else { probs[t * e + ex as usize] };
        let scores: Vec<f32> = expert_of_token.iter().enumerate().map(|(t, &ex)| score(t, ex)).collect();
        let overflowed = apply_capacity(&mut order, &mut offsets, &mut expert_of_token, &scores, cap);
        let inv = inverse_positions(&order, n);
        let prob_weight = params.weighting == RouterWeighting::Prob;
        let weights = order.iter().map(|&t| if prob_weight { scores[t as usize] } else { 1.0 }).collect();
        (order, offsets, inv, 1, weights, overflowed, overflowed + dropped_out)
    };

    let nk = order.len();
    let mut xp = zeroed(nk * d);
    gather_rows_forward(&mut xp, x, &order, d);
    let (mut y, mut hgu, mut a) = (zeroed(nk * d), zeroed(nk * 2 * w), zeroed(nk * w));
    experts_forward(params.gemm, &mut y, &mut hgu, &mut a, &xp, experts, &offsets, d, w);
    let mut out = zeroed(n * d);
    combine_forward(&mut out, &y, &weights, &inv, k, d);
    let stats = router_stats(&counts, &entropy, overflowed, dropped, n);
    let saved = FastSaved {
        params: *params,
        logits: logits.clone(),
        probs,
        lse,
        counts,
        expert_of_token: expert_of_token.clone(),
        order,
        offsets,
        inv,
        k,
        weights,
        xp,
        y,
        hgu,
        a,
    };
    MoeForward { out, lb_loss, z_loss, logits, stats, expert_of_token, saved: MoeSaved::Fast(Box::new(saved)) }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn fast_backward_out(
    dx: &mut [f32],
    drouter: &mut [f32],
    dexperts: &mut [f32],
    dout: &[f32],
    x: &[f32],
    router: &[f32],
    experts: &[f32],
    s: &FastSaved,
    dims: MoeDims,
) {
    let MoeDims { n, d, e, .. } = dims;
    let mut dlogits = zeroed(n * e);
    fast_backward_out_logits(dx, &mut dlogits, dexperts, dout, experts, s, dims);
    if !s.params.dense_equivalent {
        router_logits_backward(dx, drouter, &dlogits, x, router, n, d, e);
    }
}

/// Backward of `out` up to the router logits: the expert path into `dx` and `dexperts`, the
/// routed weight's gradient into `dlogits` [N, E].
pub(super) fn fast_backward_out_logits(
    dx: &mut [f32],
    dlogits: &mut [f32],
    dexperts: &mut [f32],
    dout: &[f32],
    experts: &[f32],
    s: &FastSaved,
    dims: MoeDims,
) {
    let MoeDims { n, d, e, w } = dims;
    let nk = s.order.len();
    let (mut dyp, mut dweights) = (zeroed(nk * d), zeroed(nk));
    combine_backward(&mut dyp, &mut dweights, dout, &s.y, &s.weights, &s.order, d);
    let mut dxp = zeroed(nk * d);
    experts_backward(s.params.gemm, &mut dxp, dexperts, &dyp, &s.xp, &s.hgu, &s.a, experts, &s.offsets, d, w);
    gather_rows_backward(dx, &dxp, &s.inv, s.k, d);
    if s.params.dense_equivalent {
        return; // weights are constants
    }
    let mut dgate = zeroed(n);
    for (&t, &g) in s.order.iter().zip(&dweights) {
        dgate[t as usize] = g;
    }
    gate_backward(dlogits, &dgate, &s.probs, &s.expert_of_token, e, &s.params);
}

#[allow(clippy::too_many_arguments)]
pub(super) fn fast_backward_aux(
    dx: &mut [f32],
    drouter: &mut [f32],
    which: AuxLoss,
    dloss: f32,
    x: &[f32],
    router: &[f32],
    s: &FastSaved,
    dims: MoeDims,
) {
    let MoeDims { n, d, e, .. } = dims;
    let mut dlogits = zeroed(n * e);
    fast_backward_aux_logits(&mut dlogits, which, dloss, s, dims);
    router_logits_backward(dx, drouter, &dlogits, x, router, n, d, e);
}

/// Backward of `lb_loss` or `z_loss` (scaled by `dloss`) into `dlogits` [N, E].
pub(super) fn fast_backward_aux_logits(dlogits: &mut [f32], which: AuxLoss, dloss: f32, s: &FastSaved, dims: MoeDims) {
    let e = dims.e;
    match which {
        AuxLoss::LoadBalance => lb_loss_backward(dlogits, dloss, &s.probs, &s.counts, e, &s.params),
        AuxLoss::Z => z_loss_backward(dlogits, dloss, &s.logits, &s.lse, e),
    }
}
