//! The training rows of phase p2: chat conversations generated from the run's world
//! (`data::sft`), rendered with the tokenizer's chat template (tokenizer_config.json, else the
//! built-in ChatML), tokenised with the assistant-only mask and packed best-fit into rows of the
//! phase's sequence length (and, with `sft.long`, a share into longer rows). Deterministic in
//! the world, tokenizer and phase config, so a resumed phase rebuilds the same rows.

use crate::error::{EngineError, Result};
use crate::phase::{LongRows, SftPhaseConfig};
use data::chat::ChatTemplate;
use data::sft::{pack_sft, pack_sft_mixed, sft_examples, tokenize_chat, MaskedTokens, SftConfig, SftPacking, SftRow};
use data::tokenizer::{Tokenizer, ENDOFTEXT};
use data::world::World;
use rand::seq::SliceRandom;
use std::collections::BTreeMap;
use std::path::Path;

/// Packed rows and what went into them.
pub struct SftData {
    /// Rows `[T]` each.
    pub rows: Vec<SftRow>,
    /// Rows of `sft.long.seq_len` each (empty without `sft.long`).
    pub long_rows: Vec<SftRow>,
    /// Counts for the summary: `sft_examples`, `sft_think_examples`, `sft_mcq_examples`, `sft_rows`,
    /// `sft_long_rows`, `sft_long_examples`, `sft_too_long`, `sft_trained_tokens`.
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
    let in_long = match &cfg.long {
        Some(l) if l.fraction > 0.0 => split_long(&docs, seq_len, l, seed),
        _ => vec![false; docs.len()],
    };
    let short = pack_subset(&docs, &in_long, false, |d| pack_sft(d, seq_len, pad));
    // A long micro-batch holds one or two rows: they must mix conversations (RESULTS.md).
    let long =
        cfg.long.as_ref().map(|l| pack_subset(&docs, &in_long, true, |d| pack_sft_mixed(d, l.seq_len, pad, seed)));
    if short.rows.is_empty() {
        let shortest = docs.iter().map(|d| d.ids.len()).min().unwrap_or(0);
        return Err(EngineError::config(
            "sft",
            format!(
                "none of the {} conversations fits a row of seq_len {seq_len} tokens (the shortest has {shortest})",
                docs.len()
            ),
        ));
    }
    let long_rows = long.as_ref().map(|p| p.rows.clone()).unwrap_or_default();
    if cfg.long.as_ref().is_some_and(|l| l.fraction > 0.0) && long_rows.is_empty() {
        return Err(EngineError::config("sft.long", "no conversation went into a long row"));
    }
    let too_long = match &long {
        Some(p) => p.too_long.len(),
        None => short.too_long.len(),
    };
    let stats = [
        ("sft_examples", examples.len() as f64),
        ("sft_think_examples", examples.iter().filter(|e| e.think).count() as f64),
        ("sft_mcq_examples", examples.iter().filter(|e| e.kind == "mcq").count() as f64),
        ("sft_rows", short.rows.len() as f64),
        ("sft_long_rows", long_rows.len() as f64),
        ("sft_long_examples", long_rows.iter().map(|r| r.docs.len()).sum::<usize>() as f64),
        ("sft_too_long", too_long as f64),
        ("sft_trained_tokens", (short.trained_tokens + long.as_ref().map_or(0, |p| p.trained_tokens)) as f64),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Ok(SftData { rows: short.rows, long_rows, stats })
}

/// Which conversations go into long rows: every one longer than a row of `seq_len`, then others
/// in a seeded order until the long ones hold `fraction` of the tokens (so the short and the long
/// micro-batches, `fraction` of all, run through their rows at about the same pace).
fn split_long(docs: &[MaskedTokens], seq_len: usize, long: &LongRows, seed: u64) -> Vec<bool> {
    let mut in_long: Vec<bool> = docs.iter().map(|d| d.ids.len() > seq_len).collect();
    let total: usize = docs.iter().map(|d| d.ids.len()).filter(|&n| n <= long.seq_len).sum();
    let target = (long.fraction * total as f64).round() as usize;
    let mut have: usize =
        docs.iter().zip(&in_long).filter(|(d, &l)| l && d.ids.len() <= long.seq_len).map(|(d, _)| d.ids.len()).sum();
    let mut order: Vec<usize> = (0..docs.len()).filter(|&i| !in_long[i]).collect();
    order.shuffle(&mut data::rng::sub_rng(seed, "sft-long-rows"));
    for i in order {
        if have >= target {
            break;
        }
        in_long[i] = true;
        have += docs[i].ids.len();
    }
    in_long
}

/// Packs the conversations with `in_long[i] == long` with `pack`; rows name their conversations
/// by index into `docs`.
fn pack_subset(
    docs: &[MaskedTokens],
    in_long: &[bool],
    long: bool,
    pack: impl FnOnce(&[MaskedTokens]) -> SftPacking,
) -> SftPacking {
    let picked: Vec<usize> = (0..docs.len()).filter(|&i| in_long[i] == long).collect();
    let subset: Vec<MaskedTokens> = picked.iter().map(|&i| docs[i].clone()).collect();
    let mut packing = pack(&subset);
    for r in &mut packing.rows {
        r.docs.iter_mut().for_each(|d| *d = picked[*d]);
    }
    packing.too_long.iter_mut().for_each(|d| *d = picked[*d]);
    packing
}
