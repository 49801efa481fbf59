//! The `Device::Sim` path of [`super::moe_routed`]: the GPU kernel sequence of a routed MoE layer
//! run in kernels-gpu's simulator, with the same tape structure as the CPU fast path (router logits
//! as an internal node; `out`, `lb_loss`, `z_loss` accumulate into `dlogits`).
//!
//! Forward: router GEMM `logits = x · routerᵀ` (one-group FMA GEMM) → `router_forward` (softmax
//! with temperature, top-1 with bias, lse, entropy, counts, prob sums) → expert dropout and
//! capacity on the host (no kernel: a per-token hash and a per-expert top-C selection, exactly as
//! kernels-cpu) → `sort_by_expert` → `gather_forward` → `experts_forward` (grouped FMA GEMMs +
//! fused SwiGLU) → `combine_forward`. Backward: `combine_backward` → `experts_backward` →
//! `gather_backward` + `router_backward` (routed weight; lb; z) → router GEMM backward.
//!
//! Softmax weightings (`Ste`, `Prob`) without router noise only (the router kernel has neither
//! sigmoid scores nor noise); other settings, the naive path and dense-equivalent mode run the
//! CPU path on every device ([`supported`]).

use super::moe::{MoeConfig, MoeOutput};
use crate::error::Result;
use crate::sim::{sim, sim_bwd, sim_matmul};
use crate::tape::Tape;
use crate::tensor::Tensor;
use kernels_cpu::gemm::Trans;
use kernels_cpu::moe::permute::{apply_capacity, sort_by_expert};
use kernels_cpu::moe::router::{dropout_sample, router_stats, NONE};
use kernels_cpu::moe::{capacity, MoeDims, MoePath, RouterWeighting};
use kernels_gpu::sim::ops::{self as gpu, ExpertsGemm};
use std::sync::Arc;

const OP: &str = "moe_routed";

/// Whether the simulated kernels implement this configuration.
pub(super) fn supported(cfg: &MoeConfig, training: bool) -> bool {
    cfg.path == MoePath::Fast
        && !cfg.dense_equivalent
        && cfg.weighting != RouterWeighting::Sigmoid
        && !(training && cfg.router_noise > 0.0)
}

/// What the simulated forward keeps for backward.
struct SimSaved {
    dims: MoeDims,
    temperature: f32,
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

/// [`super::moe_routed`] on the simulator (shapes and config already validated).
#[allow(clippy::too_many_arguments)]
pub(super) fn moe_routed_sim(
    tape: &Tape,
    x: &Tensor,
    router: &Tensor,
    experts: &Tensor,
    bias: Option<&[f32]>,
    cfg: &MoeConfig,
    seed: u64,
    training: bool,
    dims: MoeDims,
) -> Result<MoeOutput> {
    let MoeDims { n, d, e, w } = dims;
    let (xf, rf, ef) = (x.f32s(), router.f32s(), experts.f32s());
    let mut logits = vec![0f32; n * e];
    sim(OP, sim_matmul(&mut logits, &xf, &rf, n, d, e, Trans::No, Trans::Yes, false))?;
    let (mut probs, mut choice, mut lse, mut entropy) =
        (vec![0f32; n * e], vec![0u32; n], vec![0f32; n], vec![0f32; n]);
    let sums = sim(
        OP,
        gpu::router_forward(&mut probs, &mut choice, &mut lse, &mut entropy, &logits, bias, e, cfg.temperature),
    )?;

    // Host: expert dropout and capacity, as kernels-cpu's fast path.
    let mut expert_of_token = choice;
    let dropout = if training { cfg.expert_dropout } else { 0.0 };
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
    let cap = capacity(cfg.capacity_factor, n, e);
    let overflowed = if cap < n {
        let (mut order, mut offsets) = sort_by_expert(&expert_of_token, e);
        apply_capacity(&mut order, &mut offsets, &mut expert_of_token, &scores, cap)
    } else {
        0
    };

    let sorted = sim(OP, gpu::sort_by_expert(&expert_of_token, e))?;
    let nk = sorted.order.len();
    let prob_weight = cfg.weighting == RouterWeighting::Prob;
    let weights: Vec<f32> = sorted.order.iter().map(|&t| if prob_weight { scores[t as usize] } else { 1.0 }).collect();
    let mut xp = vec![0f32; nk * d];
    sim(OP, gpu::gather_forward(&mut xp, &xf, &sorted.order, &sorted.offsets, d))?;
    let (mut y, mut hgu, mut a) = (vec![0f32; nk * d], vec![0f32; nk * 2 * w], vec![0f32; nk * w]);
    sim(OP, gpu::experts_forward(ExpertsGemm::Fma, &mut y, &mut hgu, &mut a, &xp, &ef, &sorted.offsets, d, w))?;
    let mut out = vec![0f32; n * d];
    sim(OP, gpu::combine_forward(&mut out, &y, Some(&weights), &sorted.inv, d))?;

    let counts: Vec<usize> = sums.counts.iter().map(|&c| c as usize).collect();
    let stats = router_stats(&counts, &entropy, overflowed, overflowed + dropped_out, n);
    let out = Tensor::from_vec(out, &[n, d]);
    let lb_loss = Tensor::from_vec(vec![sums.lb_loss], &[]);
    let z_loss = Tensor::from_vec(vec![sums.z_loss], &[]);
    if !tape.needs_grad(&[x, router, experts]) {
        return Ok(MoeOutput { out, lb_loss, z_loss, stats, expert_of_token });
    }
    let saved = Arc::new(SimSaved {
        dims,
        temperature: cfg.temperature,
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
    });

    let (xs, rs) = (x.clone(), router.clone());
    let logits = tape.record(Tensor::from_vec(logits, &[n, e]), &[x, router], move |dlogits, g| {
        g.accumulate(&xs, |dx| sim_bwd(OP, sim_matmul(dx, dlogits, &rs.f32s(), n, e, d, Trans::No, Trans::No, true)));
        g.accumulate(&rs, |dr| sim_bwd(OP, sim_matmul(dr, dlogits, &xs.f32s(), e, n, d, Trans::Yes, Trans::No, true)));
    });
    let (xs, ls, es, sv) = (x.clone(), logits.clone(), experts.clone(), saved.clone());
    let out = tape.record(out, &[x, &logits, experts], move |dout, g| {
        let (mut dx, mut dl, mut de) = (g.take(&xs), g.take(&ls), g.take(&es));
        sim_bwd(OP, backward_out(&mut dx, &mut dl, &mut de, dout, &es.f32s(), &sv));
        g.put(&xs, dx);
        g.put(&ls, dl);
        g.put(&es, de);
    });
    let aux = |loss: Tensor, lb: bool| {
        let (ls, s) = (logits.clone(), saved.clone());
        tape.record(loss, &[&logits], move |dloss, g| {
            let (dlb, dz) = if lb { (dloss[0], 0.0) } else { (0.0, dloss[0]) };
            g.accumulate(&ls, |dl| {
                let r =
                    gpu::router_backward(dl, None, &s.probs, &s.logits, &s.lse, &s.counts, dlb, dz, e, s.temperature);
                sim_bwd(OP, r)
            });
        })
    };
    let lb_loss = aux(lb_loss, true);
    let z_loss = aux(z_loss, false);
    Ok(MoeOutput { out, lb_loss, z_loss, stats, expert_of_token })
}

/// Backward of `out` up to the router logits: the expert path into `dx` `[N, D]` and `dexperts`
/// `[E, 3*W*D]`, the routed weight's gradient into `dlogits` `[N, E]`.
fn backward_out(
    dx: &mut [f32],
    dlogits: &mut [f32],
    dexperts: &mut [f32],
    dout: &[f32],
    experts: &[f32],
    s: &SimSaved,
) -> std::result::Result<(), kernels_gpu::sim::SimError> {
    let MoeDims { n, d, e, w } = s.dims;
    let nk = s.order.len();
    let (mut dyp, mut dweights) = (vec![0f32; nk * d], vec![0f32; nk]);
    gpu::combine_backward(&mut dyp, Some(&mut dweights), dout, &s.y, Some(&s.weights), &s.order, &s.offsets, d)?;
    let mut dxp = vec![0f32; nk * d];
    gpu::experts_backward(ExpertsGemm::Fma, &mut dxp, dexperts, &dyp, &s.xp, &s.hgu, &s.a, experts, &s.offsets, d, w)?;
    gpu::gather_backward(dx, &dxp, &s.inv, d)?;
    let mut dgate = vec![0f32; n];
    for (&t, &g) in s.order.iter().zip(&dweights) {
        dgate[t as usize] = g;
    }
    let dg = Some((&dgate[..], &s.expert_of_token[..]));
    gpu::router_backward(dlogits, dg, &s.probs, &s.logits, &s.lse, &s.counts, 0.0, 0.0, e, s.temperature)
}

#[cfg(test)]
mod tests {
    use super::super::moe::moe_routed;
    use super::*;
    use crate::tensor::Device;
    use kernels_cpu::check::{rand_vec, rel_norm_err};

    /// Outputs and the gradients of `sum(out * r)`, `lb` and `z` w.r.t. (x, router, experts) on
    /// `device`, one tape per loss.
    fn run(device: Device, cfg: &MoeConfig, (n, d): (usize, usize)) -> (Vec<Vec<f32>>, Vec<Vec<f32>>, Vec<u32>) {
        let (e, w) = (cfg.num_experts, cfg.expert_width);
        let mut router = rand_vec(e * d, 2);
        router[0] = 1.5; // skewed towards expert 0, so capacity drops tokens
        let x = Tensor::from_vec(rand_vec(n * d, 1).iter().map(|v| v + 0.3).collect(), &[n, d]);
        let router = Tensor::from_vec(router, &[e, d]);
        let experts = Tensor::from_vec(rand_vec(e * 3 * w * d, 3), &[e, 3 * w * d]);
        let (r, bias) = (rand_vec(n * d, 4), [0.01, 0.0, -0.01, 0.02]);
        let (mut outs, mut grads, mut choice) = (Vec::new(), Vec::new(), Vec::new());
        for which in 0..3 {
            let tape = Tape::new_on(device).unwrap();
            let (xl, rl, el) = (tape.leaf(&x), tape.leaf(&router), tape.leaf(&experts));
            let o = moe_routed(&tape, &xl, &rl, &el, Some(&bias), cfg, 7, true).unwrap();
            if which == 0 {
                outs = vec![o.out.to_vec(), vec![o.lb_loss.item(), o.z_loss.item(), o.stats.dropped_frac]];
                choice = o.expert_of_token.clone();
            }
            let g = match which {
                0 => tape.backward_with(&o.out, &r),
                1 => tape.backward(&o.lb_loss),
                _ => tape.backward(&o.z_loss),
            };
            for t in [&xl, &rl, &el] {
                grads.push(g.get(t).map_or_else(|| vec![0.0; t.numel()], |v| v.to_vec()));
            }
        }
        (outs, grads, choice)
    }

    #[test]
    fn sim_moe_matches_cpu_with_capacity_dropout_and_bias() {
        for weighting in [RouterWeighting::Ste, RouterWeighting::Prob, RouterWeighting::Sigmoid] {
            let cfg = MoeConfig {
                num_experts: 4,
                expert_width: 6,
                temperature: 0.8,
                weighting,
                capacity_factor: Some(1.0),
                expert_dropout: 0.1,
                ..MoeConfig::default()
            };
            assert_eq!(supported(&cfg, true), weighting != RouterWeighting::Sigmoid);
            let (co, cg, cc) = run(Device::Cpu, &cfg, (29, 10));
            let (so, sg, sc) = run(Device::Sim, &cfg, (29, 10));
            assert_eq!(cc, sc, "{weighting:?}: expert of each token");
            assert!(cc.iter().filter(|&&c| c == NONE).count() > 3, "capacity and dropout drop tokens");
            let mut worst = 0f64;
            for (i, (s, c)) in so.iter().chain(&sg).zip(co.iter().chain(&cg)).enumerate() {
                let err = rel_norm_err(s, c);
                assert!(err <= 1e-5, "{weighting:?} output / gradient {i}: {err:.2e}");
                worst = worst.max(err);
            }
            println!("sim moe {weighting:?}: max rel err {worst:.2e} (tol 1e-5)");
        }
    }
}
