//! Packing of A into `MR`-row micro-panels and of B into `NR`-column micro-panels, from any
//! row/column strides, so every transpose combination reaches the microkernel in one layout.
//!
//! Packed A (`rows x kc` block): panel `q` holds rows `q*MR..q*MR+MR` as `kc` groups of `MR`
//! values (`dst[q*kc*MR + p*MR + i] = A[q*MR + i, p]`). Packed B (`kc x cols` block): panel `q`
//! holds columns `q*NR..q*NR+NR` as `kc` groups of `NR` values
//! (`dst[q*kc*NR + p*NR + j] = B[p, q*NR + j]`). Rows/columns past the edge are zero, so the
//! microkernel never branches on them.
//!
//! Fast paths: a unit stride along k (A not transposed, B transposed) goes through 8x8 AVX
//! transposes; a unit stride along m or n is a plain copy; anything else is a scalar gather.

use super::kernel::{MR, NR};
use core::arch::x86_64::*;

/// Transposes the 8x8 block in `r` (rows -> columns) in registers.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

/// Packs the `rows x kc` block of A whose element `(i, p)` is `src[i*rs + p*cs]` into `dst`
/// (layout in the module docs); `ceil(rows/MR)` panels.
///
/// # Safety
/// AVX2 must be available. `src[i*rs + p*cs]` must be readable for all `i < rows`, `p < kc`;
/// `dst` must be writable for `ceil(rows/MR) * kc * MR + 8` floats (the AVX path spills up
/// to 2 floats past a panel, overwritten by the next one) and must not overlap `src`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn pack_a(src: *const f32, rs: usize, cs: usize, rows: usize, kc: usize, dst: *mut f32) {
    let full = rows / MR;
    if rs == 1 && cs != 1 && full > 0 {
        // Columns contiguous along m (A stored transposed): copy MR floats per step, k-steps
        // outermost in groups of 8 so the reads run along the stored rows.
        for p0 in (0..kc).step_by(8) {
            for q in 0..full {
                for p in p0..kc.min(p0 + 8) {
                    // SAFETY: rows q*MR..q*MR+MR < rows and p < kc; panel q is inside dst.
                    unsafe {
                        core::ptr::copy_nonoverlapping(src.add(q * MR + p * cs), dst.add(q * kc * MR + p * MR), MR);
                    }
                }
            }
        }
        if full * MR < rows {
            // SAFETY: the partial last panel, rows full*MR..rows, lands after the full ones.
            unsafe {
                pack_a_panels(src.add(full * MR), rs, cs, rows - full * MR, kc, dst.add(full * kc * MR));
            }
        }
        return;
    }
    // SAFETY: same contract.
    unsafe { pack_a_panels(src, rs, cs, rows, kc, dst) }
}

/// [`pack_a`] panel by panel.
///
/// # Safety
/// As [`pack_a`].
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_a_panels(src: *const f32, rs: usize, cs: usize, rows: usize, kc: usize, dst: *mut f32) {
    let mut i0 = 0;
    let mut d = dst;
    while i0 < rows {
        let r = MR.min(rows - i0);
        // SAFETY (whole block): row i0 + i with i < r is below `rows`, p < kc; the panel
        // occupies d[0..kc*MR] (+2 spilled floats on the transposing path) inside `dst`.
        unsafe {
            let s = src.add(i0 * rs);
            if cs == 1 {
                // Rows contiguous along k: 8 steps of k at a time through an 8x8 transpose of
                // (r rows, zero rows); each column store writes 8 floats of which the last 2
                // are junk overwritten by the next store.
                let zero = _mm256_setzero_ps();
                let mut p = 0;
                while p + 8 <= kc {
                    let mut v = [zero; 8];
                    for (i, vi) in v.iter_mut().enumerate().take(r) {
                        *vi = _mm256_loadu_ps(s.add(i * rs + p));
                    }
                    let t = transpose8(v);
                    for (q, tq) in t.iter().enumerate() {
                        _mm256_storeu_ps(d.add((p + q) * MR), *tq);
                    }
                    p += 8;
                }
                for p in p..kc {
                    for i in 0..MR {
                        *d.add(p * MR + i) = if i < r { *s.add(i * rs + p) } else { 0.0 };
                    }
                }
            } else {
                for p in 0..kc {
                    for i in 0..MR {
                        *d.add(p * MR + i) = if i < r { *s.add(i * rs + p * cs) } else { 0.0 };
                    }
                }
            }
            d = d.add(kc * MR);
        }
        i0 += MR;
    }
}

/// Packs B panels `q0..q1` of the `kc x cols` block whose element `(p, j)` is
/// `src[p*rs + j*cs]` into `dst` (layout in the module docs; panel `q` starts at
/// `dst + q*kc*NR`), so disjoint panel ranges can be packed by different threads.
///
/// # Safety
/// AVX2 must be available. `src[p*rs + j*cs]` must be readable for all `p < kc`, `j < cols`;
/// `dst` must be writable for panels `q0..q1` (`q1 <= ceil(cols/NR)`), nobody else may access
/// those panels meanwhile, and `dst` must not overlap `src`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn pack_b(
    src: *const f32,
    rs: usize,
    cs: usize,
    cols: usize,
    kc: usize,
    q0: usize,
    q1: usize,
    dst: *mut f32,
) {
    if cs == 1 {
        // Rows contiguous along n: copy NR floats per step, k-steps outermost in groups of 8 so
        // the reads are a few sequential streams and the writes 512-byte runs per panel.
        let full_end = q1.min(cols / NR).max(q0);
        for p0 in (0..kc).step_by(8) {
            for q in q0..full_end {
                for p in p0..kc.min(p0 + 8) {
                    // SAFETY: columns q*NR..q*NR+NR <= cols and p < kc; panel q is ours.
                    unsafe {
                        core::ptr::copy_nonoverlapping(src.add(p * rs + q * NR), dst.add(q * kc * NR + p * NR), NR);
                    }
                }
            }
        }
        // SAFETY: same contract, for the partial last panel if it is in range.
        unsafe { pack_b_panels(src, rs, cs, cols, kc, full_end, q1, dst) };
        return;
    }
    // SAFETY: same contract.
    unsafe { pack_b_panels(src, rs, cs, cols, kc, q0, q1, dst) };
}

/// [`pack_b`] panel by panel.
///
/// # Safety
/// As [`pack_b`].
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn pack_b_panels(
    src: *const f32,
    rs: usize,
    cs: usize,
    cols: usize,
    kc: usize,
    q0: usize,
    q1: usize,
    dst: *mut f32,
) {
    for q in q0..q1 {
        let j0 = q * NR;
        let c = NR.min(cols - j0);
        // SAFETY (whole block): column j0 + j with j < c is below `cols`, p < kc; the panel
        // occupies d[0..kc*NR], inside this call's panels of `dst`.
        unsafe {
            let s = src.add(j0 * cs);
            let d = dst.add(q * kc * NR);
            if rs == 1 && cs != 1 {
                // Columns contiguous along k (B stored transposed): two 8x8 transposes per 8
                // steps of k.
                let zero = _mm256_setzero_ps();
                let mut p = 0;
                while p + 8 <= kc {
                    for half in 0..2 {
                        let mut v = [zero; 8];
                        for (j, vj) in v.iter_mut().enumerate() {
                            let col = half * 8 + j;
                            if col < c {
                                *vj = _mm256_loadu_ps(s.add(col * cs + p));
                            }
                        }
                        let t = transpose8(v);
                        for (pp, tp) in t.iter().enumerate() {
                            _mm256_storeu_ps(d.add((p + pp) * NR + half * 8), *tp);
                        }
                    }
                    p += 8;
                }
                for p in p..kc {
                    for j in 0..NR {
                        *d.add(p * NR + j) = if j < c { *s.add(j * cs + p) } else { 0.0 };
                    }
                }
            } else {
                for p in 0..kc {
                    for j in 0..NR {
                        *d.add(p * NR + j) = if j < c { *s.add(p * rs + j * cs) } else { 0.0 };
                    }
                }
            }
        }
    }
}
