//! The GPTQ column loop (`fasterquant`) and round-to-nearest, over one matrix.

use super::{cholesky_lower, inverse_upper_factor, GptqConfig, GptqError, GptqStats, GroupQuantizer, QuantizedMatrix};
use rayon::prelude::*;

fn check_len(what: &'static str, got: usize, want: usize) -> Result<(), GptqError> {
    if got == want {
        Ok(())
    } else {
        Err(GptqError::Length { what, got, want })
    }
}

/// `w [N, K]` as f64 columns: `[K, N]`, column `k` contiguous.
fn columns(w: &[f32], n: usize, k: usize) -> Vec<f64> {
    let mut t = vec![0f64; n * k];
    for (r, row) in w.chunks(k).enumerate() {
        for (c, &x) in row.iter().enumerate() {
            t[c * n + r] = x as f64;
        }
    }
    t
}

/// Codes `[K, N]` by column, in quantization order, back to `[N, K]` in the original column order
/// (`perm[i]` is the original column quantized `i`-th).
fn codes_by_row(qt: &[u8], perm: &[usize], n: usize, k: usize) -> Vec<u8> {
    let mut codes = vec![0u8; n * k];
    for (i, &c) in perm.iter().enumerate() {
        for r in 0..n {
            codes[r * k + c] = qt[i * n + r];
        }
    }
    codes
}

/// Step 1: dead columns (`H[i,i] == 0`) get `H[i,i] = 1` (and, with `zero`, a zero weight column,
/// as the reference). Returns how many.
fn dead_columns(h: &mut [f64], wt: &mut [f64], n: usize, k: usize, zero: bool) -> usize {
    let mut dead = 0;
    for i in 0..k {
        if h[i * k + i] == 0.0 {
            h[i * k + i] = 1.0;
            if zero {
                wt[i * n..(i + 1) * n].iter_mut().for_each(|x| *x = 0.0);
            }
            dead += 1;
        }
    }
    dead
}

/// Step 2, act-order: the columns of `wt [K, N]` and rows/columns of `h` in the order of a
/// stable sort by descending diagonal (`on` false: unchanged). Returns `perm`, `perm[i]` the
/// original column quantized `i`-th.
fn act_order(h: &mut Vec<f64>, wt: &mut Vec<f64>, n: usize, k: usize, on: bool) -> Vec<usize> {
    let mut perm: Vec<usize> = (0..k).collect();
    if on {
        perm.sort_by(|&a, &b| h[b * k + b].total_cmp(&h[a * k + a]));
        let mut pw = vec![0f64; n * k];
        let mut ph = vec![0f64; k * k];
        for (i, &pi) in perm.iter().enumerate() {
            pw[i * n..(i + 1) * n].copy_from_slice(&wt[pi * n..(pi + 1) * n]);
            for (j, &pj) in perm.iter().enumerate() {
                ph[i * k + j] = h[pi * k + pj];
            }
        }
        *wt = pw;
        *h = ph;
    }
    perm
}

/// Step 3: damping `H += damp · mean(diag H) · I`, then the upper Cholesky factor of `H⁻¹`.
fn damped_inverse_factor(h: &mut [f64], k: usize, damp: f64) -> Result<Vec<f64>, GptqError> {
    let damp = damp * (0..k).map(|i| h[i * k + i]).sum::<f64>() / k as f64;
    (0..k).for_each(|i| h[i * k + i] += damp);
    cholesky_lower(h, k)?;
    inverse_upper_factor(h, k)
}

/// Steps 4-6: the lazy column blocks over `wt [K, N]` (column-major, in quantization order).
/// `quantize(col, wt, wcol, out)` writes the quantized value of each of column `col`'s weights
/// `wcol` (the working copy, with every earlier column's error in it) into `out`; `wt` is the
/// matrix outside the current block (the reference reads group parameters from it). Returns the
/// reference's loss `Σ (w - q)² / Hinv[i,i]² / 2`.
fn lazy_blocks(
    wt: &mut [f64],
    hinv: &[f64],
    n: usize,
    k: usize,
    block: usize,
    mut quantize: impl FnMut(usize, &[f64], &[f64], &mut [f64]),
) -> f64 {
    let mut loss = 0f64;
    let mut q = vec![0f64; n];
    let mut i1 = 0;
    while i1 < k {
        let i2 = (i1 + block).min(k);
        let count = i2 - i1;
        let mut w1 = wt[i1 * n..i2 * n].to_vec();
        let mut err1 = vec![0f64; count * n];
        for i in 0..count {
            let col = i1 + i;
            let d = hinv[col * k + col];
            let (head, tail) = w1.split_at_mut((i + 1) * n);
            let wcol = &head[i * n..];
            quantize(col, wt, wcol, &mut q);
            let e = &mut err1[i * n..(i + 1) * n];
            for r in 0..n {
                let diff = wcol[r] - q[r];
                loss += diff * diff / (d * d) / 2.0;
                e[r] = diff / d;
            }
            // W1[:, i+1:] -= err ⊗ Hinv[col, col+1:i2]
            let e = &err1[i * n..(i + 1) * n];
            tail.par_chunks_mut(n).enumerate().for_each(|(j, c)| {
                let f = hinv[col * k + col + 1 + j];
                c.iter_mut().zip(e).for_each(|(x, &y)| *x -= y * f);
            });
        }
        // W[:, i2:] -= Err1 · Hinv[i1:i2, i2:]
        wt[i2 * n..].par_chunks_mut(n).enumerate().for_each(|(j, c)| {
            let col = i2 + j;
            for (b, e) in err1.chunks(n).enumerate() {
                let f = hinv[(i1 + b) * k + col];
                c.iter_mut().zip(e).for_each(|(x, &y)| *x -= y * f);
            }
        });
        i1 = i2;
    }
    loss
}

/// GPTQ of `w [N, K]` with the Hessian `h [K, K]` of its inputs (see the module doc for the steps
/// and the reference's quirks kept here). Returns the codes, scales and `g_idx`, and the loss.
pub fn gptq_quantize(
    w: &[f32],
    n: usize,
    k: usize,
    h: &[f64],
    cfg: &GptqConfig,
) -> Result<(QuantizedMatrix, GptqStats), GptqError> {
    cfg.check(n, k)?;
    check_len("weight", w.len(), n * k)?;
    check_len("Hessian", h.len(), k * k)?;
    let mut h = h.to_vec();
    let mut wt = columns(w, n, k);
    let dead_columns = dead_columns(&mut h, &mut wt, n, k, true);
    let perm = act_order(&mut h, &mut wt, n, k, cfg.act_order);
    let hinv = damped_inverse_factor(&mut h, k, cfg.damp)?;
    let (g, maxq) = (cfg.group, cfg.maxq());
    let mut qt = vec![0u8; n * k];
    let mut scales = vec![0f32; (k / g) * n];
    let mut quant = GroupQuantizer { scale: vec![1.0; n], zero: 0.0, maxq: maxq as f64 };
    let loss = lazy_blocks(&mut wt, &hinv, n, k, cfg.block, |col, wt, wcol, out| {
        if col % g == 0 {
            // The reference reads the group from W, not from the block's working copy.
            let end = (col + g).min(k);
            quant = GroupQuantizer::fit(&wt[col * n..end * n], n, maxq);
            for (s, &x) in scales[(col / g) * n..(col / g + 1) * n].iter_mut().zip(&quant.scale) {
                *s = x as f32;
            }
        }
        for r in 0..n {
            let q = quant.code(wcol[r], r);
            qt[col * n + r] = q as u8;
            out[r] = quant.value(q, r);
        }
    });
    let mut g_idx = vec![0u32; k];
    for (i, &c) in perm.iter().enumerate() {
        g_idx[c] = (i / g) as u32;
    }
    let m = QuantizedMatrix {
        rows: n,
        cols: k,
        bits: cfg.bits,
        group: g,
        codes: codes_by_row(&qt, &perm, n, k),
        scales,
        g_idx,
    };
    Ok((m, GptqStats { loss, dead_columns }))
}

/// GPTQ's error compensation on a grid fixed in advance (the QAT grid of a GGUF format: its
/// steps and mins come from the calibration, not from the weights as they are updated):
/// `value(row, col, x)` is the quantized value of weight `x` at `(row, col)` of `w [N, K]`.
/// Columns are quantized in order, or with `act_order` by descending Hessian diagonal (the grid
/// is fixed, so the groups stay put: "static groups"); a column never active in the calibration
/// inputs keeps its weights (rounded to the grid, no error spread). Returns the *latent* weights
/// `[N, K]`: each weight as it was when its column came up (the original plus the errors of the
/// columns before it, rounded to f32), so `value(row, col, latent)` is GPTQ's choice for it.
#[allow(clippy::too_many_arguments)]
pub fn gptq_on_grid(
    w: &[f32],
    n: usize,
    k: usize,
    h: &[f64],
    damp: f64,
    block: usize,
    act_order_on: bool,
    value: &(dyn Fn(usize, usize, f32) -> f32 + Sync),
) -> Result<(Vec<f32>, GptqStats), GptqError> {
    check_len("weight", w.len(), n * k)?;
    check_len("Hessian", h.len(), k * k)?;
    if block == 0 || !(damp >= 0.0 && damp.is_finite()) {
        return Err(GptqError::Settings(format!("block {block} must be positive, damping {damp} finite and >= 0")));
    }
    let mut h = h.to_vec();
    let mut wt = columns(w, n, k);
    let dead_columns = dead_columns(&mut h, &mut wt, n, k, false);
    let perm = act_order(&mut h, &mut wt, n, k, act_order_on);
    let hinv = damped_inverse_factor(&mut h, k, damp)?;
    let mut latent = vec![0f32; n * k];
    let loss = lazy_blocks(&mut wt, &hinv, n, k, block, |i, _, wcol, out| {
        let col = perm[i];
        for r in 0..n {
            let x = wcol[r] as f32;
            latent[r * k + col] = x;
            out[r] = value(r, col, x) as f64;
        }
    });
    Ok((latent, GptqStats { loss, dead_columns }))
}

/// Round-to-nearest of `w [N, K]` with the same groups (in column order, `act_order` ignored).
pub fn rtn_quantize(w: &[f32], n: usize, k: usize, cfg: &GptqConfig) -> Result<QuantizedMatrix, GptqError> {
    cfg.check(n, k)?;
    check_len("weight", w.len(), n * k)?;
    let wt = columns(w, n, k);
    let (g, maxq) = (cfg.group, cfg.maxq());
    let mut qt = vec![0u8; n * k];
    let mut scales = vec![0f32; (k / g) * n];
    for (gi, group) in wt.chunks(g * n).enumerate() {
        let quant = GroupQuantizer::fit(group, n, maxq);
        for (s, &x) in scales[gi * n..(gi + 1) * n].iter_mut().zip(&quant.scale) {
            *s = x as f32;
        }
        for (c, col) in group.chunks(n).enumerate() {
            for (r, &x) in col.iter().enumerate() {
                qt[(gi * g + c) * n + r] = quant.code(x, r) as u8;
            }
        }
    }
    let perm: Vec<usize> = (0..k).collect();
    let g_idx = (0..k).map(|c| (c / g) as u32).collect();
    Ok(QuantizedMatrix {
        rows: n,
        cols: k,
        bits: cfg.bits,
        group: g,
        codes: codes_by_row(&qt, &perm, n, k),
        scales,
        g_idx,
    })
}
