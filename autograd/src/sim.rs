//! Glue between the ops and kernels-gpu's simulator ([`Device::Sim`]): error mapping and a dense
//! GEMM that runs as the grouped FMA GEMM with one group (no plain GEMM kernel exists; with one
//! group and no dimension equal to `TOKENS` the grouped kernel is exactly a strided GEMM).
//!
//! Buffers stay host `Vec<f32>`: on Sim the "device allocation" is the host buffer the simulated
//! kernel reads and writes, so the launches and kernel sequence are those of the GPU path.

use crate::error::{AutogradError, Result};
use crate::tensor::Device;
use kernels_cpu::gemm::Trans;
use kernels_gpu::kernels::gemm::{GroupedGemm, Operand, TokenAxis};
use kernels_gpu::sim::SimError;
use kernels_gpu::simt::Gmem;

/// A simulator result as an op's result.
pub(crate) fn sim<T>(op: &'static str, r: std::result::Result<T, SimError>) -> Result<T> {
    r.map_err(|source| AutogradError::Sim { op, source })
}

/// A simulator result inside a backward closure. The forward checked every shape, so a failure
/// here is a bug in the op (backward closures cannot return errors).
pub(crate) fn sim_bwd<T>(op: &'static str, r: std::result::Result<T, SimError>) -> T {
    r.unwrap_or_else(|e| panic!("{op} backward: simulated kernel failed (a bug: shapes were checked): {e}"))
}

/// A row-major matrix with `cols` stored columns, seen through `trans`, as a kernel operand.
fn operand(data: *mut f32, cols: usize, trans: Trans) -> Operand<f32> {
    let (rs, cs) = match trans {
        Trans::No => (cols, 1),
        Trans::Yes => (1, cols),
    };
    Operand { ptr: Gmem::new(data), rs, cs, group_stride: 0, offset: 0, axis: TokenAxis::None }
}

/// `c [M, N] (+)= op(a) · op(b)` with `op(a) [M, K]`, `op(b) [K, N]` (stored transposed when
/// `ta` / `tb` is `Trans::Yes`), as kernels-cpu `gemm::matmul`, in the simulated FMA GEMM.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sim_matmul(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: Trans,
    tb: Trans,
    accumulate: bool,
) -> std::result::Result<(), SimError> {
    if c.len() != m * n || a.len() != m * k || b.len() != k * n {
        return Err(SimError::InvalidLaunch(format!(
            "gemm: lengths c {} a {} b {} do not match M={m} K={k} N={n}",
            c.len(),
            a.len(),
            b.len()
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return Ok(());
    }
    let a_cols = if ta == Trans::No { k } else { m };
    let b_cols = if tb == Trans::No { n } else { k };
    let p = GroupedGemm {
        // The kernel only reads `a` and `b`.
        a: operand(a.as_ptr() as *mut f32, a_cols, ta),
        b: operand(b.as_ptr() as *mut f32, b_cols, tb),
        c: operand(c.as_mut_ptr(), n, Trans::No),
        m,
        n,
        k,
        offsets: Gmem::null(),
        accumulate,
    };
    kernels_gpu::sim::ops::grouped_gemm(p, None, 1)
}

/// [`sim_matmul`] on `Device::Sim`, kernels-cpu `gemm::matmul` otherwise.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_on(
    device: Device,
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: Trans,
    tb: Trans,
    accumulate: bool,
) -> std::result::Result<(), SimError> {
    match device {
        Device::Sim => sim_matmul(c, a, b, m, k, n, ta, tb, accumulate),
        Device::Cpu | Device::Cuda => {
            kernels_cpu::gemm::matmul(c, a, b, m, k, n, ta, tb, accumulate);
            Ok(())
        }
    }
}

/// `op(a) · op(b)` as a new `[M, N]` vector on `device` (on CPU written into fresh memory with
/// no zero fill).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_new_on(
    device: Device,
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: Trans,
    tb: Trans,
) -> std::result::Result<Vec<f32>, SimError> {
    match device {
        Device::Sim => {
            let mut c = vec![0f32; m * n];
            sim_matmul(&mut c, a, b, m, k, n, ta, tb, false)?;
            Ok(c)
        }
        Device::Cpu | Device::Cuda => Ok(kernels_cpu::gemm::matmul_new(a, b, m, k, n, ta, tb)),
    }
}

/// Adds `op(a) · op(b)` to the gradient of `t` in `g`: into its buffer when it has one, else as
/// a fresh product (no zero-filled buffer to add to).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_into_grad(
    op: &'static str,
    g: &mut crate::tape::Gradients,
    t: &crate::tensor::Tensor,
    device: Device,
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    ta: Trans,
    tb: Trans,
) {
    g.add_or_insert(
        t,
        |acc| sim_bwd(op, matmul_on(device, acc, a, b, m, k, n, ta, tb, true)),
        || sim_bwd(op, matmul_new_on(device, a, b, m, k, n, ta, tb)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernels_cpu::check::{rand_vec, rel_norm_err};

    #[test]
    fn sim_matmul_matches_kernels_cpu_for_every_transpose() {
        let (m, k, n) = (37, 45, 33);
        for ta in [Trans::No, Trans::Yes] {
            for tb in [Trans::No, Trans::Yes] {
                let (a, b) = (rand_vec(m * k, 1), rand_vec(k * n, 2));
                let (mut c, mut want) = (rand_vec(m * n, 3), rand_vec(m * n, 3));
                sim_matmul(&mut c, &a, &b, m, k, n, ta, tb, true).unwrap();
                kernels_cpu::gemm::matmul(&mut want, &a, &b, m, k, n, ta, tb, true);
                let err = rel_norm_err(&c, &want);
                println!("sim gemm {ta:?} {tb:?}: rel err {err:.2e}");
                assert!(err <= 1e-6, "{ta:?} {tb:?}: {err:.2e}");
            }
        }
        assert!(sim_matmul(&mut [0.0; 3], &[0.0; 2], &[0.0; 2], 1, 2, 3, Trans::No, Trans::No, false).is_err());
    }
}
