//! Model presets embedded from configs/presets/ (HF config.json format, with a `moe` section
//! for MoE presets), or read from a path.

use anyhow::{bail, Result};
use model::moe_spec::MoeSpec;
use model::Qwen3Config;
use std::path::{Path, PathBuf};

const PRESETS: &[(&str, &str)] = &[
    ("tiny-dense", include_str!("../../configs/presets/tiny-dense.json")),
    // Dense with the active width of tiny-k1p1-n16 (FFN 224 = shared 160 + one routed expert 64).
    ("tiny-dense-active", include_str!("../../configs/presets/tiny-dense-active.json")),
    ("tiny-k1p1-n16", include_str!("../../configs/presets/tiny-k1p1-n16.json")),
    ("qwen3-1.7b-k1p1-n16", include_str!("../../configs/presets/qwen3-1.7b-k1p1-n16.json")),
];

/// The config of preset `name` (an embedded name, or a path to a config.json-style file).
pub fn preset_config(name: &str) -> Result<Qwen3Config> {
    if let Some((_, text)) = PRESETS.iter().find(|(n, _)| *n == name) {
        return Ok(Qwen3Config::from_json(text, Path::new(&format!("configs/presets/{name}.json")))?);
    }
    let path = PathBuf::from(name);
    if path.is_file() {
        return Ok(Qwen3Config::from_file(&path)?);
    }
    let known: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
    bail!("unknown preset `{name}` (known: {}; or give a path to a preset file)", known.join(", "))
}

/// The config and MoE section of a MoE preset.
pub fn moe_preset(name: &str) -> Result<(Qwen3Config, MoeSpec)> {
    let config = preset_config(name)?;
    match MoeSpec::from_config(&config, Path::new(name))? {
        Some(spec) => Ok((config, spec)),
        None => bail!("preset `{name}` has no `moe` section: it is a dense preset"),
    }
}
