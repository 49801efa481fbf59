//! Reverse-mode tape: ops record a backward closure that accumulates into their inputs'
//! gradients; [`Tape::backward`] runs them in reverse. An inference tape records nothing.

use crate::backend::{self, Backend};
use crate::error::Result;
use crate::profile;
use crate::tensor::{Compute, Device, Precision, Tensor, TensorId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// A backward closure: gets the output's gradient and accumulates into the inputs'.
type BackwardFn = Box<dyn FnOnce(&[f32], &mut Gradients)>;

struct Node {
    /// The op that recorded it (for [`crate::profile`]).
    op: &'static str,
    out: TensorId,
    backward: BackwardFn,
}

#[derive(Default)]
struct Inner {
    next_id: usize,
    nodes: Vec<Node>,
}

/// Records ops for backward (or, built with [`Tape::inference`], records nothing), and holds the
/// [`Backend`] its ops run on.
pub struct Tape {
    recording: bool,
    backend: Arc<dyn Backend>,
    inner: RefCell<Inner>,
}

impl Default for Tape {
    fn default() -> Self {
        Self::new()
    }
}

impl Tape {
    /// A recording tape on [`Device::Cpu`].
    pub fn new() -> Self {
        profile::restart_clock();
        Tape { recording: true, backend: cpu(), inner: RefCell::default() }
    }

    /// A no-op tape on [`Device::Cpu`]: ops run forward only, nothing is saved for backward.
    pub fn inference() -> Self {
        Tape { recording: false, backend: cpu(), inner: RefCell::default() }
    }

    /// A recording tape whose ops run on `on` (a [`Device`], f32, or a [`Compute`] with its
    /// GEMM precision); an error if this build or machine cannot run it (`Cuda`: never a panic,
    /// also without a driver; bf16 off the CPU: [`crate::AutogradError::PrecisionUnavailable`]).
    pub fn new_on(on: impl Into<Compute>) -> Result<Self> {
        Ok(Tape { backend: backend::for_compute(on.into())?, ..Self::new() })
    }

    /// A no-op tape whose ops run on `on` (see [`Tape::new_on`]).
    pub fn inference_on(on: impl Into<Compute>) -> Result<Self> {
        Ok(Tape { backend: backend::for_compute(on.into())?, ..Self::inference() })
    }

    /// A recording (or, with `recording == false`, no-op) tape on a given backend (tests and
    /// benchmarks: e.g. a CPU backend forced onto one GEMM backend).
    pub fn with_backend(backend: Arc<dyn Backend>, recording: bool) -> Self {
        let base = if recording { Self::new() } else { Self::inference() };
        Tape { backend, ..base }
    }

    /// Where this tape's ops run.
    pub fn device(&self) -> Device {
        self.backend.device()
    }

    /// The operand precision of this tape's GEMMs.
    pub fn precision(&self) -> Precision {
        self.backend.precision()
    }

    /// Where and at which precision this tape's ops run (a tape on the same backend kind).
    pub fn compute(&self) -> Compute {
        Compute { device: self.device(), precision: self.precision() }
    }

    /// The backend this tape's ops run on (ops keep a clone for their backward).
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Whether ops are recorded.
    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// Number of recorded ops.
    pub fn len(&self) -> usize {
        self.inner.borrow().nodes.len()
    }

    /// True when nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn fresh_id(&self) -> TensorId {
        let mut inner = self.inner.borrow_mut();
        inner.next_id += 1;
        TensorId(inner.next_id)
    }

    /// Marks `t` as a leaf that receives a gradient (a parameter). No-op when not recording.
    pub fn leaf(&self, t: &Tensor) -> Tensor {
        if !self.recording {
            return t.clone().with_id(None);
        }
        t.clone().with_id(Some(self.fresh_id()))
    }

    /// Whether an op over `inputs` must be recorded.
    pub fn needs_grad(&self, inputs: &[&Tensor]) -> bool {
        self.recording && inputs.iter().any(|t| t.requires_grad())
    }

    /// Gives `out` an identity and records `backward` for it when any input requires a grad;
    /// otherwise returns `out` untracked and drops `backward` (and what it saved).
    pub fn record(
        &self,
        out: Tensor,
        inputs: &[&Tensor],
        backward: impl FnOnce(&[f32], &mut Gradients) + 'static,
    ) -> Tensor {
        let op = profile::op_name_of(&backward);
        profile::forward_recorded(op);
        if !self.needs_grad(inputs) {
            return out.with_id(None);
        }
        let id = self.fresh_id();
        self.inner.borrow_mut().nodes.push(Node { op, out: id, backward: Box::new(backward) });
        out.with_id(Some(id))
    }

    /// Runs backward from a scalar `loss` (seed gradient 1) and returns the leaves' gradients.
    /// Intermediate gradients and saved activations are freed as soon as they are used.
    pub fn backward(self, loss: &Tensor) -> Gradients {
        self.backward_with(loss, &[1.0])
    }

    /// Runs backward seeded with `dloss` (same length as `loss`).
    pub fn backward_with(self, loss: &Tensor, dloss: &[f32]) -> Gradients {
        assert_eq!(loss.numel(), dloss.len(), "backward seed length");
        let mut grads = Gradients::default();
        let Some(loss_id) = loss.id else { return grads };
        grads.map.insert(loss_id, dloss.to_vec());
        let nodes = std::mem::take(&mut self.inner.borrow_mut().nodes);
        for node in nodes.into_iter().rev() {
            if let Some(g) = grads.map.remove(&node.out) {
                if profile::is_on() {
                    let t0 = std::time::Instant::now();
                    (node.backward)(&g, &mut grads);
                    profile::backward_ran(node.op, t0.elapsed().as_secs_f64());
                } else {
                    (node.backward)(&g, &mut grads);
                }
            }
        }
        grads
    }
}

/// The CPU backend (infallible).
fn cpu() -> Arc<dyn Backend> {
    backend::for_device(Device::Cpu).expect("the CPU backend is always available")
}

/// Gradients by tensor identity, filled by backward.
#[derive(Default)]
pub struct Gradients {
    map: HashMap<TensorId, Vec<f32>>,
}

impl Gradients {
    /// The gradient of a leaf (`None` if it got none).
    pub fn get(&self, t: &Tensor) -> Option<&[f32]> {
        t.id.and_then(|id| self.map.get(&id)).map(|v| v.as_slice())
    }

    /// Removes and returns the gradient of a leaf.
    pub fn remove(&mut self, t: &Tensor) -> Option<Vec<f32>> {
        t.id.and_then(|id| self.map.remove(&id))
    }

    /// Runs `f` on the (zero-initialised if new) gradient buffer of `t`, if `t` requires one.
    pub fn accumulate(&mut self, t: &Tensor, f: impl FnOnce(&mut [f32])) {
        if let Some(id) = t.id {
            let buf = self.map.entry(id).or_insert_with(|| kernels_cpu::buffer::zeroed(t.numel()));
            f(buf);
        }
    }

    /// If `t` requires a gradient: runs `add` on its buffer when it already has one, else stores
    /// `fresh()` (which must hold `t.numel()` values) as its gradient: an op whose kernel can
    /// write its result needs no zero-filled buffer to add it to.
    pub fn add_or_insert(&mut self, t: &Tensor, add: impl FnOnce(&mut [f32]), fresh: impl FnOnce() -> Vec<f32>) {
        let Some(id) = t.id else { return };
        match self.map.get_mut(&id) {
            Some(buf) => add(buf),
            None => {
                let buf = fresh();
                assert_eq!(buf.len(), t.numel(), "fresh gradient of the wrong length");
                self.map.insert(id, buf);
            }
        }
    }

    /// Adds `scale * grad` to the gradient of `t` (if `t` requires one); when `t` has none yet,
    /// `grad` itself becomes it (scaled in place), with no zero-filled buffer and no copy.
    pub fn add_scaled(&mut self, t: &Tensor, scale: f32, mut grad: Vec<f32>) {
        let Some(id) = t.id else { return };
        assert_eq!(grad.len(), t.numel(), "gradient of the wrong length");
        match self.map.get_mut(&id) {
            Some(buf) => kernels_cpu::elementwise::axpy(buf, scale, &grad),
            None => {
                if scale != 1.0 {
                    kernels_cpu::elementwise::scale(&mut grad, scale);
                }
                self.map.insert(id, grad);
            }
        }
    }

    /// Adds `scale * grad` to the gradient of `t` (if `t` requires one); when `t` has none yet,
    /// it becomes a scaled copy of `grad` (no zero-filled buffer to add to).
    pub fn add_scaled_slice(&mut self, t: &Tensor, scale: f32, grad: &[f32]) {
        let Some(id) = t.id else { return };
        assert_eq!(grad.len(), t.numel(), "gradient of the wrong length");
        match self.map.get_mut(&id) {
            Some(buf) => kernels_cpu::elementwise::axpy(buf, scale, grad),
            None => {
                self.map.insert(id, kernels_cpu::buffer::scaled_copy(grad, scale));
            }
        }
    }

    /// Takes the gradient buffer of `t` out so several can be borrowed at once (zeros when new,
    /// or a scratch buffer when `t` requires no gradient); give it back with [`Gradients::put`].
    pub fn take(&mut self, t: &Tensor) -> Vec<f32> {
        t.id.and_then(|id| self.map.remove(&id)).unwrap_or_else(|| kernels_cpu::buffer::zeroed(t.numel()))
    }

    /// Returns a buffer taken with [`Gradients::take`] (dropped if `t` requires no gradient).
    pub fn put(&mut self, t: &Tensor, buf: Vec<f32>) {
        if let Some(id) = t.id {
            self.map.insert(id, buf);
        }
    }
}
