//! Tests of the f32 backends against the naive reference (the bf16 ones: amx/tests.rs,
//! precision.rs).

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
    assert!(!GemmBackend::Auto.resolve().is_bf16(), "Auto must never round to bf16");
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
    for be in GemmBackend::ALL {
        assert_eq!(GemmBackend::from_name(be.name()), Some(be));
        assert_eq!(
            be.is_bf16(),
            matches!(be, GemmBackend::AmxBf16 | GemmBackend::Avx512Bf16 | GemmBackend::Bf16Emulated)
        );
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
