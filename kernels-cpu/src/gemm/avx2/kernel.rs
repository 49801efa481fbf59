//! The 6x16 AVX2+FMA register-blocked microkernel.
//!
//! One call computes a `MR x NR` tile of C from an A micro-panel (`kc` steps of `MR` values,
//! see [`super::pack::pack_a`]) and a B micro-panel (`kc` steps of `NR` values, see
//! [`super::pack::pack_b`]): 12 ymm accumulators (6 rows x 2 vectors of 8 columns), two ymm for
//! the B row and one for the broadcast A value, 15 of the 16 ymm registers.
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

/// `c[i*ldc + j] (+)= sum_p a[p*MR + i] * b[p*NR + j]` for `i < mr`, `j < nr`; `add` chooses
/// `+=` over `=`.
///
/// # Safety
/// The CPU must support AVX2 and FMA. `a` must be readable for `kc * MR` floats, `b` for
/// `kc * NR` floats; `c` must be valid for reads and writes of rows `0..mr`, columns `0..nr`
/// at row stride `ldc`, and must not overlap `a` or `b`. `mr <= MR`, `nr <= NR`.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn kernel_6x16(
    kc: usize,
    a: *const f32,
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
    let mut ap = a;
    let mut bp = b;
    macro_rules! step {
        ($off:expr) => {{
            // SAFETY: step `p = $off` of this iteration is below kc, so the A reads
            // `ap[p*MR..p*MR+MR]` and the B reads `bp[p*NR..p*NR+NR]` are inside the
            // micro-panels the caller vouched for.
            unsafe {
                let b0 = _mm256_loadu_ps(bp.add($off * NR));
                let b1 = _mm256_loadu_ps(bp.add($off * NR + 8));
                let a0 = _mm256_broadcast_ss(&*ap.add($off * MR));
                acc[0] = _mm256_fmadd_ps(a0, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(a0, b1, acc[1]);
                let a1 = _mm256_broadcast_ss(&*ap.add($off * MR + 1));
                acc[2] = _mm256_fmadd_ps(a1, b0, acc[2]);
                acc[3] = _mm256_fmadd_ps(a1, b1, acc[3]);
                let a2 = _mm256_broadcast_ss(&*ap.add($off * MR + 2));
                acc[4] = _mm256_fmadd_ps(a2, b0, acc[4]);
                acc[5] = _mm256_fmadd_ps(a2, b1, acc[5]);
                let a3 = _mm256_broadcast_ss(&*ap.add($off * MR + 3));
                acc[6] = _mm256_fmadd_ps(a3, b0, acc[6]);
                acc[7] = _mm256_fmadd_ps(a3, b1, acc[7]);
                let a4 = _mm256_broadcast_ss(&*ap.add($off * MR + 4));
                acc[8] = _mm256_fmadd_ps(a4, b0, acc[8]);
                acc[9] = _mm256_fmadd_ps(a4, b1, acc[9]);
                let a5 = _mm256_broadcast_ss(&*ap.add($off * MR + 5));
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
        // SAFETY: stays within (or one past) the micro-panels: p + 4 <= kc.
        unsafe {
            ap = ap.add(4 * MR);
            bp = bp.add(4 * NR);
        }
        p += 4;
    }
    while p < kc {
        step!(0);
        // SAFETY: as above, p + 1 <= kc.
        unsafe {
            ap = ap.add(MR);
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
