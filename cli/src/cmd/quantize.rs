//! `moe-cli quantize`: GPTQ or round-to-nearest of a model's linear weights from calibration
//! activations, written as an HF GPTQ checkpoint (Dots1 for MoE, Qwen3 for dense) that vLLM's
//! `gptq_marlin` serves; see `model::gptq`.
//!
//! `--mask`: a JSON list of rules `{"pattern": <glob over HF parameter names>, "type": <type>}`,
//! the first matching rule wins (`*` any run, `?` one character). A quantizable weight whose rule
//! says a float type (`f32`, `f16`, `bf16`) stays float; any other type (`gptq`, `q4`, `q8_0`,
//! `q5_k`, ...) is quantized at `--bits`; a weight no rule matches stays float. A rule that matches
//! no quantizable weight is an error. Without `--mask`, every linear of the decoder layers is
//! quantized (router, norms, embeddings, LM head never are).

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use data::pack::{batch_of, PackedDataset};
use model::gguf::mask::glob_match;
use model::gptq::{is_quantizable, quantize_model, write_gptq, QuantMethod, QuantizeOptions};
use model::safetensors_io::SafetensorsReader;
use model::{Qwen3, TokenBatch};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Arguments of `quantize`.
#[derive(clap::Args)]
pub struct Args {
    /// gptq (calibrated) or rtn (round-to-nearest).
    #[arg(long, value_enum, default_value_t = Method::Gptq)]
    pub method: Method,
    /// Model directory (HF Qwen3, medmoe MoE or Dots1 export).
    #[arg(long)]
    pub model: PathBuf,
    /// Calibration data: a packed corpus (`moe-cli data pack`) or a .safetensors file holding
    /// `input_ids [B, T]` (integer).
    #[arg(long)]
    pub calib: PathBuf,
    /// Calibration sequences to use (the first ones).
    #[arg(long, default_value_t = 128)]
    pub samples: usize,
    /// Bits per weight: 4 or 8 (what vLLM's gptq_marlin serves).
    #[arg(long, default_value_t = 4)]
    pub bits: u32,
    /// Input columns per group: 32, 64 or 128.
    #[arg(long, default_value_t = 128)]
    pub group: usize,
    /// GPTQ act-order (`desc_act`): quantize columns by descending Hessian diagonal.
    #[arg(long)]
    pub act_order: bool,
    /// Which weights to quantize (JSON rules, see the command's doc).
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Routed experts with fewer calibration tokens fall back to RTN (default: hidden size / 4).
    #[arg(long)]
    pub min_expert_tokens: Option<usize>,
    /// Output directory (must not exist); written atomically.
    #[arg(long)]
    pub out: PathBuf,
}

/// `--method` values.
#[derive(Clone, Copy, ValueEnum)]
pub enum Method {
    /// GPTQ with per-linear Hessians.
    Gptq,
    /// Round to nearest.
    Rtn,
}

/// One `--mask` rule.
struct Rule {
    pattern: String,
    quantize: bool,
}

fn read_mask(path: &Path) -> Result<Vec<Rule>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading mask {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    let Some(items) = v.as_array() else { bail!("{}: expected a JSON list of rules", path.display()) };
    let mut rules = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = |k: &str| item.get(k).and_then(|x| x.as_str());
        let (Some(pattern), Some(ty)) = (field("pattern"), field("type")) else {
            bail!("{}: rule {i}: expected {{\"pattern\": string, \"type\": string}}, got {item}", path.display())
        };
        let ty = ty.to_ascii_lowercase();
        rules.push(Rule { pattern: pattern.to_string(), quantize: !matches!(ty.as_str(), "f32" | "f16" | "bf16") });
    }
    Ok(rules)
}

/// The calibration batch: the first `samples` sequences of a pack, or `input_ids` of a
/// safetensors file; token ids are checked against the model's vocabulary.
fn calibration(path: &Path, samples: usize, vocab: usize) -> Result<TokenBatch> {
    if samples == 0 {
        bail!("--samples must be positive");
    }
    if path.is_dir() {
        let ds = PackedDataset::open(path).with_context(|| format!("opening calibration pack {}", path.display()))?;
        let pack_vocab = ds.manifest.vocab_size as usize;
        if pack_vocab > vocab {
            bail!(
                "calibration pack {} was tokenized with a vocabulary of {pack_vocab}, larger than the model's {vocab}: \
                 wrong tokenizer for this model",
                path.display()
            );
        }
        let n = ds.len().min(samples as u64);
        if n == 0 {
            bail!("calibration pack {} holds no sequences", path.display());
        }
        let seqs: Vec<u64> = (0..n).collect();
        return Ok(actors::eval::token_batch_of(batch_of(&ds, &seqs)).0);
    }
    let r = SafetensorsReader::open(path).with_context(|| format!("opening calibration ids {}", path.display()))?;
    let info = r.info("input_ids").with_context(|| format!("{}: no tensor `input_ids`", path.display()))?;
    if info.shape.len() != 2 {
        bail!("{}: input_ids has shape {:?}, expected [B, T]", path.display(), info.shape);
    }
    let (b, t) = (info.shape[0].min(samples), info.shape[1]);
    let ids = r.read_i64("input_ids").with_context(|| format!("{}: input_ids", path.display()))?;
    if let Some(&bad) = ids.iter().find(|&&i| i < 0 || i as usize >= vocab) {
        bail!("{}: token id {bad} is outside the model's vocabulary of {vocab}", path.display());
    }
    Ok(TokenBatch::new(ids[..b * t].iter().map(|&i| i as u32).collect(), b, t)?)
}

/// Quantizes and writes the checkpoint.
pub fn run(a: Args) -> Result<()> {
    if !matches!(a.bits, 4 | 8) {
        bail!("--bits {}: vLLM's gptq_marlin serves 4 and 8 bits only", a.bits);
    }
    if !matches!(a.group, 32 | 64 | 128) {
        bail!("--group {}: use 32, 64 or 128", a.group);
    }
    atomicio::ensure_absent(&a.out)?;
    let rules = a.mask.as_deref().map(read_mask).transpose()?;
    let model = Qwen3::load(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    if let Some(rules) = &rules {
        let names: Vec<&str> =
            model.params.entries().iter().map(|e| e.name.as_str()).filter(|n| is_quantizable(n)).collect();
        if let Some(r) = rules.iter().find(|r| !names.iter().any(|n| glob_match(&r.pattern, n))) {
            bail!(
                "mask {}: rule `{}` matches no quantizable weight of {} (patterns are globs over HF names such as `{}`)",
                a.mask.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                r.pattern,
                a.model.display(),
                names.first().copied().unwrap_or("")
            );
        }
    }
    let select = |name: &str| match &rules {
        None => true,
        Some(rules) => rules.iter().find(|r| glob_match(&r.pattern, name)).is_some_and(|r| r.quantize),
    };
    let batch = calibration(&a.calib, a.samples, model.config.vocab_size)?;
    let opts = QuantizeOptions {
        method: match a.method {
            Method::Gptq => QuantMethod::Gptq,
            Method::Rtn => QuantMethod::Rtn,
        },
        bits: a.bits,
        group: a.group,
        act_order: a.act_order,
        min_expert_tokens: a.min_expert_tokens,
    };
    eprintln!(
        "calibration: {} sequences x {} tokens; {} {}-bit, group {}{}",
        batch.b,
        batch.t,
        opts.method.name(),
        opts.bits,
        opts.group,
        if opts.act_order { ", act-order" } else { "" }
    );
    let start = Instant::now();
    let mut show = |r: &model::gptq::TensorReport| {
        let err = |e: Option<f64>| e.map_or("-".to_string(), |e| format!("{e:.4e}"));
        eprintln!(
            "{:<52} {:>4} tokens {:>7} error {} (rtn {}){}",
            r.name,
            r.method.name(),
            r.tokens,
            err(r.error),
            err(r.rtn_error),
            if r.dead_columns > 0 { format!(" dead columns {}", r.dead_columns) } else { String::new() }
        );
    };
    let q = quantize_model(&model, &batch, &opts, &select, &mut show)?;
    for (l, e, t) in &q.starved_experts {
        eprintln!("layer {l} expert {e}: {t} calibration tokens (< threshold): round-to-nearest instead of GPTQ");
    }
    let files = write_gptq(&q, &a.out)?;
    eprintln!(
        "quantized {} tensors in {:.2} s; wrote {} files to {}",
        q.tensors.len(),
        start.elapsed().as_secs_f64(),
        files.len(),
        a.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use model::gguf::mask::glob_match;

    // The GGUF mask's glob, on the HF names this command's rules match.

    #[test]
    fn globs() {
        assert!(glob_match("model.layers.*.mlp.experts.*", "model.layers.3.mlp.experts.12.up_proj.weight"));
        assert!(glob_match("*o_proj*", "model.layers.0.self_attn.o_proj.weight"));
        assert!(!glob_match("*.v_proj.weight", "model.layers.0.self_attn.o_proj.weight"));
        assert!(glob_match("model.layers.?.mlp.*", "model.layers.1.mlp.up_proj.weight"));
        assert!(!glob_match("model.layers.?.mlp.*", "model.layers.10.mlp.up_proj.weight"));
    }
}
