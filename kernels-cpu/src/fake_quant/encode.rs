//! The GGUF blocks of fake-quantized weights: the stored fields of [`super::grid`] and the codes
//! the forward used, packed as `kernels_cpu::quant` packs them. Decoding the blocks
//! (`quant::dequantize_rows`, bit-identical to ggml) gives exactly `fake_quant_forward`'s values.

use super::grid::{code, row_grid, GroupGrid};
use super::{code_range, FakeQuantDims, FakeQuantError};
use crate::quant::k_quants::{pack_q5_k_levels, pack_q6_k_levels, pack_scale_min_k4, QK_K};
use crate::quant::legacy::pack_5bit;
use crate::quant::BlockType;
use rayon::prelude::*;

/// Encodes `w [rows, row_len]` with steps `s` and mins `m` (as [`super::fake_quant_forward`]) into
/// `dst`, rows of `out_row_len >= row_len` values (`dims.ty` rows of `out_row_len` must be
/// storable): each row is zero-padded to `out_row_len` (how the GGUF writer pads the shared
/// expert's down projection), the padded groups taking the row's last step and a zero min, which
/// leaves every stored field of the real groups unchanged. `dst` holds exactly
/// `rows * dims.ty.row_bytes(out_row_len)` bytes.
pub fn encode_rows(
    dst: &mut [u8],
    w: &[f32],
    s: &[f32],
    m: &[f32],
    dims: FakeQuantDims,
    out_row_len: usize,
) -> Result<(), FakeQuantError> {
    dims.check()?;
    let length = |what: &'static str, expected: usize, got: usize| {
        if expected == got {
            Ok(())
        } else {
            Err(FakeQuantError::Length { what, expected, got })
        }
    };
    length("weights", dims.rows * dims.row_len, w.len())?;
    length("steps", dims.params_len(), s.len())?;
    length("mins", dims.min_len(), m.len())?;
    let row_bytes = dims
        .ty
        .row_bytes(out_row_len)
        .ok()
        .filter(|_| out_row_len >= dims.row_len && out_row_len.is_multiple_of(dims.group))
        .ok_or(FakeQuantError::Padding { ty: dims.ty, row_len: dims.row_len, out_row_len, group: dims.group })?;
    length("encoded bytes", dims.rows * row_bytes, dst.len())?;

    let (gpr, len, group) = (dims.groups_per_row(), dims.row_len, dims.group);
    let out_groups = out_row_len / group;
    let has_min = dims.has_min();
    dst.par_chunks_mut(row_bytes).enumerate().for_each_init(
        || {
            (
                vec![0f32; out_row_len],
                vec![0f32; out_groups],
                vec![0f32; out_groups],
                vec![GroupGrid::default(); out_groups],
            )
        },
        |(wp, sp, mp, grid), (r, out)| {
            wp[..len].copy_from_slice(&w[r * len..(r + 1) * len]);
            wp[len..].fill(0.0);
            let sr = &s[r * gpr..(r + 1) * gpr];
            sp[..gpr].copy_from_slice(sr);
            sp[gpr..].fill(sr[gpr - 1]);
            mp.fill(0.0);
            if has_min {
                mp[..gpr].copy_from_slice(&m[r * gpr..(r + 1) * gpr]);
            }
            let mins = if has_min { &mp[..] } else { &mp[..0] };
            row_grid(dims.ty, group, sp, mins, grid);
            encode_row(dims.ty, group, wp, grid, out);
        },
    );
    Ok(())
}

/// The levels (stored unsigned codes) of a run of values.
fn levels(ty: BlockType, group: usize, w: &[f32], grid: &[GroupGrid], first_group: usize, out: &mut [u8]) {
    let (lo, hi) = code_range(ty);
    let offset = if lo < 0 { -lo } else { 0 };
    for (i, (l, &x)) in out.iter_mut().zip(w).enumerate() {
        let g = &grid[first_group + i / group];
        *l = (code(x, g, lo, hi) + offset) as u8;
    }
}

/// Packs one row of `ty` blocks from its values and grid.
fn encode_row(ty: BlockType, group: usize, w: &[f32], grid: &[GroupGrid], out: &mut [u8]) {
    out.fill(0);
    let bs = ty.block_size();
    for (b, (x, blk)) in w.chunks_exact(bs).zip(out.chunks_exact_mut(ty.block_bytes())).enumerate() {
        let first_group = b * bs / group;
        let g = &grid[first_group];
        let local = |i: usize| &grid[(b * bs + i) / group];
        match ty {
            BlockType::Q8_0 => {
                blk[0..2].copy_from_slice(&g.d.to_le_bytes());
                let (lo, hi) = code_range(ty);
                for (q, &v) in blk[2..].iter_mut().zip(x) {
                    *q = code(v, g, lo, hi) as i8 as u8;
                }
            }
            BlockType::Q5_0 | BlockType::Q5_1 => {
                let mut q = [0u8; 32];
                levels(ty, group, x, grid, first_group, &mut q);
                blk[0..2].copy_from_slice(&g.d.to_le_bytes());
                let at = if ty == BlockType::Q5_1 {
                    blk[2..4].copy_from_slice(&g.m.to_le_bytes());
                    4
                } else {
                    2
                };
                let (qh, qs) = blk[at..].split_at_mut(4);
                pack_5bit(&q, qh, qs);
            }
            BlockType::Q6_K => {
                let mut l = [0u8; QK_K];
                levels(ty, group, x, &grid[first_group..], 0, &mut l);
                let l: [i8; QK_K] = l.map(|v| v as i8);
                pack_q6_k_levels(&l, &mut blk[..192]);
                for j in 0..16 {
                    blk[192 + j] = local(16 * j).sc;
                }
                blk[208..210].copy_from_slice(&g.d.to_le_bytes());
            }
            BlockType::Q5_K => {
                let mut l = [0u8; QK_K];
                levels(ty, group, x, &grid[first_group..], 0, &mut l);
                blk[0..2].copy_from_slice(&g.d.to_le_bytes());
                blk[2..4].copy_from_slice(&g.m.to_le_bytes());
                for j in 0..8 {
                    let sub = local(32 * j);
                    pack_scale_min_k4(&mut blk[4..16], j, sub.sc, sub.mm);
                }
                pack_q5_k_levels(&l, &mut blk[16..]);
            }
            other => unreachable!("{other} has no fake quantizer (FakeQuantDims::check)"),
        }
    }
}
