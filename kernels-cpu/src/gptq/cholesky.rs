//! Dense Cholesky factorization in f64 and the upper factor of an inverse, as the GPTQ reference
//! computes it: `chol(cholesky_inverse(chol(H)), upper=True)`.

use super::GptqError;
use rayon::prelude::*;

/// Factors the symmetric positive definite `a [n, n]` (row-major) in place into its lower
/// triangle `L` with `a = L Lᵀ`; the strict upper triangle is zeroed.
///
/// Errors with the pivot where a diagonal was not positive (or not finite).
pub fn cholesky_lower(a: &mut [f64], n: usize) -> Result<(), GptqError> {
    assert_eq!(a.len(), n * n, "cholesky_lower: a is [n, n]");
    for j in 0..n {
        let (_, rest) = a.split_at_mut(j * n);
        let (row_j, below) = rest.split_at_mut(n);
        // a[j][j] - Σ_{p<j} L[j][p]²
        let d = row_j[j] - row_j[..j].iter().map(|x| x * x).sum::<f64>();
        if d.is_nan() || d <= 0.0 || d.is_infinite() {
            return Err(GptqError::NotPositiveDefinite { pivot: j });
        }
        let ljj = d.sqrt();
        row_j[j] = ljj;
        row_j[j + 1..].iter_mut().for_each(|x| *x = 0.0);
        let lj = &row_j[..j];
        // Column j below the diagonal: L[i][j] = (a[i][j] - Σ_p L[i][p] L[j][p]) / L[j][j].
        below.par_chunks_mut(n).for_each(|row_i| {
            let s: f64 = row_i[..j].iter().zip(lj).map(|(x, y)| x * y).sum();
            row_i[j] = (row_i[j] - s) / ljj;
        });
    }
    Ok(())
}

/// The upper triangular `U` with `Uᵀ U = H⁻¹`, given the lower Cholesky factor `l` of `H`
/// (`H = L Lᵀ`): `H⁻¹ = L⁻ᵀ L⁻¹` is formed and factored again.
pub fn inverse_upper_factor(l: &[f64], n: usize) -> Result<Vec<f64>, GptqError> {
    assert_eq!(l.len(), n * n, "inverse_upper_factor: l is [n, n]");
    // Columns of M = L⁻¹ by forward substitution, stored transposed: mt[c] = column c of M.
    let mut mt = vec![0f64; n * n];
    mt.par_chunks_mut(n).enumerate().for_each(|(c, col)| {
        col[c] = 1.0 / l[c * n + c];
        for i in c + 1..n {
            let s: f64 = (c..i).map(|p| l[i * n + p] * col[p]).sum();
            col[i] = -s / l[i * n + i];
        }
    });
    // H⁻¹ = Mᵀ M: (H⁻¹)[a][b] = Σ_i M[i][a] M[i][b] = mt[a] · mt[b] over i >= max(a, b).
    let mut inv = vec![0f64; n * n];
    inv.par_chunks_mut(n).enumerate().for_each(|(a, row)| {
        for (b, x) in row.iter_mut().enumerate() {
            let from = a.max(b);
            *x = mt[a * n + from..(a + 1) * n].iter().zip(&mt[b * n + from..(b + 1) * n]).map(|(p, q)| p * q).sum();
        }
    });
    cholesky_lower(&mut inv, n)?;
    // U = L2ᵀ.
    let mut u = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            u[j * n + i] = inv[i * n + j];
        }
    }
    Ok(u)
}
