//! Optimisers over a [`ParamTable`]'s flat buffer.

use crate::backend::{self, kernel};
use crate::error::Result;
use crate::params::ParamTable;
use crate::tensor::Device;
use kernels_cpu::adamw::AdamWConfig;

/// AdamW with decoupled weight decay; moments are flat vectors matching the table layout.
#[derive(Clone, Debug)]
pub struct AdamW {
    /// Hyper-parameters (the learning rate may change every step).
    pub cfg: AdamWConfig,
    /// First moments, one per parameter element.
    pub m: Vec<f32>,
    /// Second moments.
    pub v: Vec<f32>,
    /// Steps taken (bias correction uses `step` after increment).
    pub step: u64,
}

impl AdamW {
    /// Zero moments for `params`.
    pub fn new(params: &ParamTable, cfg: AdamWConfig) -> Self {
        AdamW { cfg, m: vec![0.0; params.numel()], v: vec![0.0; params.numel()], step: 0 }
    }

    /// One update with flat gradients `grads` (layout of `params`) on the CPU. Returns false (and
    /// does nothing) for half-precision tables, which are frozen.
    pub fn step(&mut self, params: &mut ParamTable, grads: &[f32]) -> bool {
        self.step_on(Device::Cpu, params, grads).expect("the CPU backend does not fail")
    }

    /// [`AdamW::step`] on `device`'s backend (one `adamw_step` over the flat buffer).
    pub fn step_on(&mut self, device: Device, params: &mut ParamTable, grads: &[f32]) -> Result<bool> {
        assert_eq!(grads.len(), self.m.len(), "AdamW: gradient length");
        let be = backend::for_device(device)?;
        let Some(p) = params.flat_mut() else {
            return Ok(false);
        };
        kernel("adamw", be.adamw_step(p, grads, &mut self.m, &mut self.v, &self.cfg, self.step + 1))?;
        self.step += 1;
        Ok(true)
    }
}
