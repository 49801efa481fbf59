//! `moe-cli inspect <model-dir | file.gguf>`: config, tensor table, parameter counts.

use anyhow::Result;
use model::moe_spec::MoeSpec;
use model::qwen3::param_specs;
use model::safetensors_io::SafetensorsReader;
use model::Qwen3Config;
use std::path::PathBuf;

/// Arguments of `inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// Model directory (HF layout: config.json + model.safetensors or sharded with an index), or a
    /// .gguf file.
    pub model_dir: PathBuf,
}

/// Prints the report; the model is memory-mapped, nothing is copied.
pub fn run(a: Args) -> Result<()> {
    if model::gguf::is_gguf_file(&a.model_dir) {
        return run_gguf(&a.model_dir);
    }
    let config_path = a.model_dir.join("config.json");
    let raw: serde_json::Value = std::fs::read(&config_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    let is_dots1 = raw.get("model_type").and_then(|v| v.as_str()) == Some("dots1");
    let gptq = raw.get("quantization_config").filter(|_| model::gptq::is_gptq_dir(&a.model_dir));
    let (config, moe) = if is_dots1 || gptq.is_some() {
        // An HF Dots1 export: read it as the medmoe model it holds (bf16 copy, for the spec).
        let m = model::Qwen3::load_as(&a.model_dir, autograd::DType::BF16)?;
        (m.config, m.moe)
    } else {
        let config = Qwen3Config::from_file(&config_path)?;
        let moe = MoeSpec::from_config(&config, &config_path)?;
        (config, moe)
    };
    let ckpt = SafetensorsReader::open(&a.model_dir)?;
    let c = &config;
    println!("model      {}", a.model_dir.display());
    if let Some(q) = gptq {
        println!(
            "quant      GPTQ {}-bit, group {}, desc_act {} (dequantized at load)",
            q["bits"], q["group_size"], q["desc_act"]
        );
    }
    match &moe {
        _ if is_dots1 => println!("type       HF Dots1 export (read as medmoe)"),
        None => println!("type       qwen3 (dense)"),
        Some(m) => println!(
            "type       medmoe: shared expert {} + top-1 of {} routed experts x {} | router {}",
            m.shared_width,
            m.num_experts,
            m.expert_width,
            model::moe_spec::weighting_name(m.weighting),
        ),
    }
    println!(
        "shape      vocab {} | hidden {} | layers {} | heads {} / kv {} x head_dim {} | ffn {}",
        c.vocab_size,
        c.hidden_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.intermediate_size
    );
    println!(
        "norm/rope  rms_norm_eps {:e} | rope_theta {} | max_position {} | tied embeddings {}",
        c.rms_norm_eps, c.rope_theta, c.max_position_embeddings, c.tie_word_embeddings
    );
    println!("dtype      {}", c.torch_dtype.as_deref().unwrap_or("(not given)"));
    println!("files      {} ({:.1} MiB)", ckpt.files().len(), ckpt.total_bytes() as f64 / (1 << 20) as f64);
    println!();
    println!("{:<56} {:>5}  {:<16} {:>12}  file", "tensor", "dtype", "shape", "params");
    for name in ckpt.names() {
        let info = ckpt.info(name).expect("listed name");
        let file = ckpt.path_of(name).and_then(|p| p.file_name()).map(|f| f.to_string_lossy()).unwrap_or_default();
        println!(
            "{:<56} {:>5}  {:<16} {:>12}  {}",
            name,
            info.dtype.name(),
            format!("{:?}", info.shape),
            info.numel(),
            file
        );
    }
    let specs = param_specs(c, moe.as_ref());
    let count = |pred: &dyn Fn(&str) -> bool| -> usize {
        specs.iter().filter(|(n, _)| pred(n)).map(|(_, s)| s.iter().product::<usize>()).sum()
    };
    let total = count(&|_| true);
    let embed = count(&|n| n.contains("embed_tokens") || n.starts_with("lm_head"));
    let ffn = count(&|n| n.contains(".mlp."));
    let attn = count(&|n| n.contains(".self_attn."));
    println!();
    println!("parameters  total {total} ({:.2} M)", total as f64 / 1e6);
    println!(
        "            embeddings + lm_head {embed} | attention {attn} | ffn {ffn} | non-embedding {}",
        total - embed
    );
    if let Some(m) = &moe {
        let one_expert = 3 * m.expert_width * c.hidden_size * c.num_hidden_layers;
        let active = total - one_expert * (m.num_experts - 1);
        println!(
            "            active per token {active} ({:.2} M): shared + router + one routed expert",
            active as f64 / 1e6
        );
    }
    let missing: Vec<&str> = specs.iter().map(|(n, _)| n.as_str()).filter(|n| ckpt.info(n).is_none()).collect();
    if !missing.is_empty() && !is_dots1 && gptq.is_none() {
        println!("missing     {} tensors the config needs, e.g. `{}`", missing.len(), missing[0]);
    }
    Ok(())
}

/// The GGUF report: metadata that shapes the model, tensor table with types, size and bits per weight.
fn run_gguf(path: &std::path::Path) -> Result<()> {
    let f = model::gguf::GgufFile::open(path)?;
    let m = model::Qwen3::load(path)?;
    let (c, kv_text) = (&m.config, |k: &str| f.get(k).map(|v| v.describe()).unwrap_or_else(|| "(absent)".into()));
    println!("model      {}", path.display());
    println!("type       GGUF {} | file_type {}", kv_text("general.architecture"), kv_text("general.file_type"));
    if let Some(moe) = &m.moe {
        println!(
            "moe        shared expert {} + top-1 of {} routed experts x {} | router {}",
            moe.shared_width,
            moe.num_experts,
            moe.expert_width,
            model::moe_spec::weighting_name(moe.weighting)
        );
    }
    println!(
        "shape      vocab {} | hidden {} | layers {} | heads {} / kv {} x head_dim {} | ffn {} | tied {}",
        c.vocab_size,
        c.hidden_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.intermediate_size,
        c.tie_word_embeddings
    );
    println!("vocab      {} | {} metadata keys", kv_text("tokenizer.ggml.tokens"), f.metadata.len());
    println!();
    println!("{:<40} {:>5}  {:<20} {:>12}", "tensor", "type", "ne", "bytes");
    for t in &f.tensors {
        println!("{:<40} {:>5}  {:<20} {:>12}", t.name, t.ty.name(), format!("{:?}", t.ne), t.bytes);
    }
    let weights: usize = f.tensors.iter().map(|t| t.numel()).sum();
    let size = std::fs::metadata(path)?.len();
    println!();
    println!(
        "size       {size} bytes | {weights} stored weights | {:.4} bits per weight | {} parameters loaded",
        f.data_bytes() as f64 * 8.0 / weights.max(1) as f64,
        m.num_params()
    );
    Ok(())
}
