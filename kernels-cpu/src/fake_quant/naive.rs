//! References for the tests: the forward and the gradients written out element by element with
//! f64 sums (the codes are the format's, decided in f32 as the format defines them), and the
//! straight-through surrogate whose f64 finite differences the LSQ gradients must equal.

use super::grid::{code, row_grid, GroupGrid};
use super::{code_range, grad_scale, FakeQuantDims};

/// What [`fake_quant_naive`] computes.
#[derive(Clone, Debug, PartialEq)]
pub struct NaiveFakeQuant {
    /// Fake-quantized weights `[rows, row_len]`.
    pub out: Vec<f64>,
    /// `∂L/∂w` for `L = Σ dout · ŵ`.
    pub dw: Vec<f64>,
    /// `∂L/∂s` (LSQ-scaled) `[rows, row_len / group]`.
    pub ds: Vec<f64>,
    /// `∂L/∂m` (LSQ-scaled), empty for the symmetric formats.
    pub dm: Vec<f64>,
    /// The effective step `s̃` of every group.
    pub steps: Vec<f32>,
    /// The effective min `m̃` of every group (0 for the symmetric formats).
    pub mins: Vec<f32>,
}

fn grids(s: &[f32], m: &[f32], dims: &FakeQuantDims) -> Vec<GroupGrid> {
    let gpr = dims.groups_per_row();
    let mut out = vec![GroupGrid::default(); dims.params_len()];
    for r in 0..dims.rows {
        let mr = if dims.has_min() { &m[r * gpr..(r + 1) * gpr] } else { &m[..0] };
        row_grid(dims.ty, dims.group, &s[r * gpr..(r + 1) * gpr], mr, &mut out[r * gpr..(r + 1) * gpr]);
    }
    out
}

/// Forward and gradients of `L = Σ dout · ŵ`, one element at a time.
pub fn fake_quant_naive(w: &[f32], s: &[f32], m: &[f32], dout: &[f32], dims: FakeQuantDims) -> NaiveFakeQuant {
    dims.check().unwrap_or_else(|e| panic!("fake_quant_naive: {e}"));
    let grid = grids(s, m, &dims);
    let (lo, hi) = code_range(dims.ty);
    let gs = grad_scale(dims.ty, dims.group) as f64;
    let (mut out, mut dw) = (vec![0f64; w.len()], vec![0f64; w.len()]);
    let mut ds = vec![0f64; dims.params_len()];
    let mut dm = vec![0f64; dims.min_len()];
    for (i, ((&x, o), d)) in w.iter().zip(out.iter_mut()).zip(dw.iter_mut()).enumerate() {
        let k = i / dims.group;
        let g = &grid[k];
        let c = code(x, g, lo, hi);
        *o = g.step as f64 * c as f64 - g.min as f64;
        if g.step == 0.0 {
            continue;
        }
        let u = ((x + g.min) / g.step) as f64;
        let dy = dout[i] as f64;
        if u >= lo as f64 && u <= hi as f64 {
            *d += dy;
            ds[k] += gs * dy * (c as f64 - u);
        } else {
            ds[k] += gs * dy * c as f64;
            if dims.has_min() {
                dm[k] -= gs * dy;
            }
        }
    }
    NaiveFakeQuant {
        out,
        dw,
        ds,
        dm,
        steps: grid.iter().map(|g| g.step).collect(),
        mins: grid.iter().map(|g| g.min).collect(),
    }
}

/// `Σ r · ŵ(w, s̃, m̃)` in f64 with every rounding replaced by its straight-through surrogate
/// around a base point: `ŵ = s̃ · (clamp(u) + c₀ − clamp(u₀)) − m̃`, `u = (w + m̃) / s̃`, where
/// `c₀` and `u₀` are the codes and scaled weights at `(w0, steps0, mins0)`. Its derivatives at
/// the base point are the gradients the backward computes (before LSQ's scale): finite
/// differences of this in f64 test them. `steps` / `mins` are per group (mins all 0 for the
/// symmetric formats).
#[allow(clippy::too_many_arguments)]
pub fn ste_surrogate_loss(
    w: &[f64],
    steps: &[f64],
    mins: &[f64],
    w0: &[f64],
    steps0: &[f64],
    mins0: &[f64],
    r: &[f32],
    dims: FakeQuantDims,
) -> f64 {
    let (lo, hi) = code_range(dims.ty);
    let (lo, hi) = (lo as f64, hi as f64);
    let mut total = 0f64;
    for (i, ((&x, &x0), &ri)) in w.iter().zip(w0).zip(r).enumerate() {
        let k = i / dims.group;
        let u0 = (x0 + mins0[k]) / steps0[k];
        // The base code as the quantizer decides it (in f32), so near-ties round the same way.
        let c0 = (((x0 as f32 + mins0[k] as f32) / steps0[k] as f32).round_ties_even() as f64).clamp(lo, hi);
        let u = (x + mins[k]) / steps[k];
        let v = steps[k] * (u.clamp(lo, hi) + c0 - u0.clamp(lo, hi)) - mins[k];
        total += ri as f64 * v;
    }
    total
}
