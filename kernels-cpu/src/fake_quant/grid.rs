//! The stored block fields of one row and the effective step `s̃` and min `m̃` of each of its
//! groups, from the learnable steps and mins (the table in the module doc). Forward, backward and
//! encoder all read a row through this one mapping, so they cannot disagree on a field.

use super::MIN_STEP;
use crate::quant::half::{f16_to_f32, f32_to_f16};
use crate::quant::k_quants::QK_K;
use crate::quant::BlockType;

/// One group as stored and as the forward uses it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct GroupGrid {
    /// Effective step `s̃` (0 when the stored scale is 0: codes 0, no gradient).
    pub step: f32,
    /// Effective min `m̃` (0 for the symmetric formats).
    pub min: f32,
    /// f16 bits of the block scale `d` (the group's own for Q8_0/Q5_0/Q5_1, the super-block's for
    /// the K-quants).
    pub d: u16,
    /// f16 bits of the second field: `m` of Q5_1 (`-m̃`), `dmin` of Q5_K's super-block.
    pub m: u16,
    /// The integer sub-scale (K-quants).
    pub sc: u8,
    /// The 6-bit sub-min (Q5_K).
    pub mm: u8,
}

/// The step a raw learnable value stands for: floored at [`MIN_STEP`] (NaN too; callers reject
/// non-finite parameters before they get here).
#[inline(always)]
pub(crate) fn floor_step(s: f32) -> f32 {
    if s >= MIN_STEP {
        s
    } else {
        MIN_STEP
    }
}

/// `⌊x⌉` (half to even) clamped to `lo..=hi`, as an integer (so a code 0 is +0.0 as a float).
#[inline(always)]
pub(crate) fn round_clamp(x: f32, lo: i32, hi: i32) -> i32 {
    (x.round_ties_even() as i32).clamp(lo, hi)
}

/// Fills `out[g]` for the groups of one row: `s` its steps, `m` its mins (empty for the symmetric
/// formats), `group` values per group.
pub(crate) fn row_grid(ty: BlockType, group: usize, s: &[f32], m: &[f32], out: &mut [GroupGrid]) {
    debug_assert_eq!(s.len(), out.len());
    match ty {
        BlockType::Q8_0 | BlockType::Q5_0 => {
            for (g, &x) in out.iter_mut().zip(s) {
                let d = f32_to_f16(floor_step(x));
                *g = GroupGrid { step: f16_to_f32(d), d, ..GroupGrid::default() };
            }
        }
        BlockType::Q5_1 => {
            for ((g, &x), &mn) in out.iter_mut().zip(s).zip(m) {
                let d = f32_to_f16(floor_step(x));
                let mf = f32_to_f16(-mn);
                // The stored `m` is -m̃; `q·s̃ + m` (the dequantizer) equals `s̃·q − m̃` exactly.
                *g = GroupGrid { step: f16_to_f32(d), min: -f16_to_f32(mf), d, m: mf, ..GroupGrid::default() };
            }
        }
        BlockType::Q6_K => {
            let per_super = QK_K / group;
            for (gs, ss) in out.chunks_mut(per_super).zip(s.chunks(per_super)) {
                let max = ss.iter().fold(0f32, |a, &x| a.max(floor_step(x)));
                let d16 = f32_to_f16(max / 127.0);
                let d = f16_to_f32(d16);
                for (g, &x) in gs.iter_mut().zip(ss) {
                    let sc = if d > 0.0 { round_clamp(floor_step(x) / d, 1, 127) as u8 } else { 0 };
                    // The dequantizer's order: (d · sc) · c.
                    *g = GroupGrid { step: d * sc as f32, d: d16, sc, ..GroupGrid::default() };
                }
            }
        }
        BlockType::Q5_K => {
            let per_super = QK_K / group;
            for ((gs, ss), ms) in out.chunks_mut(per_super).zip(s.chunks(per_super)).zip(m.chunks(per_super)) {
                let max = ss.iter().fold(0f32, |a, &x| a.max(floor_step(x)));
                let max_m = ms.iter().fold(0f32, |a, &x| a.max(x));
                let (d16, dmin16) = (f32_to_f16(max / 63.0), f32_to_f16(max_m / 63.0));
                let (d, dmin) = (f16_to_f32(d16), f16_to_f32(dmin16));
                for ((g, &x), &mn) in gs.iter_mut().zip(ss).zip(ms) {
                    let sc = if d > 0.0 { round_clamp(floor_step(x) / d, 1, 63) as u8 } else { 0 };
                    let mm = if dmin > 0.0 { round_clamp(mn.max(0.0) / dmin, 0, 63) as u8 } else { 0 };
                    // The dequantizer's order: (d · sc) · q − (dmin · mm).
                    *g = GroupGrid { step: d * sc as f32, min: dmin * mm as f32, d: d16, m: dmin16, sc, mm };
                }
            }
        }
        other => unreachable!("{other} has no fake quantizer (FakeQuantDims::check)"),
    }
}

/// The code of `w` in a group (`lo..=hi`, the clamp range of [`super::code_range`]); 0 when the
/// step is 0.
#[inline(always)]
pub(crate) fn code(w: f32, g: &GroupGrid, lo: i32, hi: i32) -> i32 {
    if g.step == 0.0 {
        return 0;
    }
    round_clamp((w + g.min) / g.step, lo, hi)
}

/// The value of code `c` (the dequantizer's expression: `s̃ · c − m̃`, and `m̃ = 0` subtracts
/// nothing: `x − 0 = x` for every x, -0 included).
#[inline(always)]
pub(crate) fn value(c: i32, g: &GroupGrid) -> f32 {
    g.step * c as f32 - g.min
}
