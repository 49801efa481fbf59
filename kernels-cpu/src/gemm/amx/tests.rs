//! The packed-tile bf16 backends (`AmxBf16`, `Avx512Bf16`) against the naive f64 product of the
//! bf16-rounded operands. Each test runs every one of them this CPU has and says which it skips:
//! AMX runs on the Intel Xeon machines (4th gen or later), AVX512-BF16 on those and on the AMD
//! EPYC Zen 4 machines; the AVX2-only machines skip both.

use super::super::bf16::round_bf16_slice;
use super::super::{matmul_naive, matmul_with, GemmBackend, Trans};
use crate::check::{assert_close, rand_vec};

const TRANS: [Trans; 2] = [Trans::No, Trans::Yes];

/// Nothing a multiple of 16 or 32 (tiles), k = 0, k below one step, several k blocks (k > 256:
/// 300, 600, 777), one row or column, products big enough to be threaded with several row and
/// column blocks (200x300x500, 300x257x290).
const SIZES: [(usize, usize, usize); 12] = [
    (1, 1, 1),
    (7, 13, 5),
    (16, 32, 16),
    (33, 65, 17),
    (129, 31, 70),
    (300, 257, 290),
    (1000, 3, 2),
    (64, 0, 3),
    (5, 600, 40),
    (200, 300, 500),
    (1, 777, 33),
    (47, 64, 1),
];

/// The tile backends this CPU runs; says which are skipped.
fn backends() -> Vec<GemmBackend> {
    [GemmBackend::AmxBf16, GemmBackend::Avx512Bf16]
        .into_iter()
        .filter(|b| {
            let ok = b.is_available();
            if !ok {
                eprintln!("skipping backend {}: not available on this CPU", b.name());
            }
            ok
        })
        .collect()
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("rayon pool").install(f)
}

/// Values in [-2, 2] on a grid of 1/8: exact in bf16, every product exact, every partial sum a
/// multiple of 1/64 far below 2^24/64, so the product is exact in f32 whatever the order.
fn grid_vec(len: usize, seed: u64) -> Vec<f32> {
    rand_vec(len, seed).into_iter().map(|x| (x * 16.0).round() / 8.0).collect()
}

#[allow(clippy::too_many_arguments)]
fn tiled(
    be: GemmBackend,
    threads: usize,
    dst: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: Trans,
    tb: Trans,
    acc: bool,
) {
    in_pool(threads, || matmul_with(be, threads, dst, a, b, m, k, n, ta, tb, acc));
}

/// Exact inputs: the tile layouts, padding, transposes, accumulate and edges must give the
/// naive result bit for bit.
#[test]
fn tiles_are_exact_on_grid_values_all_sizes_and_transposes() {
    for be in backends() {
        for (m, k, n) in SIZES {
            for ta in TRANS {
                for tb in TRANS {
                    for acc in [false, true] {
                        let (a, b, init) = (grid_vec(m * k, 1), grid_vec(k * n, 2), grid_vec(m * n, 3));
                        let mut want = init.clone();
                        matmul_naive(&mut want, &a, &b, m, k, n, ta, tb, acc);
                        for threads in [1, 2] {
                            let mut got = init.clone();
                            tiled(be, threads, &mut got, &a, &b, m, k, n, ta, tb, acc);
                            let what = format!("{} t={threads} {m}x{k}x{n} {ta:?}{tb:?} acc={acc}", be.name());
                            assert_close(&got, &want, 0.0, 0.0, &what);
                        }
                    }
                }
            }
        }
    }
}

/// Random f32 inputs: equal to the f64 product of the bf16-rounded operands within f32
/// summation rounding, `tol = 1e-5 * max(1, sqrt(k))` abs + rel (values in [-1, 1)).
#[test]
fn tiles_match_naive_on_bf16_rounded_inputs() {
    for be in backends() {
        for (m, k, n) in SIZES {
            for ta in TRANS {
                for tb in TRANS {
                    for acc in [false, true] {
                        let (a, b, init) = (rand_vec(m * k, 4), rand_vec(k * n, 5), rand_vec(m * n, 6));
                        let (mut ar, mut br) = (a.clone(), b.clone());
                        round_bf16_slice(&mut ar);
                        round_bf16_slice(&mut br);
                        let mut want = init.clone();
                        matmul_naive(&mut want, &ar, &br, m, k, n, ta, tb, acc);
                        let mut got = init.clone();
                        tiled(be, 2, &mut got, &a, &b, m, k, n, ta, tb, acc);
                        let tol = 1e-5 * (k as f64).sqrt().max(1.0);
                        assert_close(
                            &got,
                            &want,
                            tol,
                            tol,
                            &format!("{} {m}x{k}x{n} {ta:?}{tb:?} acc={acc}", be.name()),
                        );
                    }
                }
            }
        }
    }
}

/// The operands really are rounded: against the unrounded f32 product the error is of bf16
/// size (up to 2^-8 relative per operand), far above the f32 tolerance above, but within the
/// bound `|err| <= (2 * 2^-8 + 2^-16) * sum |a||b|` (plus f32 summation).
#[test]
fn tiles_round_operands_to_bf16() {
    for be in backends() {
        let (m, k, n) = (64, 256, 48);
        let (a, b) = (rand_vec(m * k, 7), rand_vec(k * n, 8));
        let mut exact = vec![0f32; m * n];
        matmul_naive(&mut exact, &a, &b, m, k, n, Trans::No, Trans::No, false);
        let (aa, ba): (Vec<f32>, Vec<f32>) = (a.iter().map(|x| x.abs()).collect(), b.iter().map(|x| x.abs()).collect());
        let mut abs_sum = vec![0f32; m * n];
        matmul_naive(&mut abs_sum, &aa, &ba, m, k, n, Trans::No, Trans::No, false);
        let mut got = vec![0f32; m * n];
        tiled(be, 1, &mut got, &a, &b, m, k, n, Trans::No, Trans::No, false);
        let max_err = got.iter().zip(&exact).map(|(g, e)| (g - e).abs()).fold(0f32, f32::max);
        assert!(max_err > 1e-3, "max error {max_err} vs the f32 product: operands were not rounded to bf16");
        for ((g, e), s) in got.iter().zip(&exact).zip(&abs_sum) {
            let bound = (2.0 / 256.0 + 1.0 / 65536.0) * s + 1e-4;
            assert!((g - e).abs() <= bound, "error {} above the bf16 bound {bound}", (g - e).abs());
        }
    }
}

/// Every element is summed over all of k by one task in a fixed order: results must agree bit
/// for bit for every thread count.
#[test]
fn tiles_are_bitwise_independent_of_thread_count() {
    for be in backends() {
        for (m, k, n) in [(300, 600, 200), (7, 700, 900), (1000, 40, 33), (130, 1100, 520)] {
            for ta in TRANS {
                for tb in TRANS {
                    let (a, b, init) = (rand_vec(m * k, 9), rand_vec(k * n, 10), rand_vec(m * n, 11));
                    let run = |threads: usize| {
                        let mut d = init.clone();
                        tiled(be, threads, &mut d, &a, &b, m, k, n, ta, tb, true);
                        d
                    };
                    let one = run(1);
                    for threads in [2, 3] {
                        let many = run(threads);
                        let same = one.iter().zip(&many).all(|(x, y)| x.to_bits() == y.to_bits());
                        assert!(same, "{} {m}x{k}x{n} {ta:?}{tb:?}: t={threads} differs from t=1", be.name());
                    }
                }
            }
        }
    }
}

/// `available()` never claims AMX the kernel does not list (Linux /proc/cpuinfo flags).
#[cfg(target_os = "linux")]
#[test]
fn amx_availability_agrees_with_cpuinfo() {
    let info = std::fs::read_to_string("/proc/cpuinfo").expect("read /proc/cpuinfo");
    let flags = info.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    let listed = flags.split_whitespace().any(|f| f == "amx_bf16") && flags.split_whitespace().any(|f| f == "amx_tile");
    let available = GemmBackend::AmxBf16.is_available();
    assert!(!available || listed, "AMX reported available but /proc/cpuinfo lists no amx_bf16/amx_tile");
    if listed && !available {
        eprintln!("note: /proc/cpuinfo lists AMX but the tile permission was refused (old kernel?)");
    }
    assert_ne!(GemmBackend::Auto.resolve(), GemmBackend::AmxBf16, "Auto must never pick bf16");
}
