//! Small numeric building blocks shared by the kernels: a vectorisable `exp`, and the run-time
//! choice of the instruction set the row kernels (softmax / cross-entropy, distillation,
//! RMSNorm, attention tile rows, SwiGLU, AdamW) are compiled for ([`RowIsa`], [`isa_dispatch!`]).
//!
//! A row kernel is one `#[inline(always)]` body in portable Rust, written so it vectorises
//! (fixed-size lane arrays, no reordered sums); [`isa_dispatch!`] compiles it three times (no
//! target features, AVX2 + FMA, AVX-512) and picks one per call from [`row_isa`]. The three
//! builds give identical bits (Rust never contracts `a * b + c` into an FMA, never reorders float
//! sums, and `mul_add` is fused in all of them), which `tests/row_isa.rs` checks kernel by kernel.

use std::sync::atomic::{AtomicU8, Ordering};

/// The instruction set the row kernels run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RowIsa {
    /// No target features (baseline x86-64 SSE2, or any other architecture).
    Portable,
    /// AVX2 + FMA (256-bit lanes).
    Avx2,
    /// AVX-512 F/BW/VL/DQ on top of AVX2 + FMA (512-bit lanes).
    Avx512,
}

impl RowIsa {
    /// Every ISA, the weakest first.
    pub const ALL: [RowIsa; 3] = [RowIsa::Portable, RowIsa::Avx2, RowIsa::Avx512];

    /// Its name in benchmarks and in `MEDMOE_ROW_ISA` (`portable`, `avx2`, `avx512`).
    pub fn name(self) -> &'static str {
        match self {
            RowIsa::Portable => "portable",
            RowIsa::Avx2 => "avx2",
            RowIsa::Avx512 => "avx512",
        }
    }

    /// The ISA called `name`, if any.
    pub fn from_name(name: &str) -> Option<RowIsa> {
        RowIsa::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Whether this CPU runs it.
    pub fn is_available(self) -> bool {
        match self {
            RowIsa::Portable => true,
            RowIsa::Avx2 => has_avx2_fma(),
            RowIsa::Avx512 => has_avx512(),
        }
    }

    /// The strongest ISA this CPU runs.
    pub fn detected() -> RowIsa {
        *RowIsa::ALL.iter().rev().find(|i| i.is_available()).unwrap_or(&RowIsa::Portable)
    }
}

/// 0: not chosen yet; else 1 + the index of the chosen ISA in [`RowIsa::ALL`].
static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// The ISA the row kernels run on: [`RowIsa::detected`], unless `MEDMOE_ROW_ISA` names another
/// one this CPU has (read once; for measuring one ISA against another) or [`force_row_isa`]
/// chose one.
#[inline]
pub fn row_isa() -> RowIsa {
    match CHOSEN.load(Ordering::Relaxed) {
        0 => {
            let isa = match std::env::var("MEDMOE_ROW_ISA").ok().and_then(|n| RowIsa::from_name(n.trim())) {
                Some(i) if i.is_available() => i,
                _ => RowIsa::detected(),
            };
            // A racing force_row_isa wins: only fill in an unset choice.
            let _ = CHOSEN.compare_exchange(0, isa as u8 + 1, Ordering::Relaxed, Ordering::Relaxed);
            RowIsa::ALL[CHOSEN.load(Ordering::Relaxed) as usize - 1]
        }
        c => RowIsa::ALL[c as usize - 1],
    }
}

/// Makes every later row-kernel call in this process run on `isa` (tests and benchmarks; all
/// ISAs give the same bits, so other threads only change speed). Errors if the CPU lacks it.
pub fn force_row_isa(isa: RowIsa) -> Result<(), String> {
    if !isa.is_available() {
        return Err(format!("row ISA {} is not available on this CPU", isa.name()));
    }
    CHOSEN.store(isa as u8 + 1, Ordering::Relaxed);
    Ok(())
}

/// Defines `fn $name(args) -> ret` that runs the `#[inline(always)]` function `$body` compiled
/// for the [`row_isa`] of the moment (see the module docs).
#[macro_export]
macro_rules! isa_dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $body:path) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                match $crate::fastmath::row_isa() {
                    // SAFETY: row_isa() only returns an ISA this CPU has.
                    $crate::fastmath::RowIsa::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above.
                    $crate::fastmath::RowIsa::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::fastmath::RowIsa::Portable => {}
                }
            }
            $body($($arg),*)
        }
    };
}

/// True when the CPU has AVX2 and FMA.
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

/// True when the CPU has AVX-512 F/BW/VL/DQ besides AVX2 and FMA.
#[inline]
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2_fma()
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512dq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `Σ a·b` in eight f32 lanes summed in order, then the tail (no target features: the loop
/// vectorises for whatever the build targets). Used by the attention backward and as the
/// portable dot product of `gemv`.
#[inline]
pub fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
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
