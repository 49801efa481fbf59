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
//! bf16: `AmxBf16` (`amx`, Intel AMX tiles) rounds the operands to bf16 and accumulates in f32;
//! it changes the numerics, so `Auto` never picks it. [`bf16`] holds the conversions.
//! [`matmul_with`] picks a backend explicitly (tests, benchmarks). [`matmul_new`] writes a
//! product into fresh memory without zero-filling it first.

use std::mem::MaybeUninit;

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod bf16;
mod tasks;

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
}

impl GemmBackend {
    /// Whether this backend can run on this CPU (`Auto` and `GemmCrate` always can).
    pub fn is_available(self) -> bool {
        match self {
            GemmBackend::Auto | GemmBackend::GemmCrate => true,
            GemmBackend::Avx2 => avx2_available(),
            GemmBackend::AmxBf16 => amx_available(),
        }
    }

    /// The backend's name in benchmarks and on command lines (`auto`, `avx2`, `gemm-crate`,
    /// `amx-bf16`).
    pub fn name(self) -> &'static str {
        match self {
            GemmBackend::Auto => "auto",
            GemmBackend::GemmCrate => "gemm-crate",
            GemmBackend::Avx2 => "avx2",
            GemmBackend::AmxBf16 => "amx-bf16",
        }
    }

    /// The backend called `name` ([`GemmBackend::name`]), if any.
    pub fn from_name(name: &str) -> Option<GemmBackend> {
        [GemmBackend::Auto, GemmBackend::GemmCrate, GemmBackend::Avx2, GemmBackend::AmxBf16]
            .into_iter()
            .find(|b| b.name() == name)
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
    amx::available()
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
        GemmBackend::AmxBf16 => amx::matmul(dst, a, b, m, k, n, ta, tb, accumulate, threads),
        GemmBackend::GemmCrate => matmul_gemm_crate(dst, a, b, m, k, n, ta, tb, accumulate, threads),
        other => panic!("matmul: backend {other:?} is not available on this CPU"),
    }
}

/// `op(a)[m,k] · op(b)[k,n]` as a new `[m,n]` vector on all threads of the current rayon
/// pool. The product is stored straight into freshly allocated memory (no zero fill first:
/// that serial memset was ~6% of a training step).
#[allow(clippy::too_many_arguments)]
pub fn matmul_new(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, ta: Trans, tb: Trans) -> Vec<f32> {
    let mut out = Vec::with_capacity(m * n);
    let dst = DstPtr::of_uninit(&mut out.spare_capacity_mut()[..m * n]);
    matmul_dst(GemmBackend::Auto, rayon::current_num_threads(), dst, a, b, m, k, n, ta, tb, false);
    // SAFETY: a product with `accumulate == false` stores every element of its m x n
    // destination (both backends, including k == 0), so the first m * n floats are initialised.
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
mod tests {
    use super::*;
    use crate::check::{assert_close, rand_vec};

    /// Awkward sizes: nothing a multiple of the 6x16 tile, k=0, several k blocks (257, 600), a
    /// product large enough to be threaded with column-split tasks (20x300x500).
    const SIZES: [(usize, usize, usize); 9] = [
        (1, 1, 1),
        (7, 13, 5),
        (33, 65, 17),
        (129, 31, 70),
        (300, 257, 130),
        (1000, 3, 2),
        (64, 0, 3),
        (5, 600, 40),
        (20, 300, 500),
    ];
    const TRANS: [Trans; 2] = [Trans::No, Trans::Yes];

    /// The concrete backends this CPU can run.
    /// The concrete f32 backends this CPU can run (the bf16 `AmxBf16` has its own tests in
    /// amx/tests.rs); says which are skipped.
    fn backends() -> Vec<GemmBackend> {
        [GemmBackend::GemmCrate, GemmBackend::Avx2]
            .into_iter()
            .filter(|b| {
                let ok = b.is_available();
                if !ok {
                    eprintln!("skipping backend {b:?}: not available on this CPU");
                }
                ok
            })
            .collect()
    }

    /// Runs `f` inside a rayon pool of `threads` threads.
    fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("rayon pool").install(f)
    }

    /// `|got - want| <= tol + tol * |want|` with `tol = 1e-5 * max(1, sqrt(k))`: f32 rounding of
    /// a k-term sum of products of values in [-1, 1) grows like sqrt(k) ulps.
    fn check(got: &[f32], want: &[f32], k: usize, what: &str) {
        let tol = 1e-5 * (k as f64).sqrt().max(1.0);
        assert_close(got, want, tol, tol, what);
    }

    #[test]
    fn every_backend_matches_naive_on_awkward_sizes_transposes_threads() {
        let backends = backends();
        for (m, k, n) in SIZES {
            for ta in TRANS {
                for tb in TRANS {
                    for acc in [false, true] {
                        let a = rand_vec(m * k, 1);
                        let b = rand_vec(k * n, 2);
                        let init = rand_vec(m * n, 3);
                        let mut want = init.clone();
                        matmul_naive(&mut want, &a, &b, m, k, n, ta, tb, acc);
                        for &be in &backends {
                            for threads in [1, 2] {
                                let mut got = init.clone();
                                in_pool(threads, || matmul_with(be, threads, &mut got, &a, &b, m, k, n, ta, tb, acc));
                                let what = format!("{be:?} t={threads} {m}x{k}x{n} {ta:?}{tb:?} acc={acc}");
                                check(&got, &want, k, &what);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_and_matmul_single_match_naive() {
        for (m, k, n) in [(33, 65, 17), (129, 300, 70)] {
            for ta in TRANS {
                for tb in TRANS {
                    let a = rand_vec(m * k, 4);
                    let b = rand_vec(k * n, 5);
                    let init = rand_vec(m * n, 6);
                    let mut want = init.clone();
                    matmul_naive(&mut want, &a, &b, m, k, n, ta, tb, true);
                    let mut fast = init.clone();
                    in_pool(2, || matmul(&mut fast, &a, &b, m, k, n, ta, tb, true));
                    check(&fast, &want, k, &format!("matmul {m}x{k}x{n} {ta:?}{tb:?}"));
                    let mut single = init.clone();
                    matmul_single(&mut single, &a, &b, m, k, n, ta, tb, true);
                    check(&single, &want, k, &format!("single {m}x{k}x{n} {ta:?}{tb:?}"));
                }
            }
        }
    }

    /// `matmul_new` writes fresh memory without zero fill: every element must still equal the
    /// product, including the k == 0 case (all zeros) and a shape with edge tiles and k blocks.
    #[test]
    fn matmul_new_matches_naive() {
        for (m, k, n) in [(33, 65, 17), (70, 600, 45), (5, 0, 9)] {
            for ta in TRANS {
                for tb in TRANS {
                    let a = rand_vec(m * k, 7);
                    let b = rand_vec(k * n, 8);
                    let mut want = vec![0f32; m * n];
                    matmul_naive(&mut want, &a, &b, m, k, n, ta, tb, false);
                    let got = in_pool(2, || matmul_new(&a, &b, m, k, n, ta, tb));
                    check(&got, &want, k.max(1), &format!("matmul_new {m}x{k}x{n} {ta:?}{tb:?}"));
                }
            }
        }
    }

    #[test]
    fn auto_resolves_to_the_fastest_f32_backend_of_this_cpu() {
        let want = if avx512_available() {
            GemmBackend::GemmCrate
        } else if GemmBackend::Avx2.is_available() {
            GemmBackend::Avx2
        } else {
            GemmBackend::GemmCrate
        };
        assert_eq!(GemmBackend::Auto.resolve(), want);
        assert_eq!(GemmBackend::GemmCrate.resolve(), GemmBackend::GemmCrate);
        assert_eq!(GemmBackend::Avx2.resolve(), GemmBackend::Avx2);
        assert_eq!(GemmBackend::AmxBf16.resolve(), GemmBackend::AmxBf16);
        assert!(GemmBackend::Auto.is_available() && GemmBackend::GemmCrate.is_available());
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(
                GemmBackend::Avx2.is_available(),
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
            );
            let avx512 = is_x86_feature_detected!("avx512f") && GemmBackend::Avx2.is_available();
            eprintln!("this CPU: AVX2+FMA {}, AVX-512F {avx512}: Auto = {:?}", GemmBackend::Avx2.is_available(), want);
        }
    }

    #[test]
    fn backend_names_round_trip() {
        for be in [GemmBackend::Auto, GemmBackend::GemmCrate, GemmBackend::Avx2, GemmBackend::AmxBf16] {
            assert_eq!(GemmBackend::from_name(be.name()), Some(be));
        }
        assert_eq!(GemmBackend::from_name("avx512"), None);
    }

    /// Every f32 backend sums each element in the same order whatever the thread count and
    /// partition (the AVX2 driver fixes kc from k alone; the `gemm` crate 0.19 derives its
    /// blocking from m, n, k and the cache sizes only, and its gemv paths are single-threaded),
    /// so results must agree bit for bit: resumed training runs rely on it. Shapes include the
    /// gemm crate's gemv (one row / column) and small-block paths.
    #[test]
    fn f32_backends_are_bitwise_independent_of_thread_count() {
        let shapes = [(300, 600, 200), (7, 700, 900), (1000, 40, 33), (40, 1100, 1000), (1, 4096, 300), (500, 3000, 1)];
        for be in backends() {
            for (m, k, n) in shapes {
                for ta in TRANS {
                    for tb in TRANS {
                        for acc in [false, true] {
                            let a = rand_vec(m * k, 7);
                            let b = rand_vec(k * n, 8);
                            let init = rand_vec(m * n, 9);
                            let run = |threads: usize| {
                                let mut d = init.clone();
                                in_pool(threads, || matmul_with(be, threads, &mut d, &a, &b, m, k, n, ta, tb, acc));
                                d
                            };
                            let one = run(1);
                            for threads in [2, 3] {
                                let many = run(threads);
                                let same = one.iter().zip(&many).all(|(x, y)| x.to_bits() == y.to_bits());
                                assert!(same, "{be:?} {m}x{k}x{n} {ta:?}{tb:?} acc={acc}: t={threads} differs");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Tiny cache blocks so every loop of the AVX2 driver (several jc, pc, ic blocks and parts,
    /// edge tiles, the k tail of the transposing packs, shared and per-task packed A, threaded
    /// or not) runs many times on small sizes.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_small_blocking_covers_every_loop() {
        if !GemmBackend::Avx2.is_available() {
            eprintln!("skipping: the AVX2 backend needs AVX2 and FMA, which this CPU lacks");
            return;
        }
        for (m, k, n) in [(50, 70, 90), (6, 16, 16), (1, 9, 100), (61, 8, 3)] {
            for ta in TRANS {
                for tb in TRANS {
                    for acc in [false, true] {
                        let a = rand_vec(m * k, 10);
                        let b = rand_vec(k * n, 11);
                        let init = rand_vec(m * n, 12);
                        let mut want = init.clone();
                        matmul_naive(&mut want, &a, &b, m, k, n, ta, tb, acc);
                        // a_max 0: A packed per task; else shared. par_min 0: always threaded.
                        for (threads, a_max) in [(1, 0), (1, 1 << 20), (2, 0), (2, 1 << 20)] {
                            let blk = avx2::Blocking { mc: 13, kc: 20, nc: 40, b_max: 3000, a_max, par_min: 0 };
                            let mut got = init.clone();
                            in_pool(threads, || {
                                avx2::matmul(DstPtr::of(&mut got), &a, &b, m, k, n, ta, tb, acc, threads, blk)
                            });
                            let what = format!("t={threads} a_max={a_max} {m}x{k}x{n} {ta:?}{tb:?} acc={acc}");
                            check(&got, &want, k, &what);
                        }
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "dst too short")]
    fn short_dst_panics() {
        let backend = GemmBackend::Auto;
        let mut d = vec![0.0; 5];
        matmul_with(backend, 1, &mut d, &[0.0; 6], &[0.0; 9], 2, 3, 3, Trans::No, Trans::No, false);
    }
}
