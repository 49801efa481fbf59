//! Our tensors (HF names: Qwen3, with Dots1 names for the MoE FFN) as llama.cpp tensors: GGUF
//! name, dims (`ne`, row length first) and how each row is made from our rows. One plan serves the
//! writer (rows gathered from the source) and the loader (rows scattered back), so they cannot
//! disagree.
//!
//! Architectures:
//! - `qwen3` for dense models: one GGUF tensor per HF tensor.
//! - `glm4moe` for the MoE (the default): Qwen3 attention with real GQA, the FFN pre-norm named
//!   `post_attention_norm`, an `exp_probs_b.bias` (required by llama.cpp; our balancing bias,
//!   zeros when unused), `output.weight` only when untied.
//! - `dots1` for the MoE: llama.cpp builds dots1's K/V as wide as Q, so each KV head's rows are
//!   repeated `H / KV` times (query head h uses KV head h / (H/KV), so the function is the same);
//!   `output.weight` is always written (dots1 has no tied fallback).
//!
//! MoE FFN: routed experts stacked into `ffn_{gate,up,down}_exps` (`ne = [D, W, E]` / `[W, D, E]`,
//! expert e's rows contiguous); the shared expert zero-padded to whole experts
//! (`P = n_shared * W`, [`crate::export::shared_padding`]) as llama.cpp requires
//! `expert_shared_count * expert_feed_forward_length` rows: padded gate/up rows are zero, padded down
//! columns are zero, so the output is unchanged (as in our HF Dots1 export).

use crate::config::Qwen3Config;
use crate::export::shared_padding;
use crate::moe_spec::MoeSpec;

/// The llama.cpp architecture a GGUF is written as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Dense Qwen3.
    Qwen3,
    /// Our MoE as GLM-4.5-MoE (real GQA).
    Glm4Moe,
    /// Our MoE as dots.llm1 (K/V heads repeated to MHA).
    Dots1,
}

impl Arch {
    /// `general.architecture` value (also the key prefix).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Qwen3 => "qwen3",
            Arch::Glm4Moe => "glm4moe",
            Arch::Dots1 => "dots1",
        }
    }

    /// The architecture named `s`, if we write or read it.
    pub fn from_name(s: &str) -> Option<Arch> {
        [Arch::Qwen3, Arch::Glm4Moe, Arch::Dots1].into_iter().find(|a| a.name() == s)
    }

    /// Whether this is an MoE architecture.
    pub fn is_moe(self) -> bool {
        self != Arch::Qwen3
    }

    /// How many times each KV head is written (1 except dots1).
    pub fn kv_repeat(self, c: &Qwen3Config) -> usize {
        match self {
            Arch::Dots1 => c.num_attention_heads / c.num_key_value_heads.max(1),
            _ => 1,
        }
    }
}

/// Where a run of rows of a GGUF tensor comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Segment {
    /// `rows` rows of HF tensor `name` from `first_row`; each source row has `cols` values and is
    /// zero-padded to the GGUF row length.
    Hf {
        /// HF tensor name.
        name: String,
        /// First source row.
        first_row: usize,
        /// Rows taken.
        rows: usize,
        /// Values per source row (<= the GGUF row length).
        cols: usize,
    },
    /// `rows` rows of zeros.
    Zero {
        /// Rows.
        rows: usize,
    },
    /// The (single-row) router balancing bias of a layer.
    RouterBias {
        /// Layer index.
        layer: usize,
    },
}

impl Segment {
    /// Rows this segment produces.
    pub fn rows(&self) -> usize {
        match self {
            Segment::Hf { rows, .. } | Segment::Zero { rows } => *rows,
            Segment::RouterBias { .. } => 1,
        }
    }
}

/// One GGUF tensor of the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedTensor {
    /// GGUF name.
    pub name: String,
    /// ggml dims, row length first.
    pub ne: Vec<usize>,
    /// Layer index (`blk.N.`), if any.
    pub layer: Option<usize>,
    /// The rows, in order.
    pub segments: Vec<Segment>,
}

impl PlannedTensor {
    /// Row length (`ne[0]`).
    pub fn row_len(&self) -> usize {
        self.ne[0]
    }

    /// Number of rows (product of `ne[1..]`).
    pub fn rows(&self) -> usize {
        self.ne[1..].iter().product()
    }

    /// Total values.
    pub fn numel(&self) -> usize {
        self.ne.iter().product()
    }
}

fn whole(name: &str, rows: usize, cols: usize) -> Segment {
    Segment::Hf { name: name.to_string(), first_row: 0, rows, cols }
}

fn tensor(name: String, ne: Vec<usize>, layer: Option<usize>, segments: Vec<Segment>) -> PlannedTensor {
    PlannedTensor { name, ne, layer, segments }
}

/// `(n_shared, padded width P)` of the shared expert in the GGUF.
pub fn shared_layout(m: &MoeSpec) -> (usize, usize) {
    shared_padding(m.shared_width, m.expert_width)
}

/// The GGUF tensors of a model with `config` (and `moe`) written as `arch`.
pub fn plan(c: &Qwen3Config, moe: Option<&MoeSpec>, arch: Arch) -> Vec<PlannedTensor> {
    let (d, dh, h, kv, v) = (c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads, c.vocab_size);
    let rep = arch.kv_repeat(c);
    let mut out =
        vec![tensor("token_embd.weight".into(), vec![d, v], None, vec![whole("model.embed_tokens.weight", v, d)])];
    for i in 0..c.num_hidden_layers {
        let hf = |s: &str| format!("model.layers.{i}.{s}.weight");
        let gg = |s: &str| format!("blk.{i}.{s}");
        let one = |g: &str, hfn: &str, ne: Vec<usize>| {
            let rows = ne[1..].iter().product();
            tensor(gg(g), ne.clone(), Some(i), vec![whole(&hf(hfn), rows, ne[0])])
        };
        out.push(one("attn_norm.weight", "input_layernorm", vec![d]));
        out.push(one("attn_q.weight", "self_attn.q_proj", vec![d, h * dh]));
        for (g, n) in [("attn_k.weight", "self_attn.k_proj"), ("attn_v.weight", "self_attn.v_proj")] {
            // Output head j is KV head j / rep.
            let segs = (0..kv * rep)
                .map(|j| Segment::Hf { name: hf(n), first_row: (j / rep) * dh, rows: dh, cols: d })
                .collect();
            out.push(tensor(gg(g), vec![d, kv * rep * dh], Some(i), segs));
        }
        out.push(one("attn_output.weight", "self_attn.o_proj", vec![h * dh, d]));
        out.push(one("attn_q_norm.weight", "self_attn.q_norm", vec![dh]));
        out.push(one("attn_k_norm.weight", "self_attn.k_norm", vec![dh]));
        let ffn_norm = if arch == Arch::Glm4Moe { "post_attention_norm.weight" } else { "ffn_norm.weight" };
        out.push(one(ffn_norm, "post_attention_layernorm", vec![d]));
        match moe {
            None => {
                let f = c.intermediate_size;
                out.push(one("ffn_gate.weight", "mlp.gate_proj", vec![d, f]));
                out.push(one("ffn_up.weight", "mlp.up_proj", vec![d, f]));
                out.push(one("ffn_down.weight", "mlp.down_proj", vec![f, d]));
            }
            Some(m) => {
                let (e, w, s) = (m.num_experts, m.expert_width, m.shared_width);
                let (_, p) = shared_layout(m);
                out.push(one("ffn_gate_inp.weight", "mlp.gate", vec![d, e]));
                out.push(tensor(gg("exp_probs_b.bias"), vec![e], Some(i), vec![Segment::RouterBias { layer: i }]));
                for (g, k) in [("ffn_gate_exps", "gate_proj"), ("ffn_up_exps", "up_proj")] {
                    let segs = (0..e).map(|x| whole(&hf(&format!("mlp.experts.{x}.{k}")), w, d)).collect();
                    out.push(tensor(gg(&format!("{g}.weight")), vec![d, w, e], Some(i), segs));
                }
                let segs = (0..e).map(|x| whole(&hf(&format!("mlp.experts.{x}.down_proj")), d, w)).collect();
                out.push(tensor(gg("ffn_down_exps.weight"), vec![w, d, e], Some(i), segs));
                for (g, k) in [("ffn_gate_shexp", "gate_proj"), ("ffn_up_shexp", "up_proj")] {
                    let mut segs = Vec::new();
                    if s > 0 {
                        segs.push(whole(&hf(&format!("mlp.shared_experts.{k}")), s, d));
                    }
                    segs.push(Segment::Zero { rows: p - s });
                    segs.retain(|x| x.rows() > 0);
                    out.push(tensor(gg(&format!("{g}.weight")), vec![d, p], Some(i), segs));
                }
                let down =
                    if s > 0 { whole(&hf("mlp.shared_experts.down_proj"), d, s) } else { Segment::Zero { rows: d } };
                out.push(tensor(gg("ffn_down_shexp.weight"), vec![p, d], Some(i), vec![down]));
            }
        }
    }
    out.push(tensor("output_norm.weight".into(), vec![d], None, vec![whole("model.norm.weight", 1, d)]));
    let head = if c.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
    if !c.tie_word_embeddings || arch == Arch::Dots1 {
        out.push(tensor("output.weight".into(), vec![d, v], None, vec![whole(head, v, d)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::embedded_moe;

    #[test]
    fn every_plan_row_count_matches_its_dims() {
        let (c, m) = embedded_moe("tiny-k1p1-n16").unwrap();
        for arch in [Arch::Glm4Moe, Arch::Dots1] {
            for t in plan(&c, Some(&m), arch) {
                let rows: usize = t.segments.iter().map(Segment::rows).sum();
                assert_eq!(rows, t.rows().max(1), "{}", t.name);
            }
        }
        let dots = plan(&c, Some(&m), Arch::Dots1);
        let k = dots.iter().find(|t| t.name == "blk.0.attn_k.weight").unwrap();
        assert_eq!(k.ne, vec![c.hidden_size, c.num_attention_heads * c.head_dim]);
        assert!(dots.iter().any(|t| t.name == "output.weight"));
        let glm = plan(&c, Some(&m), Arch::Glm4Moe);
        assert!(glm.iter().any(|t| t.name == "blk.3.post_attention_norm.weight"));
        assert_eq!(glm.iter().any(|t| t.name == "output.weight"), !c.tie_word_embeddings);
    }
}
