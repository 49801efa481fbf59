//! Host side of the GPU kernels: loads the committed PTX and launches its entry points on an NVIDIA GPU.
//!
//! - [`Kernel`] / [`PTX`] (always built): the entry-point names and the committed PTX text.
//! - [`Gpu`] (feature `cuda`): a CUDA context + stream with the PTX module loaded, one launcher method per
//!   [`Kernel`], and [`GpuBuf`] device buffers. This is the only module of the workspace that names
//!   `cudarc` (STYLE rule 7). It loads `libcuda` at run time (`dynamic-loading`): building needs no CUDA,
//!   and [`Gpu::new`] on a machine without a driver returns [`GpuError::NoDriver`] instead of panicking.
//!
//! GPU tests run only with `MOE_GPU_TESTS=1` (they print "skipped: MOE_GPU_TESTS not set" otherwise).

#[cfg(feature = "cuda")]
mod cuda;
mod names;
#[cfg(all(test, feature = "cuda"))]
mod tests;

#[cfg(feature = "cuda")]
pub use cuda::{Gpu, GpuBuf, GpuElem};
pub use names::{ptx_entries, Kernel, PTX};

/// Why a GPU operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    /// `libcuda` could not be loaded: no NVIDIA driver on this machine.
    #[error("no CUDA driver: libcuda could not be loaded (install an NVIDIA driver, or use the CPU / Sim device)")]
    NoDriver,
    /// The GPU is older than the PTX target.
    #[error("GPU {ordinal} has compute capability {major}.{minor}; the PTX needs sm_80 or newer")]
    Unsupported {
        /// Device ordinal.
        ordinal: usize,
        /// Compute capability major.
        major: i32,
        /// Compute capability minor.
        minor: i32,
    },
    /// A CUDA driver call failed.
    #[error("CUDA driver error in {op}: {message}")]
    Driver {
        /// What we were doing.
        op: &'static str,
        /// The driver's error.
        message: String,
    },
    /// A kernel symbol is missing from the loaded PTX module.
    #[error("kernel {symbol} is not in the PTX module (regenerate with tools/build_ptx.sh)")]
    MissingKernel {
        /// The `.entry` name.
        symbol: &'static str,
    },
    /// A launcher was called with buffers or sizes that do not fit the kernel.
    #[error("invalid launch of {kernel}: {detail}")]
    InvalidLaunch {
        /// The `.entry` name.
        kernel: &'static str,
        /// What does not fit.
        detail: String,
    },
}
