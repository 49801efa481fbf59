//! Packing f32 operands into the bf16 tile layouts of the AMX driver, rounding to nearest even
//! ([`f32_to_bf16_bits`]) on the way. Every tile is 16 rows of 64 bytes, stored contiguously
//! (tile row stride 64 bytes), zero-padded past the edges of the operand:
//!
//! - A (`op(a)`, `[m, k]`): strip `t` (rows `16t..16t+16`) x k step `s` (`32s..32s+32`) is the
//!   tile at `(t*ks + s) * TILE`, row `r` holding `A[16t+r][32s..32s+32]`.
//! - B (`op(b)`, `[k, n]`): panel `q` (columns `16q..16q+16`) x k step `s` is the tile at
//!   `(q*ks + s) * TILE`, row `r` holding the pairs `(B[32s+2r][j], B[32s+2r+1][j])` for its 16
//!   columns `j` (the "VNNI" layout `tdpbf16ps` wants for its second source).
//!
//! `ks = ceil(k / 32)`. Sources are read through row and column strides, so transposes are
//! only a different walk.

use super::super::bf16::f32_to_bf16_bits;

/// bf16 elements in one tile (16 rows x 32).
pub(super) const TILE: usize = 16 * 32;

/// Packs A strips `t0..t1` into `dst` (which starts at strip `t0`).
///
/// # Safety
/// `src[i*rs + p*cs]` must be readable for `i < m`, `p < k`; `dst` must be writable for
/// `(t1 - t0) * ks * TILE` elements, `ks = ceil(k/32)`; AVX-512 F/BW/VL must be available
/// (`amx::available` checks it).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn pack_a(
    src: *const f32,
    rs: usize,
    cs: usize,
    m: usize,
    k: usize,
    t0: usize,
    t1: usize,
    dst: *mut u16,
) {
    let ks = k.div_ceil(32);
    // Walk the tiles with the source's contiguous direction innermost.
    for (t, s) in tile_order(t0..t1, ks, cs == 1) {
        if cs != 1 && t == t0 {
            // Stored [k, m]: this step's k rows are far apart; fetch the next step's.
            prefetch_rows(src, cs, 32 * (s + 1), (32 * (s + 2)).min(k), 16 * t0, (16 * t1).min(m));
        }
        {
            // SAFETY: tile (t, s) lies inside dst's (t1 - t0) * ks tiles (contract).
            let tile = unsafe { dst.add(((t - t0) * ks + s) * TILE) };
            let rows = 16.min(m.saturating_sub(16 * t));
            let cols = 32.min(k - 32 * s);
            // SAFETY: element (16t + r, 32s + c) with r < rows, c < cols is inside op(a)
            // (rows <= m - 16t, cols <= k - 32s); the tile holds TILE elements.
            unsafe {
                let origin = src.wrapping_add(16 * t * rs + 32 * s * cs);
                if rows == 16 && cols == 32 && cs == 1 {
                    a_full_rows(tile, origin, rs);
                } else if rows == 16 && cols == 32 && rs == 1 {
                    a_full_cols(tile, origin, cs);
                } else if cs == 1 {
                    fill_tile(tile, rows, |r, c| if c < cols { *origin.add(r * rs + c) } else { 0.0 });
                } else {
                    // Column-major source: walk down each column (contiguous) for every k.
                    fill_tile_by_col(tile, rows, cols, |r, c| *origin.add(r * rs + c * cs));
                }
            }
        }
    }
}

/// Packs B panels `q0..q1` into `dst` (which starts at panel `q0`).
///
/// # Safety
/// `src[p*rs + j*cs]` must be readable for `p < k`, `j < n`; `dst` must be writable for
/// `(q1 - q0) * ks * TILE` elements, `ks = ceil(k/32)`; AVX-512 F/BW/VL must be available.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn pack_b(
    src: *const f32,
    rs: usize,
    cs: usize,
    k: usize,
    n: usize,
    q0: usize,
    q1: usize,
    dst: *mut u16,
) {
    let ks = k.div_ceil(32);
    // Walk the tiles with the source's contiguous direction innermost.
    for (q, s) in tile_order(q0..q1, ks, rs == 1) {
        if rs != 1 && q == q0 {
            // Stored [k, n]: this step's k rows are far apart; fetch the next step's.
            prefetch_rows(src, rs, 32 * (s + 1), (32 * (s + 2)).min(k), 16 * q0, (16 * q1).min(n));
        }
        let cols = 16.min(n.saturating_sub(16 * q));
        {
            // SAFETY: tile (q, s) lies inside dst's (q1 - q0) * ks tiles (contract).
            let tile = unsafe { dst.add(((q - q0) * ks + s) * TILE) };
            let depth = 32.min(k - 32 * s);
            // Tile element (r, 2c + e) is B[32s + 2r + e][16q + c].
            // SAFETY: B element (32s + p, 16q + j) with p < depth, j < cols is inside op(b)
            // (depth <= k - 32s, cols <= n - 16q); the tile holds TILE elements.
            unsafe {
                let origin = src.wrapping_add(32 * s * rs + 16 * q * cs);
                let at = |p: usize, j: usize| if p < depth && j < cols { *origin.add(p * rs + j * cs) } else { 0.0 };
                if depth == 32 && cols == 16 && cs == 1 {
                    b_full_rows(tile, origin, rs);
                } else if depth == 32 && cols == 16 && rs == 1 {
                    b_full_cols(tile, origin, cs);
                } else if cs == 1 {
                    fill_tile(tile, 16, |r, x| at(2 * r + (x & 1), x >> 1));
                } else {
                    // Stored transposed ([n, k]): pairs (p, p+1) of a column are adjacent.
                    fill_tile_by_col(tile, 16, 32, |r, x| at(2 * r + (x & 1), x >> 1));
                }
            }
        }
    }
}

/// Prefetches (into L1) elements `lo..hi` of rows `p0..p1` of a source with row stride
/// `stride`: when a step's 32 k rows are each in a different page, the hardware prefetchers see
/// only short runs (a 4 KiB row segment at best) and the pack waited on memory latency (3 GB/s
/// for the row-major B of 512x2048x6144).
#[inline(always)]
fn prefetch_rows(src: *const f32, stride: usize, p0: usize, p1: usize, lo: usize, hi: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for p in p0..p1 {
        for x in (lo..hi).step_by(16) {
            // SAFETY: a prefetch never faults, whatever the address; these are inside the
            // operand anyway (p < k, x < the operand's width).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(src.wrapping_add(p * stride + x) as *const i8) };
        }
    }
}

/// The tiles `(strip or panel, k step)` of `strips x 0..ks`: k steps innermost when the source
/// is contiguous along k (`k_inner`), else strips (panels) innermost, so consecutive tiles read
/// adjacent memory.
fn tile_order(strips: std::ops::Range<usize>, ks: usize, k_inner: bool) -> impl Iterator<Item = (usize, usize)> {
    let n = strips.len();
    (0..n * ks).map(move |i| if k_inner { (strips.start + i / ks, i % ks) } else { (strips.start + i % n, i / n) })
}

/// A tile, all in bounds, from rows contiguous along k: row `r` is 32 floats at `src + r*rs`.
///
/// # Safety
/// `src[r*rs + x]` readable for `r < 16`, `x < 32`; `tile` writable for [`TILE`] elements.
#[inline(always)]
unsafe fn a_full_rows(tile: *mut u16, src: *const f32, rs: usize) {
    for r in 0..16 {
        // SAFETY: contract.
        let (row, out) = unsafe {
            (std::slice::from_raw_parts(src.add(r * rs), 32), std::slice::from_raw_parts_mut(tile.add(r * 32), 32))
        };
        for (o, &x) in out.iter_mut().zip(row) {
            *o = f32_to_bf16_bits(x);
        }
    }
}

/// A tile, all in bounds, from columns contiguous along the rows: k index `x` holds 16 floats
/// (the tile's rows) at `src + x*cs`.
///
/// # Safety
/// `src[r + x*cs]` readable for `r < 16`, `x < 32`; `tile` writable for [`TILE`] elements.
#[inline(always)]
unsafe fn a_full_cols(tile: *mut u16, src: *const f32, cs: usize) {
    let mut t = [[0u16; 16]; 32];
    for (x, col) in t.iter_mut().enumerate() {
        // SAFETY: contract.
        let s = unsafe { std::slice::from_raw_parts(src.add(x * cs), 16) };
        for (o, &v) in col.iter_mut().zip(s) {
            *o = f32_to_bf16_bits(v);
        }
    }
    // SAFETY: contract.
    let out = unsafe { std::slice::from_raw_parts_mut(tile, TILE) };
    for r in 0..16 {
        for x in 0..32 {
            out[r * 32 + x] = t[x][r];
        }
    }
}

/// Two bf16 values as the pair `(lo, hi)` of one 32-bit lane.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    f32_to_bf16_bits(lo) as u32 | (f32_to_bf16_bits(hi) as u32) << 16
}

/// B tile, all in bounds, from rows of op(b) contiguous along the columns: k index `p` holds
/// the 16 columns at `src + p*rs`.
///
/// # Safety
/// `src[p*rs + j]` readable for `p < 32`, `j < 16`; `tile` writable for [`TILE`] elements
/// (4-byte aligned).
#[inline(always)]
unsafe fn b_full_rows(tile: *mut u16, src: *const f32, rs: usize) {
    for r in 0..16 {
        // SAFETY: contract (rows 2r and 2r+1 < 32; tile row r is 16 u32 lanes).
        let (even, odd, out) = unsafe {
            (
                std::slice::from_raw_parts(src.add(2 * r * rs), 16),
                std::slice::from_raw_parts(src.add((2 * r + 1) * rs), 16),
                std::slice::from_raw_parts_mut(tile.add(r * 32).cast::<u32>(), 16),
            )
        };
        for ((o, &lo), &hi) in out.iter_mut().zip(even).zip(odd) {
            *o = pair(lo, hi);
        }
    }
}

/// B tile, all in bounds, from columns of op(b) contiguous along k (B stored `[n, k]`):
/// column `j` holds 32 floats at `src + j*cs`.
///
/// # Safety
/// `src[p + j*cs]` readable for `p < 32`, `j < 16`; `tile` writable for [`TILE`] elements
/// (4-byte aligned).
#[inline(always)]
unsafe fn b_full_cols(tile: *mut u16, src: *const f32, cs: usize) {
    let mut t = [[0u32; 16]; 16];
    for (j, col) in t.iter_mut().enumerate() {
        // SAFETY: contract.
        let s = unsafe { std::slice::from_raw_parts(src.add(j * cs), 32) };
        for (r, o) in col.iter_mut().enumerate() {
            *o = pair(s[2 * r], s[2 * r + 1]);
        }
    }
    // SAFETY: contract.
    let out = unsafe { std::slice::from_raw_parts_mut(tile.cast::<u32>(), TILE / 2) };
    for r in 0..16 {
        for j in 0..16 {
            out[r * 16 + j] = t[j][r];
        }
    }
}

/// Writes tile element `(r, x)` = bf16(`get(r, x)`) for `r < rows`, zeros in the rows below.
/// Row-major walk (for sources contiguous along `x`).
///
/// # Safety
/// `tile` must be writable for [`TILE`] elements; `get` must be safe to call for `r < rows`,
/// `x < 32`.
#[inline(always)]
unsafe fn fill_tile(tile: *mut u16, rows: usize, get: impl Fn(usize, usize) -> f32) {
    let mut row = [0u16; 32];
    for r in 0..16 {
        if r < rows {
            for (x, v) in row.iter_mut().enumerate() {
                *v = f32_to_bf16_bits(get(r, x));
            }
        } else {
            row = [0; 32];
        }
        // SAFETY: row r of the tile is elements r*32..r*32+32 < TILE (contract).
        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), tile.add(r * 32), 32) };
    }
}

/// As [`fill_tile`], walking `x` in the outer loop (for sources contiguous along `r`); only
/// `x < cols` is read, the rest is zero.
///
/// # Safety
/// As [`fill_tile`], with `get` called for `r < rows`, `x < cols`.
#[inline(always)]
unsafe fn fill_tile_by_col(tile: *mut u16, rows: usize, cols: usize, get: impl Fn(usize, usize) -> f32) {
    let mut t = [[0u16; 32]; 16];
    for x in 0..cols {
        for (r, row) in t.iter_mut().enumerate().take(rows) {
            row[x] = f32_to_bf16_bits(get(r, x));
        }
    }
    // SAFETY: the tile is writable for TILE = 16 * 32 elements (contract).
    unsafe { std::ptr::copy_nonoverlapping(t.as_ptr().cast::<u16>(), tile, TILE) };
}
