//! Named experts (Mode B): the router supervised by document domain tags, so one routed expert
//! holds one domain and can be exported beside the shared expert as a dense specialist
//! ([`crate::export::export_expert`]).
//!
//! A `domain -> expert` map (phase config `router.named_experts`) gives every token of a document
//! with a mapped domain a target expert; the loss is the cross-entropy of each MoE layer's router
//! logits `input · routerᵀ` (temperature 1, no bias) toward that expert, averaged over the MoE
//! layers and the targeted tokens (the same target expert in every layer). Tokens of unmapped
//! domains, segment ends and padding have no target (`-100`). The logits go through the fused
//! `lm_head_cross_entropy` with the router `[E, D]` as the "vocabulary", so nothing new is
//! differentiated by hand.

use crate::error::{ModelError, Result};
use crate::qwen3::{ag, Bound, FfnTensors, ForwardOptions, Qwen3};
use crate::TokenBatch;
use autograd::ops;
use autograd::{Tape, Tensor};
use std::collections::BTreeMap;

/// No target (the ignore index of the cross-entropy).
pub const NO_TARGET: i32 = -100;

/// Checks a `domain -> expert` map against a model with `num_experts` routed experts; the error
/// names the domain and the expert.
pub fn check_map(map: &BTreeMap<String, usize>, num_experts: usize) -> std::result::Result<(), String> {
    if map.is_empty() {
        return Err("the domain -> expert map is empty".into());
    }
    match map.iter().find(|(_, &e)| e >= num_experts) {
        Some((d, e)) => Err(format!(
            "domain `{d}` names expert {e}, which does not exist: the model has {num_experts} routed experts (0..={})",
            num_experts.saturating_sub(1)
        )),
        None => Ok(()),
    }
}

/// Target expert per token `[B*T]`: the mapped expert of the row's domain (`domains [B]`) where
/// the token has a next-token target (`targets [B*T]`, `-100` at segment ends and padding), else
/// [`NO_TARGET`].
pub fn route_targets(domains: &[String], t: usize, targets: &[i32], map: &BTreeMap<String, usize>) -> Vec<i32> {
    targets
        .iter()
        .enumerate()
        .map(|(j, &y)| match (y != NO_TARGET, domains.get(j / t).and_then(|d| map.get(d))) {
            (true, Some(&e)) => e as i32,
            _ => NO_TARGET,
        })
        .collect()
}

/// The Mode B router loss of one forward.
pub struct NamedExpertLoss {
    /// Mean over MoE layers of the mean router cross-entropy over targeted tokens `[]` (0 when
    /// no token has a target).
    pub loss: Tensor,
    /// Its value.
    pub value: f32,
    /// Targeted tokens (per layer).
    pub count: usize,
}

/// The router cross-entropy toward `route_targets [B*T]` over the MoE layers of `bound`, from the
/// router inputs of the same forward (`router_inputs [L_moe]`, each `[B*T, D]`).
pub fn named_expert_loss(
    tape: &Tape,
    bound: &Bound,
    router_inputs: &[Tensor],
    route_targets: &[i32],
) -> Result<NamedExpertLoss> {
    let routers: Vec<&Tensor> = bound
        .layers
        .iter()
        .filter_map(|l| match &l.ffn {
            FfnTensors::Moe { router, .. } => Some(router),
            FfnTensors::Dense { .. } => None,
        })
        .collect();
    if routers.len() != router_inputs.len() || routers.is_empty() {
        return Err(ModelError::Invalid(format!(
            "named experts: {} router inputs for {} MoE layers",
            router_inputs.len(),
            routers.len()
        )));
    }
    let layers = routers.len() as f32;
    let (mut loss, mut value, mut count) = (Tensor::zeros(&[]), 0f32, 0);
    for (x, router) in router_inputs.iter().zip(routers) {
        let ce = ops::lm_head_cross_entropy(tape, x, router, route_targets).map_err(ag)?;
        value += ce.loss.item() / layers;
        count = ce.count;
        loss = ops::add_scaled(tape, &loss, &ce.loss, 1.0 / layers).map_err(ag)?;
    }
    Ok(NamedExpertLoss { loss, value, count })
}

/// The routed expert of every token in every MoE layer of an evaluation forward (dropless,
/// temperature 1): `[L][B*T]`.
pub fn route_choices(model: &Qwen3, batch: &TokenBatch) -> Result<Vec<Vec<u32>>> {
    let tape = Tape::inference();
    let bound = model.bind(&tape);
    let (_, aux) = model.forward_hidden(&tape, &bound, batch, &ForwardOptions::eval())?;
    Ok(aux.into_iter().map(|a| a.choice).collect())
}

/// Per layer, the tokens with a target and those routed to it: `[(hits, total)]` over `choices
/// [L][B*T]` and `route_targets [B*T]`.
pub fn routing_hits(choices: &[Vec<u32>], route_targets: &[i32]) -> Vec<(u64, u64)> {
    choices
        .iter()
        .map(|c| {
            let on = || c.iter().zip(route_targets).filter(|(_, &y)| y != NO_TARGET);
            (on().filter(|(&e, &y)| e as i32 == y).count() as u64, on().count() as u64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Qwen3Config;
    use crate::init::qwen3_init;
    use crate::moe_spec::MoeSpec;
    use autograd::ops::RouterWeighting;
    use autograd::DType;

    fn map() -> BTreeMap<String, usize> {
        [("medical".to_string(), 2), ("general".to_string(), 0)].into()
    }

    #[test]
    fn targets_follow_row_domains_and_skip_untargeted_tokens() {
        let domains = ["medical", "chat", "general"].map(String::from);
        let targets = [5, 6, -100, 1, 2, 3, 4, -100, 9];
        let got = route_targets(&domains, 3, &targets, &map());
        assert_eq!(got, [2, 2, -100, -100, -100, -100, 0, -100, 0]);
        assert_eq!(routing_hits(&[vec![2, 1, 0, 0, 0, 0, 0, 0, 3]], &got), [(2, 4)]);
    }

    #[test]
    fn a_map_naming_a_missing_expert_is_refused() {
        assert!(check_map(&map(), 3).is_ok());
        let e = check_map(&map(), 2).unwrap_err();
        assert!(e.contains("domain `medical`") && e.contains("expert 2") && e.contains("2 routed experts"), "{e}");
        assert!(check_map(&BTreeMap::new(), 4).is_err());
    }

    #[test]
    fn the_router_loss_pulls_tokens_to_their_experts() {
        let json = r#"{"model_type": "qwen3", "vocab_size": 40, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
            "max_position_embeddings": 64}"#;
        let config = Qwen3Config::from_json(json, std::path::Path::new("t.json")).unwrap();
        let spec = MoeSpec { num_experts: 4, expert_width: 6, shared_width: 8, weighting: RouterWeighting::Ste };
        let mut model = Qwen3::from_init(config, Some(spec), DType::F32, qwen3_init(3, 0.3));
        let batch = TokenBatch::new((0..24).map(|i| (i * 7 % 40) as u32).collect(), 2, 12).unwrap();
        let targets: Vec<i32> = (0..24).map(|j| if j % 12 == 11 { -100 } else { 1 }).collect();
        let domains = ["medical", "general"].map(String::from);
        let rt = route_targets(&domains, 12, &targets, &map());
        let acc = |m: &Qwen3| {
            let h = routing_hits(&route_choices(m, &batch).unwrap(), &rt);
            h.iter().map(|(a, _)| a).sum::<u64>() as f64 / h.iter().map(|(_, b)| b).sum::<u64>() as f64
        };
        let before = acc(&model);
        let mut first = None;
        for _ in 0..60 {
            let (value, _, grads) = model
                .gradient(autograd::Device::Cpu, |tape, bound| {
                    let (_, aux) = model.forward_hidden(tape, bound, &batch, &ForwardOptions::eval())?;
                    let inputs: Vec<Tensor> = aux.into_iter().map(|a| a.input).collect();
                    let l = named_expert_loss(tape, bound, &inputs, &rt)?;
                    assert_eq!(l.count, 22);
                    Ok((l.loss, ()))
                })
                .unwrap();
            first.get_or_insert(value);
            let flat = model.params.flat_mut().unwrap();
            kernels_cpu::elementwise::axpy(flat, -0.5, &grads);
        }
        let after = acc(&model);
        assert!(after == 1.0 && before < 0.9, "routing accuracy {before} -> {after} (loss from {first:?})");
    }
}
