//! A conversation to token ids with an assistant-only loss mask.
//!
//! The conversation is rendered once through the chat template; every assistant turn is the
//! text between `<|im_start|>assistant\n` and its `<|im_end|>` (ChatML, which Qwen3's template
//! and the built-in one both produce). The header is not trained; the content (think block
//! included) and the closing `<|im_end|>` are. Segments are tokenised separately, so a token
//! never straddles the mask's edge; the edges sit at special tokens, where the tokenizer splits
//! anyway.

use crate::chat::{ChatTemplate, Message, RenderOptions};
use crate::error::{DataError, Result};
use crate::tokenizer::Tokenizer;

/// Where an assistant turn's content starts.
pub const ASSISTANT_HEADER: &str = "<|im_start|>assistant\n";
/// Where a turn ends (trained in assistant turns).
pub const TURN_END: &str = "<|im_end|>";

/// Token ids of one document and which of them the loss trains.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskedTokens {
    /// Token ids.
    pub ids: Vec<u32>,
    /// 1 where the token is part of an assistant turn's content or its `<|im_end|>`.
    pub mask: Vec<u8>,
}

/// The rendered text split into `(text, trained)` segments.
pub fn assistant_segments(text: &str) -> Result<Vec<(&str, bool)>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(h) = rest.find(ASSISTANT_HEADER) {
        let start = h + ASSISTANT_HEADER.len();
        let end = rest[start..].find(TURN_END).map(|e| start + e + TURN_END.len()).ok_or_else(|| {
            DataError::Check(format!("an assistant turn has no closing {TURN_END} in the rendered chat"))
        })?;
        out.push((&rest[..start], false));
        out.push((&rest[start..end], true));
        rest = &rest[end..];
    }
    if !out.iter().any(|s| s.1) {
        return Err(DataError::Check(format!(
            "the chat template rendered no assistant turn ({ASSISTANT_HEADER:?} ... {TURN_END}): is it ChatML?"
        )));
    }
    if !rest.is_empty() {
        out.push((rest, false));
    }
    Ok(out)
}

/// Renders `messages` with `template` and tokenises them with the assistant-only mask.
pub fn tokenize_chat(tok: &Tokenizer, template: &ChatTemplate, messages: &[Message]) -> Result<MaskedTokens> {
    let text = template.render(messages, &RenderOptions::default())?;
    let mut out = MaskedTokens { ids: Vec::new(), mask: Vec::new() };
    for (seg, trained) in assistant_segments(&text)? {
        let ids = tok.encode(seg)?;
        out.mask.extend(std::iter::repeat_n(trained as u8, ids.len()));
        out.ids.extend(ids);
    }
    Ok(out)
}
