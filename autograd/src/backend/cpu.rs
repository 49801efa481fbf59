//! [`CpuBackend`]: every op on kernels-cpu (rayon inside the kernels), its GEMMs at the
//! backend's [`Precision`]: linear layers, the fused LM-head cross-entropy and distillation,
//! attention tiles and MoE expert GEMMs take the GEMM backend that precision resolves to here
//! (bf16: AMX tiles, or rounded copies on the f32 kernels where AMX is missing). Everything else
//! (norms, softmaxes, router, AdamW) stays f32.

use super::{Backend, KernelResult, MoeForwardOut};
use crate::tensor::{Device, Precision};
use kernels_cpu::adamw::AdamWConfig;
use kernels_cpu::attention::AttnDims;
use kernels_cpu::distill::{
    hidden_l2_backward, hidden_l2_forward, lm_head_kl_forward_backward_with, lm_head_kl_forward_with, DistillDims,
};
use kernels_cpu::distill_topk::{lm_head_topk_kl_with, TopkDims, TopkTeacher};
use kernels_cpu::fake_quant::FakeQuantDims;
use kernels_cpu::gemm::{matmul_new_with, matmul_with, GemmBackend, Trans};
use kernels_cpu::moe::{self, AuxLoss, MoeDims, MoeParams, MoePath, MoeSaved};
use kernels_cpu::rope::RopeTable;
use kernels_cpu::{cross_entropy, embedding, rmsnorm, rope, swiglu};
use std::any::Any;
use std::sync::Arc;

/// The CPU backend (kernels-cpu). `Default` is f32.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend {
    precision: Precision,
    /// The backend every GEMM runs on (resolved once from `precision`, or chosen by a test).
    gemm: GemmBackend,
}

impl CpuBackend {
    /// The CPU backend with GEMMs at `precision` ([`Precision::backend`] on this CPU).
    pub fn new(precision: Precision) -> Self {
        CpuBackend { precision, gemm: precision.backend() }
    }

    /// The CPU backend with every GEMM on `gemm` (tests and benchmarks: e.g. `Bf16Emulated` on
    /// a CPU with AMX). Panics if `gemm` is not available on this CPU.
    pub fn with_gemm(gemm: GemmBackend) -> Self {
        assert!(gemm.is_available(), "GEMM backend {} is not available on this CPU", gemm.name());
        CpuBackend { precision: if gemm.is_bf16() { Precision::Bf16 } else { Precision::F32 }, gemm }
    }

    /// The GEMM backend this backend runs.
    pub fn gemm(&self) -> GemmBackend {
        self.gemm
    }
}

/// The kernels-cpu state of a MoE forward, from `saved` (made by [`CpuBackend::moe_forward`]).
pub(super) fn cpu_saved(saved: &(dyn Any + Send + Sync)) -> &MoeSaved {
    saved.downcast_ref::<MoeSaved>().expect("MoE state made by the CPU backend")
}

#[allow(clippy::too_many_arguments)]
impl Backend for CpuBackend {
    fn device(&self) -> Device {
        Device::Cpu
    }

    fn precision(&self) -> Precision {
        self.precision
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
        matmul_with(self.gemm, rayon::current_num_threads(), c, a, b, m, k, n, ta, tb, accumulate);
        Ok(())
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
        Ok(matmul_new_with(self.gemm, a, b, m, k, n, ta, tb))
    }

    fn embedding_forward(&self, out: &mut [f32], ids: &[u32], table: &[f32], d: usize) -> KernelResult<()> {
        embedding::embedding_forward(out, ids, table, d);
        Ok(())
    }

    fn embedding_backward(&self, dtable: &mut [f32], dout: &[f32], ids: &[u32], d: usize) -> KernelResult<()> {
        embedding::embedding_backward(dtable, dout, ids, d);
        Ok(())
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
        rmsnorm::rmsnorm_forward(out, rstd, x, w, n, c, eps);
        Ok(())
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
        rmsnorm::rmsnorm_backward(dx, dw, dout, x, w, rstd, n, c);
        Ok(())
    }

    fn rope_forward(
        &self,
        out: &mut [f32],
        x: &[f32],
        pos: &[u32],
        table: &RopeTable,
        n: usize,
        heads: usize,
    ) -> KernelResult<()> {
        rope::rope_forward(out, x, pos, table, n, heads);
        Ok(())
    }

    fn rope_backward(
        &self,
        dx: &mut [f32],
        dout: &[f32],
        pos: &[u32],
        table: &RopeTable,
        n: usize,
        heads: usize,
    ) -> KernelResult<()> {
        rope::rope_backward(dx, dout, pos, table, n, heads);
        Ok(())
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
        kernels_cpu::attention::attention_forward_with(self.gemm, out, lse, q, k, v, seg, dims);
        Ok(())
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
        kernels_cpu::attention::attention_backward_with(self.gemm, dq, dk, dv, dout, out, lse, q, k, v, seg, dims);
        Ok(())
    }

    fn swiglu_forward(&self, out: &mut [f32], gate: &[f32], up: &[f32]) -> KernelResult<()> {
        swiglu::swiglu_forward(out, gate, up);
        Ok(())
    }

    fn swiglu_backward(
        &self,
        dgate: &mut [f32],
        dup: &mut [f32],
        dout: &[f32],
        gate: &[f32],
        up: &[f32],
    ) -> KernelResult<()> {
        swiglu::swiglu_backward(dgate, dup, dout, gate, up);
        Ok(())
    }

    fn swiglu_fused_forward(&self, out: &mut [f32], gu: &[f32], f: usize) -> KernelResult<()> {
        swiglu::swiglu_fused_forward(out, gu, f);
        Ok(())
    }

    fn swiglu_fused_backward(&self, dgu: &mut [f32], dout: &[f32], gu: &[f32], f: usize) -> KernelResult<()> {
        swiglu::swiglu_fused_backward(dgu, dout, gu, f);
        Ok(())
    }

    fn add_scaled(&self, a: &[f32], b: &[f32], scale: f32) -> KernelResult<Vec<f32>> {
        Ok(if scale == 1.0 {
            kernels_cpu::elementwise::add_new(a, b)
        } else {
            a.iter().zip(b).map(|(&x, &y)| x + scale * y).collect()
        })
    }

    fn copy_cols(&self, x: &[f32], c: usize, start: usize, width: usize) -> KernelResult<Vec<f32>> {
        Ok(kernels_cpu::buffer::copy_cols(x, c, start, width))
    }

    fn add_cols(&self, dx: &mut [f32], dy: &[f32], c: usize, start: usize) -> KernelResult<()> {
        kernels_cpu::buffer::add_cols(dx, dy, c, start);
        Ok(())
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
        let n = targets.len();
        match grads {
            Some((dh, dw)) => cross_entropy::lm_head_ce_forward_backward_with(
                self.gemm, losses, dh, dw, h, w, targets, n, d, v, scale, chunk,
            ),
            None => cross_entropy::lm_head_ce_forward_with(self.gemm, losses, h, w, targets, n, d, v, chunk),
        }
        Ok(())
    }

    fn hidden_l2_forward(
        &self,
        out: &mut [f32],
        hs: &[f32],
        ht: &[f32],
        targets: &[i32],
        d: usize,
    ) -> KernelResult<()> {
        hidden_l2_forward(out, hs, ht, targets, targets.len(), d);
        Ok(())
    }

    fn hidden_l2_backward(&self, dhs: &mut [f32], dout: &[f32], hs: &[f32], ht: &[f32], d: usize) -> KernelResult<()> {
        hidden_l2_backward(dhs, dout, hs, ht, dout.len(), d);
        Ok(())
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
        match grads {
            Some((dhs, dws)) => lm_head_kl_forward_backward_with(
                self.gemm, kl, dhs, dws, hs, ws, ht, wt, targets, dims, tau, scale, chunk,
            ),
            None => lm_head_kl_forward_with(self.gemm, kl, hs, ws, ht, wt, targets, dims, tau, chunk),
        }
        Ok(())
    }

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
        lm_head_topk_kl_with(self.gemm, kl, grads, hs, ws, teacher, targets, dims, tau, scale, chunk);
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
        let params = MoeParams { gemm: self.gemm, ..*params };
        let f = moe::moe_forward(path, x, router, experts, bias, dims, &params);
        Ok(MoeForwardOut {
            out: f.out,
            logits: f.logits,
            lb_loss: f.lb_loss,
            z_loss: f.z_loss,
            stats: f.stats,
            expert_of_token: f.expert_of_token,
            saved: Arc::new(f.saved),
        })
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
        moe::moe_backward_logits(dx, drouter, dlogits, x, router, cpu_saved(saved), dims);
        Ok(())
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
        moe::moe_backward_out_logits(dx, dlogits, dexperts, dout, x, experts, cpu_saved(saved), dims);
        Ok(())
    }

    fn moe_backward_aux_logits(
        &self,
        dlogits: &mut [f32],
        which: AuxLoss,
        dloss: f32,
        saved: &(dyn Any + Send + Sync),
        dims: MoeDims,
    ) -> KernelResult<()> {
        moe::moe_backward_aux_logits(dlogits, which, dloss, cpu_saved(saved), dims);
        Ok(())
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
        kernels_cpu::adamw::adamw_step(param, grad, m, v, cfg, step);
        Ok(())
    }

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
