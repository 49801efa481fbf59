//! `moe-cli importance`: per-FFN-neuron Taylor saliency over a packed corpus, streamed as an EMA
//! over batches and resumable; `magnitude` for the data-free proxy.

use crate::progress::bar;
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use data::pack::{batch_of, PackedDataset};
use model::importance::{magnitude, read_taylor_state, write_importance, TaylorForm, TaylorState};
use model::{Qwen3, TokenBatch};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Arguments of `importance`.
#[derive(clap::Args)]
pub struct Args {
    /// Dense model directory (HF Qwen3 layout).
    #[arg(long)]
    pub model: PathBuf,
    /// Packed corpus directory (`moe-cli data pack`), or `magnitude` for the data-free proxy.
    #[arg(long)]
    pub data: String,
    /// Output importance file (safetensors: importance [L, F], ranking, Taylor EMA state).
    #[arg(long)]
    pub out: PathBuf,
    /// Which Taylor form becomes `importance`.
    #[arg(long, value_enum, default_value_t = Form::First)]
    pub form: Form,
    /// Sequences per batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Stop after this many batches (default: one pass over the corpus).
    #[arg(long)]
    pub batches: Option<u64>,
    /// EMA decay per batch.
    #[arg(long, default_value_t = 0.99)]
    pub decay: f32,
    /// Write the file every this many batches (so an interrupted run resumes from there).
    #[arg(long, default_value_t = 50)]
    pub save_every: u64,
    /// Continue from an existing `--out` file (its EMA state and data cursor).
    #[arg(long)]
    pub resume: bool,
}

/// `--form` values.
#[derive(Clone, Copy, ValueEnum)]
pub enum Form {
    /// |sum grad * w| per neuron.
    First,
    /// sum (grad * w)^2 per neuron.
    Squared,
}

/// Runs the importance pass.
pub fn run(a: Args) -> Result<()> {
    let model = Qwen3::load(&a.model)?;
    let form = match a.form {
        Form::First => TaylorForm::First,
        Form::Squared => TaylorForm::Squared,
    };
    let (l, f) = (model.config.num_hidden_layers, model.config.intermediate_size);
    let mut meta = HashMap::new();
    meta.insert("model".to_string(), a.model.display().to_string());
    if a.data == "magnitude" {
        // Data-free: one "batch" whose scores are the weight magnitudes.
        let mut state = TaylorState::new(l, f, 0.0);
        state.first = magnitude(&model)?.concat();
        state.squared = state.first.iter().map(|x| x * x).collect();
        state.batches = 1;
        meta.insert("data".into(), "magnitude".into());
        write_importance(&a.out, &state, form, &meta)?;
        eprintln!("wrote magnitude importance [{l}, {f}] to {}", a.out.display());
        return Ok(());
    }
    if a.batch == 0 {
        bail!("--batch must be positive");
    }
    let data_dir = PathBuf::from(&a.data);
    let ds = PackedDataset::open(&data_dir).with_context(|| format!("opening packed data {}", data_dir.display()))?;
    let (mut state, mut cursor) = if a.resume && a.out.exists() {
        let (state, old) = read_taylor_state(&a.out)?;
        if (state.layers, state.width) != (l, f) {
            bail!("{} is for [{}, {}], the model needs [{l}, {f}]", a.out.display(), state.layers, state.width);
        }
        let cursor: u64 = old.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
        (state, cursor)
    } else {
        (TaylorState::new(l, f, a.decay), 0)
    };
    meta.insert("data".into(), data_dir.display().to_string());
    let total = ds.len();
    let limit = a.batches.map_or(total, |b| (cursor + b * a.batch as u64).min(total));
    let pb = bar((limit.saturating_sub(cursor)).div_ceil(a.batch as u64), "importance");
    let mut since_save = 0;
    while cursor < limit {
        let end = (cursor + a.batch as u64).min(limit);
        let seqs: Vec<u64> = (cursor..end).collect();
        let pbatch = batch_of(&ds, &seqs);
        let batch = TokenBatch {
            ids: pbatch.ids,
            b: pbatch.b,
            t: pbatch.t,
            pos: Arc::from(pbatch.pos),
            seg: Some(Arc::from(pbatch.seg)),
        };
        let loss = state.update(&model, &batch, &pbatch.targets)?;
        cursor = end;
        pb.set_message(format!("loss {loss:.3}"));
        pb.inc(1);
        since_save += 1;
        if since_save >= a.save_every || cursor >= limit {
            meta.insert("cursor".into(), cursor.to_string());
            write_importance(&a.out, &state, form, &meta)?;
            since_save = 0;
        }
    }
    pb.finish_and_clear();
    if state.batches == 0 {
        bail!("no sequences to score in {}", data_dir.display());
    }
    eprintln!(
        "wrote importance [{l}, {f}] to {} ({} batches, {} tokens, cursor {cursor}/{total})",
        a.out.display(),
        state.batches,
        state.tokens
    );
    Ok(())
}
