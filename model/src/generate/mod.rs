//! Text generation: a key/value cache per sequence, an inference forward of new tokens against
//! it (prefill of a whole prompt, then one token per sequence per step), sampling (greedy,
//! temperature, top-k, top-p, seeded), stop tokens and stop strings, batches of prompts.
//!
//! MoE models route with the evaluation settings (`RouterTraining::eval()`: dropless, so a
//! token's expert never depends on the other tokens of the step). The cached forward equals
//! the full forward ([`crate::Qwen3::logits`]) to f32 rounding: tests/generate_parity.rs.
//!
//! Files: `kv_cache` (per-sequence cache), `attend` (attention of new rows over the cache),
//! `decode` (`Decoder`: the cached forward step), `sampling`, `stop`, `generator` (the loop).

pub mod attend;
pub mod decode;
pub mod generator;
pub mod kv_cache;
pub mod sampling;
pub mod stop;

pub use decode::{Decoder, LayerTrace, LogitRows, StepInput};
pub use generator::{generate, GenerateOptions, Generation, TextOf};
pub use kv_cache::KvCache;
pub use sampling::{Sampler, Sampling};
pub use stop::Finish;
