//! Tests of the cudarc layer. Without a GPU only the "no driver" path runs; the launches run when
//! `MOE_GPU_TESTS=1` (and print "skipped: MOE_GPU_TESTS not set" otherwise).

use super::{Gpu, GpuError};
use crate::launcher::{LaunchDims, Launcher};
use crate::simt::Dim3;
use cudarc::driver::sys;

/// Words written per thread by `medmoe_simt_selftest` (as in `src/kernels/selftest.rs`).
const SELFTEST_WORDS: usize = 26;

fn gpu_tests_enabled(test: &str) -> bool {
    let on = std::env::var("MOE_GPU_TESTS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("{test}: skipped: MOE_GPU_TESTS not set");
    }
    on
}

#[test]
fn no_driver_is_a_typed_error_not_a_panic() {
    // SAFETY: only tries to dlopen libcuda.
    let present = unsafe { sys::is_culib_present() };
    match Gpu::new(0) {
        Err(GpuError::NoDriver) => assert!(!present, "NoDriver although libcuda loads"),
        Err(e) => assert!(present, "no libcuda but got {e}"),
        Ok(_) => assert!(present),
    }
}

fn bf16(x: f32) -> u16 {
    crate::simt::bf16_from_f32(x)
}

#[test]
fn simt_selftest_matches_the_trait_docs_on_the_gpu() {
    if !gpu_tests_enabled("simt_selftest_matches_the_trait_docs_on_the_gpu") {
        return;
    }
    let gpu = Gpu::new(0).expect("MOE_GPU_TESTS=1 but no usable GPU");
    // Small multiples of 1/4: exact in bf16, products and sums exact in f32.
    let af: Vec<f32> = (0..256).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect();
    let bf: Vec<f32> = (0..128).map(|i| ((i * 3 % 7) as f32 - 3.0) / 4.0).collect();
    let x: Vec<f32> = (0..64).map(|i| 0.25 + i as f32 * 0.37).collect();
    let a = gpu.upload(&af.iter().map(|&v| bf16(v)).collect::<Vec<_>>()).unwrap();
    let b = gpu.upload(&bf.iter().map(|&v| bf16(v)).collect::<Vec<_>>()).unwrap();
    let xs = gpu.upload(&x).unwrap();
    let out = gpu.zeros::<u32>(64 * SELFTEST_WORDS).unwrap();
    let acc = gpu.zeros::<f32>(1).unwrap();
    let cnt = gpu.zeros::<u32>(1).unwrap();
    let dims = LaunchDims { grid: Dim3::x(1), block: Dim3::x(64), shared_bytes: 512 };
    let (g_out, g_a, g_b, g_x) = (gpu.gmem(&out), gpu.gmem(&a), gpu.gmem(&b), gpu.gmem(&xs));
    let (g_acc, g_cnt) = (gpu.gmem(&acc), gpu.gmem(&cnt));
    // SAFETY: the buffers live and have the sizes of src/kernels/selftest.rs; the shape is its documented one.
    unsafe { gpu.simt_selftest(dims, g_out, g_a, g_b, g_x, g_acc, g_cnt) }.unwrap();
    let out = gpu.download(&out).unwrap();
    assert_eq!(gpu.download(&acc).unwrap(), vec![64.0]);
    assert_eq!(gpu.download(&cnt).unwrap(), vec![64]);

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
        close(w[18], v.exp(), 4e-6, "exp");
        close(w[19], v.ln(), 2e-6, "ln");
        close(w[20], v.sqrt(), 0.0, "sqrt");
        close(w[21], 1.0 / v.sqrt(), 2e-6, "rsqrt");
        close(w[22], v.mul_add(v, 1.0), 0.0, "fma");
        olds.push(w[23]);
        assert_eq!(w[24], 512, "dyn_shared_bytes of {t}");
        assert_eq!(w[25], 64 * 1000 + 100, "block_dim/grid_dim/block_idx of {t}");
    }
    olds.sort_unstable();
    assert_eq!(olds, (0..64).collect::<Vec<u32>>(), "atomic_add_u32 returns each old value once");
}

#[test]
fn every_table_kernel_has_a_launcher_and_loads_on_the_gpu() {
    if !gpu_tests_enabled("every_table_kernel_has_a_launcher_and_loads_on_the_gpu") {
        return;
    }
    // Gpu::new loads every Kernel::ALL function and fails with MissingKernel otherwise.
    let gpu = Gpu::new(0).expect("MOE_GPU_TESTS=1 but no usable GPU");
    eprintln!("{} kernels loaded on {}", super::Kernel::ALL.len(), gpu.name().unwrap());
}
