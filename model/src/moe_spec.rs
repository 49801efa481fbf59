//! The MoE section of a medmoe checkpoint's config.json (`"model_type": "medmoe"`).
//!
//! ```json
//! "moe": { "num_experts": 16, "expert_width": 64, "shared_width": 160, "router_weighting": "ste",
//!          "router_temperature": 1.0, "capacity_factor": 1.25, "expert_dropout": 0.0,
//!          "router_noise": 0.0, "lb_coef": 0.01, "z_coef": 0.0001 }
//! ```
//! Every FFN is one always-on shared SwiGLU expert of `shared_width` plus `num_experts` routed
//! SwiGLU experts of `expert_width`, top-1.

use crate::config::Qwen3Config;
use crate::error::{ModelError, Result};
use autograd::ops::RouterWeighting;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// MoE hyper-parameters of a model (the config's `moe` section, resolved).
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
    /// Softmax temperature of the router.
    pub temperature: f32,
    /// Capacity factor in training (None = dropless).
    pub capacity_factor: Option<f32>,
    /// Probability that a token loses its routed expert in training.
    pub expert_dropout: f32,
    /// Std of Gaussian noise on router logits in training.
    pub router_noise: f32,
    /// Weight of the Switch load-balance loss (mean over layers).
    pub lb_coef: f32,
    /// Weight of the router z-loss (mean over layers).
    pub z_coef: f32,
}

/// The raw JSON form.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RawMoe {
    num_experts: usize,
    expert_width: usize,
    shared_width: usize,
    #[serde(default = "default_weighting")]
    router_weighting: String,
    #[serde(default = "one")]
    router_temperature: f32,
    #[serde(default)]
    capacity_factor: Option<f32>,
    #[serde(default)]
    expert_dropout: f32,
    #[serde(default)]
    router_noise: f32,
    #[serde(default = "default_lb")]
    lb_coef: f32,
    #[serde(default = "default_z")]
    z_coef: f32,
}

fn default_weighting() -> String {
    "ste".into()
}
fn one() -> f32 {
    1.0
}
fn default_lb() -> f32 {
    0.01
}
fn default_z() -> f32 {
    1e-4
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
        if raw.router_temperature.is_nan() || raw.router_temperature <= 0.0 {
            return Err(field(path, "moe.router_temperature", "must be positive".into()));
        }
        if raw.capacity_factor.is_some_and(|c| c.is_nan() || c <= 0.0) {
            return Err(field(path, "moe.capacity_factor", "must be positive or null (dropless)".into()));
        }
        if !(0.0..1.0).contains(&raw.expert_dropout) {
            return Err(field(path, "moe.expert_dropout", "must be in [0, 1)".into()));
        }
        Ok(Some(MoeSpec {
            num_experts: raw.num_experts,
            expert_width: raw.expert_width,
            shared_width: raw.shared_width,
            weighting,
            temperature: raw.router_temperature,
            capacity_factor: raw.capacity_factor,
            expert_dropout: raw.expert_dropout,
            router_noise: raw.router_noise,
            lb_coef: raw.lb_coef,
            z_coef: raw.z_coef,
        }))
    }

    /// The JSON `moe` section.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(RawMoe {
            num_experts: self.num_experts,
            expert_width: self.expert_width,
            shared_width: self.shared_width,
            router_weighting: weighting_name(self.weighting).into(),
            router_temperature: self.temperature,
            capacity_factor: self.capacity_factor,
            expert_dropout: self.expert_dropout,
            router_noise: self.router_noise,
            lb_coef: self.lb_coef,
            z_coef: self.z_coef,
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
