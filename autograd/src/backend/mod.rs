//! The backend layer: the one op surface the ops run on, implemented once per device. An op
//! checks its inputs, calls [`Backend`] methods for the compute and records the backward (which
//! calls [`Backend`] methods again); it never asks which device it is on. The tape holds its
//! backend ([`crate::Tape::backend`]), chosen here from a [`Device`] ([`for_device`]).
//!
//! - [`CpuBackend`] runs kernels-cpu.
//! - [`GpuBackend`] runs the kernels of kernels-gpu through its host sequences, generic over a
//!   kernels-gpu [`Launcher`](kernels_gpu::launcher::Launcher): the SIMT simulator
//!   ([`Device::Sim`]) or cudarc ([`Device::Cuda`], feature `cuda`). Buffers stay host `Vec<f32>`
//!   (tensors live in host memory): a GPU op mirrors its inputs on the device, launches and reads
//!   its outputs back. On the simulator that mirroring aliases host memory (no copies).
//!
//! Methods take flat row-major slices with the shapes of the kernels they stand for (the
//! kernels-cpu functions of the same names document them); outputs first, backward methods
//! accumulate. Errors are the GPU path's launch errors; [`CpuBackend`] never fails.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod gpu;
mod gpu_moe;

pub use cpu::CpuBackend;
pub use gpu::GpuBackend;

use crate::error::{AutogradError, Result};
use crate::tensor::{Compute, Device, Precision};
use kernels_cpu::adamw::AdamWConfig;
use kernels_cpu::attention::AttnDims;
use kernels_cpu::distill::DistillDims;
use kernels_cpu::distill_topk::{TopkDims, TopkTeacher};
use kernels_cpu::fake_quant::FakeQuantDims;
use kernels_cpu::gemm::Trans;
use kernels_cpu::moe::{AuxLoss, MoeDims, MoeParams, MoePath, RouterStats};
use kernels_cpu::rope::RopeTable;
use kernels_gpu::launcher::LaunchError;
use std::any::Any;
use std::sync::{Arc, OnceLock};

/// Result of a backend call.
pub type KernelResult<T> = std::result::Result<T, LaunchError>;

/// What a routed MoE forward produced (the op wraps it in tensors).
pub struct MoeForwardOut {
    /// Routed contribution `[N, D]`.
    pub out: Vec<f32>,
    /// Raw router logits `[N, E]`.
    pub logits: Vec<f32>,
    /// Switch load-balance loss (unscaled).
    pub lb_loss: f32,
    /// Router z-loss (unscaled).
    pub z_loss: f32,
    /// Router statistics.
    pub stats: RouterStats,
    /// Kept expert per token (`u32::MAX`: dropped) `[N]`.
    pub expert_of_token: Vec<u32>,
    /// Backend-specific state for the backward methods (only the backend that made it reads it).
    pub saved: Arc<dyn Any + Send + Sync>,
}

/// The op surface of one device. See the module doc for conventions.
#[allow(clippy::too_many_arguments)]
pub trait Backend: Send + Sync {
    /// The device this backend runs on.
    fn device(&self) -> Device;

    /// The operand precision of this backend's GEMMs (f32 unless it says otherwise).
    fn precision(&self) -> Precision {
        Precision::F32
    }

    /// `c [M, N] (+)= op(a) · op(b)` (kernels-cpu `gemm::matmul`).
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
    ) -> KernelResult<()>;

    /// `op(a) · op(b)` as a fresh `[M, N]` buffer.
    fn matmul_new(
        &self,
        a: &[f32],
        b: &[f32],
        m: usize,
        k: usize,
        n: usize,
        ta: Trans,
        tb: Trans,
    ) -> KernelResult<Vec<f32>>;

    /// `out [N, D] = table[ids]`.
    fn embedding_forward(&self, out: &mut [f32], ids: &[u32], table: &[f32], d: usize) -> KernelResult<()>;
    /// `dtable[ids[t]] += dout[t]`.
    fn embedding_backward(&self, dtable: &mut [f32], dout: &[f32], ids: &[u32], d: usize) -> KernelResult<()>;

    /// RMSNorm rows of `x [N, C]` scaled by `w [C]`; saves `rstd [N]`.
    fn rmsnorm_forward(
        &self,
        out: &mut [f32],
        rstd: &mut [f32],
        x: &[f32],
        w: &[f32],
        n: usize,
        c: usize,
        eps: f32,
    ) -> KernelResult<()>;
    /// Accumulates `dx [N, C]`, `dw [C]`.
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
    ) -> KernelResult<()>;

    /// Rotary embedding of `x [N, heads * Dh]` at `pos [N]`.
    fn rope_forward(
        &self,
        out: &mut [f32],
        x: &[f32],
        pos: &[u32],
        table: &RopeTable,
        n: usize,
        heads: usize,
    ) -> KernelResult<()>;
    /// Accumulates `dx += rotate(dout, -pos)`.
    fn rope_backward(
        &self,
        dx: &mut [f32],
        dout: &[f32],
        pos: &[u32],
        table: &RopeTable,
        n: usize,
        heads: usize,
    ) -> KernelResult<()>;

    /// Causal GQA attention with optional document ids `seg [B*T]`; saves `lse [B, H, T]`.
    fn attention_forward(
        &self,
        out: &mut [f32],
        lse: &mut [f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        seg: Option<&[u32]>,
        dims: AttnDims,
    ) -> KernelResult<()>;
    /// Accumulates `dq`, `dk`, `dv`.
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
    ) -> KernelResult<()>;

    /// `out = silu(gate) * up`.
    fn swiglu_forward(&self, out: &mut [f32], gate: &[f32], up: &[f32]) -> KernelResult<()>;
    /// Accumulates `dgate`, `dup`.
    fn swiglu_backward(
        &self,
        dgate: &mut [f32],
        dup: &mut [f32],
        dout: &[f32],
        gate: &[f32],
        up: &[f32],
    ) -> KernelResult<()>;
    /// `out [N, F]` from `gu [N, 2F]` (rows `[gate, up]`).
    fn swiglu_fused_forward(&self, out: &mut [f32], gu: &[f32], f: usize) -> KernelResult<()>;
    /// Accumulates `dgu [N, 2F]`.
    fn swiglu_fused_backward(&self, dgu: &mut [f32], dout: &[f32], gu: &[f32], f: usize) -> KernelResult<()>;

    /// `a + scale * b` as a fresh buffer.
    fn add_scaled(&self, a: &[f32], b: &[f32], scale: f32) -> KernelResult<Vec<f32>>;
    /// Columns `start..start + width` of `x [N, C]` as a fresh `[N, width]` buffer.
    fn copy_cols(&self, x: &[f32], c: usize, start: usize, width: usize) -> KernelResult<Vec<f32>>;
    /// `dx[:, start..start + width] += dy [N, width]` for `dx [N, C]`.
    fn add_cols(&self, dx: &mut [f32], dy: &[f32], c: usize, start: usize) -> KernelResult<()>;

    /// Fused LM head + cross-entropy over row chunks: `losses [N]` and, when `grads = (dh [N, D],
    /// dw [V, D])`, `dh = scale * dL/dh` (written) and `dw += scale * dL/dw`.
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
    ) -> KernelResult<()>;

    /// Per-row hidden-state L2 (kernels-cpu `distill::hidden_l2_forward`): `out [N]` from
    /// `hs`, `ht` `[N, D]`; 0 for ignored rows.
    fn hidden_l2_forward(&self, out: &mut [f32], hs: &[f32], ht: &[f32], targets: &[i32], d: usize)
        -> KernelResult<()>;

    /// Its backward: accumulates `dhs [N, D] += dout[i] · 2 (h_s − h_t) / D` (`dout [N]`).
    fn hidden_l2_backward(&self, dhs: &mut [f32], dout: &[f32], hs: &[f32], ht: &[f32], d: usize) -> KernelResult<()>;

    /// Fused LM-head distillation KL (kernels-cpu `distill::lm_head_kl_forward[_backward]`):
    /// per-row `kl [N]` and, when `grads = (dhs, dws)`, accumulates `scale *` their gradients.
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
    ) -> KernelResult<()>;

    /// Distillation KL from a teacher's cached top-k logits with the tail as one bucket
    /// (kernels-cpu `distill_topk::lm_head_topk_kl_with`): per-row `kl [N]` and, when
    /// `grads = (dhs, dws)`, accumulates `scale *` their gradients.
    #[allow(clippy::too_many_arguments)]
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
    ) -> KernelResult<()>;

    /// Routed MoE forward (router, dropout, capacity, dispatch, experts, combine) on `path` with
    /// the kernel settings `params` (noise and dropout already zero outside training); `bias [E]`
    /// shifts the choice only.
    fn moe_forward(
        &self,
        x: &[f32],
        router: &[f32],
        experts: &[f32],
        bias: Option<&[f32]>,
        dims: MoeDims,
        path: MoePath,
        params: &MoeParams,
    ) -> KernelResult<MoeForwardOut>;
    /// Router projection backward: `dx += dlogits · router`, `drouter += dlogitsᵀ · x`.
    fn moe_backward_logits(
        &self,
        dx: &mut [f32],
        drouter: &mut [f32],
        dlogits: &[f32],
        x: &[f32],
        router: &[f32],
        saved: &(dyn Any + Send + Sync),
        dims: MoeDims,
    ) -> KernelResult<()>;
    /// Backward of the routed output up to the logits: accumulates `dx`, `dlogits`, `dexperts`.
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
    ) -> KernelResult<()>;
    /// Backward of `dloss * lb_loss` or `dloss * z_loss` into `dlogits`.
    fn moe_backward_aux_logits(
        &self,
        dlogits: &mut [f32],
        which: AuxLoss,
        dloss: f32,
        saved: &(dyn Any + Send + Sync),
        dims: MoeDims,
    ) -> KernelResult<()>;

    /// One AdamW update (torch semantics; `step` 1-based).
    fn adamw_step(
        &self,
        param: &mut [f32],
        grad: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        cfg: &AdamWConfig,
        step: u64,
    ) -> KernelResult<()>;

    /// Format-exact fake quantization of `w [rows, row_len]` with steps `s` and mins `m`
    /// (kernels-cpu `fake_quant::fake_quant_forward`).
    fn fake_quant_forward(
        &self,
        out: &mut [f32],
        w: &[f32],
        s: &[f32],
        m: &[f32],
        dims: FakeQuantDims,
    ) -> KernelResult<()>;
    /// Its backward: accumulates `dw`, `ds`, `dm` (kernels-cpu `fake_quant::fake_quant_backward`).
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
    ) -> KernelResult<()>;
}

/// The backend of `device`: an error if this build or machine cannot run it (`Cuda` without the
/// `cuda` feature or without a driver: never a panic). The CUDA backend is opened once per process.
pub fn for_device(device: Device) -> Result<Arc<dyn Backend>> {
    static CPU: OnceLock<Arc<dyn Backend>> = OnceLock::new();
    static SIM: OnceLock<Arc<dyn Backend>> = OnceLock::new();
    match device {
        Device::Cpu => Ok(CPU.get_or_init(|| Arc::new(CpuBackend::default())).clone()),
        Device::Sim => {
            Ok(SIM.get_or_init(|| Arc::new(GpuBackend::new(kernels_gpu::launcher::SimLauncher, Device::Sim))).clone())
        }
        Device::Cuda => cuda_backend(),
    }
}

/// The backend of `compute`: [`for_device`] for f32; bf16 runs on the CPU only (AMX tiles, or
/// emulated on the f32 kernels where the CPU lacks AMX), other devices are refused with
/// [`AutogradError::PrecisionUnavailable`].
pub fn for_compute(compute: Compute) -> Result<Arc<dyn Backend>> {
    static CPU_BF16: OnceLock<Arc<dyn Backend>> = OnceLock::new();
    match (compute.device, compute.precision) {
        (device, Precision::F32) => for_device(device),
        (Device::Cpu, Precision::Bf16) => {
            Ok(CPU_BF16.get_or_init(|| Arc::new(CpuBackend::new(Precision::Bf16))).clone())
        }
        (device, precision) => Err(AutogradError::PrecisionUnavailable {
            device,
            precision: precision.name(),
            msg: "bf16 mixed precision runs on the cpu device only (the GPU path's dense GEMMs are f32); \
                  use the cpu device or f32"
                .into(),
        }),
    }
}

#[cfg(feature = "cuda")]
fn cuda_backend() -> Result<Arc<dyn Backend>> {
    cuda::backend()
}

#[cfg(not(feature = "cuda"))]
fn cuda_backend() -> Result<Arc<dyn Backend>> {
    Err(AutogradError::DeviceUnavailable {
        device: Device::Cuda,
        msg: "this build has no CUDA support (rebuild with `--features cuda`; the committed PTX needs only an \
              NVIDIA driver), or use the cpu / sim device"
            .into(),
    })
}

/// A backend result as an op's result.
pub(crate) fn kernel<T>(op: &'static str, r: KernelResult<T>) -> Result<T> {
    r.map_err(|cause| AutogradError::Kernel { op, cause })
}

/// A backend result inside a backward closure. The forward checked every shape, so a failure here
/// is a bug or a device failure mid-backward (backward closures cannot return errors).
pub(crate) fn kernel_bwd<T>(op: &'static str, r: KernelResult<T>) -> T {
    r.unwrap_or_else(|e| panic!("{op} backward: kernel failed after the forward checked every shape: {e}"))
}
