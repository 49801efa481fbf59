//! The routed MoE layer on the GPU backend (`GpuBackend`): the GPU kernel sequence, with the same backward split as
//! kernels-cpu (router logits as an internal node; `out`, `lb_loss`, `z_loss` accumulate into
//! `dlogits`).
//!
//! Forward: router GEMM `logits = x · routerᵀ` → `router_forward` (router noise drawn on the host
//! with kernels-cpu's counter-based samples; softmax with temperature or sigmoid scores, top-1 with
//! bias, lse, entropy, counts, prob sums) → expert dropout on the host (kernels-cpu's
//! `dropout_sample`) → `sort_by_expert` → capacity on the host over that order (kernels-cpu's
//! `apply_capacity`, which compacts it only when tokens overflow; so both backends drop the same
//! tokens and the tokens are sorted once) → `gather_forward` → `experts_forward` (grouped FMA GEMMs + fused SwiGLU) →
//! `combine_forward`. Backward: `combine_backward` → `experts_backward` → `gather_backward` +
//! `router_backward` (routed weight; lb; z) → router GEMM backward.
//!
//! Every weighting (`Ste`, `Prob`, `Sigmoid`), with or without noise; the naive path and
//! dense-equivalent mode (references, not training paths) run kernels-cpu ([`supported`]).

use super::cpu::CpuBackend;
use super::{Backend, KernelResult, MoeForwardOut};
use kernels_cpu::moe::permute::{apply_capacity, inverse_positions};
use kernels_cpu::moe::router::{dropout_sample, noise_sample, router_stats, NONE};
use kernels_cpu::moe::{capacity, AuxLoss, MoeDims, MoeParams, MoePath, RouterWeighting};
use kernels_gpu::launcher::Launcher;
use kernels_gpu::ops::{self as gpu, ExpertsGemm, Scoring, Trans};
use std::any::Any;
use std::sync::Arc;

/// Whether the GPU kernels implement this configuration.
fn supported(path: MoePath, p: &MoeParams) -> bool {
    path == MoePath::Fast && !p.dense_equivalent
}

/// The router kernels' scoring for these settings.
fn scoring(p: &MoeParams) -> Scoring {
    match p.weighting {
        RouterWeighting::Sigmoid => Scoring::Sigmoid,
        RouterWeighting::Ste | RouterWeighting::Prob => Scoring::Softmax { temperature: p.temperature },
    }
}

/// The router noise `router_noise * ξ(seed, t, j)` `[N, E]` kernels-cpu adds to the logits (None
/// without noise): the same samples, so both backends route alike.
fn router_noise(p: &MoeParams, n: usize, e: usize) -> Option<Vec<f32>> {
    (p.router_noise > 0.0).then(|| (0..n * e).map(|i| p.router_noise * noise_sample(p.seed, i / e, i % e)).collect())
}

/// What the GPU forward keeps for backward.
struct KernelSaved {
    scoring: Scoring,
    /// Raw router logits, routing probabilities `[N, E]`; lse `[N]`; top-1 counts `[E]`.
    logits: Vec<f32>,
    probs: Vec<f32>,
    lse: Vec<f32>,
    counts: Vec<u32>,
    /// Kept expert per token (`NONE`: dropped) `[N]`.
    expert_of_token: Vec<u32>,
    /// Token of each permuted row `[Nk]`, expert offsets `[E+1]`, permuted row of each token `[N]`.
    order: Vec<u32>,
    offsets: Vec<u32>,
    inv: Vec<u32>,
    /// Routed weight of each permuted row `[Nk]`.
    weights: Vec<f32>,
    /// Gathered inputs, expert outputs `[Nk, D]`; gate/up pre-activations `[Nk, 2W]`; SwiGLU `[Nk, W]`.
    xp: Vec<f32>,
    y: Vec<f32>,
    hgu: Vec<f32>,
    a: Vec<f32>,
}

fn kernel_saved(saved: &(dyn Any + Send + Sync)) -> Option<&KernelSaved> {
    saved.downcast_ref::<KernelSaved>()
}

#[allow(clippy::too_many_arguments)]
pub(super) fn moe_forward<L: Launcher>(
    l: &L,
    x: &[f32],
    router: &[f32],
    experts: &[f32],
    bias: Option<&[f32]>,
    dims: MoeDims,
    path: MoePath,
    cfg: &MoeParams,
) -> KernelResult<MoeForwardOut> {
    if !supported(path, cfg) {
        return CpuBackend::default().moe_forward(x, router, experts, bias, dims, path, cfg);
    }
    let MoeDims { n, d, e, w } = dims;
    let mut logits = vec![0f32; n * e];
    gpu::matmul(l, &mut logits, x, router, n, d, e, Trans::No, Trans::Yes, false)?;
    let (mut probs, mut choice, mut lse, mut entropy) =
        (vec![0f32; n * e], vec![0u32; n], vec![0f32; n], vec![0f32; n]);
    let noise = router_noise(cfg, n, e);
    let (scores_of, noise) = (scoring(cfg), noise.as_deref());
    let sums =
        gpu::router_forward(l, &mut probs, &mut choice, &mut lse, &mut entropy, &logits, noise, bias, e, scores_of)?;

    // Host: expert dropout and capacity, with kernels-cpu's functions.
    let mut expert_of_token = choice;
    let (dropout, seed) = (cfg.expert_dropout, cfg.seed);
    let mut dropped_out = 0;
    if dropout > 0.0 {
        for (t, ex) in expert_of_token.iter_mut().enumerate() {
            if dropout_sample(seed, t) < dropout {
                *ex = NONE;
                dropped_out += 1;
            }
        }
    }
    let score = |t: usize, ex: u32| if ex == NONE { 0.0 } else { probs[t * e + ex as usize] };
    let scores: Vec<f32> = expert_of_token.iter().enumerate().map(|(t, &ex)| score(t, ex)).collect();
    // One sort (the kernel); capacity ranks inside each expert's run of that order and, only when
    // tokens overflow, compacts it (kernels-cpu's `apply_capacity`, shared with the CPU path).
    let mut sorted = gpu::sort_by_expert(l, &expert_of_token, e)?;
    let cap = capacity(cfg.capacity_factor, n, e);
    let mut overflowed = 0;
    if cap < n {
        let mut offsets: Vec<usize> = sorted.offsets.iter().map(|&o| o as usize).collect();
        overflowed = apply_capacity(&mut sorted.order, &mut offsets, &mut expert_of_token, &scores, cap);
        if overflowed > 0 {
            sorted.offsets = offsets.iter().map(|&o| o as u32).collect();
            sorted.inv = inverse_positions(&sorted.order, n);
        }
    }
    let nk = sorted.order.len();
    let prob_weight = cfg.weighting == RouterWeighting::Prob;
    let weights: Vec<f32> = sorted.order.iter().map(|&t| if prob_weight { scores[t as usize] } else { 1.0 }).collect();
    let mut xp = vec![0f32; nk * d];
    gpu::gather_forward(l, &mut xp, x, &sorted.order, &sorted.offsets, d)?;
    let (mut y, mut hgu, mut a) = (vec![0f32; nk * d], vec![0f32; nk * 2 * w], vec![0f32; nk * w]);
    gpu::experts_forward(l, ExpertsGemm::Fma, &mut y, &mut hgu, &mut a, &xp, experts, &sorted.offsets, d, w)?;
    let mut out = vec![0f32; n * d];
    gpu::combine_forward(l, &mut out, &y, Some(&weights), &sorted.inv, d)?;

    let counts: Vec<usize> = sums.counts.iter().map(|&c| c as usize).collect();
    let stats = router_stats(&counts, &entropy, overflowed, overflowed + dropped_out, n);
    let saved = KernelSaved {
        scoring: scores_of,
        logits: logits.clone(),
        probs,
        lse,
        counts: sums.counts,
        expert_of_token: expert_of_token.clone(),
        order: sorted.order,
        offsets: sorted.offsets,
        inv: sorted.inv,
        weights,
        xp,
        y,
        hgu,
        a,
    };
    Ok(MoeForwardOut {
        out,
        logits,
        lb_loss: sums.lb_loss,
        z_loss: sums.z_loss,
        stats,
        expert_of_token,
        saved: Arc::new(saved),
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward_logits<L: Launcher>(
    l: &L,
    dx: &mut [f32],
    drouter: &mut [f32],
    dlogits: &[f32],
    x: &[f32],
    router: &[f32],
    saved: &(dyn Any + Send + Sync),
    dims: MoeDims,
) -> KernelResult<()> {
    if kernel_saved(saved).is_none() {
        return CpuBackend::default().moe_backward_logits(dx, drouter, dlogits, x, router, saved, dims);
    }
    let MoeDims { n, d, e, .. } = dims;
    gpu::matmul(l, dx, dlogits, router, n, e, d, Trans::No, Trans::No, true)?;
    gpu::matmul(l, drouter, dlogits, x, e, n, d, Trans::Yes, Trans::No, true)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward_out_logits<L: Launcher>(
    l: &L,
    dx: &mut [f32],
    dlogits: &mut [f32],
    dexperts: &mut [f32],
    dout: &[f32],
    x: &[f32],
    experts: &[f32],
    saved: &(dyn Any + Send + Sync),
    dims: MoeDims,
) -> KernelResult<()> {
    let Some(s) = kernel_saved(saved) else {
        return CpuBackend::default().moe_backward_out_logits(dx, dlogits, dexperts, dout, x, experts, saved, dims);
    };
    let MoeDims { n, d, e, w } = dims;
    let nk = s.order.len();
    let (mut dyp, mut dweights) = (vec![0f32; nk * d], vec![0f32; nk]);
    gpu::combine_backward(l, &mut dyp, Some(&mut dweights), dout, &s.y, Some(&s.weights), &s.order, &s.offsets, d)?;
    let mut dxp = vec![0f32; nk * d];
    gpu::experts_backward(
        l,
        ExpertsGemm::Fma,
        &mut dxp,
        dexperts,
        &dyp,
        &s.xp,
        &s.hgu,
        &s.a,
        experts,
        &s.offsets,
        d,
        w,
    )?;
    gpu::gather_backward(l, dx, &dxp, &s.inv, d)?;
    let mut dgate = vec![0f32; n];
    for (&t, &g) in s.order.iter().zip(&dweights) {
        dgate[t as usize] = g;
    }
    let dg = Some((&dgate[..], &s.expert_of_token[..]));
    gpu::router_backward(l, dlogits, dg, &s.probs, &s.logits, &s.lse, &s.counts, 0.0, 0.0, e, s.scoring)
}

pub(super) fn backward_aux_logits<L: Launcher>(
    l: &L,
    dlogits: &mut [f32],
    which: AuxLoss,
    dloss: f32,
    saved: &(dyn Any + Send + Sync),
    dims: MoeDims,
) -> KernelResult<()> {
    let Some(s) = kernel_saved(saved) else {
        return CpuBackend::default().moe_backward_aux_logits(dlogits, which, dloss, saved, dims);
    };
    let (dlb, dz) = match which {
        AuxLoss::LoadBalance => (dloss, 0.0),
        AuxLoss::Z => (0.0, dloss),
    };
    let (p, lg, ls) = (&s.probs, &s.logits, &s.lse);
    gpu::router_backward(l, dlogits, None, p, lg, ls, &s.counts, dlb, dz, dims.e, s.scoring)
}
