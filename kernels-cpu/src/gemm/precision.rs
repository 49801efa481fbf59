//! Operand precision of the products a caller runs: f32, or bf16 operands with f32 accumulation
//! (mixed-precision training: the master weights, gradients and optimiser state stay f32; only
//! the GEMM operands are rounded).
//!
//! [`Precision::backend`] resolves a precision to the GEMM backend that implements it on this
//! CPU, once, so a backend layer can store it and pass it to [`super::matmul_with`] /
//! [`super::matmul_new_with`] on every product: f32 -> `Auto` (the fastest f32 backend); bf16 ->
//! `AmxBf16` where the CPU has AMX, else `Avx512Bf16` where it has AVX512-BF16, else
//! `Bf16Emulated` (the operands rounded to bf16 into scratch
//! copies, then the f32 backend: the same contract at f32 speed, so bf16 runs are reproducible on
//! every machine up to f32 summation order).

use super::bf16::round_bf16;
use super::{matmul_dst, DstPtr, GemmBackend, Trans};
use rayon::prelude::*;

/// What the operands of a product are rounded to before they are multiplied (the products are
/// always accumulated in f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 operands.
    #[default]
    F32,
    /// Operands rounded to bfloat16 (nearest even), f32 accumulation.
    Bf16,
}

impl Precision {
    /// Every precision, in the order of [`Precision::name`]s a user may type.
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::Bf16];

    /// The name on command lines and in configs: `f32`, `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The precision called `name` ([`Precision::name`]), if any.
    pub fn from_name(name: &str) -> Option<Precision> {
        Precision::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The backend that runs products at this precision on this CPU (concrete, never `Auto`).
    pub fn backend(self) -> GemmBackend {
        match self {
            Precision::F32 => GemmBackend::Auto.resolve(),
            Precision::Bf16 if GemmBackend::AmxBf16.is_available() => GemmBackend::AmxBf16,
            Precision::Bf16 if GemmBackend::Avx512Bf16.is_available() => GemmBackend::Avx512Bf16,
            Precision::Bf16 => GemmBackend::Bf16Emulated,
        }
    }

    /// Whether this CPU runs the precision natively (bf16: AMX tiles or AVX512-BF16); `false` means emulated
    /// at f32 speed, which is correct but brings no speed-up.
    pub fn is_native(self) -> bool {
        self.backend() != GemmBackend::Bf16Emulated
    }
}

/// Elements rounded per rayon job.
const ROUND_CHUNK: usize = 1 << 14;

/// `src` rounded to bf16 values (as f32), on the current rayon pool when `threads > 1`.
fn rounded(src: &[f32], threads: usize) -> Vec<f32> {
    if threads > 1 && src.len() > ROUND_CHUNK {
        src.par_chunks(ROUND_CHUNK).flat_map_iter(|c| c.iter().map(|&x| round_bf16(x))).collect()
    } else {
        src.iter().map(|&x| round_bf16(x)).collect()
    }
}

/// The `Bf16Emulated` backend: `dst (+)= bf16(op(a)) · bf16(op(b))` by rounding copies of the
/// operands and running the fastest f32 backend on them. bf16 x bf16 products are exact in f32,
/// so this is the AMX contract up to f32 summation order.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_emulated(
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
    assert!(a.len() >= m * k, "matmul: a too short");
    assert!(b.len() >= k * n, "matmul: b too short");
    let (ar, br) = (rounded(&a[..m * k], threads), rounded(&b[..k * n], threads));
    matmul_dst(GemmBackend::Auto, threads, dst, &ar, &br, m, k, n, ta, tb, accumulate);
}

#[cfg(test)]
mod tests {
    use super::super::bf16::round_bf16_slice;
    use super::super::{matmul_naive, matmul_new_with, matmul_with};
    use super::*;
    use crate::check::{assert_close, rand_vec};

    #[test]
    fn precision_names_round_trip_and_unknown_names_are_none() {
        for p in Precision::ALL {
            assert_eq!(Precision::from_name(p.name()), Some(p));
        }
        assert_eq!(Precision::from_name("fp16"), None);
        assert_eq!(Precision::from_name("BF16"), None);
        assert_eq!(Precision::default(), Precision::F32);
    }

    #[test]
    fn precision_resolves_to_a_concrete_available_backend() {
        assert_eq!(Precision::F32.backend(), GemmBackend::Auto.resolve());
        let bf16 = Precision::Bf16.backend();
        let want = if GemmBackend::AmxBf16.is_available() {
            GemmBackend::AmxBf16
        } else if GemmBackend::Avx512Bf16.is_available() {
            GemmBackend::Avx512Bf16
        } else {
            GemmBackend::Bf16Emulated
        };
        assert_eq!(bf16, want);
        assert!(bf16.is_available() && Precision::F32.backend().is_available());
        assert!(Precision::F32.is_native());
        eprintln!("bf16 products on this CPU: {} (native: {})", bf16.name(), Precision::Bf16.is_native());
    }

    /// Emulated bf16 equals the f64 product of the rounded operands within f32 summation
    /// rounding (`1e-5 * sqrt(k)`), on awkward sizes, every transpose, both dst modes, 1-2 threads.
    #[test]
    fn emulated_bf16_matches_naive_on_rounded_operands() {
        for (m, k, n) in [(1, 1, 1), (7, 13, 5), (33, 65, 17), (129, 300, 70), (64, 0, 3), (200, 257, 130)] {
            for ta in [Trans::No, Trans::Yes] {
                for tb in [Trans::No, Trans::Yes] {
                    for acc in [false, true] {
                        let (a, b, init) = (rand_vec(m * k, 1), rand_vec(k * n, 2), rand_vec(m * n, 3));
                        let (mut ar, mut br) = (a.clone(), b.clone());
                        round_bf16_slice(&mut ar);
                        round_bf16_slice(&mut br);
                        let mut want = init.clone();
                        matmul_naive(&mut want, &ar, &br, m, k, n, ta, tb, acc);
                        for threads in [1, 2] {
                            let mut got = init.clone();
                            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
                            pool.install(|| {
                                matmul_with(GemmBackend::Bf16Emulated, threads, &mut got, &a, &b, m, k, n, ta, tb, acc)
                            });
                            let tol = 1e-5 * (k as f64).sqrt().max(1.0);
                            assert_close(
                                &got,
                                &want,
                                tol,
                                tol,
                                &format!("t={threads} {m}x{k}x{n} {ta:?}{tb:?} acc={acc}"),
                            );
                        }
                    }
                }
            }
        }
    }

    /// `matmul_new_with` at each precision's backend writes the same product as `matmul_with`
    /// into fresh memory, bit for bit.
    #[test]
    fn matmul_new_with_matches_matmul_with_for_every_precision() {
        let (m, k, n) = (70, 300, 45);
        let (a, b) = (rand_vec(m * k, 4), rand_vec(k * n, 5));
        for p in Precision::ALL {
            let be = p.backend();
            for ta in [Trans::No, Trans::Yes] {
                let fresh = matmul_new_with(be, &a, &b, m, k, n, ta, Trans::Yes);
                let mut want = vec![f32::NAN; m * n];
                matmul_with(be, rayon::current_num_threads(), &mut want, &a, &b, m, k, n, ta, Trans::Yes, false);
                let same = fresh.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{p:?} ({be:?}) {ta:?}: matmul_new_with differs from matmul_with");
            }
        }
    }
}
