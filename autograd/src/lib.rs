//! medmoe autograd: a [`Tensor`] with a runtime shape and f32 compute (bf16/f16 storage
//! through `half`), a reverse-mode [`Tape`] (plus a no-op tape for inference), ops that call
//! the kernels, a named [`ParamTable`], and optimisers. A tape carries a [`Device`]: on
//! [`Device::Sim`] the ops that have a GPU kernel run it in kernels-gpu's SIMT simulator.
//!
//! Architecture invariant: this crate knows nothing about Qwen, files or threads.
#![deny(missing_docs)]

pub mod error;
pub mod ops;
pub mod optim;
pub mod params;
pub mod profile;
mod sim;
pub mod tape;
pub mod tensor;

pub use error::AutogradError;
pub use params::{ParamEntry, ParamTable};
pub use tape::{Gradients, Tape};
pub use tensor::{DType, Device, Storage, Tensor};
