//! Errors of the autograd crate.

/// What can go wrong building or running a graph on caller-provided data.
#[derive(Debug, thiserror::Error)]
pub enum AutogradError {
    /// Two shapes that must agree do not.
    #[error("{op}: shape mismatch: {msg}")]
    Shape {
        /// The op that checked.
        op: &'static str,
        /// What disagreed.
        msg: String,
    },
    /// A token id or index outside its range.
    #[error("{op}: {msg}")]
    Index {
        /// The op that checked.
        op: &'static str,
        /// What was out of range.
        msg: String,
    },
    /// A configuration value an op cannot run with.
    #[error("{op}: {msg}")]
    Config {
        /// The op that checked.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// A tape was asked for a device this build or machine cannot run.
    #[error("{device} device not available: {msg}")]
    DeviceUnavailable {
        /// The device asked for.
        device: crate::tensor::Device,
        /// Why not.
        msg: String,
    },
    /// A tape was asked for a GEMM precision its device does not run (bf16 runs on the CPU only).
    #[error("{precision} precision is not supported on the {device} device: {msg}")]
    PrecisionUnavailable {
        /// The device asked for.
        device: crate::tensor::Device,
        /// The precision asked for (its name).
        precision: &'static str,
        /// Why not, and what runs instead.
        msg: String,
    },
    /// A GPU kernel (simulated or on a device) refused its launch or failed; on the simulator a
    /// bug (ops check shapes first), on a GPU also a driver or memory failure.
    #[error("{op}: kernel failed: {cause}")]
    Kernel {
        /// The op that launched.
        op: &'static str,
        /// The launcher's error.
        cause: kernels_gpu::launcher::LaunchError,
    },
    /// A parameter name that the table does not hold.
    #[error("unknown parameter `{0}`")]
    UnknownParam(String),
}

/// Result with [`AutogradError`].
pub type Result<T> = std::result::Result<T, AutogradError>;
