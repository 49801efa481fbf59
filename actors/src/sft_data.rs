//! The training rows of phase p2: chat conversations generated from the run's world
//! (`data::sft`), rendered with the tokenizer's chat template (tokenizer_config.json, else the
//! built-in ChatML), tokenised with the assistant-only mask and packed best-fit into rows of the
//! phase's sequence length. Deterministic in the world, tokenizer and phase config, so a resumed
//! phase rebuilds the same rows.

use crate::error::{EngineError, Result};
use crate::phase::SftPhaseConfig;
use data::chat::ChatTemplate;
use data::sft::{pack_sft, sft_examples, tokenize_chat, SftConfig, SftRow};
use data::tokenizer::{Tokenizer, ENDOFTEXT};
use data::world::World;
use std::collections::BTreeMap;
use std::path::Path;

/// Packed rows and what went into them.
pub struct SftData {
    /// Rows `[T]` each.
    pub rows: Vec<SftRow>,
    /// Counts for the summary: `sft_examples`, `sft_think_examples`, `sft_mcq_examples`, `sft_rows`,
    /// `sft_too_long`, `sft_trained_tokens`.
    pub stats: BTreeMap<String, f64>,
}

/// The world of a run's data stage (`<data>/world/world.json`).
pub fn read_world(data_dir: &Path) -> Result<World> {
    let path = data_dir.join("world").join("world.json");
    let text = std::fs::read_to_string(&path).map_err(EngineError::io(&path))?;
    serde_json::from_str(&text)
        .map_err(|e| EngineError::config(path.display().to_string(), format!("not a world: {e}")))
}

/// The tokenizer of a run's data stage and its chat template (tokenizer_config.json's, else
/// the built-in one); a template that does not parse names the file.
pub fn chat_of(data_dir: &Path) -> Result<(Tokenizer, ChatTemplate)> {
    let tok_dir = data_dir.join("tokenizer");
    let tok = Tokenizer::load(&tok_dir)?;
    let template = tok.chat_template().map_err(|e| {
        EngineError::config(tok_dir.join("tokenizer_config.json").display().to_string(), format!("chat_template: {e}"))
    })?;
    Ok((tok, template))
}

/// Builds the rows of an SFT phase from the data stage in `data_dir`.
pub fn build_sft_rows(data_dir: &Path, cfg: &SftPhaseConfig, seq_len: usize, seed: u64) -> Result<SftData> {
    let world = read_world(data_dir)?;
    let (tok, template) = chat_of(data_dir)?;
    let sft = SftConfig {
        examples: cfg.examples,
        hard_fraction: cfg.hard_fraction,
        mcq_fraction: cfg.mcq_fraction,
        mcq_think_fraction: cfg.mcq_think_fraction,
    };
    let examples = sft_examples(&world, seed, &sft);
    let docs =
        examples.iter().map(|e| tokenize_chat(&tok, &template, &e.messages)).collect::<data::Result<Vec<_>>>()?;
    let pad = tok.token_id(ENDOFTEXT).unwrap_or(0);
    let packing = pack_sft(&docs, seq_len, pad);
    if packing.rows.is_empty() {
        let shortest = docs.iter().map(|d| d.ids.len()).min().unwrap_or(0);
        return Err(EngineError::config(
            "sft",
            format!(
                "none of the {} conversations fits a row of seq_len {seq_len} tokens (the shortest has {shortest})",
                docs.len()
            ),
        ));
    }
    let stats = [
        ("sft_examples", examples.len() as f64),
        ("sft_think_examples", examples.iter().filter(|e| e.think).count() as f64),
        ("sft_mcq_examples", examples.iter().filter(|e| e.kind == "mcq").count() as f64),
        ("sft_rows", packing.rows.len() as f64),
        ("sft_too_long", packing.too_long.len() as f64),
        ("sft_trained_tokens", packing.trained_tokens as f64),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Ok(SftData { rows: packing.rows, stats })
}
