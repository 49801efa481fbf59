//! Model presets: the embedded ones of `model::presets` (configs/presets/), or a path.

use anyhow::{bail, Result};
use model::moe_spec::MoeSpec;
use model::Qwen3Config;
use std::path::{Path, PathBuf};

/// The config of preset `name` (an embedded name, or a path to a config.json-style file).
pub fn preset_config(name: &str) -> Result<Qwen3Config> {
    if let Some(config) = model::presets::embedded(name) {
        return Ok(config?);
    }
    let path = PathBuf::from(name);
    if path.is_file() {
        return Ok(Qwen3Config::from_file(&path)?);
    }
    let known = model::presets::names();
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
