//! Initial steps and mins of a tensor, and carrying them across a format change.
//!
//! - [`init_minmax`]: the smallest range holding the whole group (LLM-QAT: clipping LLM outliers
//!   hurts): symmetric `s = max(max w / hi, −min w / −lo)`; Q5_K `m = −min(min w, 0)`,
//!   `s = (max w + m) / 31`; Q5_1 `m = −min w`, `s = (max w − min w) / 31`.
//! - [`init_mse`]: min-max, then per group the clip ratio among `ratios` (e.g. 1.0, 0.95 .. 0.8)
//!   whose fake-quantized group is closest to the weights in squared error (the range shrunk by
//!   the ratio; each group scored with its own step, before the super-block's shared scale, which
//!   moves every step by well under one percent).
//! - [`rescale_for_format`]: a bit-width change keeps the clip range: symmetric ranges
//!   `[−a, a]` with `a = s · hi`, asymmetric `[−m, 31 s − m]`.

use super::grid::{floor_step, round_clamp};
use super::{code_range, has_min, FakeQuantDims, MIN_STEP};
use crate::quant::BlockType;

fn group_minmax(w: &[f32]) -> (f32, f32) {
    w.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

fn minmax_params(ty: BlockType, w: &[f32]) -> (f32, f32) {
    let (lo, hi) = code_range(ty);
    let (mn, mx) = group_minmax(w);
    match ty {
        BlockType::Q5_K => {
            let m = -mn.min(0.0);
            (floor_step((mx.max(0.0) + m) / hi as f32), m)
        }
        BlockType::Q5_1 => (floor_step((mx - mn) / hi as f32), -mn),
        _ => (floor_step((mx.max(0.0) / hi as f32).max(-mn.min(0.0) / -lo as f32)), 0.0),
    }
}

/// Min-max steps `s` and mins `m` (`m` empty for the symmetric formats) of `w`.
pub fn init_minmax(s: &mut [f32], m: &mut [f32], w: &[f32], dims: FakeQuantDims) {
    init_mse(s, m, w, dims, &[1.0]);
}

/// Squared error of a group quantized with its own step and min (no super-block sharing).
fn group_error(ty: BlockType, w: &[f32], s: f32, m: f32) -> f64 {
    let (lo, hi) = code_range(ty);
    w.iter()
        .map(|&x| {
            let c = round_clamp((x + m) / s, lo, hi);
            let e = (s * c as f32 - m - x) as f64;
            e * e
        })
        .sum()
}

/// Min-max, then per group the clip ratio of `ratios` with the least squared error.
pub fn init_mse(s: &mut [f32], m: &mut [f32], w: &[f32], dims: FakeQuantDims, ratios: &[f32]) {
    dims.check().unwrap_or_else(|e| panic!("fake_quant init: {e}"));
    assert_eq!(w.len(), dims.rows * dims.row_len, "fake_quant init: w length");
    assert_eq!(s.len(), dims.params_len(), "fake_quant init: s length");
    assert_eq!(m.len(), dims.min_len(), "fake_quant init: m length");
    for (k, wg) in w.chunks_exact(dims.group).enumerate() {
        let (s0, m0) = minmax_params(dims.ty, wg);
        let mut best = (f64::INFINITY, s0, m0);
        for &r in ratios {
            let (sr, mr) = (floor_step(s0 * r), m0 * r);
            let e = group_error(dims.ty, wg, sr, mr);
            if e < best.0 {
                best = (e, sr, mr);
            }
        }
        s[k] = best.1;
        if dims.has_min() {
            m[k] = best.2;
        }
    }
}

/// The steps and mins of format `to` with the clip ranges of `(s, m)` in format `from` (same
/// groups). `m` is empty for a symmetric `from`; the returned mins are empty for a symmetric `to`.
pub fn rescale_for_format(s: &[f32], m: &[f32], from: BlockType, to: BlockType) -> (Vec<f32>, Vec<f32>) {
    let (flo, fhi) = code_range(from);
    let (tlo, thi) = code_range(to);
    // Each group's range [lo_w, hi_w] in weight units.
    let range = |k: usize| -> (f32, f32) {
        if has_min(from) {
            (-m[k], fhi as f32 * s[k] - m[k])
        } else {
            (flo as f32 * s[k], fhi as f32 * s[k])
        }
    };
    let mut s_new = Vec::with_capacity(s.len());
    let mut m_new = Vec::new();
    for k in 0..s.len() {
        let (a, b) = range(k);
        if has_min(to) {
            let mn = if to == BlockType::Q5_K { -a.min(0.0) } else { -a };
            s_new.push(((b + mn) / thi as f32).max(MIN_STEP));
            m_new.push(mn);
        } else {
            s_new.push((b / thi as f32).max(-a / -tlo as f32).max(MIN_STEP));
        }
    }
    (s_new, m_new)
}
