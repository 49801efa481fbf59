//! `moe-cli moqe`: a mixture of quantization experts (model::moqe): quantized variants of one
//! dense model (GGUF files load dequantized) become the routed experts of each layer's FFN, and
//! only the routers train, on sequences of a pack.
//!
//! ```sh
//! moe-cli moqe --variant q4=base.q4_k_m.gguf --variant q5=base.q5_k_m.gguf --variant q8=base.q8_0.gguf \
//!     --attention-from q8 --data runs/default/data/train --steps 100 --out runs/moqe
//! ```
//! Writes the MoE (config.json with its `moe` section, model.safetensors) and `moqe.json`
//! (variants, steps, the loss curve) as one directory, staged beside `--out` and renamed in.

use anyhow::{bail, Context, Result};
use data::pack::{Mix, PackedDataset, Sampler, SamplerConfig};
use model::moqe::{build_moqe, GateTrainer};
use model::Qwen3;
use std::path::PathBuf;

/// Arguments of `moqe`.
#[derive(clap::Args)]
pub struct Args {
    /// A variant `NAME=PATH` (a model directory or a .gguf file); at least two, each an expert.
    #[arg(long = "variant", required = true)]
    pub variants: Vec<String>,
    /// The variant whose attention, norms, embedding and head the MoQE uses (default: the last).
    #[arg(long)]
    pub attention_from: Option<String>,
    /// Packed training data (a `data pack` directory).
    #[arg(long)]
    pub data: PathBuf,
    /// Gate training steps.
    #[arg(long, default_value_t = 100, value_parser = crate::args::count_usize)]
    pub steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 8, value_parser = crate::args::count_usize)]
    pub batch: usize,
    /// AdamW learning rate of the routers.
    #[arg(long, default_value_t = 1e-3, value_parser = crate::args::non_negative)]
    pub lr: f32,
    /// Seed of the router init and of the data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output directory; must not exist.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs the command.
pub fn run(a: Args) -> Result<()> {
    let mut variants = Vec::new();
    for v in &a.variants {
        let Some((name, path)) = v.split_once('=') else {
            bail!("--variant `{v}`: expected NAME=PATH");
        };
        variants.push((name.to_string(), PathBuf::from(path)));
    }
    if variants.len() < 2 {
        bail!("--variant: MoQE needs at least 2 variants, got {}", variants.len());
    }
    let inputs: Vec<&std::path::Path> = variants.iter().map(|(_, p)| p.as_path()).chain([a.data.as_path()]).collect();
    crate::args::check_output(&a.out, &inputs, false)?;
    let rest_from = match &a.attention_from {
        None => variants.len() - 1,
        Some(n) => variants.iter().position(|(v, _)| v == n).with_context(|| {
            format!(
                "--attention-from {n}: not a variant name ({})",
                variants.iter().map(|(v, _)| v.as_str()).collect::<Vec<_>>().join(", ")
            )
        })?,
    };
    let models = variants
        .iter()
        .map(|(n, p)| Qwen3::load(p).with_context(|| format!("variant `{n}`: loading {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&Qwen3> = models.iter().collect();
    let mut moqe = build_moqe(&refs, rest_from, a.seed).context("building the MoQE")?;
    drop(models);
    let ds = PackedDataset::open(&a.data).with_context(|| format!("opening {}", a.data.display()))?;
    if ds.manifest.vocab_size as usize > moqe.config.vocab_size {
        bail!(
            "{}: packed for a vocabulary of {}, the variants have {}",
            a.data.display(),
            ds.manifest.vocab_size,
            moqe.config.vocab_size
        );
    }
    let config = SamplerConfig { seed: a.seed, batch_size: a.batch, mix: Mix::Natural, rank: 0, world_size: 1 };
    let mut sampler = Sampler::new(&ds, config)?;
    let mut gate = GateTrainer::new(&moqe, a.lr)?;
    let started = std::time::Instant::now();
    let mut curve = Vec::with_capacity(a.steps);
    for step in 0..a.steps {
        let (batch, targets) = actors::eval::token_batch_of(sampler.next_batch());
        let ce = gate.step(&mut moqe, &batch, &targets)?;
        curve.push(ce);
        if step % 10 == 0 || step + 1 == a.steps {
            eprintln!("step {:>4}: ce {ce:.4}", step + 1);
        }
    }
    let record = serde_json::json!({
        "variants": variants.iter().map(|(n, p)| serde_json::json!({"name": n, "path": p})).collect::<Vec<_>>(),
        "attention_from": variants[rest_from].0,
        "steps": a.steps, "batch": a.batch, "lr": a.lr, "seed": a.seed,
        "ce": curve,
        "seconds": started.elapsed().as_secs_f64(),
    });
    let tensors = moqe.tensors_to_write(false)?;
    let config_json = moqe.config_json();
    atomicio::write_dir(&a.out, |tmp| -> Result<()> {
        atomicio::write_file(&tmp.join("config.json"), config_json.as_bytes())?;
        model::safetensors_io::write_checkpoint_dir(tmp, &tensors, None, None)?;
        atomicio::write_file(&tmp.join("moqe.json"), serde_json::to_string_pretty(&record)?.as_bytes())?;
        Ok(())
    })?;
    println!(
        "wrote {} ({} variants as experts, attention from `{}`, {} gate steps, ce {:.4} -> {:.4})",
        a.out.display(),
        variants.len(),
        variants[rest_from].0,
        a.steps,
        curve.first().copied().unwrap_or(f32::NAN),
        curve.last().copied().unwrap_or(f32::NAN)
    );
    Ok(())
}
