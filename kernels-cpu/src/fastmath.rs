//! Small numeric building blocks shared by the kernels: a vectorisable `exp` and the run-time
//! check for the AVX2 + FMA code paths.

/// True when the CPU has AVX2 and FMA (the `#[target_feature]` fast paths may run).
#[inline]
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `e^x` in f32 (Cephes `expf`: Cody-Waite reduction, degree-5 minimax; about 2 ulp),
/// branch-free so loops over it vectorise. Returns 0 for `x < -87` (including -inf), where
/// `e^x < 2e-38` is below anything a softmax row normalised by its max can notice.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LO: f32 = -87.0;
    const HI: f32 = 88.0;
    // 1.5 * 2^23: adding it rounds to the nearest integer, which sits in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    const C1: f32 = 0.693_359_4; // ln 2 split so n * C1 is exact
    const C2: f32 = -2.121_944_4e-4;
    let xc = x.clamp(LO, HI);
    let r = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = r - MAGIC;
    let ni = (r.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let f = xc - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4;
    p = p * f + 1.398_199_9e-3;
    p = p * f + 8.333_452e-3;
    p = p * f + 4.166_579_6e-2;
    p = p * f + 1.666_666_5e-1;
    p = p * f + 0.5;
    let y = p * f * f + f + 1.0;
    let y = f32::from_bits((y.to_bits() as i32).wrapping_add(ni << 23) as u32);
    if x < LO {
        0.0
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_fast_is_accurate_and_zero_below_range() {
        let mut worst = 0f64;
        for i in 0..175_000 {
            let x = -87.0 + i as f64 * 1e-3; // -87 .. 88
            let x = x as f32;
            let want = (x as f64).exp();
            worst = worst.max((exp_fast(x) as f64 - want).abs() / want);
        }
        eprintln!("exp_fast max rel err {worst:.2e}");
        assert!(worst <= 2e-7, "exp_fast max rel err {worst:.3e} > 2e-7");
        assert_eq!(exp_fast(0.0), 1.0);
        for x in [-87.01, -100.0, -1e30, f32::NEG_INFINITY] {
            assert_eq!(exp_fast(x), 0.0, "exp_fast({x})");
        }
    }
}
