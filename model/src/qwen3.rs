//! The dense Qwen3 decoder: parameter layout (HF names), loading, forward and loss.
//!
//! Per layer: `x += o_proj(attn(rope(q_norm(q_proj(n1))), rope(k_norm(k_proj(n1))), v_proj(n1)))`
//! with `n1 = input_layernorm(x)`, then `x += down_proj(silu(gate_proj(n2)) * up_proj(n2))` with
//! `n2 = post_attention_layernorm(x)`; finally `norm(x)` and the (tied or untied) LM head.

use crate::batch::TokenBatch;
use crate::config::Qwen3Config;
use crate::error::{ModelError, Result};
use autograd::ops::{self, CrossEntropyOutput};
use autograd::{DType, ParamTable, Tape, Tensor};
use kernels_cpu::attention::AttnDims;
use kernels_cpu::rope::RopeTable;
use std::sync::Arc;

/// Turns an autograd error (shape or index problems on caller data) into a model error.
pub(crate) fn ag(e: autograd::AutogradError) -> ModelError {
    ModelError::Invalid(e.to_string())
}

/// HF names and shapes of every parameter, in layout order (q/k/v and gate/up adjacent).
pub fn param_specs(c: &Qwen3Config) -> Vec<(String, Vec<usize>)> {
    let (d, f, dh) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (qd, kvd) = (c.num_attention_heads * dh, c.num_key_value_heads * dh);
    let mut specs = vec![("model.embed_tokens.weight".to_string(), vec![c.vocab_size, d])];
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        specs.extend([
            (format!("{p}.input_layernorm.weight"), vec![d]),
            (format!("{p}.self_attn.q_proj.weight"), vec![qd, d]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kvd, d]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kvd, d]),
            (format!("{p}.self_attn.o_proj.weight"), vec![d, qd]),
            (format!("{p}.self_attn.q_norm.weight"), vec![dh]),
            (format!("{p}.self_attn.k_norm.weight"), vec![dh]),
            (format!("{p}.post_attention_layernorm.weight"), vec![d]),
            (format!("{p}.mlp.gate_proj.weight"), vec![f, d]),
            (format!("{p}.mlp.up_proj.weight"), vec![f, d]),
            (format!("{p}.mlp.down_proj.weight"), vec![d, f]),
        ]);
    }
    specs.push(("model.norm.weight".to_string(), vec![d]));
    if !c.tie_word_embeddings {
        specs.push(("lm_head.weight".to_string(), vec![c.vocab_size, d]));
    }
    specs
}

/// Tensors of one decoder layer, bound for one forward.
struct LayerTensors {
    input_norm: Tensor,
    /// q_proj, k_proj, v_proj fused: `[(H + 2 KV) * Dh, D]`.
    qkv: Tensor,
    o: Tensor,
    q_norm: Tensor,
    k_norm: Tensor,
    post_norm: Tensor,
    /// gate_proj, up_proj fused: `[2F, D]`.
    gate_up: Tensor,
    down: Tensor,
}

/// Every parameter bound (as tape leaves) for one forward.
pub struct Bound {
    embed: Tensor,
    layers: Vec<LayerTensors>,
    norm: Tensor,
    lm_head: Tensor,
    /// `(offset, leaf)` pairs for [`ParamTable::flat_grads_at`].
    pub leaves: Vec<(usize, Tensor)>,
}

/// A dense Qwen3 model: config, parameters and RoPE table.
#[derive(Clone, Debug)]
pub struct Qwen3 {
    /// The HF config it was built from.
    pub config: Qwen3Config,
    /// Parameters under HF names.
    pub params: ParamTable,
    /// Storage dtype each tensor had on disk (for saving back bit-identically).
    pub file_dtypes: Vec<(String, crate::safetensors_io::DType)>,
    rope: Arc<RopeTable>,
}

impl Qwen3 {
    /// A model from `config` with parameters filled by `init(name, numel)`.
    pub fn from_init(config: Qwen3Config, dtype: DType, init: impl FnMut(&str, usize) -> Vec<f32>) -> Self {
        let params = ParamTable::new(&param_specs(&config), dtype, init);
        let file_dtypes =
            params.entries().iter().map(|e| (e.name.clone(), crate::safetensors_io::DType::F32)).collect();
        let rope = Arc::new(RopeTable::new(config.head_dim, config.max_position_embeddings, config.rope_theta));
        Qwen3 { config, params, file_dtypes, rope }
    }

    /// Binds the parameters as leaves of `tape` (plain views on an inference tape); q/k/v and
    /// gate/up are bound as fused blocks so each is one GEMM.
    pub fn bind(&self, tape: &Tape) -> Bound {
        let t = &self.params;
        let mut leaves = Vec::new();
        let mut one = |names: &[&str]| {
            let (offset, leaf) = if names.len() == 1 { t.leaf(tape, names[0]) } else { t.fused_leaf(tape, names) }
                .expect("param_specs layout");
            leaves.push((offset, leaf.clone()));
            leaf
        };
        let embed = one(&["model.embed_tokens.weight"]);
        let layers = (0..self.config.num_hidden_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                let n = |s: &str| format!("{p}.{s}.weight");
                LayerTensors {
                    input_norm: one(&[&n("input_layernorm")]),
                    qkv: one(&[&n("self_attn.q_proj"), &n("self_attn.k_proj"), &n("self_attn.v_proj")]),
                    o: one(&[&n("self_attn.o_proj")]),
                    q_norm: one(&[&n("self_attn.q_norm")]),
                    k_norm: one(&[&n("self_attn.k_norm")]),
                    post_norm: one(&[&n("post_attention_layernorm")]),
                    gate_up: one(&[&n("mlp.gate_proj"), &n("mlp.up_proj")]),
                    down: one(&[&n("mlp.down_proj")]),
                }
            })
            .collect();
        let norm = one(&["model.norm.weight"]);
        let lm_head = if self.config.tie_word_embeddings { embed.clone() } else { one(&["lm_head.weight"]) };
        Bound { embed, layers, norm, lm_head, leaves }
    }

    /// Final normalised hidden states `[B*T, D]`.
    pub fn forward_hidden(&self, tape: &Tape, p: &Bound, batch: &TokenBatch) -> Result<Tensor> {
        let c = &self.config;
        let (h, kv, dh, f) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size);
        let n = batch.rows();
        if let Some(&p) = batch.pos.iter().find(|&&p| p as usize >= c.max_position_embeddings) {
            return Err(ModelError::Invalid(format!(
                "position {p} is beyond max_position_embeddings {}",
                c.max_position_embeddings
            )));
        }
        let eps = c.rms_norm_eps as f32;
        let dims = AttnDims { b: batch.b, t: batch.t, h, kv, dh };
        let mut x = ops::embedding(tape, &batch.ids, &p.embed).map_err(ag)?;
        for l in &p.layers {
            let n1 = ops::rmsnorm(tape, &x, &l.input_norm, eps).map_err(ag)?;
            let qkv = ops::linear(tape, &n1, &l.qkv).map_err(ag)?;
            let q = ops::slice_cols(tape, &qkv, 0, h * dh).map_err(ag)?.reshape(&[n * h, dh]);
            let k = ops::slice_cols(tape, &qkv, h * dh, kv * dh).map_err(ag)?.reshape(&[n * kv, dh]);
            let v = ops::slice_cols(tape, &qkv, (h + kv) * dh, kv * dh).map_err(ag)?;
            let q = ops::rmsnorm(tape, &q, &l.q_norm, eps).map_err(ag)?.reshape(&[n, h * dh]);
            let k = ops::rmsnorm(tape, &k, &l.k_norm, eps).map_err(ag)?.reshape(&[n, kv * dh]);
            let q = ops::rope(tape, &q, &batch.pos, &self.rope, h).map_err(ag)?;
            let k = ops::rope(tape, &k, &batch.pos, &self.rope, kv).map_err(ag)?;
            let a = ops::attention(tape, &q, &k, &v, batch.seg.as_ref(), dims).map_err(ag)?;
            let a = ops::linear(tape, &a, &l.o).map_err(ag)?;
            x = ops::add(tape, &x, &a).map_err(ag)?;
            let n2 = ops::rmsnorm(tape, &x, &l.post_norm, eps).map_err(ag)?;
            let gu = ops::linear(tape, &n2, &l.gate_up).map_err(ag)?;
            let g = ops::slice_cols(tape, &gu, 0, f).map_err(ag)?;
            let u = ops::slice_cols(tape, &gu, f, f).map_err(ag)?;
            let m = ops::swiglu(tape, &g, &u).map_err(ag)?;
            let m = ops::linear(tape, &m, &l.down).map_err(ag)?;
            x = ops::add(tape, &x, &m).map_err(ag)?;
        }
        ops::rmsnorm(tape, &x, &p.norm, eps).map_err(ag)
    }

    /// Mean next-token cross-entropy; `targets [B*T]` holds the token each position predicts
    /// (`-100` to ignore).
    pub fn loss(&self, tape: &Tape, p: &Bound, batch: &TokenBatch, targets: &[i32]) -> Result<CrossEntropyOutput> {
        let hidden = self.forward_hidden(tape, p, batch)?;
        ops::lm_head_cross_entropy(tape, &hidden, &p.lm_head, targets).map_err(ag)
    }

    /// Logits `[B*T, V]` (inference, no tape).
    pub fn logits(&self, batch: &TokenBatch) -> Result<Vec<f32>> {
        let tape = Tape::inference();
        let p = self.bind(&tape);
        let hidden = self.forward_hidden(&tape, &p, batch)?;
        Ok(ops::linear(&tape, &hidden, &p.lm_head).map_err(ag)?.to_vec())
    }

    /// Number of parameters (tied embeddings counted once).
    pub fn num_params(&self) -> usize {
        self.params.numel()
    }
}
