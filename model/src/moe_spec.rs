//! The MoE section of a medmoe checkpoint's config.json (`"model_type": "medmoe"`): the
//! architecture only.
//!
//! ```json
//! "moe": { "num_experts": 16, "expert_width": 64, "shared_width": 160, "router_weighting": "ste" }
//! ```
//! Every FFN is one always-on shared SwiGLU expert of `shared_width` plus `num_experts` routed
//! SwiGLU experts of `expert_width`, top-1. The aux-loss-free balancing bias is a per-layer
//! tensor of the checkpoint (`Qwen3::router_bias`), not a config field.
//!
//! Router *training* settings (capacity factor, temperature, load-balance / z coefficients,
//! expert dropout, noise) are not part of a model: they are
//! [`crate::router_training::RouterTraining`], set per step by the trainer and saved in its
//! state. Configs written before that split still carry them in this section
//! ([`LEGACY_TRAINING_FIELDS`]); reading ignores them and writing never emits them.

use crate::config::Qwen3Config;
use crate::error::{ModelError, Result};
use autograd::ops::RouterWeighting;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Router training fields that older `moe` sections carried; read and ignored.
pub const LEGACY_TRAINING_FIELDS: [&str; 6] =
    ["router_temperature", "capacity_factor", "expert_dropout", "router_noise", "lb_coef", "z_coef"];

/// MoE architecture of a model (the config's `moe` section, resolved).
#[derive(Clone, Debug, PartialEq)]
pub struct MoeSpec {
    /// Routed experts E.
    pub num_experts: usize,
    /// Routed expert width W.
    pub expert_width: usize,
    /// Shared expert width S.
    pub shared_width: usize,
    /// How the routed expert's output is weighted.
    pub weighting: RouterWeighting,
}

/// The raw JSON form (unknown fields, among them [`LEGACY_TRAINING_FIELDS`], are ignored).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RawMoe {
    num_experts: usize,
    expert_width: usize,
    shared_width: usize,
    #[serde(default = "default_weighting")]
    router_weighting: String,
}

fn default_weighting() -> String {
    "ste".into()
}

/// Parses a weighting name (`ste`, `prob`, `sigmoid`).
pub fn parse_weighting(s: &str) -> Option<RouterWeighting> {
    match s {
        "ste" => Some(RouterWeighting::Ste),
        "prob" => Some(RouterWeighting::Prob),
        "sigmoid" => Some(RouterWeighting::Sigmoid),
        _ => None,
    }
}

/// The name [`parse_weighting`] reads.
pub fn weighting_name(w: RouterWeighting) -> &'static str {
    match w {
        RouterWeighting::Ste => "ste",
        RouterWeighting::Prob => "prob",
        RouterWeighting::Sigmoid => "sigmoid",
    }
}

impl MoeSpec {
    /// The `moe` section of `config` (None for a dense model). `path` names the file in errors.
    pub fn from_config(config: &Qwen3Config, path: &Path) -> Result<Option<Self>> {
        let is_moe = config.raw.get("model_type").and_then(|v| v.as_str()) == Some("medmoe");
        let Some(section) = config.raw.get("moe") else {
            if is_moe {
                return Err(field(path, "moe", "a medmoe config needs a `moe` section".into()));
            }
            return Ok(None);
        };
        let raw: RawMoe = serde_json::from_value(section.clone()).map_err(|e| field(path, "moe", e.to_string()))?;
        let weighting = parse_weighting(&raw.router_weighting).ok_or_else(|| {
            field(path, "moe.router_weighting", format!("`{}` is not one of ste, prob, sigmoid", raw.router_weighting))
        })?;
        let positive = [("moe.num_experts", raw.num_experts), ("moe.expert_width", raw.expert_width)];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(field(path, name, "must be positive".into()));
        }
        Ok(Some(MoeSpec {
            num_experts: raw.num_experts,
            expert_width: raw.expert_width,
            shared_width: raw.shared_width,
            weighting,
        }))
    }

    /// The JSON `moe` section (architecture fields only).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(RawMoe {
            num_experts: self.num_experts,
            expert_width: self.expert_width,
            shared_width: self.shared_width,
            router_weighting: weighting_name(self.weighting).into(),
        })
        .expect("plain struct serialises")
    }

    /// Writes this section (and `model_type: medmoe`) into `config`.
    pub fn apply_to(&self, config: &mut Qwen3Config) {
        config.raw.insert("model_type".into(), "medmoe".into());
        config.raw.insert("architectures".into(), serde_json::json!(["MedMoeForCausalLM"]));
        config.raw.insert("moe".into(), self.to_json());
    }
}

fn field(path: &Path, field: &str, msg: String) -> ModelError {
    ModelError::ConfigField { path: path.to_path_buf(), field: field.into(), msg }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(moe: &str) -> Qwen3Config {
        let json = format!(
            r#"{{"model_type": "medmoe", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 24,
                "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
                "max_position_embeddings": 64, "moe": {moe}}}"#
        );
        Qwen3Config::from_json(&json, Path::new("config.json")).unwrap()
    }

    #[test]
    fn legacy_router_training_fields_are_read_and_ignored_and_never_written() {
        // A config.json written before the router training settings left the model.
        let legacy = config(
            r#"{"num_experts": 4, "expert_width": 8, "shared_width": 12, "router_weighting": "sigmoid",
                "router_temperature": 0.6, "capacity_factor": 1.25, "expert_dropout": 0.05,
                "router_noise": 0.01, "lb_coef": 0.015, "z_coef": 0.0001}"#,
        );
        let spec = MoeSpec::from_config(&legacy, Path::new("config.json")).unwrap().unwrap();
        let arch = MoeSpec { num_experts: 4, expert_width: 8, shared_width: 12, weighting: RouterWeighting::Sigmoid };
        assert_eq!(spec, arch);
        let fresh =
            config(r#"{"num_experts": 4, "expert_width": 8, "shared_width": 12, "router_weighting": "sigmoid"}"#);
        assert_eq!(MoeSpec::from_config(&fresh, Path::new("config.json")).unwrap().unwrap(), arch);

        let json = spec.to_json();
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["expert_width", "num_experts", "router_weighting", "shared_width"]);
        let mut written = legacy.clone();
        spec.apply_to(&mut written);
        let text = serde_json::to_string(&written.raw["moe"]).unwrap();
        for f in LEGACY_TRAINING_FIELDS {
            assert!(!text.contains(f), "{f} written: {text}");
        }
    }

    #[test]
    fn bad_sections_are_field_errors() {
        for (moe, want) in [
            (r#"{"num_experts": 0, "expert_width": 8, "shared_width": 0}"#, "moe.num_experts"),
            (
                r#"{"num_experts": 4, "expert_width": 8, "shared_width": 0, "router_weighting": "x"}"#,
                "moe.router_weighting",
            ),
            (r#"{"num_experts": 4}"#, "moe"),
        ] {
            let e = MoeSpec::from_config(&config(moe), Path::new("config.json")).unwrap_err();
            assert!(matches!(&e, ModelError::ConfigField { field, .. } if field == want), "{moe}: {e}");
        }
    }
}
