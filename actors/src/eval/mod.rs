//! The Evaluator's pure functions: dev perplexity per domain and multiple-choice accuracy by
//! option log-likelihood.
//!
//! Both run the model in evaluation mode ([`ForwardOptions::eval`]: deterministic, dropless MoE) on
//! an inference tape, and both score tokens with the fused LM head + cross-entropy
//! (`autograd::ops::lm_head_cross_entropy`), so the full `[N, V]` logits never exist; the MCQ
//! scorer first gathers the hidden rows that predict option tokens, so prompt tokens cost no LM
//! head work.
//!
//! - [`named`]: [`named_routing_accuracy`], the held-out routing accuracy per domain of a
//!   named-expert (Mode B) map.
//! - [`ppl`]: [`dev_perplexity`] over sequences of a [`PackedDataset`] chosen per domain
//!   (token-weighted mean cross-entropy and `exp` of it).
//! - [`mcq`]: [`evaluate_mcq`] loads nothing itself; [`load_eval_set`] reads `eval/<set>.jsonl`
//!   of a world directory. Items are prompted as in the corpus's Q&A forms (see [`mcq_prompt`]),
//!   every (prompt + option) is packed as its own attention segment into fixed-length rows, and
//!   several items go through one forward.
//!
//! No threads of its own (rayon inside kernels only).
//!
//! [`ForwardOptions::eval`]: model::qwen3::ForwardOptions::eval
//! [`PackedDataset`]: data::pack::PackedDataset

pub mod mcq;
pub mod named;
pub mod ppl;
#[cfg(test)]
mod tests;

pub use mcq::{
    encode_items, evaluate_mcq, load_eval_set, mcq_prompt, mcq_report, option_continuation, score_items,
    subset_indices, EncodedItem, ItemScores, McqConfig, McqReport,
};
pub use named::{named_routing_accuracy, NamedRouting};
pub use ppl::{dev_perplexity, DevReport, DomainPpl};

use data::pack::PackedBatch;
use model::TokenBatch;
use std::path::PathBuf;
use std::sync::Arc;

/// Errors of the evaluation functions.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A forward failed (shapes, positions beyond the model's range, ...).
    #[error(transparent)]
    Model(#[from] model::ModelError),
    /// Reading an eval file, the tokenizer or the pack failed (file and line in the message).
    #[error(transparent)]
    Data(#[from] data::error::DataError),
    /// A tensor op rejected its inputs (e.g. a target outside the vocabulary).
    #[error(transparent)]
    Autograd(#[from] autograd::AutogradError),
    /// An eval file holds no item.
    #[error("{path}: the eval set has no items")]
    EmptySet {
        /// The file.
        path: PathBuf,
    },
    /// A domain asked for has no token to score (no sequences, or only padding).
    #[error("dev perplexity: domain `{domain}` has no target tokens")]
    NoTokens {
        /// The domain.
        domain: String,
    },
    /// An item that cannot be scored by this model (a token outside its vocabulary, an option
    /// longer than the longest sequence allowed).
    #[error("item `{id}`: {message}")]
    Item {
        /// The item id.
        id: String,
        /// What is wrong.
        message: String,
    },
    /// An invalid argument (batch size 0, a sequence number outside the pack, a pack built for
    /// a larger vocabulary than the model's).
    #[error("invalid {what}: {message}")]
    Config {
        /// The argument.
        what: String,
        /// Why it is rejected.
        message: String,
    },
}

impl EvalError {
    /// An [`EvalError::Config`].
    pub fn config(what: impl Into<String>, message: impl Into<String>) -> Self {
        EvalError::Config { what: what.into(), message: message.into() }
    }
}

/// `Result` with [`EvalError`].
pub type Result<T> = std::result::Result<T, EvalError>;

/// The model inputs of a packed batch: ids, positions and per-document segment ids as a
/// [`TokenBatch`], and the next-token targets (`-100` at segment ends and on padding).
/// Shared by every consumer of packs (trainer, evaluator; the CLI's importance pass does the same).
pub fn token_batch_of(p: PackedBatch) -> (TokenBatch, Vec<i32>) {
    let batch = TokenBatch { ids: p.ids, b: p.b, t: p.t, pos: Arc::from(p.pos), seg: Some(Arc::from(p.seg)) };
    (batch, p.targets)
}
