//! CPU kernels for medmoe.
//!
//! Every op is a pair of pure functions over flat row-major `f32` slices:
//! `<op>_forward(outputs.., inputs.., dims)` and `<op>_backward(dinputs.., doutputs, saved.., dims)`.
//! Outputs come first; backward functions **accumulate** (`+=`) into their gradient buffers.
//! Each op also has a naive reference (`*_naive`) that tests compare against.
//! Kernels use the global rayon pool; callers decide its size.
//!
//! Dimension letters: B batch, T tokens per sequence, N = B*T rows, D hidden, F FFN width,
//! H query heads, KV key/value heads, Dh head dim, V vocab.
#![deny(missing_docs)]

pub mod adamw;
pub mod attention;
pub mod buffer;
pub mod check;
pub mod cross_entropy;
pub mod distill;
pub mod distill_topk;
pub mod elementwise;
pub mod embedding;
pub mod fake_quant;
pub mod fastmath;
pub mod gemm;
pub mod gemv;
pub mod gptq;
pub mod moe;
pub mod pool;
pub mod quant;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;
