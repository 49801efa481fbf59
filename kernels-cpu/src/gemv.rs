//! `y = x · wᵀ` for a few rows of `x` (`[m, k]`) against a weight in HF Linear layout `[n, k]`:
//! one dot product per output, reading each weight row once, with no packing.
//!
//! Why: the blocked GEMM packs `wᵀ` into panels before every product, which for one decoded
//! token means copying the whole weight (the LM head's 4 MB at vocabulary 4096) to multiply it
//! by a single row; perf put that packing at a third of a decode step. Rows are independent:
//! a row's outputs do not depend on the other rows of the call, so a sequence decodes to the
//! same numbers alone or beside others. The `gemm` crate's small-m path (no packing either) is as
//! fast (100 vs 110 µs for 1 x 256 x 4096 on a Zen 3 core) but not row-independent: row 0 of an
//! m = 2 or 3 product matched its m = 1 bits in 393 of 4,096 outputs.
//!
//! Dot products: eight lanes x four accumulators with fused multiply-adds where the CPU has
//! AVX2 + FMA (chosen at run time), else `fastmath::dot8`; outputs are split over the
//! current rayon pool in blocks of weight rows.

use rayon::prelude::*;

/// Weight rows per parallel task.
const BLOCK: usize = 64;

/// `x [m, k] · w[n, k]ᵀ` → `[m, n]`. Panics on inconsistent lengths (programming errors).
pub fn matvec_rows(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert!(
        x.len() == m * k && w.len() == n * k,
        "matvec_rows: x {} / w {} are not [{m}, {k}] / [{n}, {k}]",
        x.len(),
        w.len()
    );
    let dot = dot_fn();
    // Transposed result [n, m] in blocks of weight rows, then [m, n].
    let mut yt = vec![0f32; n * m];
    yt.par_chunks_mut(BLOCK * m.max(1)).enumerate().for_each(|(b, out)| {
        for (jj, o) in out.chunks_mut(m.max(1)).enumerate() {
            let wj = &w[(b * BLOCK + jj) * k..][..k];
            for (i, y) in o.iter_mut().enumerate() {
                *y = dot(&x[i * k..][..k], wj);
            }
        }
    });
    if m == 1 {
        return yt;
    }
    let mut y = vec![0f32; m * n];
    for j in 0..n {
        for i in 0..m {
            y[i * n + j] = yt[j * m + i];
        }
    }
    y
}

/// The fastest dot product this CPU runs.
fn dot_fn() -> fn(&[f32], &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::fastmath::has_avx2_fma() {
        // SAFETY: only chosen when the CPU has AVX2 and FMA.
        return |a, b| unsafe { dot_avx2(a, b) };
    }
    crate::fastmath::dot8
}

/// `Σ a·b`: 4 x 8 lanes of fused multiply-adds, then 8 lanes, then the tail.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `a` and `b` must have the same length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    debug_assert_eq!(a.len(), b.len());
    let n = a.len();
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (u, s) in acc.iter_mut().enumerate() {
            let o = i + 8 * u;
            *s = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(o)), _mm256_loadu_ps(pb.add(o)), *s);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
        i += 8;
    }
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), s);
    let mut total: f32 = lanes.iter().sum();
    while i < n {
        total += a[i] * b[i];
        i += 1;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::rand_vec;

    /// Against an f64 reference, for row counts and widths around the lane and block edges,
    /// both dot products; rows are independent of the rest of the call (bit for bit).
    #[test]
    fn matches_f64_reference_and_rows_do_not_depend_on_each_other() {
        for &(m, k, n) in &[(1, 256, 4096), (3, 37, 130), (2, 8, 1), (4, 1, 65), (1, 31, 64)] {
            let x = rand_vec(m * k, 1);
            let w = rand_vec(n * k, 2);
            let y = matvec_rows(&x, &w, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|t| x[i * k + t] as f64 * w[j * k + t] as f64).sum();
                    let tol = 1e-5 * (k as f64).sqrt().max(1.0);
                    assert!(
                        (y[i * n + j] as f64 - want).abs() <= tol,
                        "({m},{k},{n}) [{i},{j}]: {} vs {want}",
                        y[i * n + j]
                    );
                    let p = crate::fastmath::dot8(&x[i * k..][..k], &w[j * k..][..k]) as f64;
                    assert!((p - want).abs() <= tol, "portable ({m},{k},{n}) [{i},{j}]: {p} vs {want}");
                }
                let alone = matvec_rows(&x[i * k..][..k], &w, 1, k, n);
                assert_eq!(alone, y[i * n..][..n], "row {i} differs alone");
            }
        }
    }
}
