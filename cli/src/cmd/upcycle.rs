//! `moe-cli upcycle`: sparse upcycling of a dense Qwen3 into a MoE (every expert a copy of the
//! dense FFN, optional shared copy, Drop-Upcycling re-initialisation), the second conversion
//! mode beside `surgery`'s neuron partition (model::surgery::upcycle).
//!
//! ```sh
//! moe-cli upcycle --model runs/default/base/model --experts 8 --shared copy --drop 0.3 --out runs/up
//! ```
//! Writes the MoE (config.json with its `moe` section, model.safetensors), the dense model's
//! tokenizer files and `upcycle.json` (options, seed, the re-initialised neurons) as one directory,
//! staged beside `--out` and renamed into place.

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use model::surgery::upcycle::{upcycle, UpcycleOptions};
use model::Qwen3;
use std::path::PathBuf;

/// Arguments of `upcycle`.
#[derive(clap::Args)]
pub struct Args {
    /// Dense model directory (HF Qwen3 layout).
    #[arg(long)]
    pub model: PathBuf,
    /// Routed experts (each a copy of the dense FFN).
    #[arg(long, value_parser = crate::args::count_usize)]
    pub experts: usize,
    /// Shared expert: `copy` (one more copy; both halves' down_proj halved so the sum is the
    /// dense FFN) or `none`.
    #[arg(long, value_enum, default_value = "none")]
    pub shared: Shared,
    /// Fraction of each routed expert's neurons re-initialised (Drop-Upcycling; 0 keeps exact copies).
    #[arg(long, default_value_t = 0.0, value_parser = crate::args::non_negative)]
    pub drop: f32,
    /// Seed of the router and of the dropped neurons.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory; must not exist.
    #[arg(long)]
    pub out: PathBuf,
}

/// `--shared` values.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shared {
    /// One more copy of the dense FFN as the shared expert.
    Copy,
    /// No shared expert.
    None,
}

/// Runs the command.
pub fn run(a: Args) -> Result<()> {
    crate::args::check_output(&a.out, &[a.model.as_path()], false)?;
    if a.drop > 1.0 {
        bail!("--drop {}: a fraction of neurons must be in [0, 1]", a.drop);
    }
    let config = model::config::Qwen3Config::from_file(&a.model.join("config.json"))?;
    // The MoE's parameters in f32, plus the dense model it is made from.
    let (f, d, l) = (config.intermediate_size as u128, config.hidden_size as u128, config.num_hidden_layers as u128);
    let copies = a.experts as u128 + (a.shared == Shared::Copy) as u128;
    crate::args::ensure_fits(&format!("--experts {}: the upcycled FFNs", a.experts), 4 * 3 * f * d * l * (copies + 1))?;
    let dense = Qwen3::load(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let opts = UpcycleOptions { experts: a.experts, shared: a.shared == Shared::Copy, drop: a.drop, seed: a.seed };
    let (moe, record) = upcycle(&dense, &opts).with_context(|| format!("upcycling {}", a.model.display()))?;
    let tensors = moe.tensors_to_write(false)?;
    let config_json = moe.config_json();
    let record_json = serde_json::to_string_pretty(&record)?;
    atomicio::write_dir(&a.out, |tmp| -> Result<()> {
        atomicio::write_file(&tmp.join("config.json"), config_json.as_bytes())?;
        model::safetensors_io::write_checkpoint_dir(tmp, &tensors, None, None)?;
        model::tokenizer_files::copy_tokenizer_files(&a.model, tmp)?;
        atomicio::write_file(&tmp.join("upcycle.json"), record_json.as_bytes())?;
        Ok(())
    })?;
    println!(
        "wrote {} ({} experts x {} + shared {}, drop {} = {} neurons per expert, seed {}; {:.2} M parameters)",
        a.out.display(),
        a.experts,
        config.intermediate_size,
        if opts.shared { config.intermediate_size } else { 0 },
        a.drop,
        record.dropped_per_expert,
        a.seed,
        moe.num_params() as f64 / 1e6
    );
    Ok(())
}
