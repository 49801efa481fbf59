//! MoQE, a mixture of quantization experts (after arXiv 2508.09204): quantized variants of one
//! dense model (e.g. its Q4_K_M, Q5_K_M and Q8_0 GGUF exports, dequantized at load) become the
//! routed experts of a medmoe MoE. Expert `e` of layer `l` is variant `e`'s FFN of layer `l`;
//! attention, norms, embedding and head come from one chosen variant; no shared expert. Each
//! layer's top-1 router (`ste`: the chosen FFN's output weight is 1) picks a variant's FFN per
//! token, so the active compute is one FFN, as in any single variant. Only the routers train
//! ([`GateTrainer`]): next-token cross-entropy, dropless, AdamW on the router weights alone.

use crate::error::{ModelError, Result};
use crate::moe_spec::MoeSpec;
use crate::qwen3::{ag, ForwardOptions, Qwen3};
use crate::router_training::RouterTraining;
use crate::TokenBatch;
use autograd::ops::RouterWeighting;
use autograd::{DType, Device};
use kernels_cpu::adamw::{adamw_step, AdamWConfig};
use rand::SeedableRng;

/// The MoQE of `variants` (dense models of one architecture), with everything but the FFNs from
/// `variants[rest_from]` and routers drawn from N(0, 0.02²) with `seed`.
pub fn build_moqe(variants: &[&Qwen3], rest_from: usize, seed: u64) -> Result<Qwen3> {
    let first = variants.first().ok_or_else(|| ModelError::Invalid("MoQE needs at least 2 variants".into()))?;
    if variants.len() < 2 || rest_from >= variants.len() {
        return Err(ModelError::Invalid(format!(
            "MoQE needs at least 2 variants and a variant to take attention from; got {} variants, index {rest_from}",
            variants.len()
        )));
    }
    let c = &first.config;
    for (i, v) in variants.iter().enumerate() {
        let same = v.config.hidden_size == c.hidden_size
            && v.config.intermediate_size == c.intermediate_size
            && v.config.num_hidden_layers == c.num_hidden_layers
            && v.config.vocab_size == c.vocab_size
            && v.config.tie_word_embeddings == c.tie_word_embeddings;
        if v.moe.is_some() || !same {
            return Err(ModelError::Invalid(format!(
                "MoQE variant {i} is not a dense model of the first variant's shape (hidden {}, FFN {}, {} layers, vocab {})",
                c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
            )));
        }
    }
    let spec = MoeSpec {
        num_experts: variants.len(),
        expert_width: c.intermediate_size,
        shared_width: 0,
        weighting: RouterWeighting::Ste,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut error = None;
    let rest = variants[rest_from];
    let mut moe = Qwen3::from_init(rest.config.clone(), Some(spec), DType::F32, |name, n| {
        let mut from = |m: &Qwen3, name: &str| match m.params.get(name) {
            Ok(t) => t.to_vec(),
            Err(e) => {
                error.get_or_insert(ag(e));
                vec![0.0; n]
            }
        };
        if name.ends_with(".mlp.gate.weight") {
            return crate::init::normal(n, 0.02, &mut rng);
        }
        match name.split_once(".mlp.experts.") {
            Some((layer, rest_name)) => {
                let (e, proj) = rest_name.split_once('.').unwrap_or(("0", rest_name));
                let e: usize = e.parse().unwrap_or(0);
                from(variants[e], &format!("{layer}.mlp.{proj}"))
            }
            None => from(rest, name),
        }
    });
    if let Some(e) = error {
        return Err(e);
    }
    moe.config.raw.remove("quantization_config");
    Ok(moe)
}

/// AdamW over the routers of a MoQE alone (every other weight stays frozen).
pub struct GateTrainer {
    names: Vec<String>,
    m: Vec<f32>,
    v: Vec<f32>,
    step: u64,
    /// AdamW settings (no weight decay by default).
    pub cfg: AdamWConfig,
}

impl GateTrainer {
    /// A trainer of `model`'s routers at learning rate `lr`.
    pub fn new(model: &Qwen3, lr: f32) -> Result<Self> {
        if model.moe.is_none() {
            return Err(ModelError::Invalid("a gate trainer needs a MoE (MoQE) model".into()));
        }
        let names: Vec<String> =
            (0..model.config.num_hidden_layers).map(|l| format!("model.layers.{l}.mlp.gate.weight")).collect();
        let n: usize = names
            .iter()
            .map(|n| model.params.entry(n).map(|e| e.numel()))
            .sum::<std::result::Result<usize, _>>()
            .map_err(ag)?;
        let cfg = AdamWConfig { lr, weight_decay: 0.0, ..AdamWConfig::default() };
        Ok(GateTrainer { names, m: vec![0.0; n], v: vec![0.0; n], step: 0, cfg })
    }

    /// One step on `batch` / `targets` (next-token CE, dropless, temperature 1, no router
    /// losses); returns the cross-entropy before the update.
    pub fn step(&mut self, model: &mut Qwen3, batch: &TokenBatch, targets: &[i32]) -> Result<f32> {
        let fwd = ForwardOptions::train(0, RouterTraining::eval());
        let (_, ce, grads) = model.gradient(Device::Cpu, |tape, bound| {
            let o = model.loss(tape, bound, batch, targets, &fwd)?;
            Ok((o.loss, o.ce))
        })?;
        let mut values = Vec::with_capacity(self.m.len());
        let mut g = Vec::with_capacity(self.m.len());
        for name in &self.names {
            let e = model.params.entry(name).map_err(ag)?;
            values.extend(model.params.get(name).map_err(ag)?.to_vec());
            g.extend_from_slice(&grads[e.offset..e.offset + e.numel()]);
        }
        self.step += 1;
        adamw_step(&mut values, &g, &mut self.m, &mut self.v, &self.cfg, self.step);
        let mut at = 0;
        for name in &self.names {
            let n = model.params.entry(name).map_err(ag)?.numel();
            model.params.set(name, &values[at..at + n]).map_err(ag)?;
            at += n;
        }
        Ok(ce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Qwen3Config;
    use crate::init::qwen3_init;

    fn dense(seed: u64) -> Qwen3 {
        let json = r#"{"model_type": "qwen3", "vocab_size": 37, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
            "max_position_embeddings": 64}"#;
        Qwen3::from_init(
            Qwen3Config::from_json(json, std::path::Path::new("t.json")).unwrap(),
            None,
            DType::F32,
            qwen3_init(seed, 0.3),
        )
    }

    /// `m` with its FFN weights scaled by `a` (a stand-in for a worse quantized variant).
    fn scaled_ffn(m: &Qwen3, a: f32) -> Qwen3 {
        let mut out = m.clone();
        for e in m.params.entries().iter().filter(|e| e.name.contains(".mlp.")) {
            let v: Vec<f32> = m.params.get(&e.name).unwrap().to_vec().iter().map(|x| x * a).collect();
            out.params.set(&e.name, &v).unwrap();
        }
        out
    }

    #[test]
    fn identical_variants_compute_the_dense_model_and_the_gate_learns_the_better_variant() {
        let base = dense(5);
        let batch = TokenBatch::new((0..24).map(|i| (i * 5 % 37) as u32).collect(), 2, 12).unwrap();
        let same = build_moqe(&[&base, &base, &base], 1, 3).unwrap();
        let (a, b) = (base.logits(&batch).unwrap(), same.logits(&batch).unwrap());
        let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(diff <= 1e-5, "identical variants: {diff}");

        // Targets the base model already predicts: its own argmax. The variant with FFNs zeroed
        // predicts them worse, so the gate should move tokens to variant 0.
        let v = 37;
        let targets: Vec<i32> =
            a.chunks(v).map(|r| (0..v).max_by(|&i, &j| r[i].total_cmp(&r[j])).unwrap() as i32).collect();
        let worse = scaled_ffn(&base, 0.0);
        let mut moqe = build_moqe(&[&base, &worse], 1, 3).unwrap();
        let mut gate = GateTrainer::new(&moqe, 0.05).unwrap();
        let first = gate.step(&mut moqe, &batch, &targets).unwrap();
        let mut last = first;
        for _ in 0..40 {
            last = gate.step(&mut moqe, &batch, &targets).unwrap();
        }
        assert!(last < first, "gate training lowers the loss: {first} -> {last}");
        // Only the routers moved.
        for e in moqe.params.entries().iter().filter(|e| !e.name.ends_with("mlp.gate.weight")) {
            let src = if e.name.contains(".mlp.experts.0.") {
                base.params.get(&e.name.replace("experts.0.", "")).unwrap().to_vec()
            } else if e.name.contains(".mlp.experts.1.") {
                worse.params.get(&e.name.replace("experts.1.", "")).unwrap().to_vec()
            } else {
                worse.params.get(&e.name).unwrap().to_vec()
            };
            assert_eq!(moqe.params.get(&e.name).unwrap().to_vec(), src, "{} moved", e.name);
        }
        let e = build_moqe(&[&base], 0, 0).unwrap_err().to_string();
        assert!(e.contains("at least 2"), "{e}");
    }
}
