//! `moe-cli surgery`: dense Qwen3 → shared expert + top-1 of N routed experts.

use crate::presets::moe_preset;
use crate::progress::bar;
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use model::moe_spec::MoeSpec;
use model::safetensors_io::DEFAULT_MAX_SHARD_BYTES;
use model::surgery::apply::{RouterInit, SurgeryOptions};
use model::surgery::plan::{FillStrategy, SplitStrategy};
use model::surgery::stream::{surgery_streaming, ImportanceSource};
use model::Qwen3Config;
use std::path::PathBuf;

/// Arguments of `surgery`.
#[derive(clap::Args)]
pub struct Args {
    /// Dense model directory (HF Qwen3 layout).
    #[arg(long)]
    pub model: PathBuf,
    /// MoE preset: a name from configs/presets/ (tiny-k1p1-n16, qwen3-1.7b-k1p1-n16) or a path.
    #[arg(long)]
    pub preset: String,
    /// Neuron importance: a file written by `moe-cli importance`, or `magnitude` (data-free).
    #[arg(long, default_value = "magnitude")]
    pub importance: String,
    /// How routed experts are formed from the neurons left after the shared expert.
    #[arg(long, value_enum, default_value_t = Split::ImportanceSplit)]
    pub split: Split,
    /// How expert slots beyond the available neurons are filled.
    #[arg(long, value_enum, default_value_t = Fill::Overlap)]
    pub fill: Fill,
    /// Router initialisation. No value lets two experts tie (runtimes break ties differently, so an
    /// export would not compute what we compute); the old `zeros` is `near-uniform` now.
    #[arg(long, value_enum, default_value_t = Router::Centroids)]
    pub router_init: Router,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory for the MoE checkpoint (must not exist; written atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Largest safetensors file written; above it the checkpoint is sharded (HF's default 5 GB).
    #[arg(long, default_value_t = DEFAULT_MAX_SHARD_BYTES, value_parser = crate::args::count)]
    pub max_shard_bytes: u64,
}

/// `--split` values.
#[derive(Clone, Copy, ValueEnum)]
#[allow(clippy::enum_variant_names)] // `importance-split` is the documented CLI spelling
pub enum Split {
    /// Remaining neurons by descending importance, dealt round-robin.
    ImportanceSplit,
    /// Balanced k-means on normalised gate/up rows.
    Kmeans,
    /// Seeded random partition.
    Random,
}

/// `--fill` values.
#[derive(Clone, Copy, ValueEnum)]
pub enum Fill {
    /// Nearest neurons of other experts.
    Overlap,
    /// Re-initialised from the dense rows' statistics (Drop-Upcycling).
    DropUpcycle,
}

/// `--router-init` values.
#[derive(Clone, Copy, ValueEnum)]
pub enum Router {
    /// Each expert's row is the gate half of its neurons' centroid: tokens go to the expert whose
    /// neurons they activate, so the converted model routes meaningfully before training.
    Centroids,
    /// Near-uniform routing (probabilities within a few percent of 1/E): seeded normal(0, 0.01/sqrt(D)),
    /// small enough to start as uniform as an all-zero router, without its ties.
    NearUniform,
    /// Small random normal(0, 0.02).
    Random,
}

/// Streams the dense checkpoint (memory-mapped) through the planner and writes the MoE layer by layer.
pub fn run(a: Args) -> Result<()> {
    if a.out.exists() {
        bail!("{} already exists; refusing to overwrite", a.out.display());
    }
    let (preset, spec) = moe_preset(&a.preset)?;
    let config_path = a.model.join("config.json");
    let c = Qwen3Config::from_file(&config_path)?;
    let is_dots1 = c.raw.get("model_type").and_then(|v| v.as_str()) == Some("dots1");
    if is_dots1 || MoeSpec::from_config(&c, &config_path)?.is_some() {
        bail!("{} is already a MoE model; surgery needs a dense Qwen3", a.model.display());
    }
    let p = &preset;
    if (c.hidden_size, c.intermediate_size, c.num_hidden_layers)
        != (p.hidden_size, p.intermediate_size, p.num_hidden_layers)
    {
        bail!(
            "preset `{}` is for hidden {} / ffn {} / {} layers, but {} has hidden {} / ffn {} / {} layers",
            a.preset,
            p.hidden_size,
            p.intermediate_size,
            p.num_hidden_layers,
            a.model.display(),
            c.hidden_size,
            c.intermediate_size,
            c.num_hidden_layers
        );
    }
    let importance = if a.importance == "magnitude" {
        ImportanceSource::Magnitude
    } else {
        let path = PathBuf::from(&a.importance);
        // A ranking of NaNs or of zeros (a broken importance pass) would split at random.
        let rows = model::importance::read_importance(&path, c.num_hidden_layers, c.intermediate_size)?;
        let values = rows.iter().flatten();
        if let Some(bad) = values.clone().find(|v| !v.is_finite()) {
            bail!("{}: importance holds {bad}; scores must be finite", path.display());
        }
        if values.clone().all(|&v| v == 0.0) {
            bail!("{}: importance is all zero; nothing to rank neurons by", path.display());
        }
        ImportanceSource::File(path)
    };
    let opts = SurgeryOptions {
        split: match a.split {
            Split::ImportanceSplit => SplitStrategy::ImportanceSplit,
            Split::Kmeans => SplitStrategy::KMeans,
            Split::Random => SplitStrategy::Random,
        },
        fill: match a.fill {
            Fill::Overlap => FillStrategy::Overlap,
            Fill::DropUpcycle => FillStrategy::DropUpcycle,
        },
        router_init: match a.router_init {
            Router::NearUniform => RouterInit::NearUniform,
            Router::Centroids => RouterInit::Centroids,
            Router::Random => RouterInit::SmallRandom,
        },
        seed: a.seed,
    };
    let pb = bar(1, "surgery");
    let report =
        surgery_streaming(&a.model, &spec, &importance, &opts, &a.out, Some(a.max_shard_bytes), |done, total| {
            pb.set_length(total.max(1));
            pb.set_position(done);
        })
        .with_context(|| format!("surgery of {} into {}", a.model.display(), a.out.display()))?;
    pb.finish_and_clear();
    eprintln!(
        "wrote {} ({} files, {:.2} GB): shared {} + {} routed experts x {}, {:.2} M parameters",
        a.out.display(),
        report.files.len(),
        report.tensor_bytes as f64 / 1e9,
        spec.shared_width,
        spec.num_experts,
        spec.expert_width,
        report.num_params as f64 / 1e6
    );
    Ok(())
}
