//! The GPU side (compiled only for `nvptx64-nvidia-cuda`, by `tools/build_ptx.sh`): the zero-sized
//! context [`Ptx`] implementing [`crate::simt::Simt`] with PTX instructions, and one
//! `extern "ptx-kernel"` entry point per kernel of [`crate::kernels`] (in `entries`), each
//! monomorphising the kernel body with [`Ptx`]. The host launchers (`host`, feature `cuda`) name the
//! same symbols; a test checks every launcher's symbol is a `.entry` of the committed PTX.
//!
//! Nightly-only crate features (`abi_ptx`, `asm_experimental_arch`, `stdarch_nvptx`, `core_intrinsics`,
//! `gpu_intrinsics`, `gpu_launch_sized_workgroup_mem`, `link_llvm_intrinsics`) are injected by
//! `tools/build_ptx.sh` with `-Zcrate-attr`, so `lib.rs` stays valid on stable.

mod ctx;
mod entries;
mod shared;

pub use ctx::Ptx;
