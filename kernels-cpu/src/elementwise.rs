//! Elementwise ops: residual add and scaling.
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// `a + b` into a new vector: each element written once (no zero fill first).
pub fn add_new(a: &[f32], b: &[f32]) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "add: length mismatch");
    let n = a.len();
    let mut out = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n].par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK))).for_each(
        |(o, (a, b))| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                o.write(a + b);
            }
        },
    );
    // SAFETY: the chunks cover all n elements and each one was written above.
    unsafe { out.set_len(n) };
    out
}

/// `dst += scale * src` (the backward of add with `scale = 1`, and of scaling).
pub fn axpy(dst: &mut [f32], scale: f32, src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "axpy: length mismatch");
    dst.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(d, s)| {
        for (d, &s) in d.iter_mut().zip(s) {
            *d += s * scale;
        }
    });
}

/// `dst *= scale`.
pub fn scale(dst: &mut [f32], scale: f32) {
    dst.par_chunks_mut(CHUNK).for_each(|d| d.iter_mut().for_each(|x| *x *= scale));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::rand_vec;

    #[test]
    fn add_axpy_and_scale_match_scalar_loops() {
        let n = 40_000 + 17;
        let a = rand_vec(n, 1);
        let b = rand_vec(n, 2);
        let out = add_new(&a, &b);
        assert_eq!(out.len(), n);
        assert!(add_new(&[], &[]).is_empty());
        let mut acc = a.clone();
        axpy(&mut acc, 0.5, &b);
        let mut scaled = b.clone();
        scale(&mut scaled, 0.25);
        for i in 0..n {
            assert_eq!(out[i], a[i] + b[i]);
            assert_eq!(acc[i], a[i] + b[i] * 0.5);
            assert_eq!(scaled[i], b[i] * 0.25);
        }
    }
}
