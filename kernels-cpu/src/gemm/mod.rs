//! Matrix multiply with every transpose the backward passes need, on two backends.
//!
//! `matmul(dst, a, b, m, k, n, Trans, Trans, acc)` computes `dst[m,n] (+)= op(a)[m,k] · op(b)[k,n]`
//! where `op(a)` reads `a` as `[m,k]` (no transpose) or as the transpose of a stored `[k,m]`.
//! Transposes cost nothing extra: they are strides handed to the packing routines.
//!
//! Backends ([`GemmBackend`]): our BLIS-style AVX2+FMA kernel (`avx2`, x86-64 only, the default
//! where the CPU supports it) and the portable `gemm` crate (the fallback). [`matmul_with`]
//! picks one explicitly (tests, benchmarks).

#[cfg(target_arch = "x86_64")]
mod avx2;
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

/// Which implementation [`matmul_with`] runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GemmBackend {
    /// [`GemmBackend::Avx2`] when the CPU has AVX2 and FMA, else [`GemmBackend::GemmCrate`].
    #[default]
    Auto,
    /// The `gemm` crate (portable).
    GemmCrate,
    /// Our BLIS-style x86-64 AVX2+FMA kernel (6x16 microkernel); panics where unavailable.
    Avx2,
}

impl GemmBackend {
    /// Whether this backend can run on this CPU (`Auto` and `GemmCrate` always can).
    pub fn is_available(self) -> bool {
        match self {
            GemmBackend::Auto | GemmBackend::GemmCrate => true,
            GemmBackend::Avx2 => avx2_available(),
        }
    }

    /// The concrete backend `self` runs as on this CPU (resolves `Auto`).
    pub fn resolve(self) -> GemmBackend {
        match self {
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
/// The `Avx2` backend's result is bitwise independent of `threads` (each element is summed in
/// the same k order whatever the partition); the `gemm` crate gives no such promise.
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
    match backend.resolve() {
        #[cfg(target_arch = "x86_64")]
        GemmBackend::Avx2 => avx2::matmul(dst, a, b, m, k, n, ta, tb, accumulate, threads, avx2::DEFAULT_BLOCKING),
        GemmBackend::GemmCrate => matmul_gemm_crate(dst, a, b, m, k, n, ta, tb, accumulate, threads),
        other => panic!("matmul: backend {other:?} is not available on this CPU"),
    }
}

/// The `gemm` crate backend of [`matmul_with`].
#[allow(clippy::too_many_arguments)]
fn matmul_gemm_crate(
    dst: &mut [f32],
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
    assert!(dst.len() >= m * n, "matmul: dst too short");
    assert!(a.len() >= m * k, "matmul: a too short");
    assert!(b.len() >= k * n, "matmul: b too short");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
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
    // SAFETY: the asserts above guarantee every strided access stays inside the slices;
    // dst does not alias a or b (distinct borrows).
    unsafe {
        gemm::gemm(
            n,
            m,
            k,
            dst.as_mut_ptr(),
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

    #[test]
    fn matches_naive_on_awkward_sizes_and_all_transposes() {
        for &(m, k, n) in &[(1, 1, 1), (7, 13, 5), (33, 65, 17), (129, 31, 70), (64, 0, 3)] {
            for ta in [Trans::No, Trans::Yes] {
                for tb in [Trans::No, Trans::Yes] {
                    for acc in [false, true] {
                        let a = rand_vec(m * k, 1);
                        let b = rand_vec(k * n, 2);
                        let init = rand_vec(m * n, 3);
                        let mut fast = init.clone();
                        let mut slow = init.clone();
                        matmul(&mut fast, &a, &b, m, k, n, ta, tb, acc);
                        let mut single = init.clone();
                        matmul_single(&mut single, &a, &b, m, k, n, ta, tb, acc);
                        assert_eq!(single, fast, "single-threaded differs");
                        matmul_naive(&mut slow, &a, &b, m, k, n, ta, tb, acc);
                        assert_close(&fast, &slow, 1e-5, 1e-5, &format!("gemm {m}x{k}x{n} {ta:?}{tb:?} acc={acc}"));
                    }
                }
            }
        }
    }
}
