//! f64 reference of causal grouped-query attention: materialises each head's [T, T] scores.

use super::AttnDims;

/// Whether query position `i` of sequence `b` sees key position `j`.
pub(super) fn visible(seg: Option<&[u32]>, t: usize, b: usize, i: usize, j: usize) -> bool {
    j <= i && seg.is_none_or(|s| s[b * t + i] == s[b * t + j])
}

/// Softmax probabilities of one (batch, query head): `[T, T]`, zero where masked, and the
/// logsumexp of each row's visible scaled scores: `[T]`.
pub(super) fn probs(
    q: &[f64],
    k: &[f64],
    seg: Option<&[u32]>,
    dims: AttnDims,
    b: usize,
    head: usize,
) -> (Vec<f64>, Vec<f64>) {
    let AttnDims { t, h, kv, dh, .. } = dims;
    let kvh = head / (h / kv);
    let scale = 1.0 / (dh as f64).sqrt();
    let mut p = vec![0f64; t * t];
    let mut lse = vec![0f64; t];
    for i in 0..t {
        let qi = &q[((b * t + i) * h + head) * dh..][..dh];
        let row = &mut p[i * t..(i + 1) * t];
        let mut mx = f64::NEG_INFINITY;
        for (j, x) in row.iter_mut().enumerate() {
            if visible(seg, t, b, i, j) {
                let kj = &k[((b * t + j) * kv + kvh) * dh..][..dh];
                *x = scale * qi.iter().zip(kj).map(|(a, c)| a * c).sum::<f64>();
                mx = mx.max(*x);
            }
        }
        let mut sum = 0.0;
        for (j, x) in row.iter_mut().enumerate() {
            if visible(seg, t, b, i, j) {
                *x = (*x - mx).exp();
                sum += *x;
            }
        }
        row.iter_mut().for_each(|x| *x /= sum);
        lse[i] = mx + sum.ln();
    }
    (p, lse)
}

/// Naive f64 reference of [`super::attention_forward`]: returns `out` [B, T, H, Dh].
/// Materialises the [T, T] probabilities of each head; for tests and small problems only.
pub fn attention_naive(q: &[f64], k: &[f64], v: &[f64], seg: Option<&[u32]>, dims: AttnDims) -> Vec<f64> {
    attention_naive_lse(q, k, v, seg, dims).0
}

/// [`attention_naive`] plus the logsumexp `[B, H, T]`.
pub(super) fn attention_naive_lse(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    seg: Option<&[u32]>,
    dims: AttnDims,
) -> (Vec<f64>, Vec<f64>) {
    let AttnDims { b: nb, t, h, kv, dh } = dims;
    dims.check(q.len(), k.len(), v.len(), seg.map(<[u32]>::len));
    let mut out = vec![0f64; nb * t * h * dh];
    let mut lse = vec![0f64; nb * h * t];
    for b in 0..nb {
        for head in 0..h {
            let kvh = head / (h / kv);
            let (p, l) = probs(q, k, seg, dims, b, head);
            lse[(b * h + head) * t..][..t].copy_from_slice(&l);
            for i in 0..t {
                let o = &mut out[((b * t + i) * h + head) * dh..][..dh];
                for j in 0..=i {
                    let pij = p[i * t + j];
                    if pij != 0.0 {
                        let vj = &v[((b * t + j) * kv + kvh) * dh..][..dh];
                        o.iter_mut().zip(vj).for_each(|(x, y)| *x += pij * y);
                    }
                }
            }
        }
    }
    (out, lse)
}
