//! The K-quant scale searches on every sub-block of a super-block at once.
//!
//! [`super::k_search::make_qkx2_quants`] and [`super::k_search::make_qx_quants`] are chains of
//! dependent f32 additions (their order is part of the result), so one sub-block at a time is
//! bound by add latency. Here lane `j` of a `[f32; N]` is sub-block `j`: the values are transposed
//! so that every step is the same operation on all lanes, each lane keeping its own sums in its own
//! order. The result is bit-identical to running the scalar search per sub-block (unit tests below
//! check that, on top of the llama.cpp fixtures), while the compiler turns the lane loops into SIMD
//! (SSE2 by default, AVX2 when the CPU has it: [`search_qkx2`] / [`search_qx`] dispatch at run time;
//! AVX2 only widens the vectors, and Rust never contracts `a*b + c` into an FMA).

use super::k_search::{nearest_int, GROUP_MAX_EPS, QK_K};

/// Sub-blocks of Q4_K / Q5_K (32 values each).
const K4: usize = 8;
/// Sub-blocks of Q6_K (16 values each).
const K6: usize = 16;

/// `make_qkx2_quants(32, nmax, .., rmin, rdelta, nstep, use_mad = false)` for the 8 sub-blocks of
/// `x` (sub-block j = `x[32j..32j+32]`, weights likewise). Writes the levels to `l` (same layout);
/// returns `(scale[j], -min[j])`.
pub(super) fn search_qkx2(
    nmax: i32,
    x: &[f32; QK_K],
    weights: &[f32; QK_K],
    l: &mut [u8; QK_K],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> ([f32; K4], [f32; K4]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { qkx2_avx2(nmax, x, weights, l, rmin, rdelta, nstep) };
    }
    qkx2_lanes(nmax, x, weights, l, rmin, rdelta, nstep)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn qkx2_avx2(
    nmax: i32,
    x: &[f32; QK_K],
    weights: &[f32; QK_K],
    l: &mut [u8; QK_K],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> ([f32; K4], [f32; K4]) {
    qkx2_lanes(nmax, x, weights, l, rmin, rdelta, nstep)
}

/// The lane-parallel body of [`search_qkx2`]; follows `make_qkx2_quants` line by line per lane.
#[inline(always)]
fn qkx2_lanes(
    nmax: i32,
    x: &[f32; QK_K],
    weights: &[f32; QK_K],
    l: &mut [u8; QK_K],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> ([f32; K4], [f32; K4]) {
    const N: usize = 32;
    let mut xt = [[0f32; K4]; N]; // xt[i][j] = value i of sub-block j
    let mut wt = [[0f32; K4]; N];
    for j in 0..K4 {
        for i in 0..N {
            xt[i][j] = x[N * j + i];
            wt[i][j] = weights[N * j + i];
        }
    }
    let mut min = xt[0];
    let mut max = xt[0];
    let mut sum_w = wt[0];
    let mut sum_x = [0f32; K4];
    for j in 0..K4 {
        sum_x[j] = sum_w[j] * xt[0][j];
    }
    for i in 1..N {
        for j in 0..K4 {
            let v = xt[i][j];
            min[j] = if v < min[j] { v } else { min[j] };
            max[j] = if v > max[j] { v } else { max[j] };
            let w = wt[i][j];
            sum_w[j] += w;
            sum_x[j] += w * v;
        }
    }
    let mut flat = [false; K4];
    for j in 0..K4 {
        min[j] = if min[j] > 0.0 { 0.0 } else { min[j] };
        flat[j] = max[j] == min[j];
    }

    let nmax_f = nmax as f32;
    let mut scale = [0f32; K4];
    let mut iscale = [0f32; K4];
    for j in 0..K4 {
        iscale[j] = nmax_f / (max[j] - min[j]);
        scale[j] = 1.0 / iscale[j];
    }
    let mut lt = [[0f32; K4]; N]; // chosen levels, as f32
    let mut best_error = [0f32; K4];
    for i in 0..N {
        for j in 0..K4 {
            let q = nearest_int(iscale[j] * (xt[i][j] - min[j])).clamp(0, nmax) as f32;
            lt[i][j] = q;
            let diff = scale[j] * q + min[j] - xt[i][j];
            best_error[j] += wt[i][j] * (diff * diff);
        }
    }
    if nstep >= 1 {
        let mut laux = [[0f32; K4]; N];
        for is in 0..=nstep {
            let step = rmin + rdelta * is as f32 + nmax_f;
            for j in 0..K4 {
                iscale[j] = step / (max[j] - min[j]);
            }
            let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; K4], [0f32; K4], [0f32; K4]);
            for i in 0..N {
                for j in 0..K4 {
                    let q = nearest_int(iscale[j] * (xt[i][j] - min[j])).clamp(0, nmax) as f32;
                    laux[i][j] = q;
                    let w = wt[i][j];
                    sum_l[j] += w * q;
                    sum_l2[j] += w * q * q;
                    sum_xl[j] += w * q * xt[i][j];
                }
            }
            let (mut this_scale, mut this_min, mut ok) = ([0f32; K4], [0f32; K4], [false; K4]);
            for j in 0..K4 {
                let det = sum_w[j] * sum_l2[j] - sum_l[j] * sum_l[j];
                ok[j] = det > 0.0 && !flat[j];
                this_scale[j] = (sum_w[j] * sum_xl[j] - sum_x[j] * sum_l[j]) / det;
                this_min[j] = (sum_l2[j] * sum_x[j] - sum_l[j] * sum_xl[j]) / det;
                if this_min[j] > 0.0 {
                    this_min[j] = 0.0;
                    this_scale[j] = sum_xl[j] / sum_l2[j];
                }
            }
            if !ok.contains(&true) {
                continue;
            }
            let mut cur_error = [0f32; K4];
            for i in 0..N {
                for j in 0..K4 {
                    let diff = this_scale[j] * laux[i][j] + this_min[j] - xt[i][j];
                    cur_error[j] += wt[i][j] * (diff * diff);
                }
            }
            let mut take = [false; K4];
            for j in 0..K4 {
                take[j] = ok[j] && cur_error[j] < best_error[j];
                if take[j] {
                    best_error[j] = cur_error[j];
                    scale[j] = this_scale[j];
                    min[j] = this_min[j];
                }
            }
            if take.contains(&true) {
                for i in 0..N {
                    for j in 0..K4 {
                        lt[i][j] = if take[j] { laux[i][j] } else { lt[i][j] };
                    }
                }
            }
        }
    }

    let mut the_min = [0f32; K4];
    for j in 0..K4 {
        the_min[j] = -min[j];
        if flat[j] {
            scale[j] = 0.0;
        }
        for i in 0..N {
            l[N * j + i] = if flat[j] { 0 } else { lt[i][j] as u8 };
        }
    }
    (scale, the_min)
}

/// `make_qx_quants(16, nmax, .., rmse_type = 1, NULL)` for the 16 sub-blocks of `x` (sub-block j
/// = `x[16j..16j+16]`). Writes the levels (offset by `nmax`) to `l`; returns the 16 scales.
pub(super) fn search_qx(nmax: i32, x: &[f32; QK_K], l: &mut [i8; QK_K]) -> [f32; K6] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { qx_avx2(nmax, x, l) };
    }
    qx_lanes(nmax, x, l)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn qx_avx2(nmax: i32, x: &[f32; QK_K], l: &mut [i8; QK_K]) -> [f32; K6] {
    qx_lanes(nmax, x, l)
}

/// The lane-parallel body of [`search_qx`]; follows `make_qx_quants` line by line per lane.
#[inline(always)]
fn qx_lanes(nmax: i32, x: &[f32; QK_K], l: &mut [i8; QK_K]) -> [f32; K6] {
    const N: usize = 16;
    let mut xt = [[0f32; K6]; N];
    for j in 0..K6 {
        for i in 0..N {
            xt[i][j] = x[N * j + i];
        }
    }
    let (mut max, mut amax) = ([0f32; K6], [0f32; K6]);
    for row in &xt {
        for j in 0..K6 {
            let ax = row[j].abs();
            let bigger = ax > amax[j];
            amax[j] = if bigger { ax } else { amax[j] };
            max[j] = if bigger { row[j] } else { max[j] };
        }
    }
    // Weights w = x² (rmse_type 1); C's `w*x[i]*l` is `(w*x)*l`, so w*x can be formed once.
    let (mut w, mut wx) = ([[0f32; K6]; N], [[0f32; K6]; N]);
    for i in 0..N {
        for j in 0..K6 {
            w[i][j] = xt[i][j] * xt[i][j];
            wx[i][j] = w[i][j] * xt[i][j];
        }
    }
    let nmax_f = nmax as f32;
    // Levels (without the +nmax offset) and the two sums for one inverse scale per lane.
    let levels_and_sums = |iscale: &[f32; K6], lv: &mut [[f32; K6]; N]| {
        let (mut sumlx, mut suml2) = ([0f32; K6], [0f32; K6]);
        for i in 0..N {
            for j in 0..K6 {
                let q = nearest_int(iscale[j] * xt[i][j]).clamp(-nmax, nmax - 1) as f32;
                lv[i][j] = q;
                sumlx[j] += wx[i][j] * q;
                suml2[j] += w[i][j] * q * q;
            }
        }
        (sumlx, suml2)
    };

    let mut iscale = [0f32; K6];
    for j in 0..K6 {
        iscale[j] = -nmax_f / max[j];
    }
    let mut best_l = [[0f32; K6]; N];
    let (sumlx, suml2) = levels_and_sums(&iscale, &mut best_l);
    let (mut scale, mut best) = ([0f32; K6], [0f32; K6]);
    for j in 0..K6 {
        scale[j] = if suml2[j] != 0.0 { sumlx[j] / suml2[j] } else { 0.0 };
        best[j] = scale[j] * sumlx[j];
    }
    let mut lv = [[0f32; K6]; N];
    for is in (-9i32..=9).filter(|&is| is != 0) {
        let step = -(nmax_f + 0.1 * is as f32);
        for j in 0..K6 {
            iscale[j] = step / max[j];
        }
        let (sumlx, suml2) = levels_and_sums(&iscale, &mut lv);
        let mut take = [false; K6];
        for j in 0..K6 {
            take[j] = suml2[j] > 0.0 && sumlx[j] * sumlx[j] > best[j] * suml2[j];
            if take[j] {
                scale[j] = sumlx[j] / suml2[j];
                best[j] = scale[j] * sumlx[j];
            }
        }
        if take.contains(&true) {
            for i in 0..N {
                for j in 0..K6 {
                    best_l[i][j] = if take[j] { lv[i][j] } else { best_l[i][j] };
                }
            }
        }
    }
    for j in 0..K6 {
        let zero = amax[j] < GROUP_MAX_EPS;
        if zero {
            scale[j] = 0.0;
        }
        for i in 0..N {
            l[N * j + i] = if zero { 0 } else { (best_l[i][j] as i32 + nmax) as i8 };
        }
    }
    scale
}

#[cfg(test)]
mod tests {
    use super::super::k_search::{make_qkx2_quants, make_qx_quants};
    use super::*;

    /// Rows that stress the searches: random scales, flat and zero sub-blocks, positive-only
    /// (min clamped to 0), ties on exact grids, and tiny values.
    fn rows() -> Vec<[f32; QK_K]> {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let mut out = Vec::new();
        for r in 0..64 {
            let mut x = [0f32; QK_K];
            for (i, v) in x.iter_mut().enumerate() {
                let scale = 10f32.powi((i / 16) as i32 % 5 - 3);
                *v = match r % 8 {
                    0 => next() * scale,
                    1 => next().abs() + 0.25,
                    2 => ((next() * 32.0) as i32) as f32 + 0.5,
                    3 if (i / 32) % 3 == 0 => 0.75,
                    4 if (i / 16) % 4 == 1 => 0.0,
                    5 => next() * 1e-20,
                    _ => next() * (1.0 + (r % 5) as f32),
                };
            }
            out.push(x);
        }
        out
    }

    /// Q5_K's search (nmax 31, rmin -0.5, 16 steps) and Q4_K's (nmax 15, rmin -1, 21 steps).
    const QKX2_PARAMS: [(i32, f32, i32); 2] = [(31, -0.5, 15), (15, -1.0, 20)];

    fn check_qkx2(
        (nmax, rmin, nstep): (i32, f32, i32),
        f: impl Fn(&[f32; QK_K], &[f32; QK_K], &mut [u8; QK_K]) -> ([f32; 8], [f32; 8]),
    ) {
        for x in rows() {
            let mut weights = [0f32; QK_K];
            for (i, w) in weights.iter_mut().enumerate() {
                *w = 0.5 + x[i].abs() * (1 + i % 3) as f32;
            }
            let mut l = [0u8; QK_K];
            let (scale, min) = f(&x, &weights, &mut l);
            for j in 0..8 {
                let xs: &[f32; 32] = x[32 * j..32 * j + 32].try_into().unwrap();
                let ws: &[f32; 32] = weights[32 * j..32 * j + 32].try_into().unwrap();
                let (mut lr, mut laux) = ([0u8; 32], [0u8; 32]);
                let (s, m) = make_qkx2_quants(nmax, xs, ws, &mut lr, &mut laux, rmin, 0.1, nstep);
                assert_eq!((scale[j].to_bits(), min[j].to_bits()), (s.to_bits(), m.to_bits()), "sub-block {j}");
                assert_eq!(&l[32 * j..32 * j + 32], &lr, "levels of sub-block {j}");
            }
        }
    }

    fn check_qx(f: impl Fn(&[f32; QK_K], &mut [i8; QK_K]) -> [f32; 16]) {
        for x in rows() {
            let mut l = [0i8; QK_K];
            let scale = f(&x, &mut l);
            for j in 0..16 {
                let xs: &[f32; 16] = x[16 * j..16 * j + 16].try_into().unwrap();
                let mut lr = [0i8; 16];
                let s = make_qx_quants(32, xs, &mut lr);
                assert_eq!(scale[j].to_bits(), s.to_bits(), "sub-block {j}");
                assert_eq!(&l[16 * j..16 * j + 16], &lr, "levels of sub-block {j}");
            }
        }
    }

    #[test]
    fn lanes_equal_the_scalar_searches_bit_for_bit() {
        for p @ (nmax, rmin, nstep) in QKX2_PARAMS {
            check_qkx2(p, |x, w, l| qkx2_lanes(nmax, x, w, l, rmin, 0.1, nstep));
            // The dispatching entry point (AVX2 where available).
            check_qkx2(p, |x, w, l| search_qkx2(nmax, x, w, l, rmin, 0.1, nstep));
        }
        check_qx(|x, l| qx_lanes(32, x, l));
        check_qx(|x, l| search_qx(32, x, l));
    }
}
