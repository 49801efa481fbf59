//! Tests of the cudarc layer. Without a GPU only the "no driver" path runs; the launches run when
//! `MOE_GPU_TESTS=1` (and print "skipped: MOE_GPU_TESTS not set" otherwise). The context self-test
//! runs on every launcher in `tests/selftest.rs`.

use super::{Gpu, GpuError};
use cudarc::driver::sys;

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

#[test]
fn every_table_kernel_has_a_launcher_and_loads_on_the_gpu() {
    if !gpu_tests_enabled("every_table_kernel_has_a_launcher_and_loads_on_the_gpu") {
        return;
    }
    // Gpu::new loads every Kernel::ALL function and fails with MissingKernel otherwise.
    let gpu = Gpu::new(0).expect("MOE_GPU_TESTS=1 but no usable GPU");
    eprintln!("{} kernels loaded on {}", super::Kernel::ALL.len(), gpu.name().unwrap());
}
