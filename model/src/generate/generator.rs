//! The generation loop: prefill every prompt, then decode all unfinished sequences together,
//! one token per sequence per step, until each stops.

use super::decode::{Decoder, LogitRows, StepInput};
use super::sampling::{Sampler, Sampling};
use super::stop::{find_stop, Finish};
use crate::error::{ModelError, Result};
use std::time::Instant;

/// What to generate and when to stop.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// At most this many new tokens per prompt (>= 1).
    pub max_new_tokens: usize,
    /// How each token is chosen.
    pub sampling: Sampling,
    /// Seed of the sampling; prompt `i` draws from stream `i`.
    pub seed: u64,
    /// Tokens that end a sequence (kept as its last token).
    pub stop_tokens: Vec<u32>,
    /// Strings that end a sequence once its generated text contains one (needs a `text_of`).
    pub stop_strings: Vec<String>,
}

/// One prompt's result.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The prompt's tokens.
    pub prompt: Vec<u32>,
    /// The generated tokens (including a final stop token).
    pub tokens: Vec<u32>,
    /// Why it stopped.
    pub finish: Finish,
    /// Wall time of its prefill (the prompt's forward and the first token).
    pub prefill_secs: f64,
    /// Wall time of the decode steps it took part in.
    pub decode_secs: f64,
    /// Decode steps it took part in (tokens after the first).
    pub decode_steps: usize,
}

impl Generation {
    /// Prompt tokens per second of its prefill.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt.len() as f64 / self.prefill_secs.max(1e-12)
    }

    /// Generated tokens per second of its decode steps (0 when there were none).
    pub fn decode_tokens_per_s(&self) -> f64 {
        if self.decode_steps == 0 {
            0.0
        } else {
            self.decode_steps as f64 / self.decode_secs.max(1e-12)
        }
    }
}

/// The text of generated tokens (for stop strings), usually the tokenizer's decode.
pub type TextOf<'a> = &'a dyn Fn(&[u32]) -> String;

/// Checks the options and that every prompt is non-empty and fits the context.
fn check(prompts: &[Vec<u32>], opts: &GenerateOptions, context: usize, has_text: bool) -> Result<()> {
    opts.sampling.validate()?;
    if opts.max_new_tokens == 0 {
        return Err(ModelError::Invalid("max_new_tokens must be at least 1".into()));
    }
    if !opts.stop_strings.is_empty() && !has_text {
        return Err(ModelError::Invalid("stop strings need a detokenizer".into()));
    }
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(ModelError::Invalid(format!("prompt {i} is empty")));
        }
        if p.len() > context {
            return Err(ModelError::Invalid(format!(
                "prompt {i} has {} tokens, more than the model's context (max_position_embeddings) of {context}",
                p.len()
            )));
        }
    }
    Ok(())
}

/// A sequence in flight.
struct Active {
    sampler: Sampler,
    tokens: Vec<u32>,
    finish: Option<Finish>,
    prefill_secs: f64,
    decode_secs: f64,
    decode_steps: usize,
}

/// Generates a continuation of every prompt. `on_token(i, token)` sees each new token of
/// prompt `i` as it is chosen (for streaming); `text_of` decodes tokens for stop strings.
/// Every prompt is checked before any work starts.
pub fn generate(
    decoder: &Decoder<'_>,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    text_of: Option<TextOf<'_>>,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Vec<Generation>> {
    let context = decoder.context();
    check(prompts, opts, context, text_of.is_some())?;
    let mut caches: Vec<_> = prompts.iter().map(|_| decoder.new_cache()).collect();
    let mut seqs: Vec<Active> = (0..prompts.len())
        .map(|i| Active {
            sampler: Sampler::new(opts.sampling, opts.seed, i as u64),
            tokens: Vec::new(),
            finish: None,
            prefill_secs: 0.0,
            decode_secs: 0.0,
            decode_steps: 0,
        })
        .collect();
    let mut accept = |i: usize, s: &mut Active, logits: &[f32], cache_len: usize| {
        let t = s.sampler.next(logits);
        s.tokens.push(t);
        on_token(i, t);
        s.finish = if opts.stop_tokens.contains(&t) {
            Some(Finish::StopToken)
        } else if text_of.is_some_and(|f| find_stop(&f(&s.tokens), &opts.stop_strings).is_some()) {
            Some(Finish::StopString)
        } else if s.tokens.len() >= opts.max_new_tokens {
            Some(Finish::MaxNewTokens)
        } else if cache_len >= context {
            Some(Finish::Context)
        } else {
            None
        };
    };
    for (i, prompt) in prompts.iter().enumerate() {
        let start = Instant::now();
        let logits = decoder.step(&mut caches, &[StepInput { seq: i, tokens: prompt }], LogitRows::Last)?;
        seqs[i].prefill_secs = start.elapsed().as_secs_f64();
        accept(i, &mut seqs[i], &logits, caches[i].len());
    }
    loop {
        let active: Vec<usize> = (0..seqs.len()).filter(|&i| seqs[i].finish.is_none()).collect();
        if active.is_empty() {
            break;
        }
        let last: Vec<[u32; 1]> =
            active.iter().map(|&i| [*seqs[i].tokens.last().expect("prefill chose one")]).collect();
        let inputs: Vec<StepInput<'_>> =
            active.iter().zip(&last).map(|(&seq, t)| StepInput { seq, tokens: t }).collect();
        let start = Instant::now();
        let logits = decoder.step(&mut caches, &inputs, LogitRows::Last)?;
        let secs = start.elapsed().as_secs_f64();
        let v = logits.len() / active.len();
        for (r, &i) in active.iter().enumerate() {
            let s = &mut seqs[i];
            s.decode_secs += secs;
            s.decode_steps += 1;
            accept(i, s, &logits[r * v..][..v], caches[i].len());
        }
    }
    Ok(prompts
        .iter()
        .zip(seqs)
        .map(|(p, s)| Generation {
            prompt: p.clone(),
            tokens: s.tokens,
            finish: s.finish.expect("the loop ends when every sequence finished"),
            prefill_secs: s.prefill_secs,
            decode_secs: s.decode_secs,
            decode_steps: s.decode_steps,
        })
        .collect())
}
