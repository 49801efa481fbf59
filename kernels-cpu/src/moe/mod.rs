//! The routed part of a Mixture-of-Experts FFN: top-1 router, token permutation, grouped
//! SwiGLU experts, combine; forward and backward, on a fast path and a naive reference path
//! chosen at run time ([`MoePath`]).
//!
//! Dimension letters: N tokens (rows), D hidden, E routed experts, W expert width,
//! Nk = rows that reach an expert (kept tokens; `E*N` in dense-equivalent mode).
//!
//! Shapes: `x` [N, D]; `router` [E, D] (logits `l = x · routerᵀ` [N, E], in f32); `experts`
//! [E, 3*W*D], per expert contiguous `gate_proj` [W, D], `up_proj` [W, D], `down_proj` [D, W]
//! (HF layouts), so one expert is a range. Output `out` [N, D].
//!
//! Math, per token t (noise `ξ` only in training, `l̃ = l + router_noise * ξ`):
//! - `Ste`, `Prob`: `p = softmax(l̃ / temperature)`, choice `e = argmax(p + bias)`; the routed
//!   weight is `g = 1` (`Ste`, gradient as if `g = 1 + p_e - sg(p_e)`) or `g = p_e` (`Prob`).
//! - `Sigmoid` (DeepSeek-V3): scores `s = sigmoid(l̃)` (no temperature), choice
//!   `e = argmax(s + bias)`; `g = 1` with gradient as if `g = 1 + s_e - sg(s_e)`.
//! - `out_t = g * expert_e(x_t)` with `expert(x) = down · (silu(gate · x) * (up · x))`.
//! - Expert dropout (training) removes a token's expert with probability `expert_dropout`; then
//!   capacity `C = ceil(capacity_factor * N / E)` keeps, per expert, the C tokens with the highest
//!   `p_e` (`s_e` in Sigmoid mode; ties: the earlier token is kept). A removed token gets `out = 0`.
//! - Routing distribution `q = p` (softmax modes) or `s / sum(s)` (Sigmoid): load-balance loss
//!   `lb = E * sum_i f_i * P_i` (Switch) with `f_i = counts_i / N` (choices before dropout and
//!   capacity, no gradient) and `P_i = mean_t q_ti`; z-loss `z = mean_t logsumexp(l_t)^2` on the
//!   raw logits (before noise and temperature).
//!
//! Randomness (noise, dropout) is a counter-based hash of `(seed, token, expert)`: the same seed
//! gives the same noise and dropped tokens on both paths and any number of threads.
//!
//! Files: [`router`] (logits, routing, gate, losses, stats, randomness), [`permute`] (stable
//! counting sort, capacity, gather / combine), [`experts`] (grouped SwiGLU experts), `fast`
//! (the fast path), [`naive`] (the f64 reference path).

pub mod experts;
mod fast;
pub mod naive;
pub mod permute;
pub mod router;
#[cfg(test)]
mod tests;

use crate::gemm::GemmBackend;

/// How the chosen expert's output is weighted (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RouterWeighting {
    /// Softmax router; weight 1 in value, straight-through gradient `1 + p - sg(p)`.
    #[default]
    Ste,
    /// Softmax router; weight `p` (the chosen expert's probability).
    Prob,
    /// Sigmoid scores, choice by `argmax(s + bias)`; weight 1, straight-through `1 + s - sg(s)`.
    Sigmoid,
}

/// Which implementation runs an MoE layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MoePath {
    /// Counting sort by expert, one GEMM pass per expert over contiguous rows.
    #[default]
    Fast,
    /// Loops over experts and tokens in f64 (the reference).
    Naive,
}

/// Router statistics of one forward pass.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouterStats {
    /// Tokens routed (top-1 choice) per expert before dropout and capacity `[E]`.
    pub counts: Vec<usize>,
    /// `counts / N` `[E]`.
    pub share: Vec<f32>,
    /// Mean per-token entropy of the routing distribution `q` (nats).
    pub entropy: f32,
    /// Entropy of `share` (nats; `ln E` when perfectly balanced).
    pub load_entropy: f32,
    /// Fraction of tokens dropped because their expert was over capacity.
    pub overflow_frac: f32,
    /// Fraction of tokens that lost their routed expert (capacity or expert dropout).
    pub dropped_frac: f32,
}

/// Sizes of one MoE layer call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoeDims {
    /// Tokens N.
    pub n: usize,
    /// Hidden size D.
    pub d: usize,
    /// Routed experts E.
    pub e: usize,
    /// Expert width W.
    pub w: usize,
}

impl MoeDims {
    /// Elements of one expert's weights (`3 * W * D`).
    pub fn expert_len(&self) -> usize {
        3 * self.w * self.d
    }

    /// Panics unless the slices have the lengths the dims say (programming errors).
    fn check(&self, x: usize, router: usize, experts: usize, bias: Option<usize>) {
        assert!(self.e > 0 && self.w > 0 && self.d > 0, "moe: E, W, D must be positive: {self:?}");
        assert_eq!(x, self.n * self.d, "moe: x is not [N, D]");
        assert_eq!(router, self.e * self.d, "moe: router is not [E, D]");
        assert_eq!(experts, self.e * self.expert_len(), "moe: experts is not [E, 3*W*D]");
        if let Some(b) = bias {
            assert_eq!(b, self.e, "moe: bias is not [E]");
        }
    }
}

/// Routing settings of one call (already resolved for training / evaluation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeParams {
    /// Softmax temperature (> 0; unused in Sigmoid mode).
    pub temperature: f32,
    /// Weighting of the chosen expert.
    pub weighting: RouterWeighting,
    /// Capacity factor (`None`: dropless).
    pub capacity_factor: Option<f32>,
    /// Probability that a token loses its routed expert (0 outside training).
    pub expert_dropout: f32,
    /// Standard deviation of the Gaussian noise added to the logits (0 outside training).
    pub router_noise: f32,
    /// Seed of the noise and dropout.
    pub seed: u64,
    /// Test-only: every expert processes every token with weight exactly 1, no drops.
    pub dense_equivalent: bool,
    /// Backend of the expert GEMMs, forward and backward (a bf16 backend rounds their operands;
    /// the router GEMMs stay f32: routing decisions are kept at full precision, as in Switch
    /// Transformer's selective precision). The naive path ignores it.
    pub gemm: GemmBackend,
}

impl Default for MoeParams {
    fn default() -> Self {
        MoeParams {
            temperature: 1.0,
            weighting: RouterWeighting::Ste,
            capacity_factor: None,
            expert_dropout: 0.0,
            router_noise: 0.0,
            seed: 0,
            dense_equivalent: false,
            gemm: GemmBackend::Auto,
        }
    }
}

/// Tokens per expert under `capacity_factor` (`None`: unlimited): `ceil(cf * N / E)`.
pub fn capacity(capacity_factor: Option<f32>, n: usize, e: usize) -> usize {
    match capacity_factor {
        Some(cf) => (cf as f64 * n as f64 / e as f64).ceil().max(0.0) as usize,
        None => usize::MAX,
    }
}

/// What a forward pass produced, plus what its backward needs.
pub struct MoeForward {
    /// Routed contribution `g_t * expert_{e_t}(x_t)` [N, D] (zero rows for dropped tokens).
    pub out: Vec<f32>,
    /// Switch load-balance loss (unscaled).
    pub lb_loss: f32,
    /// Router z-loss (unscaled).
    pub z_loss: f32,
    /// Raw router logits `x · routerᵀ` [N, E] (before noise and temperature).
    pub logits: Vec<f32>,
    /// Router statistics.
    pub stats: RouterStats,
    /// Expert per token after dropout and capacity (`u32::MAX`: dropped) `[N]`.
    pub expert_of_token: Vec<u32>,
    /// Saved state for the backward functions.
    pub saved: MoeSaved,
}

/// Path-specific state saved by a forward pass.
pub enum MoeSaved {
    /// Fast path activations.
    Fast(Box<fast::FastSaved>),
    /// Naive path: the f64 forward.
    Naive(Box<naive::NaiveF64>),
}

/// Forward on `path`. `bias` `[E]` is added to the scores for the choice only.
pub fn moe_forward(
    path: MoePath,
    x: &[f32],
    router: &[f32],
    experts: &[f32],
    bias: Option<&[f32]>,
    dims: MoeDims,
    params: &MoeParams,
) -> MoeForward {
    dims.check(x.len(), router.len(), experts.len(), bias.map(|b| b.len()));
    match path {
        MoePath::Fast => fast::fast_forward(x, router, experts, bias, dims, params),
        MoePath::Naive => naive::naive_forward(x, router, experts, bias, dims, params),
    }
}

/// Backward of `out`: accumulates `dx` [N, D], `drouter` [E, D], `dexperts` [E, 3*W*D] from
/// `dout` [N, D]. `x`, `router`, `experts` are the forward's inputs, `saved` its state.
#[allow(clippy::too_many_arguments)]
pub fn moe_backward_out(
    dx: &mut [f32],
    drouter: &mut [f32],
    dexperts: &mut [f32],
    dout: &[f32],
    x: &[f32],
    router: &[f32],
    experts: &[f32],
    saved: &MoeSaved,
    dims: MoeDims,
) {
    dims.check(x.len(), router.len(), experts.len(), None);
    dims.check(dx.len(), drouter.len(), dexperts.len(), None);
    assert_eq!(dout.len(), dims.n * dims.d, "moe: dout is not [N, D]");
    match saved {
        MoeSaved::Fast(s) => fast::fast_backward_out(dx, drouter, dexperts, dout, x, router, experts, s, dims),
        MoeSaved::Naive(s) => naive::naive_backward_out(dx, drouter, dexperts, dout, x, router, experts, s, dims),
    }
}

/// Which router loss a backward call differentiates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuxLoss {
    /// The Switch load-balance loss.
    LoadBalance,
    /// The router z-loss.
    Z,
}

/// Backward of `lb_loss` or `z_loss` scaled by `dloss`: accumulates `dx` [N, D], `drouter` [E, D].
#[allow(clippy::too_many_arguments)]
pub fn moe_backward_aux(
    dx: &mut [f32],
    drouter: &mut [f32],
    which: AuxLoss,
    dloss: f32,
    x: &[f32],
    router: &[f32],
    saved: &MoeSaved,
    dims: MoeDims,
) {
    assert!(dx.len() == dims.n * dims.d && x.len() == dx.len(), "moe: x / dx are not [N, D]");
    assert!(drouter.len() == dims.e * dims.d && router.len() == drouter.len(), "moe: router is not [E, D]");
    match saved {
        MoeSaved::Fast(s) => fast::fast_backward_aux(dx, drouter, which, dloss, x, router, s, dims),
        MoeSaved::Naive(s) => naive::naive_backward_aux(dx, drouter, which, dloss, x, router, s, dims),
    }
}

/// [`moe_backward_out`] up to the router logits: accumulates `dx` [N, D] (through the experts
/// only), `dlogits` [N, E] (through the routed weight) and `dexperts` [E, 3*W*D] from `dout`.
/// With [`moe_backward_aux_logits`] and [`moe_backward_logits`] this splits the backward so the
/// gradients of `out`, `lb_loss` and `z_loss` share one router projection backward.
#[allow(clippy::too_many_arguments)]
pub fn moe_backward_out_logits(
    dx: &mut [f32],
    dlogits: &mut [f32],
    dexperts: &mut [f32],
    dout: &[f32],
    x: &[f32],
    experts: &[f32],
    saved: &MoeSaved,
    dims: MoeDims,
) {
    assert!(dx.len() == dims.n * dims.d && x.len() == dx.len() && dout.len() == dx.len(), "moe: x / dx / dout");
    assert_eq!(dlogits.len(), dims.n * dims.e, "moe: dlogits is not [N, E]");
    assert!(experts.len() == dims.e * dims.expert_len() && dexperts.len() == experts.len(), "moe: experts");
    match saved {
        MoeSaved::Fast(s) => fast::fast_backward_out_logits(dx, dlogits, dexperts, dout, experts, s, dims),
        MoeSaved::Naive(s) => naive::naive_backward_out_logits(dx, dlogits, dexperts, dout, x, experts, s, dims),
    }
}

/// [`moe_backward_aux`] up to the router logits: accumulates `dloss * d loss / d logits` into
/// `dlogits` [N, E].
pub fn moe_backward_aux_logits(dlogits: &mut [f32], which: AuxLoss, dloss: f32, saved: &MoeSaved, dims: MoeDims) {
    assert_eq!(dlogits.len(), dims.n * dims.e, "moe: dlogits is not [N, E]");
    match saved {
        MoeSaved::Fast(s) => fast::fast_backward_aux_logits(dlogits, which, dloss, s, dims),
        MoeSaved::Naive(s) => naive::naive_backward_aux_logits(dlogits, which, dloss, s, dims),
    }
}

/// Backward of the router projection `logits = x · routerᵀ`: accumulates `dx += dlogits · router`
/// and `drouter += dlogitsᵀ · x` (GEMMs on the fast path, f64 loops on the naive one).
#[allow(clippy::too_many_arguments)]
pub fn moe_backward_logits(
    dx: &mut [f32],
    drouter: &mut [f32],
    dlogits: &[f32],
    x: &[f32],
    router: &[f32],
    saved: &MoeSaved,
    dims: MoeDims,
) {
    let MoeDims { n, d, e, .. } = dims;
    assert!(dx.len() == n * d && x.len() == dx.len(), "moe: x / dx are not [N, D]");
    assert!(drouter.len() == e * d && router.len() == drouter.len(), "moe: router is not [E, D]");
    assert_eq!(dlogits.len(), n * e, "moe: dlogits is not [N, E]");
    match saved {
        MoeSaved::Fast(_) => router::router_logits_backward(dx, drouter, dlogits, x, router, n, d, e),
        MoeSaved::Naive(_) => naive::naive_backward_logits(dx, drouter, dlogits, x, router, dims),
    }
}
