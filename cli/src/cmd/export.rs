//! `moe-cli export hf`: a model as a stock Hugging Face checkpoint that transformers loads and
//! that reproduces our logits (Dots1 for MoE models, Qwen3 for dense ones).

use anyhow::{bail, Context, Result};
use autograd::DType;
use clap::{Subcommand, ValueEnum};
use model::export::{export_dots1, export_qwen3, shared_padding};
use model::safetensors_io::{FileDType, SafetensorsReader};
use model::Qwen3;
use std::path::{Path, PathBuf};

/// Arguments of `export`.
#[derive(clap::Args)]
pub struct Args {
    /// What to export to.
    #[command(subcommand)]
    pub target: Target,
}

/// Export targets.
#[derive(Subcommand)]
pub enum Target {
    /// Hugging Face transformers checkpoint (config.json + model.safetensors) in a stock
    /// architecture: `--format dots1` for MoE models, `--format qwen3` for dense models.
    Hf(HfArgs),
}

/// Arguments of `export hf`.
#[derive(clap::Args)]
pub struct HfArgs {
    /// Model directory: a medmoe MoE checkpoint (from `surgery` or training), a dense Qwen3, or an
    /// earlier export.
    #[arg(long)]
    pub model: PathBuf,
    /// Target architecture.
    #[arg(long, value_enum)]
    pub format: Format,
    /// Output directory; must not exist. Written beside it and renamed, so it appears complete or
    /// not at all.
    #[arg(long)]
    pub out: PathBuf,
}

/// `--format` values.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Dots1ForCausalLM (MoE models): Qwen3 attention, an always-on shared expert zero-padded to
    /// whole experts, top-1 routed experts with weight 1 (router weighting ste or sigmoid; prob
    /// cannot be exported exactly).
    Dots1,
    /// Qwen3ForCausalLM (dense models): tensors bit-identical to the input.
    Qwen3,
}

/// Storage that holds the model's tensors exactly with the least memory: bf16/f16 when every
/// weight is stored so, else f32.
fn storage_for(dir: &Path) -> Result<DType> {
    let ckpt = SafetensorsReader::open(dir)?;
    let mut dtypes = ckpt.names().into_iter().filter(|n| !n.ends_with("e_score_correction_bias")).map(|n| {
        // Listed names always have info.
        ckpt.info(n).map(|i| i.dtype)
    });
    Ok(match dtypes.next().flatten() {
        Some(FileDType::BF16) if dtypes.all(|d| d == Some(FileDType::BF16)) => DType::BF16,
        Some(FileDType::F16) if dtypes.all(|d| d == Some(FileDType::F16)) => DType::F16,
        _ => DType::F32,
    })
}

/// Loads, checks the format fits, exports.
pub fn run(a: Args) -> Result<()> {
    let Target::Hf(a) = a.target;
    if a.out.exists() {
        bail!("{} already exists; refusing to overwrite (choose a new --out)", a.out.display());
    }
    eprintln!("loading {}", a.model.display());
    let storage = storage_for(&a.model).with_context(|| format!("reading {}", a.model.display()))?;
    let model = Qwen3::load_as(&a.model, storage).with_context(|| format!("loading {}", a.model.display()))?;
    let files = match (a.format, &model.moe) {
        (Format::Dots1, None) => {
            bail!("{} is a dense model; --format dots1 is for MoE models (use --format qwen3)", a.model.display())
        }
        (Format::Qwen3, Some(m)) => bail!(
            "{} is a MoE model ({} routed experts); --format qwen3 is for dense models (use --format dots1)",
            a.model.display(),
            m.num_experts
        ),
        (Format::Dots1, Some(m)) => {
            let (n_shared, p) = shared_padding(m.shared_width, m.expert_width);
            eprintln!(
                "exporting Dots1ForCausalLM: {} layers, {} routed experts x {}, shared {} -> {n_shared} x {} = {p} \
                 ({} zero-padded neurons)",
                model.config.num_hidden_layers,
                m.num_experts,
                m.expert_width,
                m.shared_width,
                m.expert_width,
                p - m.shared_width
            );
            export_dots1(&model, &a.out)
        }
        (Format::Qwen3, None) => {
            eprintln!("exporting Qwen3ForCausalLM: {} layers", model.config.num_hidden_layers);
            export_qwen3(&model, &a.out)
        }
    }
    .with_context(|| format!("exporting {} to {}", a.model.display(), a.out.display()))?;
    let bytes: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    eprintln!("wrote {} ({} files, {:.1} MiB)", a.out.display(), files.len(), bytes as f64 / (1 << 20) as f64);
    Ok(())
}
