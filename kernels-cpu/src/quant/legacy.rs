//! The 32-value block formats Q8_0, Q5_0, Q5_1 and Q4_0 (`ggml-common.h` layouts, little-endian).
//!
//! | type | bytes | layout | value |
//! |---|---|---|---|
//! | Q8_0 | 34 | `d: f16, qs: i8[32]` | `qs[j] * d` |
//! | Q5_0 | 22 | `d: f16, qh: u32, qs: u8[16]` | `(q - 16) * d` |
//! | Q5_1 | 24 | `d: f16, m: f16, qh: u32, qs: u8[16]` | `q * d + m` |
//! | Q4_0 | 18 | `d: f16, qs: u8[16]` | `(q - 8) * d` |
//!
//! In Q5_0/Q5_1/Q4_0, `qs[j]` holds value j in its low nibble and value j+16 in its high nibble;
//! bit j of `qh` is bit 4 of value j.
//!
//! Quantizers follow `quantize_row_q*_ref` step by step. Rounding differs per type and is kept:
//! Q8_0 uses `roundf` (half away from zero, [`f32::round`]); Q5_0/Q4_0 truncate `x/d + 16.5`
//! (`+ 8.5`) towards zero; Q5_1 truncates `(x - min)/d + 0.5`. The scale is computed and used in
//! f32; only the stored copy is rounded to f16.

use super::half::{f16_to_f32, f32_to_f16};

/// Bytes of a Q8_0 block.
pub const Q8_0_BYTES: usize = 34;
/// Bytes of a Q5_0 block.
pub const Q5_0_BYTES: usize = 22;
/// Bytes of a Q5_1 block.
pub const Q5_1_BYTES: usize = 24;
/// Bytes of a Q4_0 block.
pub const Q4_0_BYTES: usize = 18;

const QK: usize = 32;

/// A float-to-integer conversion as x86-64 compiles C's cast to a narrow integer: `cvttss2si`
/// (truncate towards zero; NaN and out-of-range give `i32::MIN`), then the low byte. Only NaN or
/// infinite inputs reach the out-of-range case; Rust's saturating `as` would differ there.
#[inline(always)]
fn c_cast_low_byte(v: f32) -> u8 {
    let i = if v.is_nan() || !(-2147483648.0..2147483648.0).contains(&v) { i32::MIN } else { v as i32 };
    i as u8
}

/// The value of largest magnitude (the first one on ties), as the reference quantizers find it.
#[inline(always)]
fn signed_absmax(x: &[f32; QK]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Minimum and maximum as `quantize_row_q5_1_ref` scans them (from FLT_MAX / -FLT_MAX).
#[inline(always)]
fn min_max(x: &[f32; QK]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

#[inline(always)]
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// `quantize_row_q8_0_ref` on one block.
pub fn quantize_block_q8_0(x: &[f32; QK], y: &mut [u8; Q8_0_BYTES]) {
    let mut amax = 0.0f32;
    for &v in x {
        let a = v.abs();
        amax = if amax > a { amax } else { a }; // C's MAX(amax, fabsf(v))
    }
    let d = amax / 127.0;
    let id = inverse(d);
    y[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    for (q, &v) in y[2..].iter_mut().zip(x) {
        *q = c_cast_low_byte((v * id).round());
    }
}

/// `dequantize_row_q8_0` on one block.
pub fn dequantize_block_q8_0(x: &[u8; Q8_0_BYTES], y: &mut [f32; QK]) {
    let d = f16_to_f32(u16::from_le_bytes([x[0], x[1]]));
    for (out, &q) in y.iter_mut().zip(&x[2..]) {
        *out = (q as i8) as f32 * d;
    }
}

/// Packs 32 five-bit values into `qh` (bit 4 of each) and `qs` (low nibbles, j and j+16 paired).
#[inline(always)]
pub(crate) fn pack_5bit(q: &[u8; QK], qh: &mut [u8], qs: &mut [u8]) {
    let mut h = 0u32;
    for j in 0..QK / 2 {
        let (q0, q1) = (q[j], q[j + QK / 2]);
        qs[j] = (q0 & 0x0F) | ((q1 & 0x0F) << 4);
        h |= (((q0 & 0x10) >> 4) as u32) << j;
        h |= (((q1 & 0x10) >> 4) as u32) << (j + QK / 2);
    }
    qh.copy_from_slice(&h.to_le_bytes());
}

/// The 32 five-bit values of a Q5_0/Q5_1 block from its `qh` and `qs`.
#[inline(always)]
fn unpack_5bit(qh: &[u8], qs: &[u8]) -> [i32; QK] {
    let h = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = [0i32; QK];
    for j in 0..QK / 2 {
        let xh0 = ((h >> j) << 4) & 0x10;
        let xh1 = (h >> (j + 12)) & 0x10;
        q[j] = ((qs[j] & 0x0F) as u32 | xh0) as i32;
        q[j + QK / 2] = ((qs[j] >> 4) as u32 | xh1) as i32;
    }
    q
}

/// `quantize_row_q5_0_ref` on one block.
pub fn quantize_block_q5_0(x: &[f32; QK], y: &mut [u8; Q5_0_BYTES]) {
    let max = signed_absmax(x);
    let d = max / -16.0;
    let id = inverse(d);
    y[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    let mut q = [0u8; QK];
    for (qi, &v) in q.iter_mut().zip(x) {
        // MIN(31, (int8_t)(x*id + 16.5f)) stored as uint8_t
        *qi = (c_cast_low_byte(v * id + 16.5) as i8).min(31) as u8;
    }
    let (qh, qs) = y[2..].split_at_mut(4);
    pack_5bit(&q, qh, qs);
}

/// `dequantize_row_q5_0` on one block.
pub fn dequantize_block_q5_0(x: &[u8; Q5_0_BYTES], y: &mut [f32; QK]) {
    let d = f16_to_f32(u16::from_le_bytes([x[0], x[1]]));
    let q = unpack_5bit(&x[2..6], &x[6..]);
    for (out, &qi) in y.iter_mut().zip(&q) {
        *out = (qi - 16) as f32 * d;
    }
}

/// `quantize_row_q5_1_ref` on one block.
pub fn quantize_block_q5_1(x: &[f32; QK], y: &mut [u8; Q5_1_BYTES]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    y[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    y[2..4].copy_from_slice(&f32_to_f16(min).to_le_bytes());
    let mut q = [0u8; QK];
    for (qi, &v) in q.iter_mut().zip(x) {
        *qi = c_cast_low_byte((v - min) * id + 0.5); // (uint8_t)(x0 + 0.5f)
    }
    let (qh, qs) = y[4..].split_at_mut(4);
    pack_5bit(&q, qh, qs);
}

/// `dequantize_row_q5_1` on one block.
pub fn dequantize_block_q5_1(x: &[u8; Q5_1_BYTES], y: &mut [f32; QK]) {
    let d = f16_to_f32(u16::from_le_bytes([x[0], x[1]]));
    let m = f16_to_f32(u16::from_le_bytes([x[2], x[3]]));
    let q = unpack_5bit(&x[4..8], &x[8..]);
    for (out, &qi) in y.iter_mut().zip(&q) {
        *out = qi as f32 * d + m;
    }
}

/// `quantize_row_q4_0_ref` on one block.
pub fn quantize_block_q4_0(x: &[f32; QK], y: &mut [u8; Q4_0_BYTES]) {
    let max = signed_absmax(x);
    let d = max / -8.0;
    let id = inverse(d);
    y[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    for j in 0..QK / 2 {
        let q0 = (c_cast_low_byte(x[j] * id + 8.5) as i8).min(15) as u8;
        let q1 = (c_cast_low_byte(x[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
        y[2 + j] = q0 | (q1 << 4);
    }
}

/// `dequantize_row_q4_0` on one block.
pub fn dequantize_block_q4_0(x: &[u8; Q4_0_BYTES], y: &mut [f32; QK]) {
    let d = f16_to_f32(u16::from_le_bytes([x[0], x[1]]));
    for j in 0..QK / 2 {
        let b = x[2 + j];
        y[j] = ((b & 0x0F) as i32 - 8) as f32 * d;
        y[j + QK / 2] = ((b >> 4) as i32 - 8) as f32 * d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_rounds_ties_away_from_zero() {
        // amax 127 gives d = 1 exactly, so x.5 inputs are exact ties for roundf.
        let mut x = [0.0f32; QK];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 0.5;
        let mut y = [0u8; Q8_0_BYTES];
        quantize_block_q8_0(&x, &mut y);
        assert_eq!(&y[2..6], &[127u8, 3, (-3i8) as u8, 1]);
    }

    #[test]
    fn q5_0_truncates_after_the_offset() {
        // max -16 gives d = 1: q = trunc(x + 16.5), so 0.5 -> 17 (value 1) and -0.5 -> 16 (value 0).
        let mut x = [0.0f32; QK];
        x[0] = -16.0;
        x[1] = 0.5;
        x[2] = -0.5;
        let mut y = [0u8; Q5_0_BYTES];
        quantize_block_q5_0(&x, &mut y);
        let mut back = [0.0f32; QK];
        dequantize_block_q5_0(&y, &mut back);
        assert_eq!(&back[..3], &[-16.0, 1.0, 0.0]);
    }

    #[test]
    fn c_cast_matches_x86_truncation() {
        assert_eq!(c_cast_low_byte(16.9), 16);
        assert_eq!(c_cast_low_byte(-0.9), 0);
        assert_eq!(c_cast_low_byte(-1.5) as i8, -1);
        assert_eq!(c_cast_low_byte(f32::NAN), 0);
        assert_eq!(c_cast_low_byte(f32::INFINITY), 0);
        assert_eq!(c_cast_low_byte(300.0), 44); // 300 mod 256
    }
}
