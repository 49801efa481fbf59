//! The training pairs of phase p3: candidates sampled from the P2 model on the world's
//! verifiable prompts (`data::sft::verifiable`), scored by the rule-based reward, paired per
//! prompt as (correct, most confident wrong), with the frozen reference's log-probabilities
//! precomputed. Deterministic in the world, tokenizer, P2 model and phase config.
//!
//! Per prompt: `chosen` is the shortest correct candidate, `rejected` the wrong candidate with the
//! highest mean token log-probability under the P2 model (its most confident mistake); invalid
//! answers (no `</think>`, no or several options) are never paired. Both come from the same
//! prompt, so they share its think mode.

use crate::error::{EngineError, Result};
use crate::phase::PreferencePhaseConfig;
use crate::sft_data::{chat_of, read_world};
use data::chat::RenderOptions;
use data::sft::{reward, verifiable_prompts, Reward};
use data::tokenizer::{Tokenizer, ENDOFTEXT};
use model::generate::{generate, Decoder, GenerateOptions, Sampling};
use model::preference::sequence_logprobs;
use model::{Qwen3, TokenBatch};
use std::collections::BTreeMap;
use std::path::Path;

/// One training pair, padded to the phase's sequence length.
#[derive(Clone, Debug, PartialEq)]
pub struct PreferencePair {
    /// Prompt + chosen completion `[T]`.
    pub chosen: Vec<u32>,
    /// The chosen row's targets `[T]`: the next token where it is a completion token, else -100.
    pub chosen_targets: Vec<i32>,
    /// Prompt + rejected completion `[T]`.
    pub rejected: Vec<u32>,
    /// The rejected row's targets `[T]`.
    pub rejected_targets: Vec<i32>,
    /// Reference log-probabilities of the chosen and the rejected completion.
    pub reference: [f32; 2],
}

/// One sampled answer.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Index of its prompt.
    pub prompt: usize,
    /// Generated tokens (a final stop token included).
    pub tokens: Vec<u32>,
    /// Its reward.
    pub reward: Reward,
    /// Summed log-probability under the P2 model.
    pub logp: f32,
}

/// Pairs and what sampling came to.
pub struct PairData {
    /// The pairs.
    pub pairs: Vec<PreferencePair>,
    /// Counts for the summary (`po_prompts`, `po_samples`, `po_correct`, `po_wrong`,
    /// `po_invalid`, `po_pairs`, `po_pair_yield`, `po_think_pairs`, `po_too_long`, ...).
    pub stats: BTreeMap<String, f64>,
}

/// Per prompt, the (chosen, rejected) candidate indices: the shortest correct one and the most
/// confident (highest mean log-probability) wrong one; prompts without both give none.
pub fn pick_pairs(candidates: &[Candidate]) -> Vec<(usize, usize)> {
    let mut by_prompt: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, c) in candidates.iter().enumerate() {
        by_prompt.entry(c.prompt).or_default().push(i);
    }
    let mean = |c: &Candidate| c.logp / c.tokens.len().max(1) as f32;
    by_prompt
        .values()
        .filter_map(|idx| {
            let chosen = idx
                .iter()
                .copied()
                .filter(|&i| candidates[i].reward == Reward::Correct)
                .min_by_key(|&i| (candidates[i].tokens.len(), i))?;
            let rejected = idx
                .iter()
                .copied()
                .filter(|&i| candidates[i].reward == Reward::Wrong)
                .max_by(|&a, &b| mean(&candidates[a]).total_cmp(&mean(&candidates[b])).then(b.cmp(&a)))?;
            Some((chosen, rejected))
        })
        .collect()
}

/// `prompt + completion` padded to `t` with its completion targets.
fn row(prompt: &[u32], completion: &[u32], t: usize, pad: u32) -> (Vec<u32>, Vec<i32>) {
    let mut ids: Vec<u32> = prompt.iter().chain(completion).copied().collect();
    let n = ids.len();
    ids.resize(t, pad);
    let targets = (0..t).map(|i| if i + 1 >= prompt.len() && i + 1 < n { ids[i + 1] as i32 } else { -100 }).collect();
    (ids, targets)
}

/// Summed completion log-probabilities of `rows` (prompt, completion) under `model`, in
/// batches of up to 16 rows padded to their longest.
fn completion_logprobs(model: &Qwen3, rows: &[(&[u32], &[u32])], pad: u32) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(16) {
        let t = chunk.iter().map(|(p, c)| p.len() + c.len()).max().unwrap_or(1);
        let (mut ids, mut targets) = (Vec::new(), Vec::new());
        for (p, c) in chunk {
            let (i, tg) = row(p, c, t, pad);
            ids.extend(i);
            targets.extend(tg);
        }
        let batch = TokenBatch::new(ids, chunk.len(), t)?;
        out.extend(sequence_logprobs(model, &batch, &targets, autograd::Device::Cpu)?.logp);
    }
    Ok(out)
}

/// Samples, scores and pairs; `reference` is DPO's frozen model (None: the P2 model itself,
/// whose log-probabilities are computed anyway).
pub fn build_pairs(
    data_dir: &Path,
    p2: &Qwen3,
    reference: Option<&Qwen3>,
    cfg: &PreferencePhaseConfig,
    seq_len: usize,
    seed: u64,
) -> Result<PairData> {
    let world = read_world(data_dir)?;
    let (tok, template): (Tokenizer, _) = chat_of(data_dir)?;
    let prompts = verifiable_prompts(&world, seed, cfg.prompts, cfg.think_fraction);
    let render = RenderOptions { add_generation_prompt: true, ..Default::default() };
    let mut prompt_ids = Vec::with_capacity(prompts.len());
    for p in &prompts {
        prompt_ids.push(tok.encode(&template.render(&p.messages, &render)?)?);
    }
    let context = p2.config.max_position_embeddings.min(seq_len);
    if let Some((i, ids)) = prompt_ids.iter().enumerate().find(|(_, ids)| ids.len() >= context) {
        return Err(EngineError::config(
            "preference",
            format!(
                "prompt {} has {} tokens, no room for an answer within seq_len {seq_len} (model context {})",
                prompts[i].id,
                ids.len(),
                p2.config.max_position_embeddings
            ),
        ));
    }
    let pad = tok.token_id(ENDOFTEXT).unwrap_or(0);
    let stop_tokens: Vec<u32> = ["<|im_end|>", ENDOFTEXT].iter().filter_map(|t| tok.token_id(t)).collect();
    let decoder = Decoder::new(p2);
    let mut candidates = Vec::new();
    for round in 0..cfg.candidates {
        let opts = GenerateOptions {
            max_new_tokens: cfg.max_new_tokens,
            sampling: Sampling { temperature: cfg.temperature, top_k: cfg.top_k, top_p: cfg.top_p },
            seed: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(round as u64),
            stop_tokens: stop_tokens.clone(),
            stop_strings: Vec::new(),
        };
        let gens = generate(&decoder, &prompt_ids, &opts, None, &mut |_, _| {})?;
        for (i, g) in gens.into_iter().enumerate() {
            let text = tok.decode(&g.tokens, false)?;
            candidates.push(Candidate { prompt: i, reward: reward(&prompts[i], &text), tokens: g.tokens, logp: 0.0 });
        }
    }
    let confidence = {
        let rows: Vec<(&[u32], &[u32])> =
            candidates.iter().map(|c| (prompt_ids[c.prompt].as_slice(), c.tokens.as_slice())).collect();
        completion_logprobs(p2, &rows, pad)?
    };
    for (c, lp) in candidates.iter_mut().zip(confidence) {
        c.logp = lp;
    }
    let rows: Vec<(&[u32], &[u32])> =
        candidates.iter().map(|c| (prompt_ids[c.prompt].as_slice(), c.tokens.as_slice())).collect();
    let count = |r: Reward| candidates.iter().filter(|c| c.reward == r).count() as f64;
    let mut stats: BTreeMap<String, f64> = [
        ("po_prompts", prompts.len() as f64),
        ("po_samples", candidates.len() as f64),
        ("po_correct", count(Reward::Correct)),
        ("po_wrong", count(Reward::Wrong)),
        ("po_invalid", count(Reward::Invalid)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let picked = pick_pairs(&candidates);
    let fits = |i: usize| prompt_ids[candidates[i].prompt].len() + candidates[i].tokens.len() <= seq_len;
    let (kept, too_long): (Vec<_>, Vec<_>) = picked.into_iter().partition(|&(c, r)| fits(c) && fits(r));
    stats.insert("po_pairs_too_long".into(), too_long.len() as f64);
    if kept.is_empty() {
        return Err(EngineError::Training(format!(
            "p3: sampling gave no preference pairs: {} prompts x {} candidates = {} samples, {} correct, {} wrong, {} \
             invalid; {} prompts had both a correct and a wrong answer (pairs longer than seq_len {seq_len} are \
             left out) (train p2 longer, or raise preference.candidates / max_new_tokens)",
            prompts.len(),
            cfg.candidates,
            candidates.len(),
            stats["po_correct"],
            stats["po_wrong"],
            stats["po_invalid"],
            too_long.len(),
        )));
    }
    let reference_logp = match reference {
        None => kept.iter().map(|&(c, r)| [candidates[c].logp, candidates[r].logp]).collect::<Vec<_>>(),
        Some(m) => {
            let rows: Vec<(&[u32], &[u32])> = kept.iter().flat_map(|&(c, r)| [rows[c], rows[r]]).collect();
            completion_logprobs(m, &rows, pad)?.chunks(2).map(|x| [x[0], x[1]]).collect()
        }
    };
    let pairs: Vec<PreferencePair> = kept
        .iter()
        .zip(reference_logp)
        .map(|(&(c, r), reference)| {
            let (chosen, chosen_targets) = row(rows[c].0, rows[c].1, seq_len, pad);
            let (rejected, rejected_targets) = row(rows[r].0, rows[r].1, seq_len, pad);
            PreferencePair { chosen, chosen_targets, rejected, rejected_targets, reference }
        })
        .collect();
    let n = pairs.len() as f64;
    let mean_len = |pick: fn(&(usize, usize)) -> usize| {
        kept.iter().map(|x| candidates[pick(x)].tokens.len()).sum::<usize>() as f64 / n
    };
    stats.insert("po_pairs".into(), n);
    stats.insert("po_pair_yield".into(), n / prompts.len().max(1) as f64);
    stats.insert(
        "po_think_pairs".into(),
        kept.iter().filter(|&&(c, _)| prompts[candidates[c].prompt].think).count() as f64,
    );
    stats.insert("po_chosen_mean_tokens".into(), mean_len(|x| x.0));
    stats.insert("po_rejected_mean_tokens".into(), mean_len(|x| x.1));
    Ok(PairData { pairs, stats })
}

/// The pairs of phase p3: the P2 model from `p2_dir` samples; DPO's reference is that model,
/// or `cfg.reference` when given (refused when its vocabulary differs from the policy's).
pub fn pairs_for_phase(
    data_dir: &Path,
    p2_dir: &Path,
    cfg: &PreferencePhaseConfig,
    seq_len: usize,
    seed: u64,
) -> Result<PairData> {
    let p2 = Qwen3::load(p2_dir)?;
    let reference = match &cfg.reference {
        Some(path) if cfg.loss.needs_reference() => {
            let r = Qwen3::load(path)?;
            if r.config.vocab_size != p2.config.vocab_size {
                return Err(EngineError::config(
                    "preference.reference",
                    format!(
                        "{} has a vocabulary of {} tokens but the policy ({}) has {}: log-probabilities over \
                         different vocabularies cannot be compared",
                        path.display(),
                        r.config.vocab_size,
                        p2_dir.display(),
                        p2.config.vocab_size
                    ),
                ));
            }
            Some(r)
        }
        _ => None,
    };
    build_pairs(data_dir, &p2, reference.as_ref(), cfg, seq_len, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(prompt: usize, len: usize, reward: Reward, logp: f32) -> Candidate {
        Candidate { prompt, tokens: vec![7; len], reward, logp }
    }

    #[test]
    fn pairs_take_the_shortest_correct_and_the_most_confident_wrong_answer() {
        let c = vec![
            cand(0, 5, Reward::Correct, -3.0),
            cand(0, 3, Reward::Correct, -9.0),
            cand(0, 4, Reward::Wrong, -8.0),   // mean -2
            cand(0, 10, Reward::Wrong, -10.0), // mean -1: most confident
            cand(0, 2, Reward::Invalid, -0.1),
            cand(1, 4, Reward::Correct, -1.0), // no wrong answer: no pair
            cand(1, 4, Reward::Invalid, -1.0),
            cand(2, 4, Reward::Wrong, -1.0), // no correct answer: no pair
            cand(3, 6, Reward::Wrong, -6.0),
            cand(3, 6, Reward::Correct, -6.0),
        ];
        assert_eq!(pick_pairs(&c), vec![(1, 3), (9, 8)]);
    }

    #[test]
    fn rows_train_the_completion_only() {
        let (ids, t) = row(&[1, 2, 3], &[4, 5], 7, 0);
        assert_eq!(ids, vec![1, 2, 3, 4, 5, 0, 0]);
        assert_eq!(t, vec![-100, -100, 4, 5, -100, -100, -100]);
    }
}
