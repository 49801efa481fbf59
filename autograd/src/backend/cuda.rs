//! The CUDA backend: [`GpuBackend`] over kernels-gpu's cudarc launcher, opened once per process
//! on GPU 0 (feature `cuda`). Without a driver, or on a GPU older than sm_80, [`backend`] returns
//! [`AutogradError::DeviceUnavailable`] (never a panic: kernels-gpu checks for libcuda before
//! cudarc's loader runs).

use super::{Backend, GpuBackend};
use crate::error::{AutogradError, Result};
use crate::tensor::Device;
use kernels_gpu::host::Gpu;
use std::sync::{Arc, OnceLock};

/// The process's CUDA backend.
pub(super) fn backend() -> Result<Arc<dyn Backend>> {
    static CUDA: OnceLock<std::result::Result<Arc<dyn Backend>, String>> = OnceLock::new();
    CUDA.get_or_init(|| match Gpu::new(0) {
        Ok(gpu) => Ok(Arc::new(GpuBackend::new(gpu, Device::Cuda)) as Arc<dyn Backend>),
        Err(e) => Err(e.to_string()),
    })
    .clone()
    .map_err(|msg| AutogradError::DeviceUnavailable { device: Device::Cuda, msg })
}
