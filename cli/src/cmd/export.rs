//! `moe-cli export hf`: a model as a stock Hugging Face checkpoint that transformers loads and
//! that reproduces our logits (Dots1 for MoE models, Qwen3 for dense ones).
//! `moe-cli export gguf`: a model as one GGUF file for llama.cpp (f32 .. q4_k_m, `--mask` rules).
//! `moe-cli export expert`: the shared expert + one routed expert of a MoE model as a dense Qwen3
//! ("named experts"; the MoE's logits on tokens routed to that expert in every layer).

use anyhow::{bail, Context, Result};
use autograd::DType;
use clap::{Subcommand, ValueEnum};
use model::export::{export_dots1, export_expert, export_qwen3, shared_padding};
use model::gguf::{export_gguf, Arch, GgufOptions, GgufType, Mask};
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
    /// One GGUF file for llama.cpp: `qwen3` for dense models, `glm4moe` (default) or `dots1` for
    /// MoE models; weights encoded by llama.cpp's reference quantizers (byte-identical).
    Gguf(GgufArgs),
    /// The shared expert + routed expert `--expert` of a MoE model as one dense Qwen3ForCausalLM
    /// (FFN = the two concatenated): it computes the MoE's logits on tokens that were routed to
    /// that expert in every layer (router weighting ste or sigmoid; prob cannot be folded).
    Expert(ExpertArgs),
}

/// Arguments of `export expert`.
#[derive(clap::Args)]
pub struct ExpertArgs {
    /// MoE model directory (a medmoe checkpoint or an HF Dots1 export).
    #[arg(long)]
    pub model: PathBuf,
    /// The routed expert to keep (0-based; the same index in every layer).
    #[arg(long)]
    pub expert: usize,
    /// Output directory; must not exist. Written beside it and renamed, so it appears complete or
    /// not at all.
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `export gguf`.
#[derive(clap::Args)]
pub struct GgufArgs {
    /// Model directory: a medmoe MoE checkpoint, a dense Qwen3, or an HF Dots1 export. Its
    /// tokenizer.json / tokenizer_config.json become the GGUF vocabulary.
    #[arg(long)]
    pub model: PathBuf,
    /// File type, as llama-quantize names them: f32, f16, bf16, q8_0, q6_k, q5_k_m, q5_k_s, q5_0,
    /// q4_k_m (norms, router and 1-D tensors stay F32; rows that cannot take a type fall back as
    /// llama-quantize does, and each fallback is printed).
    #[arg(long = "type", value_parser = parse_gguf_type)]
    pub ftype: GgufType,
    /// JSON list of {"pattern": glob over GGUF tensor names, "type": ...} rules overriding --type
    /// per tensor (first match wins; a rule matching nothing, or a type a tensor's rows cannot
    /// take, is an error).
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Write no vocabulary (tests of the weights alone; llama.cpp cannot tokenize text then).
    #[arg(long)]
    pub no_tokenizer: bool,
    /// llama.cpp architecture of a MoE model: glm4moe (real GQA) or dots1 (K/V heads repeated to
    /// MHA: bigger K/V weights and KV cache). Ignored for dense models (qwen3).
    #[arg(long, value_enum, default_value = "glm4moe")]
    pub moe_arch: MoeArch,
    /// Output file; must not exist. Written beside it and renamed, so it appears complete or not
    /// at all.
    #[arg(long)]
    pub out: PathBuf,
}

/// `--moe-arch` values.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MoeArch {
    /// GLM-4.5-MoE layout, real GQA.
    Glm4moe,
    /// dots.llm1 layout, K/V repeated to MHA.
    Dots1,
}

fn parse_gguf_type(s: &str) -> std::result::Result<GgufType, String> {
    GgufType::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = GgufType::ALL.iter().map(|t| t.name()).collect();
        format!("unknown GGUF type `{s}` (expected one of {})", names.join(", "))
    })
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

/// Runs the chosen export.
pub fn run(a: Args) -> Result<()> {
    match a.target {
        Target::Hf(a) => run_hf(a),
        Target::Gguf(a) => run_gguf(a),
        Target::Expert(a) => run_expert(a),
    }
}

/// Loads a MoE model and writes one of its experts (with the shared one) as a dense Qwen3.
fn run_expert(a: ExpertArgs) -> Result<()> {
    if a.out.exists() {
        bail!("{} already exists; refusing to overwrite (choose a new --out)", a.out.display());
    }
    eprintln!("loading {}", a.model.display());
    let storage = storage_for(&a.model).with_context(|| format!("reading {}", a.model.display()))?;
    let model = Qwen3::load_as(&a.model, storage).with_context(|| format!("loading {}", a.model.display()))?;
    let Some(m) = &model.moe else {
        bail!("{} is a dense model; export expert needs a MoE model", a.model.display());
    };
    eprintln!(
        "exporting expert {} as Qwen3ForCausalLM: {} layers, FFN = shared {} + expert {} = {}",
        a.expert,
        model.config.num_hidden_layers,
        m.shared_width,
        m.expert_width,
        m.shared_width + m.expert_width
    );
    let mut files = export_expert(&model, a.expert, &a.out)
        .with_context(|| format!("exporting expert {} of {} to {}", a.expert, a.model.display(), a.out.display()))?;
    files.extend(model::tokenizer_files::copy_tokenizer_files(&a.model, &a.out)?);
    let bytes: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    eprintln!("wrote {} ({} files, {:.1} MiB)", a.out.display(), files.len(), bytes as f64 / (1 << 20) as f64);
    Ok(())
}

/// Exports one GGUF file and prints fallbacks, size and bits per weight.
fn run_gguf(a: GgufArgs) -> Result<()> {
    if a.out.exists() {
        bail!("{} already exists; refusing to overwrite (choose a new --out)", a.out.display());
    }
    let mask = a.mask.as_deref().map(Mask::from_file).transpose()?;
    let opts = GgufOptions {
        ftype: a.ftype,
        mask,
        tokenizer_dir: (!a.no_tokenizer).then(|| a.model.clone()),
        moe_arch: match a.moe_arch {
            MoeArch::Glm4moe => Arch::Glm4Moe,
            MoeArch::Dots1 => Arch::Dots1,
        },
    };
    eprintln!("exporting {} as GGUF {}", a.model.display(), a.ftype.name());
    let report = export_gguf(&a.model, &opts, &a.out)
        .with_context(|| format!("exporting {} to {}", a.model.display(), a.out.display()))?;
    if report.qat_tensors > 0 {
        eprintln!(
            "QAT checkpoint: {} tensors written from their trained codes (no re-quantization)",
            report.qat_tensors
        );
    }
    for t in report.tensors.iter().filter(|t| t.fallback_from.is_some()) {
        eprintln!(
            "fallback   {:<36} rows of {:>6} values cannot be {}: written as {}",
            t.name,
            t.ne[0],
            t.fallback_from.map(|f| f.name()).unwrap_or_default(),
            t.ty
        );
    }
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for t in &report.tensors {
        *counts.entry(t.ty.name()).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(k, v)| format!("{k} x{v}")).collect();
    println!(
        "wrote {} ({}, {} tensors: {}): {} bytes, {} weights, {:.4} bits per weight",
        a.out.display(),
        report.arch.name(),
        report.tensors.len(),
        counts.join(", "),
        report.file_bytes,
        report.weights(),
        report.bits_per_weight()
    );
    Ok(())
}

/// Loads, checks the format fits, exports.
fn run_hf(a: HfArgs) -> Result<()> {
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
    let mut files = files;
    files.extend(model::tokenizer_files::copy_tokenizer_files(&a.model, &a.out)?);
    let bytes: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    eprintln!("wrote {} ({} files, {:.1} MiB)", a.out.display(), files.len(), bytes as f64 / (1 << 20) as f64);
    Ok(())
}
