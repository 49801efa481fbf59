//! The quantization the MoE ships with, by role, so the references get "the same mask" (seed
//! plan: dense references are PTQ'd with exactly the shipped MoE's mask, no QAT).
//!
//! A role is a kind of weight that every model of the comparison has: the FFN (routed experts
//! and the shared expert of the MoE; gate / up / down of a dense model), attention V and output
//! projections, and the rest (embedding, Q, K). One [`ShipMask`] becomes a GGUF `--mask` rule
//! list per architecture ([`ShipMask::rules`]); norms, the router and 1-D tensors stay F32 as
//! the exporter always keeps them.
//!
//! The default is FFN Q5_0, V/O Q8_0, rest F16: the tiny presets' widths (expert 64, shared
//! 160, small dense FFN 224) are not multiples of Q5_K's 256-value super-blocks, and the mask
//! is strict (no fallback), so the 5-bit type every width takes is Q5_0. A run of Qwen3-1.7B
//! shapes would name `q5_k` here.

use crate::error::{EngineError, Result};
use model::gguf::Mask;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// GGUF types per role (names as `export gguf --mask` takes them: f32, f16, bf16, q8_0, q5_0, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShipMask {
    /// FFN weights: routed experts + shared expert (MoE), gate / up / down (dense).
    pub ffn: String,
    /// Attention V projections.
    pub attn_v: String,
    /// Attention output projections.
    pub attn_output: String,
    /// Every other quantizable weight (embedding, Q, K, an untied LM head).
    pub rest: String,
}

impl Default for ShipMask {
    fn default() -> Self {
        ShipMask { ffn: "q5_0".into(), attn_v: "q8_0".into(), attn_output: "q8_0".into(), rest: "f16".into() }
    }
}

impl ShipMask {
    /// The `--mask` rules for a MoE (`moe`: with a shared expert or not) or a dense model.
    pub fn rules(&self, moe: Option<bool>) -> serde_json::Value {
        let rule = |p: &str, t: &str| serde_json::json!({ "pattern": p, "type": t });
        let mut rules = match moe {
            Some(shared) => {
                let mut r = vec![rule("blk.*.ffn_*_exps.weight", &self.ffn)];
                if shared {
                    r.push(rule("blk.*.ffn_*_shexp.weight", &self.ffn));
                }
                r
            }
            None => ["gate", "up", "down"].map(|w| rule(&format!("blk.*.ffn_{w}.weight"), &self.ffn)).to_vec(),
        };
        rules.push(rule("blk.*.attn_v.weight", &self.attn_v));
        rules.push(rule("blk.*.attn_output.weight", &self.attn_output));
        rules.push(rule("*", &self.rest));
        serde_json::Value::Array(rules)
    }

    /// The mask of [`ShipMask::rules`], named `path` in messages (the file it is written to).
    pub fn mask(&self, moe: Option<bool>, path: &Path) -> Result<Mask> {
        Ok(Mask::from_json(&self.rules(moe).to_string(), path)?)
    }

    /// Checks the type names (`source` names the run config).
    pub fn validate(&self, source: &str) -> Result<()> {
        for (field, ty) in
            [("ffn", &self.ffn), ("attn_v", &self.attn_v), ("attn_output", &self.attn_output), ("rest", &self.rest)]
        {
            if kernels_cpu::quant::BlockType::from_name(ty).is_none() {
                return Err(EngineError::config(
                    format!("{source} field `ship_mask.{field}`"),
                    format!("unknown GGUF type `{ty}` (f32, f16, bf16, q8_0, q6_k, q5_k, q5_1, q5_0, q4_k, q4_0)"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_mask_gives_the_same_types_to_the_same_roles_of_moe_and_dense_models() {
        let m = ShipMask::default();
        let moe = m.mask(Some(true), Path::new("moe.json")).unwrap();
        let dense = m.mask(None, Path::new("dense.json")).unwrap();
        let ty = |mask: &Mask, name: &str| {
            mask.rules.iter().find(|r| model::gguf::mask::glob_match(&r.pattern, name)).map(|r| r.ty.name())
        };
        for (moe_name, dense_name, want) in [
            ("blk.0.ffn_down_exps.weight", "blk.0.ffn_down.weight", "Q5_0"),
            ("blk.3.ffn_gate_shexp.weight", "blk.3.ffn_gate.weight", "Q5_0"),
            ("blk.1.attn_v.weight", "blk.1.attn_v.weight", "Q8_0"),
            ("blk.1.attn_output.weight", "blk.1.attn_output.weight", "Q8_0"),
            ("token_embd.weight", "token_embd.weight", "F16"),
            ("blk.2.attn_q.weight", "blk.2.attn_q.weight", "F16"),
        ] {
            assert_eq!(ty(&moe, moe_name), Some(want), "{moe_name}");
            assert_eq!(ty(&dense, dense_name), Some(want), "{dense_name}");
        }
        // No shared expert, no shared rule (a rule matching nothing is an export error).
        assert!(!m.rules(Some(false)).to_string().contains("shexp"));
        let bad = ShipMask { attn_v: "q3_k".into(), ..m };
        let e = bad.validate("run.json").unwrap_err().to_string();
        assert!(e.contains("run.json field `ship_mask.attn_v`") && e.contains("q3_k"), "{e}");
    }
}
