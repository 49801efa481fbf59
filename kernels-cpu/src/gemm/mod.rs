//! Matrix multiply with every transpose the backward passes need, on several backends.
//!
//! `matmul(dst, a, b, m, k, n, Trans, Trans, acc)` computes `dst[m,n] (+)= op(a)[m,k] · op(b)[k,n]`
//! where `op(a)` reads `a` as `[m,k]` (no transpose) or as the transpose of a stored `[k,m]`.
//! Transposes cost nothing extra: they are strides handed to the packing routines.
//!
//! Backends ([`GemmBackend`]), f32: our BLIS-style AVX2+FMA kernel (`avx2`, x86-64) and the
//! `gemm` crate (portable; AVX-512 kernels through its `x86-v4` feature). `Auto` resolves per
//! CPU to the one measured fastest there (BENCHMARKS.md "GEMM per ISA"): the `gemm` crate where
//! the CPU has AVX-512F, our AVX2 kernel where it has AVX2+FMA only, else the `gemm` crate.
//! Both f32 backends give results bitwise independent of the thread count (tested).
//! bf16: `AmxBf16` (`amx`, Intel AMX tiles) and `Avx512Bf16` (the same driver and packing with
//! a `vdpbf16ps` microkernel, for CPUs with AVX512-BF16 but no AMX) round the operands to bf16
//! and accumulate in f32; they change the numerics, so `Auto` never picks them; `Bf16Emulated` gives the same contract on
//! any CPU (rounded copies, f32 backend). [`Precision`] resolves f32 / bf16 to the backend that
//! implements it here. [`bf16`] holds the conversions.
//! [`matmul_with`] picks a backend explicitly (tests, benchmarks). [`matmul_new`] writes a
//! product into fresh memory without zero-filling it first.

use std::mem::MaybeUninit;

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod bf16;
mod precision;
mod tasks;

pub use precision::Precision;

/// Whether an operand is read as stored or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    /// Operand is stored in the shape the product needs.
    No,
    /// Operand is stored transposed (`[k,m]` for the left, `[n,k]` for the right).
    Yes,
}

/// Row and column strides of an operand of logical shape `[rows, cols]`.
fn strides(rows: usize, cols: usize, t: Trans) -> (usize, usize) {
    match t {
        Trans::No => (cols, 1),
        Trans::Yes => (1, rows),
    }
}

/// Where a product goes: `len` floats at `ptr`. Built from an initialised slice, or from
/// uninitialised memory that a product with `accumulate == false` writes completely (every
/// element is stored before any is read, so fresh outputs need no zero fill).
#[derive(Clone, Copy, Debug)]
pub(crate) struct DstPtr {
    pub ptr: *mut f32,
    pub len: usize,
}

impl DstPtr {
    fn of(dst: &mut [f32]) -> Self {
        DstPtr { ptr: dst.as_mut_ptr(), len: dst.len() }
    }

    fn of_uninit(dst: &mut [MaybeUninit<f32>]) -> Self {
        DstPtr { ptr: dst.as_mut_ptr().cast(), len: dst.len() }
    }

    /// Stores zeros into the first `n` floats.
    fn zero(self, n: usize) {
        assert!(n <= self.len, "matmul: dst too short");
        // SAFETY: `ptr` is valid for writes of `len >= n` floats (how a DstPtr is built).
        unsafe { std::ptr::write_bytes(self.ptr, 0, n) };
    }
}

/// Which implementation [`matmul_with`] runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GemmBackend {
    /// The fastest f32 backend on this CPU: [`GemmBackend::GemmCrate`] with AVX-512F,
    /// [`GemmBackend::Avx2`] with AVX2 and FMA only, else [`GemmBackend::GemmCrate`].
    #[default]
    Auto,
    /// The `gemm` crate (portable; AVX-512 or AVX2 kernels chosen by the crate at run time).
    GemmCrate,
    /// Our BLIS-style x86-64 AVX2+FMA kernel (6x16 microkernel); panics where unavailable.
    Avx2,
    /// Intel AMX tiles with **bf16 operands**: every element of `op(a)` and `op(b)` is rounded
    /// to bf16 (nearest even), products are accumulated in f32. Different numerics from the
    /// f32 backends, so `Auto` never picks it; panics where unavailable.
    AmxBf16,
    /// The `AmxBf16` contract with AVX512-BF16 `vdpbf16ps` on zmm registers (AMD Zen 4, Intel
    /// Cooper Lake and later): same packing, a different order of the f32 additions within a
    /// 32-wide k step. `Auto` never picks it; panics where unavailable.
    Avx512Bf16,
    /// The `AmxBf16` contract on any CPU: the operands are rounded to bf16 into scratch copies,
    /// then multiplied by the fastest f32 backend (exact products, f32 sums). Correct, not fast:
    /// what [`Precision::Bf16`] runs where AMX is missing.
    Bf16Emulated,
}

impl GemmBackend {
    /// Every backend, `Auto` first.
    pub const ALL: [GemmBackend; 6] = [
        GemmBackend::Auto,
        GemmBackend::GemmCrate,
        GemmBackend::Avx2,
        GemmBackend::AmxBf16,
        GemmBackend::Avx512Bf16,
        GemmBackend::Bf16Emulated,
    ];

    /// Whether the backend rounds its operands to bf16 (`AmxBf16`, `Avx512Bf16`, `Bf16Emulated`).
    pub fn is_bf16(self) -> bool {
        matches!(self, GemmBackend::AmxBf16 | GemmBackend::Avx512Bf16 | GemmBackend::Bf16Emulated)
    }

    /// Whether this backend can run on this CPU (`Auto` and `GemmCrate` always can).
    pub fn is_available(self) -> bool {
        match self {
            GemmBackend::Auto | GemmBackend::GemmCrate | GemmBackend::Bf16Emulated => true,
            GemmBackend::Avx2 => avx2_available(),
            GemmBackend::AmxBf16 => amx_available(),
            GemmBackend::Avx512Bf16 => avx512_bf16_available(),
        }
    }

    /// The backend's name in benchmarks and on command lines (`auto`, `avx2`, `gemm-crate`,
    /// `amx-bf16`, `avx512-bf16`, `bf16-emulated`).
    pub fn name(self) -> &'static str {
        match self {
            GemmBackend::Auto => "auto",
            GemmBackend::GemmCrate => "gemm-crate",
            GemmBackend::Avx2 => "avx2",
            GemmBackend::AmxBf16 => "amx-bf16",
            GemmBackend::Avx512Bf16 => "avx512-bf16",
            GemmBackend::Bf16Emulated => "bf16-emulated",
        }
    }

    /// The backend called `name` ([`GemmBackend::name`]), if any.
    pub fn from_name(name: &str) -> Option<GemmBackend> {
        GemmBackend::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The concrete backend `self` runs as on this CPU (resolves `Auto`, see its docs). On the
    /// 2-core Xeon (AVX-512, AMX) the `gemm` crate's AVX-512 kernels beat our AVX2 kernel at
    /// every shape measured, the training GEMMs and the small single-thread attention / expert
    /// tiles alike (BENCHMARKS.md); on the AVX2-only EPYC ours is faster.
    pub fn resolve(self) -> GemmBackend {
        match self {
            GemmBackend::Auto if avx512_available() => GemmBackend::GemmCrate,
            GemmBackend::Auto if avx2_available() => GemmBackend::Avx2,
            GemmBackend::Auto => GemmBackend::GemmCrate,
            other => other,
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_available() -> bool {
    avx2::available()
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_available() -> bool {
    false
}

/// What the `gemm` crate's x86-v4 kernels need (pulp's `V4`: AVX-512F on top of AVX2 + FMA).
#[cfg(target_arch = "x86_64")]
fn avx512_available() -> bool {
    is_x86_feature_detected!("avx512f") && avx2_available()
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512_available() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn amx_available() -> bool {
    amx::Microkernel::Amx.available()
}

#[cfg(target_arch = "x86_64")]
fn avx512_bf16_available() -> bool {
    amx::Microkernel::Avx512Bf16.available()
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512_bf16_available() -> bool {
    false
}

#[cfg(not(target_arch = "x86_64"))]
fn amx_available() -> bool {
    false
}

/// `dst[m,n] = op(a)[m,k] · op(b)[k,n]`, or `+=` when `accumulate`, on all threads of the
/// current rayon pool (small products run on one), with the default backend.
///
/// Panics if a slice is shorter than its shape says (a programming error, never user input).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: Trans,
    tb: Trans,
    accumulate: bool,
) {
    let threads = rayon::current_num_threads();
    matmul_with(GemmBackend::Auto, threads, dst, a, b, m, k, n, ta, tb, accumulate);
}

/// [`matmul`] on the calling thread only: for tiles inside an already parallel loop.
#[allow(clippy::too_many_arguments)]
pub fn matmul_single(
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: Trans,
    tb: Trans,
    accumulate: bool,
) {
    matmul_with(GemmBackend::Auto, 1, dst, a, b, m, k, n, ta, tb, accumulate);
}

/// [`matmul`] on a chosen backend and at most `threads` threads of the current rayon pool
/// (`threads <= 1`: the calling thread only, rayon untouched; small products also run on one).
///
/// Every backend's result is bitwise independent of `threads` (each element is summed in the
/// same k order whatever the partition; for the `gemm` crate 0.19 a property of its blocking,
/// which depends on m, n, k and the caches only, checked by a test).
///
/// Panics if a slice is shorter than its shape says, or if `backend` is not available
/// ([`GemmBackend::is_available`]).
#[allow(clippy::too_many_arguments)]
pub fn matmul_with(
    backend: GemmBackend,
    threads: usize,
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: Trans,
    tb: Trans,
    accumulate: bool,
) {
    matmul_dst(backend, threads, DstPtr::of(dst), a, b, m, k, n, ta, tb, accumulate);
}

#[allow(clippy::too_many_arguments)]
fn matmul_dst(
    backend: GemmBackend,
    threads: usize,
    dst: DstPtr,
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: Trans,
    tb: Trans,
    accumulate: bool,
) {
    match backend.resolve() {
        #[cfg(target_arch = "x86_64")]
        GemmBackend::Avx2 => avx2::matmul(dst, a, b, m, k, n, ta, tb, accumulate, threads, avx2::DEFAULT_BLOCKING),
        #[cfg(target_arch = "x86_64")]
        GemmBackend::AmxBf16 => amx::matmul(amx::Microkernel::Amx, dst, a, b, m, k, n, ta, tb, accumulate, threads),
        #[cfg(target_arch = "x86_64")]
        GemmBackend::Avx512Bf16 => {
            amx::matmul(amx::Microkernel::Avx512Bf16, dst, a, b, m, k, n, ta, tb, accumulate, threads)
        }
        GemmBackend::GemmCrate => matmul_gemm_crate(dst, a, b, m, k, n, ta, tb, accumulate, threads),
        GemmBackend::Bf16Emulated => precision::matmul_emulated(dst, a, b, m, k, n, ta, tb, accumulate, threads),
        other => panic!("matmul: backend {other:?} is not available on this CPU"),
    }
}

/// `op(a)[m,k] · op(b)[k,n]` as a new `[m,n]` vector on all threads of the current rayon
/// pool. The product is stored straight into freshly allocated memory (no zero fill first:
/// that serial memset was ~6% of a training step).
#[allow(clippy::too_many_arguments)]
pub fn matmul_new(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, ta: Trans, tb: Trans) -> Vec<f32> {
    matmul_new_with(GemmBackend::Auto, a, b, m, k, n, ta, tb)
}

/// [`matmul_new`] on a chosen backend (e.g. [`Precision::backend`]).
///
/// Panics as [`matmul_with`] does.
#[allow(clippy::too_many_arguments)]
pub fn matmul_new_with(
    backend: GemmBackend,
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: Trans,
    tb: Trans,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(m * n);
    let dst = DstPtr::of_uninit(&mut out.spare_capacity_mut()[..m * n]);
    matmul_dst(backend, rayon::current_num_threads(), dst, a, b, m, k, n, ta, tb, false);
    // SAFETY: a product with `accumulate == false` stores every element of its m x n
    // destination (every backend, including k == 0), so the first m * n floats are initialised.
    unsafe { out.set_len(m * n) };
    out
}

/// The `gemm` crate backend of [`matmul_with`].
#[allow(clippy::too_many_arguments)]
fn matmul_gemm_crate(
    dst: DstPtr,
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: Trans,
    tb: Trans,
    accumulate: bool,
    threads: usize,
) {
    assert!(dst.len >= m * n, "matmul: dst too short");
    assert!(a.len() >= m * k, "matmul: a too short");
    assert!(b.len() >= k * n, "matmul: b too short");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.zero(m * n);
        }
        return;
    }
    let (a_rs, a_cs) = strides(m, k, ta);
    let (b_rs, b_cs) = strides(k, n, tb);
    let (a_rs, a_cs, b_rs, b_cs) = (a_rs as isize, a_cs as isize, b_rs as isize, b_cs as isize);
    // Small products do not pay for thread hand-off.
    let par = if threads > 1 && (m * n * k) >= (1 << 16) {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above guarantee every strided access stays inside the slices and
    // dst; dst does not alias a or b (distinct borrows); with `accumulate == false` gemm never
    // reads dst (read_dst false), so it may be uninitialised.
    unsafe {
        gemm::gemm(
            n,
            m,
            k,
            dst.ptr,
            n as isize,
            1,
            accumulate,
            b.as_ptr(),
            b_rs,
            b_cs,
            a.as_ptr(),
            a_rs,
            a_cs,
            // gemm's alpha scales dst and beta the product (the reverse of BLAS).
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Naive triple loop reference of [`matmul`] accumulating in f64.
#[allow(clippy::too_many_arguments)]
pub fn matmul_naive(
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: Trans,
    tb: Trans,
    accumulate: bool,
) {
    let (a_rs, a_cs) = strides(m, k, ta);
    let (b_rs, b_cs) = strides(k, n, tb);
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                let av = a[i * a_rs + p * a_cs];
                let bv = b[p * b_rs + j * b_cs];
                s += av as f64 * bv as f64;
            }
            let d = &mut dst[i * n + j];
            *d = if accumulate { *d + s as f32 } else { s as f32 };
        }
    }
}

#[cfg(test)]
mod tests;
