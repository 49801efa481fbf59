//! The 6x16 AVX2+FMA register-blocked microkernel.
//!
//! One call computes a `MR x NR` tile of C from `MR` rows of A and a B micro-panel (`kc` steps
//! of `NR` values, see [`super::pack::pack_b`]): 12 ymm accumulators (6 rows x 2 vectors of 8
//! columns), two ymm for the B row and one for the broadcast A value, 15 of the 16 ymm
//! registers. A is read through six row pointers advancing `S` floats per k step: a packed
//! micro-panel (`kc` steps of `MR` values, see [`super::pack::pack_a`]; rows `a + i`, `S = MR`)
//! or, unpacked, six rows of a row-major A (`S = 1`).
//!
//! Each accumulator lane sums its products in increasing `p` starting from zero, with one
//! fused multiply-add per step; the sum is then stored into C or added to it. The value of an
//! element therefore depends only on the k-range of the call, never on the lane, the tile or
//! the thread that computed it.

use core::arch::x86_64::*;

/// Rows of a microtile (rows of an A micro-panel).
pub(crate) const MR: usize = 6;
/// Columns of a microtile (columns of a B micro-panel): two ymm vectors.
pub(crate) const NR: usize = 16;

/// Row pointers of a packed A micro-panel, for [`kernel_6x16`] with `S = MR`.
pub(crate) fn packed_rows(a: *const f32) -> [*const f32; MR] {
    std::array::from_fn(|i| a.wrapping_add(i))
}

/// Row pointers of rows `0..mr` of a row-major A with row stride `lda`, for [`kernel_6x16`]
/// with `S = 1`. Rows `mr..MR` of an edge tile repeat the last row (read, never stored).
pub(crate) fn unpacked_rows(a: *const f32, lda: usize, mr: usize) -> [*const f32; MR] {
    std::array::from_fn(|i| a.wrapping_add(i.min(mr.max(1) - 1) * lda))
}

/// `c[i*ldc + j] (+)= sum_p a[i][p*S] * b[p*NR + j]` for `i < mr`, `j < nr`, where `a[i]` is
/// the i-th row pointer; `add` chooses `+=` over `=`.
///
/// # Safety
/// The CPU must support AVX2 and FMA. Each `a[i]` must be readable at `p * S` for `p < kc`,
/// `b` for `kc * NR` floats; `c` must be valid for writes (and reads when `add`) of rows
/// `0..mr`, columns `0..nr` at row stride `ldc`, and must not overlap `a` or `b`. `mr <= MR`,
/// `nr <= NR`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn kernel_6x16<const S: usize>(
    kc: usize,
    a: [*const f32; MR],
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    add: bool,
) {
    // Bring the C tile towards L1 while the products are computed.
    for i in 0..mr {
        // SAFETY: prefetch never faults; the address is inside row i of the tile.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc) as *const i8) };
    }
    let mut acc = [_mm256_setzero_ps(); 12];
    let [mut a0p, mut a1p, mut a2p, mut a3p, mut a4p, mut a5p] = a;
    let mut bp = b;
    macro_rules! step {
        ($off:expr) => {{
            // SAFETY: step `p = $off` of this iteration is below kc, so the A reads
            // `a_i[p*S]` and the B reads `bp[p*NR..p*NR+NR]` are inside what the caller
            // vouched for.
            unsafe {
                let b0 = _mm256_loadu_ps(bp.add($off * NR));
                let b1 = _mm256_loadu_ps(bp.add($off * NR + 8));
                let a0 = _mm256_broadcast_ss(&*a0p.add($off * S));
                acc[0] = _mm256_fmadd_ps(a0, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(a0, b1, acc[1]);
                let a1 = _mm256_broadcast_ss(&*a1p.add($off * S));
                acc[2] = _mm256_fmadd_ps(a1, b0, acc[2]);
                acc[3] = _mm256_fmadd_ps(a1, b1, acc[3]);
                let a2 = _mm256_broadcast_ss(&*a2p.add($off * S));
                acc[4] = _mm256_fmadd_ps(a2, b0, acc[4]);
                acc[5] = _mm256_fmadd_ps(a2, b1, acc[5]);
                let a3 = _mm256_broadcast_ss(&*a3p.add($off * S));
                acc[6] = _mm256_fmadd_ps(a3, b0, acc[6]);
                acc[7] = _mm256_fmadd_ps(a3, b1, acc[7]);
                let a4 = _mm256_broadcast_ss(&*a4p.add($off * S));
                acc[8] = _mm256_fmadd_ps(a4, b0, acc[8]);
                acc[9] = _mm256_fmadd_ps(a4, b1, acc[9]);
                let a5 = _mm256_broadcast_ss(&*a5p.add($off * S));
                acc[10] = _mm256_fmadd_ps(a5, b0, acc[10]);
                acc[11] = _mm256_fmadd_ps(a5, b1, acc[11]);
            }
        }};
    }
    let mut p = 0;
    while p + 4 <= kc {
        step!(0);
        step!(1);
        step!(2);
        step!(3);
        // SAFETY: stays within (or one past) the rows and micro-panel: p + 4 <= kc.
        unsafe {
            advance(&mut [&mut a0p, &mut a1p, &mut a2p, &mut a3p, &mut a4p, &mut a5p], 4 * S);
            bp = bp.add(4 * NR);
        }
        p += 4;
    }
    while p < kc {
        step!(0);
        // SAFETY: as above, p + 1 <= kc.
        unsafe {
            advance(&mut [&mut a0p, &mut a1p, &mut a2p, &mut a3p, &mut a4p, &mut a5p], S);
            bp = bp.add(NR);
        }
        p += 1;
    }

    if mr == MR && nr == NR {
        for (i, pair) in acc.chunks_exact(2).enumerate() {
            // SAFETY: full tile: row i < MR = mr, columns 0..16 = 0..nr are in the caller's
            // writable tile.
            unsafe {
                let row = c.add(i * ldc);
                let (mut lo, mut hi) = (pair[0], pair[1]);
                if add {
                    lo = _mm256_add_ps(_mm256_loadu_ps(row), lo);
                    hi = _mm256_add_ps(_mm256_loadu_ps(row.add(8)), hi);
                }
                _mm256_storeu_ps(row, lo);
                _mm256_storeu_ps(row.add(8), hi);
            }
        }
    } else {
        // Edge tile: spill the accumulators and copy the valid part.
        let mut buf = [0f32; MR * NR];
        for (i, v) in acc.iter().enumerate() {
            // SAFETY: i * 8 + 8 <= 96 = buf.len().
            unsafe { _mm256_storeu_ps(buf.as_mut_ptr().add(i * 8), *v) };
        }
        for i in 0..mr {
            for j in 0..nr {
                // SAFETY: i < mr and j < nr: inside the caller's tile.
                unsafe {
                    let d = c.add(i * ldc + j);
                    *d = if add { *d + buf[i * NR + j] } else { buf[i * NR + j] };
                }
            }
        }
    }
}

/// Moves every row pointer `by` floats on.
///
/// # Safety
/// Each pointer plus `by` stays within (or one past) the allocation it points into.
#[inline(always)]
unsafe fn advance(rows: &mut [&mut *const f32; MR], by: usize) {
    for r in rows.iter_mut() {
        // SAFETY: the caller's contract.
        **r = unsafe { r.add(by) };
    }
}
