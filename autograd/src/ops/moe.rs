//! The routed part of an MoE FFN (top-1 router + experts) as one op with three outputs on the
//! tape: the routed contribution, the load-balance loss and the z-loss. The math, shapes and
//! the fast / naive paths are documented in [`kernels_cpu::moe`].
//!
//! On the tape the router logits `[N, E]` are an internal node between (x, router) and the three
//! outputs: each output's backward only accumulates into `dlogits`, and the router projection's
//! backward (two GEMMs) runs once per layer instead of once per output.

use super::ensure;
use crate::backend::{kernel, kernel_bwd};
use crate::error::{AutogradError, Result};
use crate::tape::Tape;
use crate::tensor::Tensor;
use kernels_cpu::moe::{AuxLoss, MoeDims, MoeParams};

pub use kernels_cpu::moe::{MoePath, RouterStats, RouterWeighting};

/// Settings of a routed MoE layer.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    /// Routed experts E.
    pub num_experts: usize,
    /// Width W of one routed expert.
    pub expert_width: usize,
    /// Softmax temperature of the router (> 0; not used by [`RouterWeighting::Sigmoid`]).
    pub temperature: f32,
    /// How the chosen expert's output is weighted.
    pub weighting: RouterWeighting,
    /// Capacity factor: `ceil(cf * N / E)` tokens per expert; `None` = dropless.
    pub capacity_factor: Option<f32>,
    /// In training, the probability that a token loses its routed expert.
    pub expert_dropout: f32,
    /// In training, the standard deviation of Gaussian noise added to the router logits.
    pub router_noise: f32,
    /// Fast or naive (reference) implementation.
    pub path: MoePath,
    /// Test-only: every expert processes every token with weight exactly 1, no drops.
    pub dense_equivalent: bool,
}

impl Default for MoeConfig {
    fn default() -> Self {
        MoeConfig {
            num_experts: 16,
            expert_width: 64,
            temperature: 1.0,
            weighting: RouterWeighting::Ste,
            capacity_factor: None,
            expert_dropout: 0.0,
            router_noise: 0.0,
            path: MoePath::Fast,
            dense_equivalent: false,
        }
    }
}

impl MoeConfig {
    /// Checks the values (not the shapes): a readable error for each bad field.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(AutogradError::Config { op: "moe_routed", msg });
        if self.num_experts == 0 || self.expert_width == 0 {
            return bad(format!(
                "num_experts {} and expert_width {} must be positive",
                self.num_experts, self.expert_width
            ));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad(format!("temperature {} must be positive and finite", self.temperature));
        }
        if let Some(cf) = self.capacity_factor {
            if !(cf.is_finite() && cf > 0.0) {
                return bad(format!("capacity_factor {cf} must be positive and finite"));
            }
        }
        if !(0.0..1.0).contains(&self.expert_dropout) {
            return bad(format!("expert_dropout {} must be in [0, 1)", self.expert_dropout));
        }
        if !(self.router_noise.is_finite() && self.router_noise >= 0.0) {
            return bad(format!("router_noise {} must be non-negative and finite", self.router_noise));
        }
        Ok(())
    }

    /// Kernel settings for one call (noise and dropout only in training).
    fn params(&self, seed: u64, training: bool) -> MoeParams {
        MoeParams {
            temperature: self.temperature,
            weighting: self.weighting,
            capacity_factor: self.capacity_factor,
            expert_dropout: if training { self.expert_dropout } else { 0.0 },
            router_noise: if training { self.router_noise } else { 0.0 },
            seed,
            dense_equivalent: self.dense_equivalent,
            // The backend sets the precision of the expert GEMMs.
            ..MoeParams::default()
        }
    }
}

/// Result of [`moe_routed`].
pub struct MoeOutput {
    /// Routed contribution `g_t * expert_{e_t}(x_t)` [N, D]; zero rows for dropped tokens.
    pub out: Tensor,
    /// Switch load-balance loss `E * sum_i f_i * P_i` [] (unscaled; gradient to x and router).
    pub lb_loss: Tensor,
    /// Router z-loss `mean_t logsumexp(logits_t)^2` [] (unscaled; gradient to x and router).
    pub z_loss: Tensor,
    /// Router statistics.
    pub stats: RouterStats,
    /// Chosen expert per token, `u32::MAX` if dropped `[N]`.
    pub expert_of_token: Vec<u32>,
}

/// Routed MoE FFN on `x` [N, D] with `router` [E, D] (logits `x · routerᵀ` in f32), `experts`
/// [E, 3*W*D] (per expert `gate_proj` [W, D], `up_proj` [W, D], `down_proj` [D, W]) and the
/// aux-loss-free balancing `bias` `[E]` (added to the scores for the choice only, no gradient).
/// `seed` drives noise and expert dropout, which only happen when `training`.
#[allow(clippy::too_many_arguments)]
pub fn moe_routed(
    tape: &Tape,
    x: &Tensor,
    router: &Tensor,
    experts: &Tensor,
    bias: Option<&[f32]>,
    cfg: &MoeConfig,
    seed: u64,
    training: bool,
) -> Result<MoeOutput> {
    cfg.validate()?;
    let (e, w) = (cfg.num_experts, cfg.expert_width);
    ensure(x.shape().len() == 2 && x.shape()[1] > 0, "moe_routed", || format!("x {:?} is not [N, D]", x.shape()))?;
    let (n, d) = (x.shape()[0], x.shape()[1]);
    ensure(router.shape() == [e, d], "moe_routed", || format!("router {:?} is not [E={e}, D={d}]", router.shape()))?;
    ensure(experts.shape() == [e, 3 * w * d], "moe_routed", || {
        format!("experts {:?} is not [E={e}, 3*W*D={}] (W={w})", experts.shape(), 3 * w * d)
    })?;
    if let Some(b) = bias {
        ensure(b.len() == e, "moe_routed", || format!("bias has {} values for {e} experts", b.len()))?;
        if b.iter().any(|v| !v.is_finite()) {
            return Err(AutogradError::Config { op: "moe_routed", msg: "bias holds a non-finite value".into() });
        }
    }
    let dims = MoeDims { n, d, e, w };
    let be = tape.backend().clone();
    let fwd = kernel(
        "moe_routed",
        be.moe_forward(&x.f32s(), &router.f32s(), &experts.f32s(), bias, dims, cfg.path, &cfg.params(seed, training)),
    )?;
    let out = Tensor::from_vec(fwd.out, &[n, d]);
    let lb_loss = Tensor::from_vec(vec![fwd.lb_loss], &[]);
    let z_loss = Tensor::from_vec(vec![fwd.z_loss], &[]);
    let (stats, expert_of_token) = (fwd.stats, fwd.expert_of_token);
    if !tape.needs_grad(&[x, router, experts]) {
        return Ok(MoeOutput { out, lb_loss, z_loss, stats, expert_of_token });
    }
    let saved = fwd.saved;
    let (xs, rs, sv, b) = (x.clone(), router.clone(), saved.clone(), be.clone());
    let logits = tape.record(Tensor::from_vec(fwd.logits, &[n, e]), &[x, router], move |dlogits, g| {
        let (mut dx, mut dr) = (g.take(&xs), g.take(&rs));
        let r = b.moe_backward_logits(&mut dx, &mut dr, dlogits, &xs.f32s(), &rs.f32s(), &*sv, dims);
        kernel_bwd("moe_routed", r);
        g.put(&xs, dx);
        g.put(&rs, dr);
    });
    let (xs, ls, es, sv, b) = (x.clone(), logits.clone(), experts.clone(), saved.clone(), be.clone());
    let out = tape.record(out, &[x, &logits, experts], move |dout, g| {
        let (mut dx, mut dl, mut de) = (g.take(&xs), g.take(&ls), g.take(&es));
        let r = b.moe_backward_out_logits(&mut dx, &mut dl, &mut de, dout, &xs.f32s(), &es.f32s(), &*sv, dims);
        kernel_bwd("moe_routed", r);
        g.put(&xs, dx);
        g.put(&ls, dl);
        g.put(&es, de);
    });
    let aux = |loss: Tensor, which: AuxLoss| {
        let (ls, sv, b) = (logits.clone(), saved.clone(), be.clone());
        tape.record(loss, &[&logits], move |dloss, g| {
            g.accumulate(&ls, |dl| {
                kernel_bwd("moe_routed", b.moe_backward_aux_logits(dl, which, dloss[0], &*sv, dims))
            });
        })
    };
    let lb_loss = aux(lb_loss, AuxLoss::LoadBalance);
    let z_loss = aux(z_loss, AuxLoss::Z);
    Ok(MoeOutput { out, lb_loss, z_loss, stats, expert_of_token })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernels_cpu::check::{rand_vec, rel_norm_err};

    struct Inputs {
        x: Tensor,
        router: Tensor,
        experts: Tensor,
        r: Vec<f32>,
    }

    fn inputs(n: usize, d: usize, e: usize, w: usize) -> Inputs {
        let mut x = rand_vec(n * d, 1);
        let mut router: Vec<f32> = rand_vec(e * d, 2).iter().map(|v| 0.7 * v).collect();
        (0..n).for_each(|t| x[t * d] = 0.5 + 0.5 * x[t * d].abs());
        router[0] = 2.0; // skewed towards expert 0, so capacity drops tokens
        Inputs {
            x: Tensor::from_vec(x, &[n, d]),
            router: Tensor::from_vec(router, &[e, d]),
            experts: Tensor::from_vec(rand_vec(e * 3 * w * d, 3), &[e, 3 * w * d]),
            r: rand_vec(n * d, 4),
        }
    }

    /// Gradients of `sum(out * r)`, `lb` and `z` w.r.t. (x, router, experts), one tape each.
    fn grads(inp: &Inputs, cfg: &MoeConfig, seed: u64) -> (Vec<Vec<f32>>, MoeOutput) {
        let mut all = Vec::new();
        let mut first = None;
        for which in 0..3 {
            let tape = Tape::new();
            let (x, r, e) = (tape.leaf(&inp.x), tape.leaf(&inp.router), tape.leaf(&inp.experts));
            let o = moe_routed(&tape, &x, &r, &e, Some(&[0.01, 0.0, -0.01, 0.02]), cfg, seed, true).unwrap();
            let g = match which {
                0 => tape.backward_with(&o.out, &inp.r),
                1 => tape.backward(&o.lb_loss),
                _ => tape.backward(&o.z_loss),
            };
            let zeros = |t: &Tensor| vec![0.0; t.numel()];
            for t in [&x, &r, &e] {
                all.push(g.get(t).map_or_else(|| zeros(t), |v| v.to_vec()));
            }
            first.get_or_insert(o);
        }
        (all, first.unwrap())
    }

    #[test]
    fn fast_and_naive_paths_agree_through_the_tape() {
        let inp = inputs(61, 10, 4, 6);
        for weighting in [RouterWeighting::Ste, RouterWeighting::Prob, RouterWeighting::Sigmoid] {
            let cfg = MoeConfig {
                num_experts: 4,
                expert_width: 6,
                weighting,
                capacity_factor: Some(1.0),
                expert_dropout: 0.1,
                router_noise: 0.2,
                ..MoeConfig::default()
            };
            let (fast, fo) = grads(&inp, &cfg, 3);
            let (naive, no) = grads(&inp, &MoeConfig { path: MoePath::Naive, ..cfg.clone() }, 3);
            assert_eq!(fo.expert_of_token, no.expert_of_token);
            assert!(fo.stats.overflow_frac > 0.0 && fo.stats.dropped_frac > fo.stats.overflow_frac);
            assert!(rel_norm_err(&fo.out.to_vec(), &no.out.to_vec()) <= 1e-5);
            for (i, (f, nv)) in fast.iter().zip(&naive).enumerate() {
                let err = rel_norm_err(f, nv);
                assert!(err <= 1e-5, "{weighting:?} gradient {i} (loss {}, input {}): {err:.3e}", i / 3, i % 3);
            }
            // lb and z reach x and router, never the experts.
            assert!(fast[5].iter().all(|&v| v == 0.0) && fast[8].iter().all(|&v| v == 0.0));
            assert!(fast[3].iter().any(|&v| v != 0.0) && fast[7].iter().any(|&v| v != 0.0));
        }
    }

    #[test]
    fn evaluation_has_no_noise_or_dropout_and_inference_records_nothing() {
        let inp = inputs(40, 8, 4, 3);
        let cfg =
            MoeConfig { num_experts: 4, expert_width: 3, expert_dropout: 0.5, router_noise: 1.0, ..Default::default() };
        let tape = Tape::inference();
        let eval = |seed| moe_routed(&tape, &inp.x, &inp.router, &inp.experts, None, &cfg, seed, false).unwrap();
        let (a, b) = (eval(1), eval(2));
        assert_eq!(a.out.to_vec(), b.out.to_vec());
        assert_eq!(a.stats.dropped_frac, 0.0);
        assert!(tape.is_empty() && !a.out.requires_grad() && !a.lb_loss.requires_grad());
        let train = moe_routed(&tape, &inp.x, &inp.router, &inp.experts, None, &cfg, 1, true).unwrap();
        assert!(train.stats.dropped_frac > 0.2, "dropout off in training");
        assert_eq!(a.lb_loss.shape(), &[] as &[usize]);
    }

    #[test]
    fn bad_shapes_and_config_are_errors() {
        let inp = inputs(5, 4, 2, 3);
        let tape = Tape::new();
        let good = MoeConfig { num_experts: 2, expert_width: 3, ..Default::default() };
        let call = |cfg: &MoeConfig, x: &Tensor, r: &Tensor, e: &Tensor, bias: Option<&[f32]>| {
            moe_routed(&tape, x, r, e, bias, cfg, 0, true).err().map(|err| err.to_string())
        };
        let (x, r, e) = (&inp.x, &inp.router, &inp.experts);
        assert_eq!(call(&good, x, r, e, None), None);
        let cases: [(MoeConfig, Option<&[f32]>, &str); 8] = [
            (MoeConfig { num_experts: 3, ..good.clone() }, None, "router"),
            (MoeConfig { expert_width: 4, ..good.clone() }, None, "experts"),
            (MoeConfig { temperature: 0.0, ..good.clone() }, None, "temperature"),
            (MoeConfig { capacity_factor: Some(f32::NAN), ..good.clone() }, None, "capacity_factor"),
            (MoeConfig { expert_dropout: 1.0, ..good.clone() }, None, "expert_dropout"),
            (MoeConfig { router_noise: -1.0, ..good.clone() }, None, "router_noise"),
            (good.clone(), Some(&[0.0, 0.0, 0.0]), "bias"),
            (good.clone(), Some(&[0.0, f32::INFINITY]), "bias"),
        ];
        for (cfg, bias, word) in cases {
            let err = call(&cfg, x, r, e, bias).unwrap_or_else(|| panic!("{word}: accepted"));
            assert!(err.contains(word), "{word}: {err}");
        }
        let x3 = x.reshape(&[5, 2, 2]);
        assert!(call(&good, &x3, r, e, None).unwrap().contains("x"));
        assert!(call(&MoeConfig { num_experts: 0, ..good.clone() }, x, r, e, None).is_some());
        let tape = Tape::new();
        let (empty, rl) = (tape.leaf(&Tensor::zeros(&[0, 4])), tape.leaf(r));
        let o = moe_routed(&tape, &empty, &rl, e, None, &good, 0, true).unwrap();
        assert_eq!((o.out.numel(), o.lb_loss.item(), o.z_loss.item()), (0, 0.0, 0.0));
        let g = tape.backward(&o.z_loss);
        assert!(g.get(&rl).unwrap().iter().all(|&v| v == 0.0));
    }
}
