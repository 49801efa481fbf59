//! [`Gpu`]: the cudarc layer (pinned cudarc =0.19.10, driver + nvrtc + dynamic-loading + cuda-13000).

use super::{GpuError, Kernel, PTX};
use crate::launcher::{bytes_of, bytes_of_mut, Elem, LaunchDims, LaunchError, Launcher};
use crate::simt::Gmem;
use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;
use std::sync::Arc;

/// Element types that can live in a [`GpuBuf`].
pub trait GpuElem: DeviceRepr + ValidAsZeroBits + Copy + Default + Unpin + 'static {}
impl GpuElem for f32 {}
impl GpuElem for u32 {}
impl GpuElem for i32 {}
impl GpuElem for u16 {}
impl GpuElem for u8 {}

/// A device buffer of `len()` elements of `T` on one [`Gpu`].
pub struct GpuBuf<T> {
    slice: CudaSlice<T>,
}

impl<T> GpuBuf<T> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.slice.len()
    }
    /// Whether the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.slice.len() == 0
    }
}

/// One GPU: a CUDA context, its default stream, and every [`Kernel`] of the committed PTX loaded.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Indexed like [`Kernel::ALL`].
    functions: Vec<CudaFunction>,
}

fn driver(op: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> GpuError {
    move |e| GpuError::Driver { op, message: e.to_string() }
}

impl Gpu {
    /// Opens GPU `ordinal` and loads the PTX. [`GpuError::NoDriver`] when `libcuda` is absent
    /// (checked before cudarc's lazy loader, which would panic).
    pub fn new(ordinal: usize) -> Result<Self, GpuError> {
        // SAFETY: only tries to dlopen libcuda / nvcuda; nothing is called through it.
        if !unsafe { sys::is_culib_present() } {
            return Err(GpuError::NoDriver);
        }
        let ctx = CudaContext::new(ordinal).map_err(driver("creating the CUDA context"))?;
        let (major, minor) = ctx.compute_capability().map_err(driver("querying the compute capability"))?;
        if major < 8 {
            return Err(GpuError::Unsupported { ordinal, major, minor });
        }
        let module = ctx.load_module(Ptx::from_src(PTX)).map_err(driver("loading kernels.ptx"))?;
        let functions = Kernel::ALL
            .iter()
            .map(|k| module.load_function(k.symbol()).map_err(|_| GpuError::MissingKernel { symbol: k.symbol() }))
            .collect::<Result<Vec<_>, _>>()?;
        let stream = ctx.default_stream();
        Ok(Gpu { ctx, stream, functions })
    }

    /// The device name as the driver reports it.
    pub fn name(&self) -> Result<String, GpuError> {
        self.ctx.name().map_err(driver("querying the device name"))
    }

    /// Copies `host` to a new device buffer.
    pub fn upload<T: GpuElem>(&self, host: &[T]) -> Result<GpuBuf<T>, GpuError> {
        Ok(GpuBuf { slice: self.stream.clone_htod(host).map_err(driver("copying to the device"))? })
    }

    /// A new zero-filled device buffer of `len` elements.
    pub fn zeros<T: GpuElem>(&self, len: usize) -> Result<GpuBuf<T>, GpuError> {
        Ok(GpuBuf { slice: self.stream.alloc_zeros(len).map_err(driver("allocating device memory"))? })
    }

    /// Copies a device buffer back (waits for the work queued before it).
    pub fn download<T: GpuElem>(&self, buf: &GpuBuf<T>) -> Result<Vec<T>, GpuError> {
        let v = self.stream.clone_dtoh(&buf.slice).map_err(driver("copying from the device"))?;
        self.synchronize()?;
        Ok(v)
    }

    /// Waits until all queued work is done (surfaces asynchronous kernel errors).
    pub fn synchronize(&self) -> Result<(), GpuError> {
        self.stream.synchronize().map_err(driver("synchronizing the stream"))
    }

    /// The device address of `buf` as a kernel argument. Valid while `buf` lives; the launchers do not
    /// track it (all work goes to this `Gpu`'s one stream, in order).
    pub fn gmem<T: GpuElem>(&self, buf: &GpuBuf<T>) -> Gmem<T> {
        let (ptr, _sync) = buf.slice.device_ptr(&self.stream);
        Gmem::new(ptr as usize as *mut T)
    }

    fn function(&self, k: Kernel) -> &CudaFunction {
        let i = Kernel::ALL.iter().position(|&x| x == k).expect("Kernel::ALL lists every kernel");
        &self.functions[i]
    }
}

impl From<LaunchDims> for LaunchConfig {
    fn from(d: LaunchDims) -> Self {
        LaunchConfig {
            grid_dim: (d.grid.x, d.grid.y, d.grid.z),
            block_dim: (d.block.x, d.block.y, d.block.z),
            shared_mem_bytes: d.shared_bytes,
        }
    }
}

// SAFETY: `Gmem<T>` is `#[repr(transparent)]` over a pointer: the kernel's `.param .u64`.
unsafe impl<T> DeviceRepr for Gmem<T> {}
// SAFETY: `#[repr(C)]` plain data, passed by value as the kernel's `.param .b8 [..]`.
unsafe impl DeviceRepr for crate::kernels::adamw::AdamWScalars {}
// SAFETY: as above (`#[repr(C)]` of Gmem, usize, a `#[repr(u8)]` enum and bool).
unsafe impl<T> DeviceRepr for crate::kernels::gemm::GroupedGemm<T> {}

macro_rules! define_launchers {
    ($($variant:ident $launcher:ident $sym:ident = $kernel:path => ($($arg:ident : $ty:ty),* $(,)?);)*) => {
        impl Launcher for Gpu {
            type Mem = CudaSlice<u8>;

            fn name(&self) -> &'static str {
                "cuda"
            }

            fn block_threads(&self) -> u32 {
                256
            }

            fn max_grid(&self) -> u32 {
                // Enough blocks to fill every SM several times over; grid-stride loops do the rest.
                65_535
            }

            fn input<T: Elem>(&self, host: &[T]) -> Result<CudaSlice<u8>, LaunchError> {
                Ok(self.stream.clone_htod(bytes_of(host)).map_err(driver("copying to the device"))?)
            }

            fn output<T: Elem>(&self, host: &mut [T], copy_in: bool) -> Result<CudaSlice<u8>, LaunchError> {
                if copy_in {
                    return self.input(host);
                }
                self.scratch::<T>(host.len())
            }

            fn scratch<T: Elem>(&self, len: usize) -> Result<CudaSlice<u8>, LaunchError> {
                let bytes = (len * std::mem::size_of::<T>()).max(1);
                Ok(self.stream.alloc_zeros::<u8>(bytes).map_err(driver("allocating device memory"))?)
            }

            fn read_back<T: Elem>(&self, mem: &CudaSlice<u8>, host: &mut [T]) -> Result<(), LaunchError> {
                let dst = bytes_of_mut(host);
                if dst.is_empty() {
                    return Ok(());
                }
                let src = mem.slice(..dst.len());
                self.stream.memcpy_dtoh(&src, dst).map_err(driver("copying from the device"))?;
                Ok(self.synchronize()?)
            }

            fn ptr<T: Elem>(&self, mem: &CudaSlice<u8>) -> Gmem<T> {
                let (ptr, _sync) = mem.device_ptr(&self.stream);
                Gmem::new(ptr as usize as *mut T)
            }

            $(
                unsafe fn $launcher(&self, dims: LaunchDims, $($arg: $ty),*) -> Result<(), LaunchError> {
                    let mut launch = self.stream.launch_builder(self.function(Kernel::$variant));
                    $(launch.arg(&$arg);)*
                    launch.launch(dims.into()).map_err(driver(concat!("launching ", stringify!($sym))))?;
                    Ok(())
                }
            )*
        }
    };
}

include!("../ptx/table.rs");
for_each_kernel!(define_launchers);
