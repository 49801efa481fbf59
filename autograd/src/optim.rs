//! Optimisers over a [`ParamTable`]'s flat buffer.

use crate::error::Result;
use crate::params::ParamTable;
use crate::sim::sim;
use crate::tensor::Device;
use kernels_cpu::adamw::{adamw_step, AdamWConfig};
use kernels_gpu::sim::ops::AdamWHyper;

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

    /// One update with flat gradients `grads` (layout of `params`). Returns false (and does
    /// nothing) for half-precision tables, which are frozen.
    pub fn step(&mut self, params: &mut ParamTable, grads: &[f32]) -> bool {
        assert_eq!(grads.len(), self.m.len(), "AdamW: gradient length");
        let Some(p) = params.flat_mut() else {
            return false;
        };
        self.step += 1;
        adamw_step(p, grads, &mut self.m, &mut self.v, &self.cfg, self.step);
        true
    }

    /// [`AdamW::step`] on `device`: on `Device::Sim` the update is the `adamw_step` GPU kernel
    /// in the simulator (one launch over the flat buffer), elsewhere kernels-cpu.
    pub fn step_on(&mut self, device: Device, params: &mut ParamTable, grads: &[f32]) -> Result<bool> {
        if device != Device::Sim {
            return Ok(self.step(params, grads));
        }
        assert_eq!(grads.len(), self.m.len(), "AdamW: gradient length");
        let Some(p) = params.flat_mut() else {
            return Ok(false);
        };
        let c = &self.cfg;
        let h = AdamWHyper { lr: c.lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, weight_decay: c.weight_decay };
        sim("adamw", kernels_gpu::sim::ops::adamw_step(p, grads, &mut self.m, &mut self.v, &h, self.step + 1))?;
        self.step += 1;
        Ok(true)
    }
}
