//! GGUF (llama.cpp's file format): export of our dense and MoE models, and loading GGUF files back
//! into our runtime.
//!
//! - [`format`]: the container (header, metadata values, tensor infos, alignment).
//! - [`names`]: our HF-named tensors as llama.cpp tensors (`qwen3`, `glm4moe`, `dots1`), one plan
//!   for both directions.
//! - [`policy`]: llama-quantize's per-tensor type choice for `--type`, with its fallbacks.
//! - [`mask`]: `--mask` rules (glob over GGUF names -> type).
//! - [`keys`]: the model metadata llama.cpp reads, and the config read back from it.
//! - [`tokenizer_meta`]: the vocabulary keys from tokenizer.json / tokenizer_config.json.
//! - [`qat_rows`]: the rows of a QAT checkpoint's fake-quantized tensors, written from their
//!   trained steps, mins and codes.
//! - [`write`]: the streaming writer ([`export_gguf`] for a model directory).
//! - [`read`]: the validated memory-mapped reader; [`load`]: a GGUF file as [`crate::Qwen3`].
//!
//! Quantized tensors are encoded by `kernels_cpu::quant`, byte-identical to llama.cpp's reference
//! quantizers, and decoded bit-identically to ggml, so a file loads into our runtime as exactly the
//! weights llama.cpp runs.

pub mod format;
pub mod keys;
pub mod load;
pub mod mask;
pub mod names;
pub mod policy;
pub mod qat_rows;
pub mod read;
pub mod tokenizer_meta;
pub mod write;

pub use load::{is_gguf_file, load_gguf};
pub use mask::Mask;
pub use names::Arch;
pub use policy::GgufType;
pub use read::GgufFile;
pub use write::{export_gguf, write_gguf, GgufOptions, GgufReport, ModelSource};
