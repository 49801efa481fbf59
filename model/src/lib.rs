//! medmoe model: the dense Qwen3 definition, HF config.json + safetensors I/O, forward, loss
//! and a training step.
//!
//! Architecture invariant: this crate knows nothing about actors or threads of its own.
#![deny(missing_docs)]

pub mod batch;
pub mod config;
pub mod distill;
pub mod error;
pub mod export;
pub mod importance;
pub mod init;
pub mod load;
pub mod moe_spec;
pub mod presets;
pub mod qwen3;
pub mod safetensors_io;
pub mod surgery;
pub mod train;

pub use batch::TokenBatch;
pub use config::Qwen3Config;
pub use error::{ModelError, Result};
pub use qwen3::Qwen3;
