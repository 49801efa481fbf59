//! MCQ by greedy generation, one item at a time (batch 1, so the timings are those of a single
//! user): the prompt of [`generation_prompt`], at most `max_new_tokens` new tokens, stopping at
//! the end of the line or an end-of-sequence token; the text parsed by [`parse_answer`]. In
//! [`GenMode::Chat`] the prompt is [`chat_question`] through the chat template (assistant header
//! appended), generation stops at an end-of-sequence token only, and the answer is read after the
//! think block ([`parse_chat_answer`]).

use crate::eval::{EvalError, Result};
use crate::harness::answer::{chat_question, generation_prompt, parse_answer, parse_chat_answer};
use data::chat::{ChatTemplate, Message, RenderOptions};
use data::eval::McqItem;
use data::tokenizer::{Tokenizer, ENDOFTEXT};
use model::generate::{generate, Decoder, Finish, GenerateOptions, Sampling};
use model::Qwen3;

/// How an item is put to the model.
#[derive(Clone, Copy, Default)]
pub enum GenMode<'a> {
    /// A plain text prompt ending with `Answer:`; the first line of the continuation is read.
    #[default]
    Plain,
    /// A user turn in the model's chat template, under `/think` or `/no_think`; the text after
    /// the think block is read.
    Chat {
        /// The tokenizer's chat template.
        template: &'a ChatTemplate,
        /// Ask under `/think` (else `/no_think`).
        think: bool,
    },
}

/// One item's generated answer.
#[derive(Clone, Debug, PartialEq)]
pub struct GenAnswer {
    /// The option the text names (None: it names none).
    pub predicted: Option<usize>,
    /// The generated text up to the end of its line (chat: the whole answer, think block
    /// included, newlines as spaces).
    pub text: String,
    /// Prompt tokens (prefilled).
    pub prompt_tokens: usize,
    /// Wall time of the prefill (the prompt's forward and the first token).
    pub prefill_secs: f64,
    /// Decode steps (tokens after the first).
    pub decode_tokens: usize,
    /// Wall time of the decode steps.
    pub decode_secs: f64,
}

/// The ids that end a sequence: `<|im_end|>`, `<|endoftext|>` and the config's eos_token.
fn stop_tokens(tok: &Tokenizer) -> Vec<u32> {
    let mut ids: Vec<u32> = ["<|im_end|>", ENDOFTEXT]
        .into_iter()
        .map(str::to_string)
        .chain(tok.config().eos_token.clone())
        .filter_map(|t| tok.token_id(&t))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Generates and parses the answer of every item; `on_item` is called after each.
pub fn generate_answers(
    model: &Qwen3,
    tok: &Tokenizer,
    items: &[McqItem],
    max_new_tokens: usize,
    mode: GenMode<'_>,
    on_item: &mut dyn FnMut(),
) -> Result<Vec<GenAnswer>> {
    let decoder = Decoder::new(model);
    let context = decoder.context();
    if max_new_tokens == 0 || max_new_tokens >= context {
        return Err(EvalError::config(
            "max_new_tokens",
            format!("{max_new_tokens} (1 to {} for this model)", context.saturating_sub(1)),
        ));
    }
    let opts = GenerateOptions {
        max_new_tokens,
        sampling: Sampling::greedy(),
        seed: 0,
        stop_tokens: stop_tokens(tok),
        stop_strings: match mode {
            GenMode::Plain => vec!["\n".to_string()],
            GenMode::Chat { .. } => Vec::new(),
        },
    };
    let vocab = model.config.vocab_size;
    let text_of = |t: &[u32]| tok.decode(t, false).unwrap_or_default();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let prompt = match mode {
            GenMode::Plain => generation_prompt(item),
            GenMode::Chat { template, think } => {
                let opts = RenderOptions { add_generation_prompt: true, ..Default::default() };
                template
                    .render(&[Message::new("user", chat_question(item, think))], &opts)
                    .map_err(|e| EvalError::Item { id: item.id.clone(), message: format!("chat template: {e}") })?
            }
        };
        let mut ids = tok.encode(&prompt)?;
        // A prompt too long for the context loses its first tokens (as in option scoring).
        let keep = context - max_new_tokens;
        if ids.len() > keep {
            ids.drain(..ids.len() - keep);
        }
        if let Some(&t) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(EvalError::Item {
                id: item.id.clone(),
                message: format!("token id {t} is outside the model's vocabulary of {vocab}"),
            });
        }
        let g = generate(&decoder, &[ids], &opts, Some(&text_of), &mut |_, _| {})?;
        let g = g.into_iter().next().expect("one prompt, one generation");
        let body = match g.finish {
            Finish::StopToken => &g.tokens[..g.tokens.len() - 1],
            _ => &g.tokens[..],
        };
        let text = tok.decode(body, false)?;
        let (predicted, text) = match mode {
            GenMode::Plain => {
                let line = text.split('\n').next().unwrap_or_default().to_string();
                (parse_answer(&line, item), line)
            }
            GenMode::Chat { .. } => (parse_chat_answer(&text, item), text.replace('\n', " ")),
        };
        out.push(GenAnswer {
            predicted,
            text,
            prompt_tokens: g.prompt.len(),
            prefill_secs: g.prefill_secs,
            decode_tokens: g.decode_steps,
            decode_secs: g.decode_secs,
        });
        on_item();
    }
    Ok(out)
}
