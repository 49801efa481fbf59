//! `moe-cli logits`: run a model on token ids and write `logits [B,T,V]` f32.

use crate::ids::parse_id_rows;
use anyhow::{Context, Result};
use model::safetensors_io::{write_safetensors, FileDType, TensorToWrite};
use model::{Qwen3, TokenBatch};
use std::borrow::Cow;
use std::path::PathBuf;

/// Arguments of `logits`.
#[derive(clap::Args)]
pub struct Args {
    /// Model directory (HF Qwen3 layout), or a .gguf file (dequantized at load).
    #[arg(long)]
    pub model: PathBuf,
    /// Token ids: rows separated by `;`, ids by `,` (e.g. "1,2,3;4,5,6"); rows of equal length.
    #[arg(long)]
    pub ids: String,
    /// Output safetensors file; holds tensor `logits` [B,T,V] f32. Written atomically.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing `--out` file (never one of the model's).
    #[arg(long)]
    pub force: bool,
}

/// Loads, runs, writes.
pub fn run(a: Args) -> Result<()> {
    crate::args::check_output(&a.out, &[a.model.as_path()], a.force)?;
    let rows = parse_id_rows(&a.ids)?;
    let batch = TokenBatch::from_rows(&rows)?;
    let model = Qwen3::load(&a.model)?;
    let logits = model.logits(&batch).with_context(|| format!("running {}", a.model.display()))?;
    let v = model.config.vocab_size;
    let bytes: Vec<u8> = logits.iter().flat_map(|x| x.to_le_bytes()).collect();
    let tensor = TensorToWrite {
        name: "logits".into(),
        dtype: FileDType::F32,
        shape: vec![batch.b, batch.t, v],
        data: Cow::Owned(bytes),
    };
    write_safetensors(&a.out, &[tensor], None)?;
    eprintln!("wrote logits [{}, {}, {v}] to {}", batch.b, batch.t, a.out.display());
    Ok(())
}
