//! bfloat16 conversions, as torch does them: f32 -> bf16 rounds to nearest, ties to even
//! (`c10::BFloat16`'s `round_to_nearest_even`), keeps subnormals, and turns every NaN into a
//! quiet NaN of the same sign; bf16 -> f32 is exact (the 16 bits become the high half).

/// The bf16 bits nearest to `x` (ties to even; NaN stays NaN, quiet).
#[inline(always)]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    // Adding 0x7fff plus the lowest kept bit carries into the kept bits exactly when the
    // dropped half is above one half, or equal to it with an odd kept part (ties to even);
    // overflow of the largest finite values carries into the exponent and gives infinity, as
    // rounding should.
    let lsb = (bits >> 16) & 1;
    (bits.wrapping_add(0x7fff + lsb) >> 16) as u16
}

/// The f32 whose high half is `b` (exact).
#[inline(always)]
pub fn bf16_bits_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// `x` rounded to the nearest bf16 value, as an f32 (what `x.to(torch.bfloat16).float()` gives).
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    bf16_bits_to_f32(f32_to_bf16_bits(x))
}

/// Rounds every element of `v` to bf16 in place ([`round_bf16`]).
pub fn round_bf16_slice(v: &mut [f32]) {
    for x in v {
        *x = round_bf16(*x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values next to bf16 boundaries, with the bits torch gives for them
    /// (`torch.tensor([x]).to(torch.bfloat16).view(torch.int16)`).
    #[test]
    fn rounding_is_nearest_even_like_torch() {
        let cases: [(u32, u16); 10] = [
            (0x3f80_0000, 0x3f80), // 1.0 exact
            (0x3f80_8000, 0x3f80), // 1 + half an ulp: tie, even stays
            (0x3f81_8000, 0x3f82), // tie with odd kept part: rounds up
            (0x3f80_8001, 0x3f81), // just above the tie: up
            (0x3f80_7fff, 0x3f80), // just below the tie: down
            (0xbf81_8000, 0xbf82), // negative tie, odd: away from zero to even
            (0x7f7f_ffff, 0x7f80), // largest f32 rounds to +inf
            (0x0000_8001, 0x0001), // subnormal kept (no flush to zero)
            (0x7f80_0000, 0x7f80), // +inf
            (0xff80_0000, 0xff80), // -inf
        ];
        for (x, want) in cases {
            assert_eq!(f32_to_bf16_bits(f32::from_bits(x)), want, "x = {x:#010x}");
        }
        let nan = f32_to_bf16_bits(f32::from_bits(0x7f80_0001));
        assert!(bf16_bits_to_f32(nan).is_nan(), "signalling NaN must stay NaN, got {nan:#06x}");
        assert_eq!(bf16_bits_to_f32(0x3fc0), 1.5);
    }

    /// Rounding is idempotent and within half a bf16 ulp (at most 2^-8 relative: 8 significant
    /// bits) of the input.
    #[test]
    fn round_bf16_is_idempotent_and_close() {
        let mut v = crate::check::rand_vec(10_000, 3);
        let orig = v.clone();
        round_bf16_slice(&mut v);
        for (&r, &x) in v.iter().zip(&orig) {
            assert_eq!(round_bf16(r), r);
            assert!((r - x).abs() <= x.abs() / 256.0 + f32::MIN_POSITIVE, "{x} -> {r}");
        }
    }
}
