//! The effective grid of every group of one tensor, to quantize single weights the way
//! [`super::fake_quant_forward`] does (GPTQ on the QAT grid quantizes one column at a time).

use super::grid::{code, row_grid, value, GroupGrid};
use super::{code_range, FakeQuantDims};

/// Per group of a `[rows, row_len]` tensor, the step and min its stored fields give.
#[derive(Clone, Debug)]
pub struct GridTable {
    dims: FakeQuantDims,
    groups: Vec<GroupGrid>,
    lo: i32,
    hi: i32,
}

impl GridTable {
    /// The grid of steps `s` and mins `m` (`[rows, row_len / group]`, `m` empty for the symmetric
    /// formats).
    pub fn new(s: &[f32], m: &[f32], dims: FakeQuantDims) -> Self {
        dims.check().unwrap_or_else(|e| panic!("fake_quant grid: {e}"));
        assert_eq!(s.len(), dims.params_len(), "fake_quant grid: s length");
        assert_eq!(m.len(), dims.min_len(), "fake_quant grid: m length");
        let gpr = dims.groups_per_row();
        let mut groups = vec![GroupGrid::default(); dims.params_len()];
        for (r, out) in groups.chunks_mut(gpr).enumerate() {
            let mr = if dims.has_min() { &m[r * gpr..(r + 1) * gpr] } else { &m[..0] };
            row_grid(dims.ty, dims.group, &s[r * gpr..(r + 1) * gpr], mr, out);
        }
        let (lo, hi) = code_range(dims.ty);
        GridTable { dims, groups, lo, hi }
    }

    /// The fake-quantized value of weight `w` at `(row, col)`: the same bits as
    /// `fake_quant_forward` gives for `w` there.
    #[inline]
    pub fn value(&self, row: usize, col: usize, w: f32) -> f32 {
        let g = &self.groups[row * self.dims.groups_per_row() + col / self.dims.group];
        value(code(w, g, self.lo, self.hi), g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_quant::{fake_quant_forward, init_mse};
    use crate::quant::BlockType;

    fn noise(i: usize) -> f32 {
        let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(23) >> 40;
        (x as f32 / (1u64 << 23) as f32) - 1.0
    }

    #[test]
    fn single_weights_quantize_as_the_whole_tensor_forward() {
        for (ty, group) in [
            (BlockType::Q8_0, 32),
            (BlockType::Q5_0, 64),
            (BlockType::Q6_K, 16),
            (BlockType::Q5_1, 32),
            (BlockType::Q5_K, 32),
            (BlockType::Q5_K, 64),
        ] {
            let dims = FakeQuantDims { ty, rows: 5, row_len: 512, group };
            let w: Vec<f32> = (0..dims.rows * dims.row_len).map(|i| 0.05 * noise(i) + 0.01 * noise(7 * i)).collect();
            let mut s = vec![0f32; dims.params_len()];
            let mut m = vec![0f32; dims.min_len()];
            init_mse(&mut s, &mut m, &w, dims, &[1.0, 0.9, 0.8]);
            // Weights off the init range too, so the clamps are exercised.
            let probe: Vec<f32> = w.iter().enumerate().map(|(i, &x)| if i % 17 == 0 { 3.0 * x } else { x }).collect();
            let mut want = vec![0f32; probe.len()];
            fake_quant_forward(&mut want, &probe, &s, &m, dims);
            let table = GridTable::new(&s, &m, dims);
            for (i, (&x, &y)) in probe.iter().zip(&want).enumerate() {
                let got = table.value(i / dims.row_len, i % dims.row_len, x);
                assert_eq!(got.to_bits(), y.to_bits(), "{ty} group {group}: weight {i}: {got} vs {y}");
            }
        }
    }
}
