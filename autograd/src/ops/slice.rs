//! Column slices of a row-major matrix (how a fused projection is split into its parts).

use super::{ensure, rows};
use crate::backend::{kernel, kernel_bwd};
use crate::error::Result;
use crate::tape::Tape;
use crate::tensor::Tensor;

/// Columns `start..start + width` of `x [N, C]` → `[N, width]` (a copy).
pub fn slice_cols(tape: &Tape, x: &Tensor, start: usize, width: usize) -> Result<Tensor> {
    let c = x.last_dim();
    ensure(start + width <= c && width > 0, "slice_cols", || {
        format!("columns {start}..{} of {:?}", start + width, x.shape())
    })?;
    let n = rows(x);
    let xs = x.f32s();
    let be = tape.backend().clone();
    let out = kernel("slice_cols", be.copy_cols(&xs, c, start, width))?;
    drop(xs);
    let xt = x.clone();
    Ok(tape.record(Tensor::from_vec(out, &[n, width]), &[x], move |dy, g| {
        g.accumulate(&xt, |dx| kernel_bwd("slice_cols", be.add_cols(dx, dy, c, start)));
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_and_scatters_gradients_back() {
        let tape = Tape::new();
        let x = tape.leaf(&Tensor::from_vec((0..12).map(|v| v as f32).collect(), &[3, 4]));
        let a = slice_cols(&tape, &x, 1, 2).unwrap();
        assert_eq!(a.to_vec(), vec![1., 2., 5., 6., 9., 10.]);
        let b = slice_cols(&tape, &x, 3, 1).unwrap();
        let s = crate::ops::add(&tape, &a, &Tensor::from_vec(vec![0.0; 6], &[3, 2])).unwrap();
        let _ = (b, s.clone());
        let grads = tape.backward_with(&s, &[1., 2., 3., 4., 5., 6.]);
        assert_eq!(grads.get(&x).unwrap(), &[0., 1., 2., 0., 0., 3., 4., 0., 0., 5., 6., 0.]);
        assert!(slice_cols(&Tape::new(), &x, 3, 2).is_err());
    }
}
