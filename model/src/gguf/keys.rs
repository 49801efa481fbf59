//! The model metadata keys of our GGUF files, and the config read back from them.
//!
//! Every key llama.cpp reads for `qwen3`, `glm4moe` and `dots1` is written, including the ones
//! older builds require or default badly (`docs: shared/research/gguf-gptq.md` §0-1):
//! `attention.key_length/value_length` (head_dim need not be D/H), `rope.freq_base` (defaults to
//! 10000), `expert_gating_func` (a missing key aborts dots1), `expert_weights_scale` 1.0,
//! `expert_weights_norm`, `leading_dense_block_count` 0, `expert_shared_count`.
//!
//! Routing: llama.cpp picks the top-k of `probs + exp_probs_b` with `probs = softmax | sigmoid(logits)`
//! and weights the expert by its unbiased prob, divided by their sum when `expert_weights_norm`.
//! Top-1 with the norm gives weight 1, as our `ste` (softmax choice) and `sigmoid` weightings do;
//! our `prob` weighting (weight = softmax prob) is softmax without the norm. The bias is our
//! aux-loss-free balancing bias, added to the same probabilities we choose by.
//!
//! Keys under `medmoe.` (ignored by llama.cpp) keep what the file layout loses, so loading the file
//! back gives the exact model: the real KV head count (dots1 repeats K/V), the unpadded shared
//! width, the router weighting. A file without `output.weight` has tied embeddings.

use super::format::MetaValue;
use super::names::{shared_layout, Arch};
use crate::config::Qwen3Config;
use crate::error::{ModelError, Result};
use crate::moe_spec::{parse_weighting, weighting_name, MoeSpec};
use autograd::ops::RouterWeighting;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

/// `general.quantization_version` of ggml's current block formats.
pub const QUANTIZATION_VERSION: usize = 2;

/// The general and architecture keys of a model written as `arch` with file type id `file_type`.
pub fn model_metadata(c: &Qwen3Config, moe: Option<&MoeSpec>, arch: Arch, file_type: u32) -> Vec<(String, MetaValue)> {
    let a = arch.name();
    let k = |s: &str| format!("{a}.{s}");
    let mut kv = vec![
        ("general.architecture".to_string(), MetaValue::Str(a.into())),
        ("general.file_type".to_string(), MetaValue::Uint(file_type as u64, 32)),
        ("general.quantization_version".to_string(), MetaValue::u32(QUANTIZATION_VERSION)),
        (k("context_length"), MetaValue::u32(c.max_position_embeddings)),
        (k("embedding_length"), MetaValue::u32(c.hidden_size)),
        (k("block_count"), MetaValue::u32(c.num_hidden_layers)),
        (k("feed_forward_length"), MetaValue::u32(c.intermediate_size)),
        (k("attention.head_count"), MetaValue::u32(c.num_attention_heads)),
        (k("attention.head_count_kv"), MetaValue::u32(c.num_key_value_heads * arch.kv_repeat(c))),
        (k("attention.key_length"), MetaValue::u32(c.head_dim)),
        (k("attention.value_length"), MetaValue::u32(c.head_dim)),
        (k("attention.layer_norm_rms_epsilon"), MetaValue::F32(c.rms_norm_eps as f32)),
        (k("rope.freq_base"), MetaValue::F32(c.rope_theta as f32)),
        (k("rope.dimension_count"), MetaValue::u32(c.head_dim)),
    ];
    if let Some(m) = moe {
        let (n_shared, _) = shared_layout(m);
        let gating = if m.weighting == RouterWeighting::Sigmoid { 2 } else { 1 };
        kv.extend([
            (k("expert_count"), MetaValue::u32(m.num_experts)),
            (k("expert_used_count"), MetaValue::u32(1)),
            (k("expert_feed_forward_length"), MetaValue::u32(m.expert_width)),
            (k("expert_shared_count"), MetaValue::u32(n_shared)),
            (k("leading_dense_block_count"), MetaValue::u32(0)),
            (k("expert_weights_scale"), MetaValue::F32(1.0)),
            (k("expert_weights_norm"), MetaValue::Bool(m.weighting != RouterWeighting::Prob)),
            (k("expert_gating_func"), MetaValue::u32(gating)),
        ]);
        if arch == Arch::Glm4Moe {
            kv.push((k("nextn_predict_layers"), MetaValue::u32(0)));
        }
        kv.extend([
            ("medmoe.shared_width".to_string(), MetaValue::u32(m.shared_width)),
            ("medmoe.router_weighting".to_string(), MetaValue::Str(weighting_name(m.weighting).into())),
        ]);
    }
    kv.push(("medmoe.head_count_kv".to_string(), MetaValue::u32(c.num_key_value_heads)));
    kv
}

/// Reads the model config (and MoE spec) back from a GGUF's keys. `vocab` is `token_embd`'s row
/// count, `has_output` whether the file holds `output.weight`, `path` names the file in errors.
pub fn config_from_metadata(
    kv: &HashMap<String, MetaValue>,
    vocab: usize,
    has_output: bool,
    path: &Path,
) -> Result<(Qwen3Config, Option<MoeSpec>, Arch)> {
    let field = |key: &str, msg: String| ModelError::ConfigField { path: path.to_path_buf(), field: key.into(), msg };
    let arch_name = kv
        .get("general.architecture")
        .and_then(MetaValue::as_str)
        .ok_or_else(|| field("general.architecture", "missing or not a string".into()))?;
    let arch = Arch::from_name(arch_name).ok_or_else(|| {
        field("general.architecture", format!("`{arch_name}` is not supported (we read qwen3, glm4moe, dots1)"))
    })?;
    let a = arch.name();
    let uint = |key: &str| -> Result<Option<usize>> {
        match kv.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as usize))
                .ok_or_else(|| field(key, format!("expected an unsigned integer, got {}", v.describe()))),
        }
    };
    let req = |s: &str| -> Result<usize> {
        let key = format!("{a}.{s}");
        uint(&key)?.ok_or_else(|| field(&key, "missing".into()))
    };
    let float = |s: &str| -> Result<Option<f64>> {
        let key = format!("{a}.{s}");
        match kv.get(&key) {
            None => Ok(None),
            Some(v) => {
                v.as_f64().map(Some).ok_or_else(|| field(&key, format!("expected a number, got {}", v.describe())))
            }
        }
    };
    let heads = req("attention.head_count")?;
    let d = req("embedding_length")?;
    let head_dim = uint(&format!("{a}.attention.key_length"))?.unwrap_or(d / heads.max(1));
    let kv_heads = match uint("medmoe.head_count_kv")? {
        Some(x) => x,
        None => uint(&format!("{a}.attention.head_count_kv"))?.unwrap_or(heads),
    };
    // Tied exactly when the file has no output.weight: a dots1 file always has one, and after
    // quantization it may differ from token_embd (llama.cpp uses each for its own job).
    let tied = !has_output;
    let mut moe = None;
    let mut ffn = uint(&format!("{a}.feed_forward_length"))?;
    if arch.is_moe() {
        let experts = req("expert_count")?;
        let used = req("expert_used_count")?;
        if used != 1 {
            return Err(field(&format!("{a}.expert_used_count"), format!("{used}: only top-1 routing is supported")));
        }
        if uint(&format!("{a}.leading_dense_block_count"))?.unwrap_or(0) != 0 {
            return Err(field(
                &format!("{a}.leading_dense_block_count"),
                "leading dense layers are not supported".into(),
            ));
        }
        let scale = float("expert_weights_scale")?.unwrap_or(1.0);
        if scale != 1.0 && scale != 0.0 {
            return Err(field(&format!("{a}.expert_weights_scale"), format!("{scale}: only 1 is supported")));
        }
        let width = req("expert_feed_forward_length")?;
        let n_shared = uint(&format!("{a}.expert_shared_count"))?.unwrap_or(0);
        let shared = uint("medmoe.shared_width")?.unwrap_or(n_shared * width);
        let weighting = match kv.get("medmoe.router_weighting").and_then(MetaValue::as_str) {
            Some(w) => parse_weighting(w).ok_or_else(|| field("medmoe.router_weighting", format!("unknown `{w}`")))?,
            None => {
                let norm = kv.get(&format!("{a}.expert_weights_norm")).and_then(MetaValue::as_bool).unwrap_or(false);
                match (uint(&format!("{a}.expert_gating_func"))?, norm) {
                    (Some(2), _) => RouterWeighting::Sigmoid,
                    (_, false) => RouterWeighting::Prob,
                    _ => RouterWeighting::Ste,
                }
            }
        };
        ffn = ffn.or(Some(width));
        moe = Some(MoeSpec { num_experts: experts, expert_width: width, shared_width: shared, weighting });
    }
    let mut obj = json!({
        "model_type": if moe.is_some() { "medmoe" } else { "qwen3" },
        "vocab_size": vocab,
        "hidden_size": d,
        "intermediate_size": ffn.ok_or_else(|| field(&format!("{a}.feed_forward_length"), "missing".into()))?,
        "num_hidden_layers": req("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": float("attention.layer_norm_rms_epsilon")?.ok_or_else(|| field(&format!("{a}.attention.layer_norm_rms_epsilon"), "missing".into()))?,
        "rope_theta": float("rope.freq_base")?.unwrap_or(10000.0),
        "tie_word_embeddings": tied,
        "max_position_embeddings": req("context_length")?,
        "torch_dtype": "float32",
    });
    if let (Some(m), Value::Object(o)) = (&moe, &mut obj) {
        o.insert("moe".into(), m.to_json());
    }
    let config = Qwen3Config::from_json(&obj.to_string(), path)?;
    Ok((config, moe, arch))
}
