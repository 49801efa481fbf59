//! medmoe data: the synthetic medical world, evaluation sets, tokenizer, chat template and packing.
//!
//! The pipeline is `world` (entities and relations from a seed) -> `corpus` (documents rendered in
//! many text forms, each with a domain tag) + `eval` (held-out multiple-choice sets) -> `tokenizer`
//! (byte-level BPE trained on the corpus, or any HF tokenizer.json) -> `pack` (fixed-length
//! sequences with document boundaries in memory-mapped shards) -> `pack::Sampler` (seeded,
//! resumable, domain-weighted batches for the trainer). See README.md.
#![deny(missing_docs)]

pub mod chat;
pub mod corpus;
pub mod error;
pub mod eval;
pub mod fsutil;
pub mod jsonl;
pub mod pack;
pub mod prepare;
pub mod rng;
pub mod sft;
pub mod tokenizer;
pub mod world;
pub mod world_dir;

pub use error::{DataError, Result};
