//! The AVX512-BF16 microkernel: the same 32x32 f32 block of C over a run of 32-wide k steps as
//! the AMX kernel (`kernel`), from the same packed tiles (`pack`), with `vdpbf16ps` on zmm
//! registers instead of tile instructions, for CPUs with AVX512-BF16 but no AMX (AMD Zen 4 and
//! later, Intel Cooper Lake).
//!
//! The block is computed as four groups of 8 rows; a group keeps its 8 x 32 C values in 16
//! accumulators for the whole k run. Per k pair `p` of a step it loads row `p` of the two B
//! tiles (16 column pairs each) and, for each of its 8 rows, broadcasts that row's A pair
//! `(A[r][2p], A[r][2p+1])` and issues two `vdpbf16ps`. `vdpbf16ps` adds the two exact bf16
//! products of each pair to the f32 accumulator, rounding to nearest even and flushing
//! subnormal inputs and outputs to zero, as `tdpbf16ps` does; the order of the additions within
//! a k step differs from AMX's, so the two backends agree within f32 summation rounding, not
//! bit for bit. Each element is still summed in a fixed order over k, whatever the threads.

use super::pack::TILE;
use std::arch::x86_64::{
    __m512bh, _mm512_dpbf16_ps, _mm512_loadu_ps, _mm512_loadu_si512, _mm512_set1_epi32, _mm512_setzero_ps,
    _mm512_storeu_ps,
};

/// Whether the CPU has the AVX-512 subsets this kernel and the packing code use.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bf16")
}

/// Rows of C a group keeps in registers (8 rows x 2 column panels = 16 zmm accumulators).
const GROUP: usize = 8;

/// `C (+)= A · B` for one 32x32 block, with the contract of the AMX `kernel_32x32` (minus the
/// tile guard): `a0`, `a1` point at the first of `steps` contiguous A tiles of the two row
/// strips, `b0`, `b1` at those of the two column panels; C starts from the row-major block
/// `c_in` (pointer, row stride in bytes) or from zero, and is written to `c_out` (which may be
/// `c_in`).
///
/// # Safety
/// [`available`] must hold; the four tile runs must be readable for `steps * TILE` bf16 each;
/// `c_in` must be readable and `c_out` writable for 32 rows of their strides, 32 floats each;
/// `steps >= 1`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn kernel_32x32(
    a0: *const u16,
    a1: *const u16,
    b0: *const u16,
    b1: *const u16,
    steps: usize,
    c_in: Option<(*const f32, usize)>,
    c_out: (*mut f32, usize),
) {
    for g in 0..32 / GROUP {
        // Rows 16 * strip + row0 .. + GROUP of the block come from the strip's tiles.
        let (strip, row0) = if g < 2 { (a0, g * GROUP) } else { (a1, (g - 2) * GROUP) };
        let r_block = g * GROUP;
        // SAFETY: forwarded contract; rows r_block..r_block+8 < 32 of c_in / c_out, and rows
        // row0..row0+8 < 16 of every A tile.
        unsafe {
            let c_in = c_in.map(|(p, stride)| (p.byte_add(r_block * stride), stride));
            let (out, out_stride) = c_out;
            group(strip.add(row0 * 32), b0, b1, steps, c_in, (out.byte_add(r_block * out_stride), out_stride));
        }
    }
}

/// One group: C rows `0..GROUP` (relative to `c_in` / `c_out`) from the A tile rows at `a`
/// (row stride 32 bf16, next tile `TILE` further) and the B panels `b0`, `b1`.
///
/// # Safety
/// As [`kernel_32x32`], for 8 rows.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn group(
    a: *const u16,
    b0: *const u16,
    b1: *const u16,
    steps: usize,
    c_in: Option<(*const f32, usize)>,
    c_out: (*mut f32, usize),
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; GROUP];
    if let Some((cin, stride)) = c_in {
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: row r of c_in holds 32 readable floats (contract).
            unsafe {
                let p = cin.byte_add(r * stride);
                row[0] = _mm512_loadu_ps(p);
                row[1] = _mm512_loadu_ps(p.add(16));
            }
        }
    }
    for s in 0..steps {
        // SAFETY: tile s of each run is readable (contract): B tile rows are 16 u32 pairs
        // (32 bf16); A tile row r holds 32 bf16 = 16 pairs.
        unsafe {
            let (at, bt0, bt1) = (a.add(s * TILE), b0.add(s * TILE), b1.add(s * TILE));
            for p in 0..16 {
                let bv0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bt0.add(p * 32).cast()));
                let bv1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bt1.add(p * 32).cast()));
                for (r, row) in acc.iter_mut().enumerate() {
                    let pair = at.add(r * 32 + 2 * p).cast::<i32>().read_unaligned();
                    let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                    row[0] = _mm512_dpbf16_ps(row[0], av, bv0);
                    row[1] = _mm512_dpbf16_ps(row[1], av, bv1);
                }
            }
        }
    }
    let (out, stride) = c_out;
    for (r, row) in acc.iter().enumerate() {
        // SAFETY: row r of c_out holds 32 writable floats (contract).
        unsafe {
            let p = out.byte_add(r * stride);
            _mm512_storeu_ps(p, row[0]);
            _mm512_storeu_ps(p.add(16), row[1]);
        }
    }
}
