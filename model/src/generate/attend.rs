//! Causal grouped-query attention of new query rows against a sequence's cached keys and
//! values (inference only, no backward).
//!
//! The rows are the `n` newest tokens of one sequence, at positions `past..past+n`; the cache
//! already holds their keys and values, `[past+n, KV*Dh]`. Row `i` sees keys `0..=past+i`.
//! Query head `h` uses KV head `h / (H/KV)` and scores are scaled by `1/sqrt(Dh)`, as in
//! `kernels_cpu::attention` (the same `exp_fast`, f32 products with fused multiply-adds); the
//! softmax is taken over the whole visible prefix at once.

use kernels_cpu::fastmath::exp_fast;
use rayon::prelude::*;

/// Heads and widths of one attention.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    /// Query heads H.
    pub h: usize,
    /// Key/value heads KV.
    pub kv: usize,
    /// Head dim Dh.
    pub dh: usize,
}

/// `out [n, H*Dh]` = attention of `q [n, H*Dh]` (positions `past..past+n`) over `k`, `v`
/// `[past+n, KV*Dh]`. Panics on inconsistent lengths (programming errors).
pub fn cached_attention(out: &mut [f32], q: &[f32], k: &[f32], v: &[f32], past: usize, heads: Heads) {
    let Heads { h, kv, dh } = heads;
    let (qw, kw) = (h * dh, kv * dh);
    let n = q.len() / qw;
    assert!(kv > 0 && h.is_multiple_of(kv) && q.len() == n * qw && out.len() == q.len());
    assert!(k.len() == (past + n) * kw && v.len() == k.len(), "cached attention: cache is not [past+n, KV*Dh]");
    let (group, scale) = (h / kv, 1.0 / (dh as f32).sqrt());
    out.par_chunks_mut(dh).enumerate().for_each(|(row_head, o)| {
        let (i, head) = (row_head / h, row_head % h);
        // The query is scaled before the products, as the tiled kernel does.
        let qv: Vec<f32> = q[i * qw + head * dh..][..dh].iter().map(|x| x * scale).collect();
        let at = CacheView { k, v, visible: past + i + 1, stride: kw, offset: (head / group) * dh };
        attend_head(o, &qv, at);
    });
}

/// One KV head's columns of the cache, rows `0..visible`.
#[derive(Clone, Copy)]
struct CacheView<'a> {
    k: &'a [f32],
    v: &'a [f32],
    visible: usize,
    stride: usize,
    offset: usize,
}

/// One query head's output row. Compiled with FMA where the CPU has it: without the target
/// feature, `f32::mul_add` is a call into libm's `fmaf` (20% of a decode step, perf); the
/// instruction and the library function both round once, so the numbers are the same.
fn attend_head(o: &mut [f32], qv: &[f32], at: CacheView<'_>) {
    #[cfg(target_arch = "x86_64")]
    if kernels_cpu::fastmath::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { attend_head_fma(o, qv, at) };
    }
    attend_head_body(o, qv, at)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_head_fma(o: &mut [f32], qv: &[f32], at: CacheView<'_>) {
    attend_head_body(o, qv, at)
}

#[inline(always)]
fn attend_head_body(o: &mut [f32], qv: &[f32], at: CacheView<'_>) {
    let dh = qv.len();
    let mut scores: Vec<f32> = (0..at.visible)
        .map(|j| {
            let kj = &at.k[j * at.stride + at.offset..][..dh];
            qv.iter().zip(kj).fold(0f32, |acc, (a, b)| a.mul_add(*b, acc))
        })
        .collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = exp_fast(*s - max);
        sum += *s;
    }
    o.fill(0.0);
    for (j, p) in scores.iter().enumerate() {
        let vj = &at.v[j * at.stride + at.offset..][..dh];
        o.iter_mut().zip(vj).for_each(|(x, y)| *x = p.mul_add(*y, *x));
    }
    o.iter_mut().for_each(|x| *x /= sum);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernels_cpu::attention::{attention_naive, AttnDims};
    use kernels_cpu::check::{max_errors, rand_vec, to_f64};

    /// The last `n` rows of a causal attention over `t` tokens equal the f64 reference's rows.
    #[test]
    fn matches_causal_reference_rows() {
        let heads = Heads { h: 6, kv: 2, dh: 8 };
        let (t, n) = (11, 4);
        let q = rand_vec(t * 6 * 8, 1);
        let k = rand_vec(t * 2 * 8, 2);
        let v = rand_vec(t * 2 * 8, 3);
        let want =
            attention_naive(&to_f64(&q), &to_f64(&k), &to_f64(&v), None, AttnDims { b: 1, t, h: 6, kv: 2, dh: 8 });
        let mut got = vec![0f32; n * 48];
        cached_attention(&mut got, &q[(t - n) * 48..], &k, &v, t - n, heads);
        let want: Vec<f32> = want[(t - n) * 48..].iter().map(|&x| x as f32).collect();
        let (abs, _) = max_errors(&got, &want);
        assert!(abs < 1e-6, "max abs error {abs}");
    }

    /// The FMA build of a head's attention gives the portable build's bits (both round each
    /// fused multiply-add once); skipped with a message on a CPU without FMA.
    #[test]
    fn fma_build_gives_the_portable_bits() {
        if !kernels_cpu::fastmath::has_avx2_fma() {
            eprintln!("skipped: this CPU has no AVX2 + FMA");
            return;
        }
        let (dh, visible, stride) = (64, 37, 128);
        let q = rand_vec(dh, 4);
        let k = rand_vec(visible * stride, 5);
        let v = rand_vec(visible * stride, 6);
        let at = CacheView { k: &k, v: &v, visible, stride, offset: 64 };
        let (mut fused, mut portable) = (vec![0f32; dh], vec![0f32; dh]);
        attend_head(&mut fused, &q, at);
        attend_head_body(&mut portable, &q, at);
        assert_eq!(
            fused.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            portable.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }
}
