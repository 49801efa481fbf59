//! `fake_quant_forward` / `fake_quant_backward`: the format-exact quantize-dequantize of a weight
//! tensor and its straight-through / LSQ gradients (formulas in the module doc). Rows are
//! independent (no block spans two rows), so the rayon split over rows changes no bit.

use super::grid::{code, row_grid, value, GroupGrid};
use super::{code_range, grad_scale, FakeQuantDims};
use rayon::prelude::*;

fn check_lengths(dims: &FakeQuantDims, w: usize, s: usize, m: usize) {
    dims.check().unwrap_or_else(|e| panic!("fake_quant: {e}"));
    assert_eq!(w, dims.rows * dims.row_len, "fake_quant: w length");
    assert_eq!(s, dims.params_len(), "fake_quant: s length");
    assert_eq!(m, dims.min_len(), "fake_quant: m length");
}

/// `out [rows, row_len]` = the fake-quantized `w` with steps `s` and mins `m`
/// (`[rows, row_len / group]`; `m` empty for the symmetric formats): exactly the values
/// [`super::encode_rows`]'s blocks dequantize to.
pub fn fake_quant_forward(out: &mut [f32], w: &[f32], s: &[f32], m: &[f32], dims: FakeQuantDims) {
    check_lengths(&dims, w.len(), s.len(), m.len());
    assert_eq!(out.len(), w.len(), "fake_quant: out length");
    let (gpr, len, group) = (dims.groups_per_row(), dims.row_len, dims.group);
    let (lo, hi) = code_range(dims.ty);
    let mins = |r: usize| if dims.has_min() { &m[r * gpr..(r + 1) * gpr] } else { &m[..0] };
    out.par_chunks_mut(len).zip(w.par_chunks(len)).enumerate().for_each_init(
        || vec![GroupGrid::default(); gpr],
        |grid, (r, (o, wr))| {
            row_grid(dims.ty, group, &s[r * gpr..(r + 1) * gpr], mins(r), grid);
            for ((og, wg), g) in o.chunks_exact_mut(group).zip(wr.chunks_exact(group)).zip(grid.iter()) {
                for (y, &x) in og.iter_mut().zip(wg) {
                    *y = value(code(x, g, lo, hi), g);
                }
            }
        },
    );
}

/// Accumulates the gradients of `fake_quant_forward`: `dw += dout` where the weight is inside the
/// clamp range; `ds [rows, row_len / group] += g · Σ dout · ∂ŵ/∂s̃` and, for the asymmetric
/// formats, `dm += g · Σ dout · ∂ŵ/∂m̃` (`dm` empty otherwise), with LSQ's `g`.
#[allow(clippy::too_many_arguments)]
pub fn fake_quant_backward(
    dw: &mut [f32],
    ds: &mut [f32],
    dm: &mut [f32],
    dout: &[f32],
    w: &[f32],
    s: &[f32],
    m: &[f32],
    dims: FakeQuantDims,
) {
    check_lengths(&dims, w.len(), s.len(), m.len());
    assert_eq!(dw.len(), w.len(), "fake_quant: dw length");
    assert_eq!(dout.len(), w.len(), "fake_quant: dout length");
    assert_eq!(ds.len(), s.len(), "fake_quant: ds length");
    assert_eq!(dm.len(), m.len(), "fake_quant: dm length");
    let (gpr, len, group) = (dims.groups_per_row(), dims.row_len, dims.group);
    let (lo, hi) = code_range(dims.ty);
    let (flo, fhi) = (lo as f32, hi as f32);
    let gscale = grad_scale(dims.ty, group) as f64;
    let has_min = dims.has_min();
    // Rows of dm (empty chunks for the symmetric formats, one per row all the same).
    let dm_rows: Vec<&mut [f32]> =
        if has_min { dm.chunks_mut(gpr).collect() } else { (0..dims.rows).map(|_| <&mut [f32]>::default()).collect() };
    dw.par_chunks_mut(len).zip(ds.par_chunks_mut(gpr)).zip(dm_rows.into_par_iter()).enumerate().for_each_init(
        || vec![GroupGrid::default(); gpr],
        |grid, (r, ((dwr, dsr), dmr))| {
            let mr = if has_min { &m[r * gpr..(r + 1) * gpr] } else { &m[..0] };
            row_grid(dims.ty, group, &s[r * gpr..(r + 1) * gpr], mr, grid);
            let (wr, dyr) = (&w[r * len..(r + 1) * len], &dout[r * len..(r + 1) * len]);
            for (k, g) in grid.iter().enumerate() {
                if g.step == 0.0 {
                    continue;
                }
                let span = k * group..(k + 1) * group;
                let (mut acc_s, mut acc_m) = (0f64, 0f64);
                for ((d, &x), &dy) in dwr[span.clone()].iter_mut().zip(&wr[span.clone()]).zip(&dyr[span]) {
                    let u = (x + g.min) / g.step;
                    if (flo..=fhi).contains(&u) {
                        *d += dy;
                        acc_s += dy as f64 * (u.round_ties_even() - u) as f64;
                    } else {
                        let bound = if u < flo { flo } else { fhi };
                        acc_s += dy as f64 * bound as f64;
                        acc_m -= dy as f64;
                    }
                }
                dsr[k] += (gscale * acc_s) as f32;
                if has_min {
                    dmr[k] += (gscale * acc_m) as f32;
                }
            }
        },
    );
}
