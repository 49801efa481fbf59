//! [`Launcher`]: what the host sequences of `ops` need from a GPU, implemented twice, by the CPU
//! SIMT simulator ([`SimLauncher`]) and by cudarc (`host::Gpu`, feature `cuda`). The host
//! sequences are written once, generic over it, so the simulator runs exactly the launches (kernel,
//! launch shape, order) a GPU runs.
//!
//! Memory: a launcher mirrors host slices on the device. [`Launcher::input`] gives a read-only
//! device copy of a host slice, [`Launcher::output`] a device buffer whose contents end up in a
//! host slice after [`Launcher::read_back`], [`Launcher::scratch`] device-only zeroed memory.
//! The simulator's "device memory" is host memory: `input` and `output` alias the host slice (no
//! copy) and `read_back` of an aliased buffer does nothing. On a GPU they are transfers.
//!
//! One launcher method per row of `ptx/table.rs` (the kernel table): `unsafe fn <launcher>(dims,
//! args..)`, arguments exactly as the kernel takes them after its context.

use crate::host::GpuError;
use crate::sim::SimError;
use crate::simt::{Dim3, Gmem};

/// Grid, block and dynamic shared memory of one launch (as each kernel's doc states).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDims {
    /// Blocks in the grid.
    pub grid: Dim3,
    /// Threads per block.
    pub block: Dim3,
    /// Dynamic shared memory bytes per block.
    pub shared_bytes: u32,
}

impl LaunchDims {
    /// A 1-D launch with no dynamic shared memory.
    pub fn linear(grid: Dim3, block: u32) -> Self {
        LaunchDims { grid, block: Dim3::x(block), shared_bytes: 0 }
    }
}

/// Why a host sequence or a launch failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    /// Host arguments that do not fit the kernel (lengths, sizes).
    #[error("invalid launch: {0}")]
    InvalidLaunch(String),
    /// The simulator reported an error.
    #[error(transparent)]
    Sim(#[from] SimError),
    /// The GPU (driver, memory, launch) reported an error.
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

mod sealed {
    pub trait Sealed {}
}

/// Plain element types a kernel argument buffer may hold (no padding, any bit pattern valid).
pub trait Elem: sealed::Sealed + Copy + Default + Send + Sync + 'static {}
macro_rules! elems {
    ($($t:ty),*) => {$(impl sealed::Sealed for $t {} impl Elem for $t {})*};
}
elems!(f32, u32, i32, u16, u8);

/// The bytes of a slice of plain elements.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn bytes_of<T: Elem>(s: &[T]) -> &[u8] {
    // SAFETY: `Elem` types are plain data without padding; the length covers exactly the slice.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

/// The bytes of a mutable slice of plain elements.
pub(crate) fn bytes_of_mut<T: Elem>(s: &mut [T]) -> &mut [u8] {
    // SAFETY: as in `bytes_of`; every byte pattern is a valid `Elem`.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

macro_rules! define_launcher_trait {
    ($($variant:ident $launcher:ident $sym:ident = $kernel:path => ($($arg:ident : $ty:ty),* $(,)?);)*) => {
        /// A device that runs the kernels of the table: memory mirroring plus one launcher per kernel.
        pub trait Launcher: Sync {
            /// Device memory holding one buffer.
            type Mem: Send + Sync;

            /// What the launcher is, for messages ("sim", "cuda").
            fn name(&self) -> &'static str;

            /// Threads per block of the elementwise and row kernels.
            fn block_threads(&self) -> u32;

            /// Largest grid of the grid-stride launches (the simulator keeps it small).
            fn max_grid(&self) -> u32;

            /// A read-only device copy of `host`.
            fn input<T: Elem>(&self, host: &[T]) -> Result<Self::Mem, LaunchError>;

            /// A device buffer for `host`, to be read back into it; holds `host`'s values when
            /// `copy_in` (outputs that kernels accumulate into), unspecified values otherwise.
            fn output<T: Elem>(&self, host: &mut [T], copy_in: bool) -> Result<Self::Mem, LaunchError>;

            /// Zeroed device memory of `len` elements (intermediates that never reach the host).
            fn scratch<T: Elem>(&self, len: usize) -> Result<Self::Mem, LaunchError>;

            /// Copies `mem` (a buffer of `host.len()` elements) into `host`, after the work queued
            /// before it finished.
            fn read_back<T: Elem>(&self, mem: &Self::Mem, host: &mut [T]) -> Result<(), LaunchError>;

            /// The device address of `mem` as a kernel argument (valid while `mem` lives).
            fn ptr<T: Elem>(&self, mem: &Self::Mem) -> Gmem<T>;

            $(
                #[doc = concat!("Launches `", stringify!($sym), "` (`", stringify!($kernel), "`).")]
                ///
                /// # Safety
                /// Every `Gmem` is [`Launcher::ptr`] of a live buffer of this launcher (or host
                /// memory on the simulator) holding the elements the kernel indexes for these sizes,
                /// and `dims` is a launch shape the kernel's doc allows.
                #[allow(clippy::too_many_arguments)]
                unsafe fn $launcher(&self, dims: LaunchDims, $($arg: $ty),*) -> Result<(), LaunchError>;
            )*
        }
    };
}

include!("ptx/table.rs");
for_each_kernel!(define_launcher_trait);

/// Threads per block of the simulator's row and elementwise launches.
pub const SIM_BLOCK: u32 = 128;
/// Largest grid of the grid-stride launches in the simulator (keeps simulated launches cheap;
/// results do not depend on it).
pub const MAX_SIM_BLOCKS: u32 = 32;

/// The CPU SIMT simulator as a [`Launcher`]: host memory is device memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimLauncher;

/// Simulator memory: a host slice aliased in place, or an owned, 8-byte aligned buffer.
pub enum SimMem {
    /// A host slice (`input` / `output`): the kernels read and write it in place.
    Host {
        /// Start of the slice.
        ptr: *mut u8,
        /// Length in bytes.
        bytes: usize,
    },
    /// Scratch memory (u64 words so any element type is aligned).
    Owned(Vec<u64>),
}

// SAFETY: `Host` points at a host slice that the host sequence keeps alive and does not touch
// while kernels run; the simulator's threads access it like device memory.
unsafe impl Send for SimMem {}
// SAFETY: as above.
unsafe impl Sync for SimMem {}

impl SimMem {
    fn base(&self) -> *mut u8 {
        match self {
            SimMem::Host { ptr, .. } => *ptr,
            SimMem::Owned(v) => v.as_ptr() as *mut u8,
        }
    }
}

macro_rules! define_sim_launchers {
    ($($variant:ident $launcher:ident $sym:ident = $kernel:path => ($($arg:ident : $ty:ty),* $(,)?);)*) => {
        impl Launcher for SimLauncher {
            type Mem = SimMem;

            fn name(&self) -> &'static str {
                "sim"
            }

            fn block_threads(&self) -> u32 {
                SIM_BLOCK
            }

            fn max_grid(&self) -> u32 {
                MAX_SIM_BLOCKS
            }

            fn input<T: Elem>(&self, host: &[T]) -> Result<SimMem, LaunchError> {
                Ok(SimMem::Host { ptr: host.as_ptr() as *mut u8, bytes: std::mem::size_of_val(host) })
            }

            fn output<T: Elem>(&self, host: &mut [T], copy_in: bool) -> Result<SimMem, LaunchError> {
                if !copy_in {
                    // Unspecified on a GPU: NaN bytes here, so a kernel that reads an output it was
                    // not given shows up in the results (as in simulated shared memory).
                    bytes_of_mut(host).fill(0xFF);
                }
                Ok(SimMem::Host { ptr: host.as_mut_ptr().cast::<u8>(), bytes: std::mem::size_of_val(host) })
            }

            fn scratch<T: Elem>(&self, len: usize) -> Result<SimMem, LaunchError> {
                Ok(SimMem::Owned(vec![0u64; (len * std::mem::size_of::<T>()).div_ceil(8)]))
            }

            fn read_back<T: Elem>(&self, mem: &SimMem, host: &mut [T]) -> Result<(), LaunchError> {
                let dst = bytes_of_mut(host);
                if mem.base() == dst.as_mut_ptr() {
                    return Ok(()); // the kernels wrote the host slice itself
                }
                let have = match mem {
                    SimMem::Host { bytes, .. } => *bytes,
                    SimMem::Owned(v) => v.len() * 8,
                };
                if have < dst.len() {
                    return Err(LaunchError::InvalidLaunch(format!("read back of {} bytes from {have}", dst.len())));
                }
                // SAFETY: `mem` holds at least `dst.len()` bytes (checked) and does not overlap `dst`.
                unsafe { std::ptr::copy_nonoverlapping(mem.base(), dst.as_mut_ptr(), dst.len()) };
                Ok(())
            }

            fn ptr<T: Elem>(&self, mem: &SimMem) -> Gmem<T> {
                Gmem::new(mem.base().cast::<T>())
            }

            $(
                #[allow(unused_unsafe)]
                unsafe fn $launcher(&self, dims: LaunchDims, $($arg: $ty),*) -> Result<(), LaunchError> {
                    crate::sim::launch(dims.grid, dims.block, dims.shared_bytes as usize, |ctx| {
                        // SAFETY: the caller's contract (buffers and launch shape fit the kernel).
                        unsafe { $kernel(ctx, $($arg),*) }
                    })
                    .map_err(LaunchError::Sim)
                }
            )*
        }
    };
}

for_each_kernel!(define_sim_launchers);
