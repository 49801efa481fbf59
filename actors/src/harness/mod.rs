//! The offline evaluation harness behind `moe-cli eval`: several models scored on the same items
//! in the same order, each (model, set) result a file of its own so a run resumes.
//!
//! - [`wilson`]: the Wilson score interval of an accuracy.
//! - [`routing`]: router usage per layer (top-1 counts of dropless evaluation forwards) and the
//!   tokens capacity factors 1.0 / 1.05 / 1.25 would have dropped, with the seed plan's rule for
//!   the capacity to ship (drops at 1.0 -> 1.25, else 1.05).
//! - [`text_ppl`]: per-domain perplexity of documents, each model through its own tokenizer.
//! - [`text_kl`]: per-domain KL divergence of a model's next-token distributions from a reference's.
//! - [`answer`]: the generation prompt of an item (options lettered) and parsing the greedy
//!   answer back to an option.
//! - [`generated`]: MCQ by greedy generation, one item at a time (batch 1), with prefill and
//!   decode timings.
//! - [`set_result`]: one (model, set) result: per-item rows, accuracies, confusion matrices, CSV.
//!
//! MCQ by option log-likelihood reuses [`crate::eval::score_items`]. Errors are
//! [`crate::eval::EvalError`].

pub mod answer;
pub mod generated;
pub mod routing;
pub mod set_result;
#[cfg(test)]
mod tests;
pub mod text_kl;
pub mod text_ppl;
pub mod wilson;

pub use answer::{chat_question, generation_prompt, parse_answer, parse_chat_answer};
pub use generated::{generate_answers, GenAnswer, GenMode};
pub use routing::{ship_capacity, would_drop, LayerRouting, RoutingTally, CAPACITY_FACTORS};
pub use set_result::{csv_of, ItemRow, Latency, SetResult};
pub use text_kl::{kl_row, text_kl, DomainKl};
pub use text_ppl::{text_perplexity, PplDoc};
pub use wilson::{wilson_interval, Z95};
