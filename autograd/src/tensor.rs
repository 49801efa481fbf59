//! Tensors: a runtime shape over shared storage, f32 compute.

use half::{bf16, f16};
pub use kernels_cpu::gemm::Precision;
use std::borrow::Cow;
use std::sync::Arc;

/// Where the ops of a [`crate::Tape`] run (see [`crate::Tape::new_on`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Device {
    /// Host memory, kernels-cpu.
    #[default]
    Cpu,
    /// The GPU path run through kernels-gpu's SIMT simulator: ops with a GPU kernel launch it
    /// (same launch shapes and kernel sequence as on a GPU) on host buffers; the others run
    /// kernels-cpu. Slow; for testing that a step on the GPU path matches [`Device::Cpu`].
    Sim,
    /// An NVIDIA GPU (feature `cuda`). Not dispatched yet: a tape on it is refused with
    /// [`crate::AutogradError::DeviceUnavailable`].
    Cuda,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Sim => "sim",
            Device::Cuda => "cuda",
        })
    }
}

/// Where a tape's ops run and the precision of their GEMM operands: f32, or bf16 operands with
/// f32 accumulation (mixed precision: values, gradients and optimiser state stay f32). A
/// [`Device`] converts into f32 compute on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Compute {
    /// Where the ops run.
    pub device: Device,
    /// Operand precision of the GEMMs.
    pub precision: Precision,
}

impl From<Device> for Compute {
    fn from(device: Device) -> Self {
        Compute { device, precision: Precision::F32 }
    }
}

impl std::fmt::Display for Compute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.device, self.precision.name())
    }
}

/// Element type of a tensor's storage (compute is always f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// bfloat16 (storage only).
    BF16,
    /// IEEE half (storage only).
    F16,
}

/// The elements behind one or more tensors.
#[derive(Clone, Debug, PartialEq)]
pub enum Storage {
    /// f32 elements.
    F32(Vec<f32>),
    /// bf16 elements.
    BF16(Vec<bf16>),
    /// f16 elements.
    F16(Vec<f16>),
}

impl Storage {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Storage::F32(v) => v.len(),
            Storage::BF16(v) => v.len(),
            Storage::F16(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) => DType::F32,
            Storage::BF16(_) => DType::BF16,
            Storage::F16(_) => DType::F16,
        }
    }

    /// Stores f32 values as `dtype` (round to nearest even for half types).
    pub fn from_f32(values: Vec<f32>, dtype: DType) -> Self {
        match dtype {
            DType::F32 => Storage::F32(values),
            DType::BF16 => Storage::BF16(values.iter().map(|&x| bf16::from_f32(x)).collect()),
            DType::F16 => Storage::F16(values.iter().map(|&x| f16::from_f32(x)).collect()),
        }
    }

    /// Elements `range` as f32 (borrowed for f32 storage, converted otherwise).
    pub fn f32_range(&self, range: std::ops::Range<usize>) -> Cow<'_, [f32]> {
        match self {
            Storage::F32(v) => Cow::Borrowed(&v[range]),
            Storage::BF16(v) => Cow::Owned(v[range].iter().map(|x| x.to_f32()).collect()),
            Storage::F16(v) => Cow::Owned(v[range].iter().map(|x| x.to_f32()).collect()),
        }
    }
}

/// Identity of a tensor recorded on a tape (it requires a gradient).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub(crate) usize);

/// A runtime-shaped view (`offset`, `shape`) into shared storage.
///
/// Cloning is cheap (an `Arc`). A tensor with an `id` was produced on a recording tape (or
/// registered as a leaf) and receives a gradient in backward.
#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Arc<Storage>,
    offset: usize,
    pub(crate) id: Option<TensorId>,
}

impl Tensor {
    /// A new f32 tensor owning `data`. Panics if `data.len()` disagrees with `shape`
    /// (a programming error).
    pub fn from_vec(data: Vec<f32>, shape: &[usize]) -> Self {
        assert_eq!(data.len(), shape.iter().product::<usize>(), "from_vec: {shape:?}");
        Tensor { shape: shape.to_vec(), storage: Arc::new(Storage::F32(data)), offset: 0, id: None }
    }

    /// A view of `shape` starting at element `offset` of shared `storage`.
    pub fn view(storage: Arc<Storage>, offset: usize, shape: &[usize]) -> Self {
        let len: usize = shape.iter().product();
        assert!(offset + len <= storage.len(), "view {offset}+{len} beyond storage {}", storage.len());
        Tensor { shape: shape.to_vec(), storage, offset, id: None }
    }

    /// Zeros of `shape`.
    pub fn zeros(shape: &[usize]) -> Self {
        Self::from_vec(vec![0.0; shape.iter().product()], shape)
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Size of the last dimension (1 for scalars).
    pub fn last_dim(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Storage element type.
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }

    /// Where the data lives (host memory on every device so far: the simulator's kernels read
    /// and write host buffers).
    pub fn device(&self) -> Device {
        Device::Cpu
    }

    /// The elements as f32 (zero-copy for f32 storage).
    pub fn f32s(&self) -> Cow<'_, [f32]> {
        self.storage.f32_range(self.offset..self.offset + self.numel())
    }

    /// The elements copied into a new vector.
    pub fn to_vec(&self) -> Vec<f32> {
        self.f32s().into_owned()
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> f32 {
        self.f32s()[0]
    }

    /// Same data, new shape (no copy; the gradient identity is kept, since gradients are flat).
    pub fn reshape(&self, shape: &[usize]) -> Self {
        assert_eq!(self.numel(), shape.iter().product::<usize>(), "reshape {:?} -> {shape:?}", self.shape);
        Tensor { shape: shape.to_vec(), ..self.clone() }
    }

    /// Whether this tensor takes part in backward.
    pub fn requires_grad(&self) -> bool {
        self.id.is_some()
    }

    /// Gradient identity on the tape, if recorded.
    pub fn id(&self) -> Option<TensorId> {
        self.id
    }

    /// Shared storage and the view's offset (for in-place updates by the owner).
    pub fn storage(&self) -> (&Arc<Storage>, usize) {
        (&self.storage, self.offset)
    }

    pub(crate) fn with_id(mut self, id: Option<TensorId>) -> Self {
        self.id = id;
        self
    }
}
