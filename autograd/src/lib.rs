//! medmoe autograd: a [`Tensor`] with a runtime shape and f32 compute (bf16/f16 storage
//! through `half`), a reverse-mode [`Tape`] (plus a no-op tape for inference), ops that call
//! the kernels through one [`backend::Backend`] per device, a named [`ParamTable`], and
//! optimisers. A tape holds the backend of its [`Device`]: kernels-cpu on [`Device::Cpu`], the
//! kernels-gpu kernels in the SIMT simulator on [`Device::Sim`] and through cudarc on
//! [`Device::Cuda`] (feature `cuda`). Ops never branch on the device.
//!
//! Architecture invariant: this crate knows nothing about Qwen, files or threads.
#![deny(missing_docs)]

pub mod backend;
pub mod error;
pub mod ops;
pub mod optim;
pub mod params;
pub mod profile;
pub mod tape;
pub mod tensor;

pub use error::AutogradError;
pub use params::{ParamEntry, ParamTable};
pub use tape::{Gradients, Tape};
pub use tensor::{Compute, DType, Device, Precision, Storage, Tensor};
