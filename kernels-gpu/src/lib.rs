//! medmoe GPU kernels, written once in Rust.
//!
//! - [`simt`]: the SIMT context trait ([`simt::Simt`]) every kernel is generic over, plus the
//!   global / shared memory pointer wrappers and bf16 helpers. `core` only.
//! - [`kernels`]: the kernel bodies (one file per op, forward and backward side by side). `core` only,
//!   so the same source is compiled to PTX (nvptx64) and run on the host by the simulator.
//! - `sim` (host only): the CPU SIMT simulator (`sim::launch`) and one host helper per kernel
//!   (`ops`) that computes launch dims and runs it over slices.
//! - `host` (host only): kernel names + the committed PTX; cudarc launchers behind the `cuda` feature.
//!
//! Dimension letters as in the workspace glossary: N rows (tokens), D hidden, W expert width, E experts,
//! V vocab, C channels of a row.
#![cfg_attr(target_arch = "nvptx64", no_std)]
#![deny(missing_docs)]

#[cfg(not(target_arch = "nvptx64"))]
pub mod host;
pub mod kernels;
#[cfg(not(target_arch = "nvptx64"))]
pub mod launcher;
#[cfg(not(target_arch = "nvptx64"))]
pub mod ops;
#[cfg(target_arch = "nvptx64")]
mod ptx;
#[cfg(not(target_arch = "nvptx64"))]
pub mod sim;
pub mod simt;
