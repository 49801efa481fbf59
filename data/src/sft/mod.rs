//! Supervised fine-tuning data (phase P2): chat conversations from the synthetic world
//! (`examples`), rendered through a chat template and tokenised with an assistant-only loss
//! mask (`render`), packed into rows of a phase's sequence length with one attention segment
//! per document (`pack`); multiple-choice questions over single facts (`mcq`), trained in P2
//! with a letter answer and asked in phase P3 as verifiable prompts with a rule-based reward
//! (`verifiable`).

pub mod examples;
pub mod mcq;
#[cfg(test)]
mod mcq_tests;
pub mod pack;
pub mod render;
#[cfg(test)]
mod tests;
pub mod verifiable;

pub use examples::{sft_examples, SftConfig, SftExample};
pub use mcq::{mcq_answer, mcq_user_turn};
pub use pack::{pack_sft, pack_sft_mixed, SftPacking, SftRow, IGNORE};
pub use render::{assistant_segments, tokenize_chat, MaskedTokens};
pub use verifiable::{after_think, option_named, reward, verifiable_prompts, Reward, VerifiablePrompt};
