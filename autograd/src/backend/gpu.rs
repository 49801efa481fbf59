//! [`GpuBackend`]: every op through kernels-gpu's host sequences on a [`Launcher`] (the SIMT
//! simulator or a CUDA GPU). The launch shapes and kernel sequences are kernels-gpu's; this file
//! only maps the op surface onto them.
//!
//! Host code on this backend (shared with kernels-cpu, so both backends pick the same tokens): the
//! router noise samples, expert dropout and capacity selection inside [`Backend::moe_forward`];
//! the naive MoE path and dense-equivalent mode (references, not training paths) run kernels-cpu.

use super::{gpu_moe, Backend, KernelResult, MoeForwardOut};
use crate::tensor::Device;
use kernels_cpu::adamw::AdamWConfig;
use kernels_cpu::attention::AttnDims;
use kernels_cpu::distill::DistillDims;
use kernels_cpu::distill_topk::{TopkDims, TopkTeacher};
use kernels_cpu::fake_quant::FakeQuantDims;
use kernels_cpu::gemm::Trans;
use kernels_cpu::moe::{AuxLoss, MoeDims, MoeParams, MoePath};
use kernels_cpu::rope::RopeTable;
use kernels_gpu::launcher::Launcher;
use kernels_gpu::ops as gpu;
use std::any::Any;

/// The GPU kernels on launcher `L`.
pub struct GpuBackend<L: Launcher> {
    launcher: L,
    device: Device,
}

impl<L: Launcher> GpuBackend<L> {
    /// The kernels on `launcher`, reported as `device`.
    pub fn new(launcher: L, device: Device) -> Self {
        GpuBackend { launcher, device }
    }
}

/// kernels-cpu's transpose flag as kernels-gpu's.
fn trans(t: Trans) -> gpu::Trans {
    match t {
        Trans::No => gpu::Trans::No,
        Trans::Yes => gpu::Trans::Yes,
    }
}

#[allow(clippy::too_many_arguments)]
impl<L: Launcher + Send + 'static> Backend for GpuBackend<L> {
    fn device(&self) -> Device {
        self.device
    }

    fn matmul(
        &self,
        c: &mut [f32],
        a: &[f32],
        b: &[f32],
        m: usize,
        k: usize,
        n: usize,
        ta: Trans,
        tb: Trans,
        accumulate: bool,
    ) -> KernelResult<()> {
        gpu::matmul(&self.launcher, c, a, b, m, k, n, trans(ta), trans(tb), accumulate)
    }

    fn matmul_new(
        &self,
        a: &[f32],
        b: &[f32],
        m: usize,
        k: usize,
        n: usize,
        ta: Trans,
        tb: Trans,
    ) -> KernelResult<Vec<f32>> {
        let mut c = vec![0f32; m * n];
        self.matmul(&mut c, a, b, m, k, n, ta, tb, false)?;
        Ok(c)
    }

    fn embedding_forward(&self, out: &mut [f32], ids: &[u32], table: &[f32], d: usize) -> KernelResult<()> {
        gpu::embedding_forward(&self.launcher, out, ids, table, d)
    }

    fn embedding_backward(&self, dtable: &mut [f32], dout: &[f32], ids: &[u32], d: usize) -> KernelResult<()> {
        gpu::embedding_backward(&self.launcher, dtable, dout, ids, d)
    }

    fn rmsnorm_forward(
        &self,
        out: &mut [f32],
        rstd: &mut [f32],
        x: &[f32],
        w: &[f32],
        n: usize,
        c: usize,
        eps: f32,
    ) -> KernelResult<()> {
        gpu::rmsnorm_forward(&self.launcher, out, rstd, x, w, n, c, eps)
    }

    fn rmsnorm_backward(
        &self,
        dx: &mut [f32],
        dw: &mut [f32],
        dout: &[f32],
        x: &[f32],
        w: &[f32],
        rstd: &[f32],
        n: usize,
        c: usize,
    ) -> KernelResult<()> {
        gpu::rmsnorm_backward(&self.launcher, dx, dw, dout, x, w, rstd, n, c)
    }

    fn rope_forward(
        &self,
        out: &mut [f32],
        x: &[f32],
        pos: &[u32],
        table: &RopeTable,
        _n: usize,
        heads: usize,
    ) -> KernelResult<()> {
        gpu::rope_forward(&self.launcher, out, x, pos, &table.cos, &table.sin, heads, table.head_dim)
    }

    fn rope_backward(
        &self,
        dx: &mut [f32],
        dout: &[f32],
        pos: &[u32],
        table: &RopeTable,
        _n: usize,
        heads: usize,
    ) -> KernelResult<()> {
        gpu::rope_backward(&self.launcher, dx, dout, pos, &table.cos, &table.sin, heads, table.head_dim)
    }

    fn attention_forward(
        &self,
        out: &mut [f32],
        lse: &mut [f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        seg: Option<&[u32]>,
        dims: AttnDims,
    ) -> KernelResult<()> {
        gpu::attention_forward(&self.launcher, out, lse, q, k, v, seg, shape(dims))
    }

    fn attention_backward(
        &self,
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
        dout: &[f32],
        out: &[f32],
        lse: &[f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        seg: Option<&[u32]>,
        dims: AttnDims,
    ) -> KernelResult<()> {
        gpu::attention_backward(&self.launcher, dq, dk, dv, dout, out, lse, q, k, v, seg, shape(dims))
    }

    fn swiglu_forward(&self, out: &mut [f32], gate: &[f32], up: &[f32]) -> KernelResult<()> {
        gpu::swiglu_forward(&self.launcher, out, gate, up)
    }

    fn swiglu_backward(
        &self,
        dgate: &mut [f32],
        dup: &mut [f32],
        dout: &[f32],
        gate: &[f32],
        up: &[f32],
    ) -> KernelResult<()> {
        gpu::swiglu_backward(&self.launcher, dgate, dup, dout, gate, up)
    }

    fn swiglu_fused_forward(&self, out: &mut [f32], gu: &[f32], f: usize) -> KernelResult<()> {
        gpu::swiglu_fused_forward(&self.launcher, out, gu, f)
    }

    fn swiglu_fused_backward(&self, dgu: &mut [f32], dout: &[f32], gu: &[f32], f: usize) -> KernelResult<()> {
        gpu::swiglu_fused_backward(&self.launcher, dgu, dout, gu, f)
    }

    fn add_scaled(&self, a: &[f32], b: &[f32], scale: f32) -> KernelResult<Vec<f32>> {
        let mut out = vec![0f32; a.len()];
        gpu::add_scaled(&self.launcher, &mut out, a, b, scale)?;
        Ok(out)
    }

    fn copy_cols(&self, x: &[f32], c: usize, start: usize, width: usize) -> KernelResult<Vec<f32>> {
        let mut out = vec![0f32; x.len() / c.max(1) * width];
        gpu::copy_cols(&self.launcher, &mut out, x, c, start)?;
        Ok(out)
    }

    fn add_cols(&self, dx: &mut [f32], dy: &[f32], c: usize, start: usize) -> KernelResult<()> {
        gpu::add_cols(&self.launcher, dx, dy, c, start)
    }

    fn lm_head_ce(
        &self,
        losses: &mut [f32],
        grads: Option<(&mut [f32], &mut [f32])>,
        h: &[f32],
        w: &[f32],
        targets: &[i32],
        d: usize,
        v: usize,
        scale: f32,
        chunk: usize,
    ) -> KernelResult<()> {
        gpu::lm_head_ce(&self.launcher, losses, grads, h, w, targets, d, v, scale, chunk)
    }

    fn hidden_l2_forward(
        &self,
        out: &mut [f32],
        hs: &[f32],
        ht: &[f32],
        targets: &[i32],
        d: usize,
    ) -> KernelResult<()> {
        gpu::hidden_l2_forward(&self.launcher, out, hs, ht, targets, d)
    }

    fn hidden_l2_backward(&self, dhs: &mut [f32], dout: &[f32], hs: &[f32], ht: &[f32], d: usize) -> KernelResult<()> {
        gpu::hidden_l2_backward(&self.launcher, dhs, dout, hs, ht, d)
    }

    fn lm_head_kl(
        &self,
        kl: &mut [f32],
        grads: Option<(&mut [f32], &mut [f32])>,
        hs: &[f32],
        ws: &[f32],
        ht: &[f32],
        wt: &[f32],
        targets: &[i32],
        dims: DistillDims,
        tau: f32,
        scale: f32,
        chunk: usize,
    ) -> KernelResult<()> {
        let DistillDims { n, d, dt, v } = dims;
        let shape = gpu::KlShape { n, d, dt, v };
        gpu::lm_head_kl(&self.launcher, kl, grads, hs, ws, ht, wt, targets, shape, tau, scale, chunk)
    }

    // Distillation from a teacher logit cache runs on the host (no GPU kernel yet): hidden
    // states and head are host buffers here, so this is a plain call.
    fn lm_head_topk_kl(
        &self,
        kl: &mut [f32],
        grads: Option<(&mut [f32], &mut [f32])>,
        hs: &[f32],
        ws: &[f32],
        teacher: TopkTeacher,
        targets: &[i32],
        dims: TopkDims,
        tau: f32,
        scale: f32,
        chunk: usize,
    ) -> KernelResult<()> {
        kernels_cpu::distill_topk::lm_head_topk_kl_with(
            kernels_cpu::gemm::GemmBackend::Auto,
            kl,
            grads,
            hs,
            ws,
            teacher,
            targets,
            dims,
            tau,
            scale,
            chunk,
        );
        Ok(())
    }

    fn moe_forward(
        &self,
        x: &[f32],
        router: &[f32],
        experts: &[f32],
        bias: Option<&[f32]>,
        dims: MoeDims,
        path: MoePath,
        params: &MoeParams,
    ) -> KernelResult<MoeForwardOut> {
        gpu_moe::moe_forward(&self.launcher, x, router, experts, bias, dims, path, params)
    }

    fn moe_backward_logits(
        &self,
        dx: &mut [f32],
        drouter: &mut [f32],
        dlogits: &[f32],
        x: &[f32],
        router: &[f32],
        saved: &(dyn Any + Send + Sync),
        dims: MoeDims,
    ) -> KernelResult<()> {
        gpu_moe::backward_logits(&self.launcher, dx, drouter, dlogits, x, router, saved, dims)
    }

    fn moe_backward_out_logits(
        &self,
        dx: &mut [f32],
        dlogits: &mut [f32],
        dexperts: &mut [f32],
        dout: &[f32],
        x: &[f32],
        experts: &[f32],
        saved: &(dyn Any + Send + Sync),
        dims: MoeDims,
    ) -> KernelResult<()> {
        gpu_moe::backward_out_logits(&self.launcher, dx, dlogits, dexperts, dout, x, experts, saved, dims)
    }

    fn moe_backward_aux_logits(
        &self,
        dlogits: &mut [f32],
        which: AuxLoss,
        dloss: f32,
        saved: &(dyn Any + Send + Sync),
        dims: MoeDims,
    ) -> KernelResult<()> {
        gpu_moe::backward_aux_logits(&self.launcher, dlogits, which, dloss, saved, dims)
    }

    fn adamw_step(
        &self,
        param: &mut [f32],
        grad: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        cfg: &AdamWConfig,
        step: u64,
    ) -> KernelResult<()> {
        let h = gpu::AdamWHyper {
            lr: cfg.lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
        };
        gpu::adamw_step(&self.launcher, param, grad, m, v, &h, step)
    }

    // The format-exact fake quantizer runs on the host: kernels-gpu's `fake_quant` kernels are
    // the older symmetric clip quantizer (no f16 super-scale, no sub-scales, no min), not yet
    // brought in line with the GGUF formats. Weights are host buffers here, so this is a plain
    // call; the quantized weights then feed the GPU GEMMs like any other weight.

    fn fake_quant_forward(
        &self,
        out: &mut [f32],
        w: &[f32],
        s: &[f32],
        m: &[f32],
        dims: FakeQuantDims,
    ) -> KernelResult<()> {
        kernels_cpu::fake_quant::fake_quant_forward(out, w, s, m, dims);
        Ok(())
    }

    fn fake_quant_backward(
        &self,
        dw: &mut [f32],
        ds: &mut [f32],
        dm: &mut [f32],
        dout: &[f32],
        w: &[f32],
        s: &[f32],
        m: &[f32],
        dims: FakeQuantDims,
    ) -> KernelResult<()> {
        kernels_cpu::fake_quant::fake_quant_backward(dw, ds, dm, dout, w, s, m, dims);
        Ok(())
    }
}

/// kernels-cpu's attention dimensions as kernels-gpu's.
fn shape(d: AttnDims) -> gpu::AttnShape {
    gpu::AttnShape { b: d.b, t: d.t, h: d.h, kv: d.kv, dh: d.dh }
}
