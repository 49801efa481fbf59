//! The reference GPTQ `Quantizer` (symmetric, per output row) and the output-error yardstick.

/// Scale and zero point of one group, per output row.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupQuantizer {
    /// Scale per output row `[N]`.
    pub scale: Vec<f64>,
    /// Zero point `(maxq + 1) / 2`.
    pub zero: f64,
    /// Largest code.
    pub maxq: f64,
}

impl GroupQuantizer {
    /// Fits the group `cols [G, N]` (G input columns, each the `N` weights of one column):
    /// the reference `find_params(weight=True)` with `sym=True`, `perchannel=True`.
    pub fn fit(cols: &[f64], n: usize, maxq: u32) -> Self {
        let maxq = maxq as f64;
        let mut lo = vec![0f64; n];
        let mut hi = vec![0f64; n];
        for col in cols.chunks(n) {
            for ((l, h), &x) in lo.iter_mut().zip(hi.iter_mut()).zip(col) {
                *l = l.min(x);
                *h = h.max(x);
            }
        }
        let scale = lo
            .iter()
            .zip(&hi)
            .map(|(&l, &h)| {
                let xmax = l.abs().max(h);
                // Only a negative minimum is mirrored; a group with no negative value keeps 0.
                let xmin = if l < 0.0 { -xmax } else { l };
                let (xmin, xmax) = if xmin == 0.0 && xmax == 0.0 { (-1.0, 1.0) } else { (xmin, xmax) };
                (xmax - xmin) / maxq
            })
            .collect();
        GroupQuantizer { scale, zero: (maxq + 1.0) / 2.0, maxq }
    }

    /// The code of weight `w` in row `n`: `clamp(round_half_even(w / scale) + zero, 0, maxq)`.
    #[inline]
    pub fn code(&self, w: f64, n: usize) -> f64 {
        ((w / self.scale[n]).round_ties_even() + self.zero).clamp(0.0, self.maxq)
    }

    /// The dequantized value of code `q` in row `n`.
    #[inline]
    pub fn value(&self, q: f64, n: usize) -> f64 {
        self.scale[n] * (q - self.zero)
    }
}

/// `Σ_n (w_n - v_n)ᵀ H (w_n - v_n)` for `w, v [N, K]` and `h [K, K]`: the increase of
/// `Σ_t ||W x_t - V x_t||²` (times 2/T) that quantizing `w` to `v` causes on the calibration inputs.
pub fn output_error(w: &[f32], v: &[f32], h: &[f64], cols: usize) -> f64 {
    use rayon::prelude::*;
    w.par_chunks(cols)
        .zip(v.par_chunks(cols))
        .map(|(a, b)| {
            let d: Vec<f64> = a.iter().zip(b).map(|(&x, &y)| x as f64 - y as f64).collect();
            h.chunks(cols)
                .zip(&d)
                .map(|(row, &di)| di * row.iter().zip(&d).map(|(x, y)| x * y).sum::<f64>())
                .sum::<f64>()
        })
        .sum()
}
