//! Supervised fine-tuning data (phase P2): chat conversations from the synthetic world
//! (`examples`), rendered through a chat template and tokenised with an assistant-only loss
//! mask (`render`), packed into rows of a phase's sequence length with one attention segment
//! per document (`pack`); verifiable multiple-choice prompts and their rule-based reward for
//! preference optimisation, phase P3 (`verifiable`).

pub mod examples;
pub mod pack;
pub mod render;
#[cfg(test)]
mod tests;
pub mod verifiable;

pub use examples::{sft_examples, SftConfig, SftExample};
pub use pack::{pack_sft, SftPacking, SftRow, IGNORE};
pub use render::{assistant_segments, tokenize_chat, MaskedTokens};
pub use verifiable::{after_think, mcq_user_turn, option_named, reward, verifiable_prompts, Reward, VerifiablePrompt};
