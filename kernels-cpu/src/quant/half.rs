//! f16 and bf16 conversions exactly as ggml computes them (`ggml-impl.h`).
//!
//! - f32 -> f16 (`ggml_compute_fp32_to_fp16`, Maratyszcza's FP16 bit trick): round to nearest even,
//!   overflow to ±inf, subnormal halves kept; every NaN becomes `0x7E00` with the input's sign.
//! - f16 -> f32: exact (the same trick in reverse).
//! - f32 -> bf16 (`ggml_compute_fp32_to_bf16`): round to nearest even by adding
//!   `0x7FFF + lsb` to the bits; a NaN keeps its top 16 bits with the quiet bit (0x40) forced.
//! - bf16 -> f32: the bits shifted left by 16.
//!
//! The f16 scale factors of every block format go through [`f32_to_f16`] / [`f16_to_f32`], so the
//! quantizers' rounding of `d` and `dmin` is ggml's too.

/// f32 -> IEEE half bits, as ggml's `GGML_FP32_TO_FP16` (round to nearest even; NaN -> 0x7E00).
#[inline]
pub fn f32_to_f16(f: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 2^112
    let scale_to_zero = f32::from_bits(0x0880_0000); // 2^-110
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;

    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let bias = (shl1_w & 0xFF00_0000).max(0x7100_0000);

    base += f32::from_bits((bias >> 1) + 0x0780_0000); // IEEE addition commutes: C's `bias + base`
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    let magnitude = if shl1_w > 0xFF00_0000 { 0x7E00 } else { nonsign };
    ((sign >> 16) | magnitude) as u16
}

/// IEEE half bits -> f32, as ggml's `GGML_FP16_TO_FP32` (exact).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let w = (h as u32) << 16;
    let sign = w & 0x8000_0000;
    let two_w = w.wrapping_add(w);

    let exp_offset: u32 = 0xE0 << 23;
    let exp_scale = f32::from_bits(0x0780_0000); // 2^-112
    let normalized_value = f32::from_bits((two_w >> 4) + exp_offset) * exp_scale;

    let magic_mask: u32 = 126 << 23;
    let magic_bias = 0.5f32;
    let denormalized_value = f32::from_bits((two_w >> 17) | magic_mask) - magic_bias;

    let denormalized_cutoff: u32 = 1 << 27;
    let magnitude = if two_w < denormalized_cutoff { denormalized_value.to_bits() } else { normalized_value.to_bits() };
    f32::from_bits(sign | magnitude)
}

/// f32 -> bfloat16 bits, as ggml's `ggml_compute_fp32_to_bf16` (round to nearest even, NaN quiet).
#[inline]
pub fn f32_to_bf16(s: f32) -> u16 {
    let u = s.to_bits();
    if (u & 0x7FFF_FFFF) > 0x7F80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7FFF + ((u >> 16) & 1)) >> 16) as u16
}

/// bfloat16 bits -> f32 (exact).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_rounds_to_nearest_even_and_saturates_to_inf() {
        // 1 + 2^-11 is halfway between 1 and the next half: ties go to the even mantissa (1.0).
        assert_eq!(f32_to_f16(1.0 + f32::powi(2.0, -11)), 0x3C00);
        // 1 + 3*2^-11 is halfway between 1+2^-10 (odd) and 1+2^-9 (even): rounds up.
        assert_eq!(f32_to_f16(1.0 + 3.0 * f32::powi(2.0, -11)), 0x3C02);
        assert_eq!(f32_to_f16(65504.0), 0x7BFF);
        assert_eq!(f32_to_f16(65520.0), 0x7C00); // the tie above the max rounds to inf
        assert_eq!(f32_to_f16(-1e10), 0xFC00);
        assert_eq!(f32_to_f16(f32::powi(2.0, -24)), 0x0001); // smallest subnormal half
        assert_eq!(f32_to_f16(f32::powi(2.0, -25)), 0x0000); // tie with zero goes to zero (even)
        assert_eq!(f32_to_f16(-0.0), 0x8000);
        assert_eq!(f32_to_f16(f32::NAN), 0x7E00);
        assert_eq!(f32_to_f16(f32::from_bits(0xFFA1_2345)), 0xFE00);
    }

    #[test]
    fn f16_to_f32_is_exact_on_every_finite_half() {
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if (h & 0x7C00) == 0x7C00 && (h & 0x03FF) != 0 {
                assert!(f.is_nan());
                continue;
            }
            // Every half converts back to itself through the f32 -> f16 path.
            assert_eq!(f32_to_f16(f), h, "half {h:#06x} -> {f:e}");
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_quiets_nan() {
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80); // tie, even below
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82); // tie, even above
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8001)), 0x3F81);
        assert_eq!(f32_to_bf16(f32::from_bits(0x7F80_0001)), 0x7FC0); // signalling NaN made quiet
        assert_eq!(f32_to_bf16(f32::from_bits(0xFFA1_2345)), 0xFFE1);
        assert_eq!(f32_to_bf16(f32::from_bits(0x7F7F_8000)), 0x7F80); // rounds up to inf
        assert_eq!(bf16_to_f32(0x3F80), 1.0);
    }
}
