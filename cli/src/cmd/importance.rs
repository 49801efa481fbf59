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

/// Arguments of `importance`.
#[derive(clap::Args)]
pub struct Args {
    /// Dense model directory (HF Qwen3 layout).
    #[arg(long)]
    pub model: PathBuf,
    /// Packed corpus directory (`moe-cli data pack`), a plain UTF-8 text file (needs
    /// --tokenizer), or `magnitude` for the data-free proxy.
    #[arg(long)]
    pub data: String,
    /// Tokenizer (tokenizer.json or its directory) for text --data.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Tokens per sequence when --data is text.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
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
    /// EMA decay per batch, in [0, 1).
    #[arg(long, default_value_t = 0.99, value_parser = crate::args::decay)]
    pub decay: f32,
    /// Write the file every this many batches (so an interrupted run resumes from there).
    #[arg(long, default_value_t = 50)]
    pub save_every: u64,
    /// Continue from an existing `--out` file (its EMA state and data cursor).
    #[arg(long)]
    pub resume: bool,
    /// Replace an existing `--out` file (without --resume).
    #[arg(long)]
    pub force: bool,
    /// GEMM operand precision of the gradient passes: f32, or bf16 (bf16 operands, f32
    /// accumulation and scores; AMX tiles or AVX512-BF16 where the CPU has them, else
    /// emulated at f32 speed).
    #[arg(long, default_value = "f32", value_parser = crate::args::precision)]
    pub precision: autograd::Precision,
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
    let data_path = PathBuf::from(&a.data);
    let mut inputs = vec![a.model.as_path()];
    if a.data != "magnitude" {
        inputs.push(&data_path);
    }
    inputs.extend(a.tokenizer.as_deref());
    // --resume continues (and so rewrites) its own --out.
    crate::args::check_output(&a.out, &inputs, a.force || (a.resume && a.data != "magnitude"))?;
    if let Some(w) = crate::args::precision_warning(a.precision) {
        eprintln!("{w}");
    }
    let model = Qwen3::load(&a.model)?;
    let form = match a.form {
        Form::First => TaylorForm::First,
        Form::Squared => TaylorForm::Squared,
    };
    let (l, f) = (model.config.num_hidden_layers, model.config.intermediate_size);
    let mut meta = HashMap::new();
    meta.insert("model".to_string(), a.model.display().to_string());
    meta.insert("precision".to_string(), a.precision.name().to_string());
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
    let source = if data_path.is_dir() {
        // Its errors name the pack's file.
        Source::Packed(PackedDataset::open(&data_path)?)
    } else {
        let Some(tok_path) = &a.tokenizer else {
            bail!("--data {} is a text file: give --tokenizer too (or a packed directory)", data_path.display());
        };
        if a.seq_len < 2 {
            bail!("--seq-len must be at least 2");
        }
        let text = std::fs::read(&data_path).with_context(|| format!("reading {}", data_path.display()))?;
        let text = String::from_utf8(text).map_err(|e| {
            anyhow::anyhow!(
                "{}: not UTF-8 text (invalid byte at offset {})",
                data_path.display(),
                e.utf8_error().valid_up_to()
            )
        })?;
        let tok = data::tokenizer::Tokenizer::load(tok_path)?;
        let ids = tok.encode(&text)?;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= model.config.vocab_size) {
            bail!("tokenizer id {bad} is outside the model's vocabulary of {}", model.config.vocab_size);
        }
        Source::Text(ids.chunks_exact(a.seq_len).map(<[u32]>::to_vec).collect())
    };
    let (mut state, mut cursor) = if a.resume && a.out.exists() {
        let (state, old) = read_taylor_state(&a.out)?;
        if (state.layers, state.width) != (l, f) {
            bail!("{} is for [{}, {}], the model needs [{l}, {f}]", a.out.display(), state.layers, state.width);
        }
        // Files written before --precision existed were f32.
        let was = old.get("precision").map_or("f32", String::as_str);
        if was != a.precision.name() {
            bail!(
                "{} was computed at --precision {was}; resume it with the same precision (or start over with --force)",
                a.out.display()
            );
        }
        let cursor: u64 = old.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
        (state, cursor)
    } else {
        (TaylorState::new(l, f, a.decay), 0)
    };
    meta.insert("data".into(), data_path.display().to_string());
    let total = source.len();
    let limit = a.batches.map_or(total, |b| (cursor + b * a.batch as u64).min(total));
    let pb = bar((limit.saturating_sub(cursor)).div_ceil(a.batch as u64), "importance");
    let mut since_save = 0;
    while cursor < limit {
        let end = (cursor + a.batch as u64).min(limit);
        let (batch, targets) = source.batch(cursor, end)?;
        let loss = state.update_at(&model, &batch, &targets, a.precision)?;
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
        bail!("no sequences to score in {}", data_path.display());
    }
    eprintln!(
        "wrote importance [{l}, {f}] to {} ({} batches, {} tokens, cursor {cursor}/{total})",
        a.out.display(),
        state.batches,
        state.tokens
    );
    Ok(())
}

/// Where importance batches come from.
enum Source {
    /// A packed corpus (document-masked sequences).
    Packed(PackedDataset),
    /// Tokenised text cut into sequences of `--seq-len`.
    Text(Vec<Vec<u32>>),
}

impl Source {
    fn len(&self) -> u64 {
        match self {
            Source::Packed(ds) => ds.len(),
            Source::Text(seqs) => seqs.len() as u64,
        }
    }

    /// Sequences `start..end` as a batch and its next-token targets.
    fn batch(&self, start: u64, end: u64) -> Result<(TokenBatch, Vec<i32>)> {
        match self {
            Source::Packed(ds) => {
                let seqs: Vec<u64> = (start..end).collect();
                Ok(actors::eval::token_batch_of(batch_of(ds, &seqs)))
            }
            Source::Text(seqs) => {
                let rows = &seqs[start as usize..end as usize];
                let t = rows[0].len();
                let targets = rows
                    .iter()
                    .flat_map(|r| (0..t).map(move |j| if j + 1 < t { r[j + 1] as i32 } else { -100 }))
                    .collect();
                Ok((TokenBatch::from_rows(rows)?, targets))
            }
        }
    }
}
