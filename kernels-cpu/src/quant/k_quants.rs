//! The 256-value super-block formats Q4_K, Q5_K and Q6_K (`ggml-common.h` layouts, little-endian).
//!
//! | type | bytes | layout |
//! |---|---|---|
//! | Q4_K | 144 | `d: f16, dmin: f16, scales: u8[12], qs: u8[128]` |
//! | Q5_K | 176 | `d: f16, dmin: f16, scales: u8[12], qh: u8[32], qs: u8[128]` |
//! | Q6_K | 210 | `ql: u8[128], qh: u8[64], scales: i8[16], d: f16` (d last) |
//!
//! Q4_K/Q5_K: eight sub-blocks of 32 with a 6-bit scale `ls` and a 6-bit min `lm` each (packed as
//! in [`get_scale_min_k4`]); value = `d*ls*q - dmin*lm`. Q6_K: sixteen sub-blocks of 16 with an i8
//! scale; value = `d*scale*(q - 32)`.
//!
//! The quantizers are llama.cpp's `quantize_row_q{4,5,6}_K_ref` (what llama-quantize runs without
//! an importance matrix): the same scale searches (`k_search`: `make_qkx2_quants` for Q4_K/Q5_K,
//! `make_qx_quants` with `rmse_type = 1` for Q6_K; run on all sub-blocks at once by `k_lanes`,
//! bit-identically), the same f32 expression order (C evaluates `w*l*x` as `(w*l)*x`; Rust never
//! contracts to FMA) and the same rounding: every rounding step is `nearest_int` (half to even),
//! and integer narrowing wraps like C's.

pub use super::k_search::QK_K;

use super::half::{f16_to_f32, f32_to_f16};
use super::k_lanes;
use super::k_search::{nearest_int, GROUP_MAX_EPS};

/// Bytes of a Q4_K block.
pub const Q4_K_BYTES: usize = 144;
/// Bytes of a Q5_K block.
pub const Q5_K_BYTES: usize = 176;
/// Bytes of a Q6_K block.
pub const Q6_K_BYTES: usize = 210;

/// The 6-bit scale and min of sub-block `j` (0..8) from the 12 packed scale bytes of Q4_K/Q5_K.
#[inline(always)]
pub fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Packs the 6-bit scale `ls` and min `lm` of sub-block `j` (0..8) into the 12 scale bytes `sc`
/// (zeroed first), the inverse of [`get_scale_min_k4`].
#[inline(always)]
pub(crate) fn pack_scale_min_k4(sc: &mut [u8], j: usize, ls: u8, lm: u8) {
    if j < 4 {
        sc[j] = ls;
        sc[j + 4] = lm;
    } else {
        sc[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
        sc[j - 4] |= (ls >> 4) << 6;
        sc[j] |= (lm >> 4) << 6;
    }
}

/// Q4_K/Q5_K levels and packed scales: the `quantize_row_q{4,5}_K_ref` body up to the bit packing.
/// Writes d, dmin and the 12 scale bytes into `head` (16 bytes); returns the levels `0..=nmax`.
fn quantize_k4_levels(x: &[f32; QK_K], nmax: i32, rmin: f32, nstep: i32, head: &mut [u8]) -> [u8; QK_K] {
    // Weights per sub-block: sqrt(mean x²) + |x|.
    let mut weights = [0f32; QK_K];
    for (xs, ws) in x.chunks_exact(32).zip(weights.chunks_exact_mut(32)) {
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in ws.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
    }
    // make_qkx2_quants on all 8 sub-blocks at once (bit-identical to one at a time).
    let mut l = [0u8; QK_K];
    let (scales, mins) = k_lanes::search_qkx2(nmax, x, &weights, &mut l, rmin, 0.1, nstep);
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }

    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let sc = &mut head[4..16];
    for j in 0..8 {
        // uint8_t ls = nearest_int(..): the int narrows (wraps) before MIN(63, ls).
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        pack_scale_min_k4(sc, j, ls, lm);
    }
    let d16 = f32_to_f16(max_scale / 63.0);
    let dmin16 = f32_to_f16(max_min / 63.0);
    head[0..2].copy_from_slice(&d16.to_le_bytes());
    head[2..4].copy_from_slice(&dmin16.to_le_bytes());

    // Re-quantize with the stored (f16, 6-bit) scales; a sub-block whose scale is 0 keeps the
    // levels of its search.
    for j in 0..8 {
        let (s, m) = get_scale_min_k4(j, &head[4..16]);
        let d = f16_to_f32(d16) * s as f32;
        if d == 0.0 {
            continue;
        }
        let dm = f16_to_f32(dmin16) * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, nmax) as u8;
        }
    }
    l
}

/// `quantize_row_q4_K_ref` on one super-block.
pub fn quantize_block_q4_k(x: &[f32; QK_K], y: &mut [u8; Q4_K_BYTES]) {
    y.fill(0);
    let l = quantize_k4_levels(x, 15, -1.0, 20, &mut y[..16]);
    let qs = &mut y[16..];
    for (c, chunk) in l.chunks_exact(64).enumerate() {
        for i in 0..32 {
            qs[32 * c + i] = chunk[i] | (chunk[i + 32] << 4);
        }
    }
}

/// `quantize_row_q5_K_ref` on one super-block.
pub fn quantize_block_q5_k(x: &[f32; QK_K], y: &mut [u8; Q5_K_BYTES]) {
    y.fill(0);
    let l = quantize_k4_levels(x, 31, -0.5, 15, &mut y[..16]);
    pack_q5_k_levels(&l, &mut y[16..]);
}

/// Packs 256 five-bit levels into the `qh[32]` + `qs[128]` tail of a Q5_K block (zeroed first).
pub(crate) fn pack_q5_k_levels(l: &[u8; QK_K], tail: &mut [u8]) {
    let (qh, qs) = tail.split_at_mut(32);
    let (mut m1, mut m2) = (1u8, 2u8);
    for (c, chunk) in l.chunks_exact(64).enumerate() {
        for j in 0..32 {
            let mut l1 = chunk[j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = chunk[j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            qs[32 * c + j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
}

/// d and dmin of a Q4_K/Q5_K block.
#[inline(always)]
fn d_dmin(x: &[u8]) -> (f32, f32) {
    (f16_to_f32(u16::from_le_bytes([x[0], x[1]])), f16_to_f32(u16::from_le_bytes([x[2], x[3]])))
}

/// `dequantize_row_q4_K` on one super-block.
pub fn dequantize_block_q4_k(x: &[u8; Q4_K_BYTES], y: &mut [f32; QK_K]) {
    let (d, min) = d_dmin(x);
    let scales = &x[4..16];
    for (c, (q, out)) in x[16..].chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (s1, m1) = get_scale_min_k4(2 * c, scales);
        let (s2, m2) = get_scale_min_k4(2 * c + 1, scales);
        let (d1, min1) = (d * s1 as f32, min * m1 as f32);
        let (d2, min2) = (d * s2 as f32, min * m2 as f32);
        for l in 0..32 {
            out[l] = d1 * (q[l] & 0x0F) as f32 - min1;
            out[l + 32] = d2 * (q[l] >> 4) as f32 - min2;
        }
    }
}

/// `dequantize_row_q5_K` on one super-block.
pub fn dequantize_block_q5_k(x: &[u8; Q5_K_BYTES], y: &mut [f32; QK_K]) {
    let (d, min) = d_dmin(x);
    let scales = &x[4..16];
    let qh = &x[16..48];
    let (mut u1, mut u2) = (1u8, 2u8);
    for (c, (ql, out)) in x[48..].chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (s1, m1) = get_scale_min_k4(2 * c, scales);
        let (s2, m2) = get_scale_min_k4(2 * c + 1, scales);
        let (d1, min1) = (d * s1 as f32, min * m1 as f32);
        let (d2, min2) = (d * s2 as f32, min * m2 as f32);
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            out[l] = d1 * ((ql[l] & 0x0F) + h1) as f32 - min1;
            out[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - min2;
        }
        u1 <<= 2;
        u2 <<= 2;
    }
}

/// `quantize_row_q6_K_ref` on one super-block.
pub fn quantize_block_q6_k(x: &[f32; QK_K], y: &mut [u8; Q6_K_BYTES]) {
    y.fill(0);
    // make_qx_quants on all 16 sub-blocks at once (bit-identical to one at a time).
    let mut l = [0i8; QK_K];
    let scales = k_lanes::search_qx(32, x, &mut l);
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for &scale in &scales {
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        return; // the whole block is zero, d included
    }

    let iscale = -128.0 / max_scale;
    let d16 = f32_to_f16(1.0 / iscale);
    y[208..210].copy_from_slice(&d16.to_le_bytes());
    let mut sc = [0i8; 16];
    for (s, &scale) in sc.iter_mut().zip(&scales) {
        *s = nearest_int(iscale * scale).min(127) as i8; // int -> int8_t wraps, as in C
    }
    for (dst, &s) in y[192..208].iter_mut().zip(&sc) {
        *dst = s as u8;
    }
    for j in 0..16 {
        let d = f16_to_f32(d16) * sc[j] as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-32, 31) + 32) as i8;
        }
    }

    pack_q6_k_levels(&l, &mut y[..192]);
}

/// Packs 256 six-bit levels (`0..=63`, as i8) into the `ql[128]` + `qh[64]` head of a Q6_K block.
pub(crate) fn pack_q6_k_levels(l: &[i8; QK_K], head: &mut [u8]) {
    let (ql, qh) = head.split_at_mut(128);
    for (h, chunk) in l.chunks_exact(128).enumerate() {
        let ql = &mut ql[64 * h..64 * h + 64];
        let qh = &mut qh[32 * h..32 * h + 32];
        for i in 0..32 {
            let (a, b, c, e) = (chunk[i] as u8, chunk[i + 32] as u8, chunk[i + 64] as u8, chunk[i + 96] as u8);
            ql[i] = (a & 0x0F) | ((c & 0x0F) << 4);
            ql[i + 32] = (b & 0x0F) | ((e & 0x0F) << 4);
            qh[i] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
        }
    }
}

/// `dequantize_row_q6_K` on one super-block.
pub fn dequantize_block_q6_k(x: &[u8; Q6_K_BYTES], y: &mut [f32; QK_K]) {
    let d = f16_to_f32(u16::from_le_bytes([x[208], x[209]]));
    for (h, out) in y.chunks_exact_mut(128).enumerate() {
        let ql = &x[64 * h..64 * h + 64];
        let qh = &x[128 + 32 * h..128 + 32 * h + 32];
        let sc = &x[192 + 8 * h..192 + 8 * h + 8];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_min_packing_round_trips() {
        // Pack every (ls, lm) pair the way the quantizer does and read it back.
        for ls in 0..64u8 {
            let lm = 63 - ls;
            let mut sc = [0u8; 12];
            for j in 0..8 {
                let (a, b) = ((ls + j as u8) % 64, (lm + 3 * j as u8) % 64);
                if j < 4 {
                    sc[j] = a;
                    sc[j + 4] = b;
                } else {
                    sc[j + 4] = (a & 0x0F) | ((b & 0x0F) << 4);
                    sc[j - 4] |= (a >> 4) << 6;
                    sc[j] |= (b >> 4) << 6;
                }
            }
            for j in 0..8 {
                assert_eq!(get_scale_min_k4(j, &sc), ((ls + j as u8) % 64, (lm + 3 * j as u8) % 64));
            }
        }
    }
}
