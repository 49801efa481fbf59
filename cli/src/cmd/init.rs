//! `moe-cli init`: a randomly initialised dense model from a preset (the from-scratch base).

use crate::presets::preset_config;
use anyhow::{bail, Result};
use autograd::DType;
use model::init::qwen3_init;
use model::Qwen3;
use std::path::PathBuf;

/// Arguments of `init`.
#[derive(clap::Args)]
pub struct Args {
    /// Dense preset: a name from configs/presets/ (e.g. tiny-dense) or a path to a config.json.
    #[arg(long, default_value = "tiny-dense")]
    pub preset: String,
    /// Seed of the initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Standard deviation of the weights (norm weights are 1; finite, >= 0).
    #[arg(long, default_value_t = 0.02, value_parser = crate::args::non_negative)]
    pub std: f32,
    /// Output model directory (must not exist; written atomically).
    #[arg(long)]
    pub out: PathBuf,
}

/// Builds and saves the model.
pub fn run(a: Args) -> Result<()> {
    let mut config = preset_config(&a.preset)?;
    if config.raw.contains_key("moe") {
        bail!("preset `{}` is a MoE preset; init makes dense models (use surgery for MoE)", a.preset);
    }
    // The flat f32 parameter buffer plus the bytes written out.
    let params = crate::args::param_count(&config, None);
    crate::args::ensure_fits(&format!("preset `{}` ({params} parameters)", a.preset), 8 * params)?;
    // The weights are written in f32: config.json says so (a preset of a bf16 model such as
    // qwen3-0.6b says bfloat16, which the loader would hold against the f32 tensors).
    config.torch_dtype = Some("float32".to_string());
    let model = Qwen3::from_init(config, None, DType::F32, qwen3_init(a.seed, a.std));
    model.save(&a.out, None)?;
    eprintln!("wrote {} ({:.2} M parameters)", a.out.display(), model.num_params() as f64 / 1e6);
    Ok(())
}
