//! medmoe model: the Qwen3 definition (dense or MoE), HF config.json + safetensors I/O, forward,
//! loss and gradients. The training step itself is the actors crate's `Trainer::step`.
//!
//! Architecture invariant: this crate knows nothing about actors or threads of its own.
#![deny(missing_docs)]

pub mod batch;
pub mod config;
pub mod distill;
pub mod distill_cached;
pub mod error;
pub mod expected_tensors;
pub mod export;
pub mod generate;
pub mod gguf;
pub mod gptq;
pub mod importance;
pub mod init;
pub mod load;
pub mod logit_cache;
pub mod moe_spec;
pub mod moqe;
pub mod named_experts;
pub mod preference;
pub mod presets;
pub mod qat;
pub mod qwen3;
pub mod router_training;
pub mod safetensors_io;
pub mod surgery;
pub mod tokenizer_files;
pub mod trace;
pub mod untie;

pub use batch::TokenBatch;
pub use config::Qwen3Config;
pub use error::{ModelError, Result};
pub use qwen3::Qwen3;
