//! Rotary position embedding, Hugging Face Qwen3 "rotate_half" convention.
//!
//! Each head vector of length Dh is split into halves `x1 = x[..Dh/2]`, `x2 = x[Dh/2..]`; pair `i`
//! rotates by `angle = pos * inv_freq[i]`, `inv_freq[i] = 1 / theta^(2i/Dh)`:
//! `out[i] = x1*cos - x2*sin`, `out[i + Dh/2] = x2*cos + x1*sin`.
//!
//! Shapes: `x`, `out`, `dx`, `dout` are `[N, H, Dh]` (N rows, H heads), `pos` is `[N]`.
//! The forward multiplies and adds exactly as transformers does in f32 (no fused multiply-add), so
//! with the same table it reproduces it to the bit.
use rayon::prelude::*;

/// Elements per parallel task: enough work to outweigh the hand-off.
const TASK_ELEMS: usize = 1 << 14;

/// Precomputed rotation angles' cosines and sines.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeTable {
    /// Dh: head dimension (even).
    pub head_dim: usize,
    /// Number of positions in the table; every position used must be below it.
    pub max_pos: usize,
    /// `cos(angle)`: `[max_pos, Dh/2]`.
    pub cos: Vec<f32>,
    /// `sin(angle)`: `[max_pos, Dh/2]`.
    pub sin: Vec<f32>,
}

impl RopeTable {
    /// Builds the table the way transformers does in float32: `inv_freq[i] = 1 / theta^(2i/Dh)`
    /// and `angle = inv_freq[i] * pos` rounded to f32 at each step; the cosine and sine of that f32
    /// angle are computed in f64 and rounded to f32.
    ///
    /// Panics if `head_dim` is zero or odd.
    pub fn new(head_dim: usize, max_pos: usize, theta: f64) -> Self {
        assert!(head_dim > 0 && head_dim & 1 == 0, "rope: head_dim must be even and positive");
        let half = head_dim / 2;
        let inv_freq: Vec<f32> =
            (0..half).map(|i| 1.0f32 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
        let mut cos = vec![0f32; max_pos * half];
        let mut sin = vec![0f32; max_pos * half];
        cos.par_chunks_mut(half).zip(sin.par_chunks_mut(half)).enumerate().with_min_len(64).for_each(|(p, (c, s))| {
            for ((c, s), &f) in c.iter_mut().zip(s.iter_mut()).zip(&inv_freq) {
                let angle = (f * p as f32) as f64;
                *c = angle.cos() as f32;
                *s = angle.sin() as f32;
            }
        });
        RopeTable { head_dim, max_pos, cos, sin }
    }

    /// The `(cos, sin)` rows `[Dh/2]` of position `p`.
    #[inline]
    fn row(&self, p: u32) -> (&[f32], &[f32]) {
        let p = p as usize;
        assert!(p < self.max_pos, "rope: position {p} >= max_pos {}", self.max_pos);
        let half = self.head_dim / 2;
        (&self.cos[p * half..(p + 1) * half], &self.sin[p * half..(p + 1) * half])
    }
}

/// Checks the slice lengths shared by forward and backward; returns (Dh, elements per row).
fn check_dims(a: usize, b: usize, pos: &[u32], table: &RopeTable, n: usize, heads: usize) -> (usize, usize) {
    let dh = table.head_dim;
    assert_eq!(table.cos.len(), table.max_pos * (dh / 2), "rope: table cos must be [max_pos, Dh/2]");
    assert_eq!(table.sin.len(), table.max_pos * (dh / 2), "rope: table sin must be [max_pos, Dh/2]");
    assert_eq!(a, n * heads * dh, "rope: output must be [N, H, Dh]");
    assert_eq!(b, n * heads * dh, "rope: input must be [N, H, Dh]");
    assert_eq!(pos.len(), n, "rope: pos must be [N]");
    (dh, heads * dh)
}

/// `out = rotate(x, pos)` for `x`, `out`: `[N, H, Dh]`, `pos`: `[N]` (each `< table.max_pos`).
pub fn rope_forward(out: &mut [f32], x: &[f32], pos: &[u32], table: &RopeTable, n: usize, heads: usize) {
    let (dh, row) = check_dims(out.len(), x.len(), pos, table, n, heads);
    if row == 0 {
        return;
    }
    let half = dh / 2;
    let r = (TASK_ELEMS / row).max(1);
    out.par_chunks_mut(r * row).zip(x.par_chunks(r * row)).zip(pos.par_chunks(r)).for_each(|((out, x), pos)| {
        for ((out, x), &p) in out.chunks_exact_mut(row).zip(x.chunks_exact(row)).zip(pos) {
            let (cos, sin) = table.row(p);
            for (o, x) in out.chunks_exact_mut(dh).zip(x.chunks_exact(dh)) {
                let (o1, o2) = o.split_at_mut(half);
                let (x1, x2) = x.split_at(half);
                for ((((o1, o2), (&a, &b)), &c), &s) in o1.iter_mut().zip(o2).zip(x1.iter().zip(x2)).zip(cos).zip(sin) {
                    *o1 = a * c - b * s;
                    *o2 = b * c + a * s;
                }
            }
        }
    });
}

/// `dx += rotate(dout, -pos)`: the transpose rotation, accumulated.
/// `dx1 += d1*cos + d2*sin`, `dx2 += d2*cos - d1*sin`.
pub fn rope_backward(dx: &mut [f32], dout: &[f32], pos: &[u32], table: &RopeTable, n: usize, heads: usize) {
    let (dh, row) = check_dims(dx.len(), dout.len(), pos, table, n, heads);
    if row == 0 {
        return;
    }
    let half = dh / 2;
    let r = (TASK_ELEMS / row).max(1);
    dx.par_chunks_mut(r * row).zip(dout.par_chunks(r * row)).zip(pos.par_chunks(r)).for_each(|((dx, dout), pos)| {
        for ((dx, dout), &p) in dx.chunks_exact_mut(row).zip(dout.chunks_exact(row)).zip(pos) {
            let (cos, sin) = table.row(p);
            for (g, d) in dx.chunks_exact_mut(dh).zip(dout.chunks_exact(dh)) {
                let (g1, g2) = g.split_at_mut(half);
                let (d1, d2) = d.split_at(half);
                for ((((g1, g2), (&a, &b)), &c), &s) in g1.iter_mut().zip(g2).zip(d1.iter().zip(d2)).zip(cos).zip(sin) {
                    *g1 += a * c + b * s;
                    *g2 += b * c - a * s;
                }
            }
        }
    });
}

/// Reference forward in f64 with angles computed in f64: `x: [N, H, Dh]`, `pos: [N]`.
pub fn rope_naive(x: &[f64], pos: &[u32], head_dim: usize, theta: f64, n: usize, heads: usize) -> Vec<f64> {
    assert!(head_dim & 1 == 0, "rope_naive: head_dim must be even");
    assert_eq!(x.len(), n * heads * head_dim, "rope_naive: x must be [N, H, Dh]");
    assert_eq!(pos.len(), n, "rope_naive: pos must be [N]");
    let half = head_dim / 2;
    let mut out = vec![0f64; x.len()];
    for (t, &p) in pos.iter().enumerate() {
        for h in 0..heads {
            let base = (t * heads + h) * head_dim;
            for i in 0..half {
                let inv_freq = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
                let (s, c) = (p as f64 * inv_freq).sin_cos();
                let (a, b) = (x[base + i], x[base + i + half]);
                out[base + i] = a * c - b * s;
                out[base + i + half] = b * c + a * s;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{
        assert_close, assert_grad_matches_fd, dot64, finite_diff, max_errors, rand_vec, rel_norm_err, to_f64,
    };

    const THETA: f64 = 1_000_000.0;

    fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    /// Deterministic positions in `0..max_pos`.
    fn positions(n: usize, max_pos: usize, seed: u64) -> Vec<u32> {
        rand_vec(n, seed)
            .iter()
            .map(|&v| (((v + 1.0) * 0.5 * max_pos as f32) as usize).min(max_pos - 1) as u32)
            .collect()
    }

    #[test]
    fn table_follows_the_float32_recipe() {
        let (dh, max_pos) = (128, 5000);
        let t = RopeTable::new(dh, max_pos, THETA);
        for &p in &[0usize, 1, 17, 4095, 4999] {
            for &i in &[0usize, 1, 31, 63] {
                let inv = 1.0f32 / 1_000_000f32.powf((2 * i) as f32 / 128.0);
                let angle = inv * p as f32;
                assert_eq!(t.cos[p * 64 + i], (angle as f64).cos() as f32, "cos p={p} i={i}");
                assert_eq!(t.sin[p * 64 + i], (angle as f64).sin() as f32, "sin p={p} i={i}");
            }
        }
        assert!(t.cos[..64].iter().all(|&c| c == 1.0) && t.sin[..64].iter().all(|&s| s == 0.0));
    }

    #[test]
    fn forward_matches_naive_on_awkward_sizes() {
        // (n, heads, Dh, max_pos)
        for &(n, heads, dh, max_pos) in &[(1, 1, 2, 1), (37, 3, 18, 64), (1031, 2, 128, 512), (300, 5, 64, 40)] {
            let table = RopeTable::new(dh, max_pos, THETA);
            let x = rand_vec(n * heads * dh, 1);
            let pos = positions(n, max_pos, 2);
            let mut out = vec![0.0; x.len()];
            rope_forward(&mut out, &x, &pos, &table, n, heads);
            let want = f32s(&rope_naive(&to_f64(&x), &pos, dh, THETA, n, heads));
            let (abs, rel) = max_errors(&out, &want);
            eprintln!("rope forward n={n} h={heads} dh={dh} max_pos={max_pos}: max abs {abs:.2e} max rel {rel:.2e}");
            // The f32 angle (as in transformers) is off by up to ~max_pos * 2^-24 rad.
            assert_close(&out, &want, 1e-6 + max_pos as f64 * 2e-7, 0.0, &format!("rope forward n={n} dh={dh}"));
        }
    }

    #[test]
    fn backward_matches_finite_differences() {
        for &(n, heads, dh) in &[(1, 1, 2), (3, 2, 6), (2, 3, 10)] {
            let table = RopeTable::new(dh, 16, 10_000.0);
            let x = rand_vec(n * heads * dh, 3);
            let r = rand_vec(x.len(), 4);
            let pos = positions(n, 16, 5);
            let mut dx = vec![0.0; x.len()];
            rope_backward(&mut dx, &r, &pos, &table, n, heads);
            let fd = finite_diff(|xv| dot64(&rope_naive(xv, &pos, dh, 10_000.0, n, heads), &r), &to_f64(&x), 1e-5);
            eprintln!("rope backward n={n} h={heads} dh={dh}: rel err {:.2e}", rel_norm_err(&dx, &f32s(&fd)));
            assert_grad_matches_fd(&dx, &fd, 1e-4, &format!("rope dx n={n} dh={dh}"));
        }
    }

    #[test]
    fn backward_inverts_forward_and_accumulates() {
        let (n, heads, dh) = (1031, 3, 18);
        let table = RopeTable::new(dh, 100, THETA);
        let pos = positions(n, 100, 6);
        let x = rand_vec(n * heads * dh, 7);
        let mut y = vec![0.0; x.len()];
        rope_forward(&mut y, &x, &pos, &table, n, heads);
        // A rotation's transpose is its inverse: backward of forward gives x back.
        let mut back = vec![0.0; x.len()];
        rope_backward(&mut back, &y, &pos, &table, n, heads);
        assert_close(&back, &x, 1e-6, 0.0, "rope backward(forward(x))");
        let init = rand_vec(x.len(), 8);
        let mut acc = init.clone();
        rope_backward(&mut acc, &y, &pos, &table, n, heads);
        rope_backward(&mut acc, &y, &pos, &table, n, heads);
        let want: Vec<f32> = init.iter().zip(&back).map(|(a, g)| a + 2.0 * g).collect();
        assert_close(&acc, &want, 1e-6, 1e-6, "rope dx accumulates");
    }

    #[test]
    #[should_panic(expected = "max_pos")]
    fn position_past_table_panics() {
        let table = RopeTable::new(4, 8, THETA);
        let mut out = vec![0.0; 4];
        rope_forward(&mut out, &[1.0; 4], &[8], &table, 1, 1);
    }
}
