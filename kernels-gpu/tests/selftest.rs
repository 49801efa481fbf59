//! The SIMT context self-test kernel (`kernels/selftest.rs`) on every launcher: the simulator
//! always, a CUDA GPU when `MOE_GPU_TESTS=1` (built with `--features cuda`). Both must give the
//! values the `Simt` trait documents (fragment layouts, shuffle edge cases, votes, atomics, math),
//! so the simulator that every other test trusts is checked against the same expectations as the GPU.

use kernels_gpu::kernels::selftest::SELFTEST_WORDS;
use kernels_gpu::launcher::{LaunchDims, Launcher, SimLauncher};
use kernels_gpu::simt::{bf16_from_f32, Dim3};

/// Relative tolerances of the approximate math (`ex2.approx`, `lg2.approx`, `rsqrt.approx` on a GPU).
struct MathTol {
    exp: f32,
    ln: f32,
    rsqrt: f32,
}

fn bf16(x: f32) -> u16 {
    bf16_from_f32(x)
}

fn selftest_matches_the_trait_docs<L: Launcher>(l: &L, tol: MathTol) {
    // Small multiples of 1/4: exact in bf16, products and sums exact in f32.
    let af: Vec<f32> = (0..256).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect();
    let bf: Vec<f32> = (0..128).map(|i| ((i * 3 % 7) as f32 - 3.0) / 4.0).collect();
    let x: Vec<f32> = (0..64).map(|i| 0.25 + i as f32 * 0.37).collect();
    let (a16, b16): (Vec<u16>, Vec<u16>) =
        (af.iter().map(|&v| bf16(v)).collect(), bf.iter().map(|&v| bf16(v)).collect());
    let (mut out, mut acc, mut cnt) = (vec![0u32; 64 * SELFTEST_WORDS], vec![0f32; 1], vec![0u32; 1]);
    let (am, bm, xm) = (l.input(&a16).unwrap(), l.input(&b16).unwrap(), l.input(&x).unwrap());
    let om = l.output(&mut out, false).unwrap();
    let (accm, cntm) = (l.output(&mut acc, true).unwrap(), l.output(&mut cnt, true).unwrap());
    let dims = LaunchDims { grid: Dim3::x(1), block: Dim3::x(64), shared_bytes: 512 };
    let (g_out, g_a, g_b, g_x) = (l.ptr(&om), l.ptr(&am), l.ptr(&bm), l.ptr(&xm));
    // SAFETY: the buffers have the sizes of src/kernels/selftest.rs; the shape is its documented one.
    unsafe { l.simt_selftest(dims, g_out, g_a, g_b, g_x, l.ptr(&accm), l.ptr(&cntm)) }.unwrap();
    l.read_back(&om, &mut out).unwrap();
    l.read_back(&accm, &mut acc).unwrap();
    l.read_back(&cntm, &mut cnt).unwrap();
    assert_eq!(acc, vec![64.0]);
    assert_eq!(cnt, vec![64]);

    // D = A (16x16) * B (16x8), B[k][n] = bf[n * 16 + k].
    let d = |r: usize, c: usize| (0..16).map(|k| af[r * 16 + k] * bf[c * 16 + k]).sum::<f32>();
    let mut olds = Vec::new();
    for t in 0..64u32 {
        let w = &out[t as usize * SELFTEST_WORDS..][..SELFTEST_WORDS];
        let (lane, warp) = (t % 32, t / 32);
        assert_eq!(w[0], lane, "lane of {t}");
        assert_eq!(w[1], warp, "warp of {t}");
        assert_eq!(w[2], warp * 32 + (31 - lane), "shfl_idx of {t}");
        assert_eq!(w[3], t ^ 5, "shfl_xor of {t}");
        assert_eq!(w[4], if lane + 3 < 32 { t + 3 } else { t }, "shfl_down of {t}");
        assert_eq!(w[5], if lane >= 3 { t - 3 } else { t }, "shfl_up of {t}");
        assert_eq!(w[6], 1, "vote_any of {t}");
        assert_eq!(w[7], 0, "vote_all of {t}");
        assert_eq!(w[8], (0..32).filter(|l| l % 3 == 0).fold(0u32, |m, l| m | 1 << l), "ballot of {t}");
        assert_eq!(f32::from_bits(w[9]), 2016.0, "block_sum of {t}");
        let (g, q) = ((lane >> 2) as usize, (lane % 4) as usize);
        for i in 0..4 {
            let want = d(g + 8 * (i >> 1), 2 * q + (i & 1));
            assert_eq!(f32::from_bits(w[10 + i]), want, "mma d[{i}] of {t}");
            assert_eq!(f32::from_bits(w[14 + i]), want, "ldmatrix + mma d[{i}] of {t}");
        }
        let v = x[t as usize];
        let close = |got: u32, want: f32, rel: f32, what: &str| {
            let got = f32::from_bits(got);
            assert!((got - want).abs() <= rel * want.abs() + 1e-6, "{what}({v}) of {t}: {got} vs {want}");
        };
        close(w[18], v.exp(), tol.exp, "exp");
        close(w[19], v.ln(), tol.ln, "ln");
        close(w[20], v.sqrt(), 0.0, "sqrt");
        close(w[21], 1.0 / v.sqrt(), tol.rsqrt, "rsqrt");
        close(w[22], v.mul_add(v, 1.0), 0.0, "fma");
        olds.push(w[23]);
        assert_eq!(w[24], 512, "dyn_shared_bytes of {t}");
        assert_eq!(w[25], 64 * 1000 + 100, "block_dim/grid_dim/block_idx of {t}");
    }
    olds.sort_unstable();
    assert_eq!(olds, (0..64).collect::<Vec<u32>>(), "atomic_add_u32 returns each old value once");
}

#[test]
fn simt_selftest_matches_the_trait_docs_in_the_simulator() {
    // The simulator's math is libm's: exact up to f32 rounding.
    selftest_matches_the_trait_docs(&SimLauncher, MathTol { exp: 2e-7, ln: 2e-7, rsqrt: 2e-7 });
}

#[cfg(feature = "cuda")]
#[test]
fn simt_selftest_matches_the_trait_docs_on_the_gpu() {
    if !std::env::var("MOE_GPU_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("simt_selftest_matches_the_trait_docs_on_the_gpu: skipped: MOE_GPU_TESTS not set");
        return;
    }
    let gpu = kernels_gpu::host::Gpu::new(0).expect("MOE_GPU_TESTS=1 but no usable GPU");
    selftest_matches_the_trait_docs(&gpu, MathTol { exp: 4e-6, ln: 2e-6, rsqrt: 2e-6 });
}
