//! Model presets embedded from configs/presets/ (HF config.json format, with a `moe` section
//! for MoE presets).

use crate::config::Qwen3Config;
use crate::error::{ModelError, Result};
use crate::moe_spec::MoeSpec;
use std::path::Path;

/// Every embedded preset: name and config text.
pub const PRESETS: &[(&str, &str)] = &[
    ("tiny-dense", include_str!("../../configs/presets/tiny-dense.json")),
    // Dense with the active width of tiny-k1p1-n16 (FFN 224 = shared 160 + one routed expert 64).
    ("tiny-dense-active", include_str!("../../configs/presets/tiny-dense-active.json")),
    ("tiny-k1p1-n16", include_str!("../../configs/presets/tiny-k1p1-n16.json")),
    ("qwen3-1.7b-k1p1-n16", include_str!("../../configs/presets/qwen3-1.7b-k1p1-n16.json")),
    // Qwen3-0.6B's shape (hidden 1024, 28 layers, vocab 151936), dense and converted: the scale
    // benchmark of a real-sized run on a CPU (BENCHMARKS.md).
    ("qwen3-0.6b", include_str!("../../configs/presets/qwen3-0.6b.json")),
    ("qwen3-0.6b-k1p1-n16", include_str!("../../configs/presets/qwen3-0.6b-k1p1-n16.json")),
];

/// The config of embedded preset `name`, or None when there is no such preset.
pub fn embedded(name: &str) -> Option<Result<Qwen3Config>> {
    PRESETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| Qwen3Config::from_json(text, Path::new(&format!("configs/presets/{name}.json"))))
}

/// The config and MoE section of embedded MoE preset `name`.
pub fn embedded_moe(name: &str) -> Result<(Qwen3Config, MoeSpec)> {
    let config = embedded(name).ok_or_else(|| ModelError::Invalid(format!("unknown preset `{name}`")))??;
    let path = format!("configs/presets/{name}.json");
    match MoeSpec::from_config(&config, Path::new(&path))? {
        Some(spec) => Ok((config, spec)),
        None => Err(ModelError::Invalid(format!("preset `{name}` has no `moe` section: it is a dense preset"))),
    }
}

/// Names of the embedded presets.
pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}
