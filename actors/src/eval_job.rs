//! What stage `eval` hands the evaluation harness ([`EvalJob`]) and the harness itself
//! ([`Evaluator`]: moe-cli's `eval`, whose orchestration lives in the CLI).

use std::path::PathBuf;
use std::sync::Arc;

/// New tokens per generated answer (the harness's default: a letter and a few words).
pub const GEN_TOKENS: usize = 12;
/// Held-out documents per domain for the perplexity.
pub const PPL_DOCS: usize = 64;

/// What the eval stage asks the harness to do.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalJob {
    /// Models to score, in order: name and model directory or .gguf file.
    pub models: Vec<(String, PathBuf)>,
    /// The run's world directory (eval sets and held-out documents).
    pub world: PathBuf,
    /// The run's `dev_every` (which world documents are held out).
    pub dev_every: u64,
    /// Tokens per row of the perplexity forwards (the run's `seq_len`).
    pub seq_len: usize,
    /// Items per set at most, evenly spaced (None: all).
    pub max_items: Option<usize>,
    /// New tokens per generated answer.
    pub gen_tokens: usize,
    /// Held-out documents per domain for the perplexity.
    pub ppl_docs: usize,
    /// Output directory.
    pub out: PathBuf,
    /// Show progress bars.
    pub progress: bool,
}

/// The harness's entry: runs a job, or says why it failed.
pub type EvalFn = dyn Fn(&EvalJob) -> std::result::Result<(), String> + Send + Sync;

/// The evaluation harness the stage runs.
#[derive(Clone)]
pub struct Evaluator(pub Arc<EvalFn>);

impl std::fmt::Debug for Evaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Evaluator")
    }
}
