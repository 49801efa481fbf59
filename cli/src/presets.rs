//! Model presets embedded from configs/presets/ (HF config.json format).

use anyhow::{bail, Result};
use model::Qwen3Config;
use std::path::Path;

const PRESETS: &[(&str, &str)] = &[("tiny-dense", include_str!("../../configs/presets/tiny-dense.json"))];

/// The config of preset `name`.
pub fn preset_config(name: &str) -> Result<Qwen3Config> {
    let Some((_, text)) = PRESETS.iter().find(|(n, _)| *n == name) else {
        let known: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
        bail!("unknown preset `{name}` (known: {})", known.join(", "));
    };
    Ok(Qwen3Config::from_json(text, Path::new(&format!("configs/presets/{name}.json")))?)
}
