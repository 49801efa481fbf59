use super::*;

/// A deterministic pseudo-random value in [-1, 1).
fn noise(i: usize) -> f32 {
    let x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) >> 40;
    (x as f32 / (1u64 << 23) as f32) - 1.0
}

#[test]
fn cholesky_and_inverse_factor_reconstruct() {
    let n = 9;
    let a: Vec<f64> = (0..n * n).map(|i| noise(i) as f64).collect();
    // H = A Aᵀ + I
    let mut h = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            h[i * n + j] = (0..n).map(|p| a[i * n + p] * a[j * n + p]).sum::<f64>() + if i == j { 1.0 } else { 0.0 };
        }
    }
    let mut l = h.clone();
    cholesky_lower(&mut l, n).unwrap();
    let u = inverse_upper_factor(&l, n).unwrap();
    // H · (Uᵀ U) = I
    for i in 0..n {
        for j in 0..n {
            let inv_kj = |k: usize| (0..n).map(|p| u[p * n + k] * u[p * n + j]).sum::<f64>();
            let v: f64 = (0..n).map(|k| h[i * n + k] * inv_kj(k)).sum();
            assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-10, "({i},{j}) = {v}");
            if j < i {
                assert_eq!(u[i * n + j], 0.0, "U is upper triangular");
            }
        }
    }
    let mut bad = vec![1.0, 2.0, 2.0, 1.0];
    assert_eq!(cholesky_lower(&mut bad, 2), Err(GptqError::NotPositiveDefinite { pivot: 1 }));
}

#[test]
fn uncorrelated_inputs_make_gptq_round_to_nearest() {
    // H diagonal: no error is propagated, so GPTQ is RTN (act-order off).
    let (n, k) = (5, 64);
    let w: Vec<f32> = (0..n * k).map(|i| noise(i) * 0.1).collect();
    let h: Vec<f64> = (0..k * k).map(|i| if i % (k + 1) == 0 { 1.0 + (i % 7) as f64 } else { 0.0 }).collect();
    let cfg = GptqConfig::new(4, 32, false);
    let (g, _) = gptq_quantize(&w, n, k, &h, &cfg).unwrap();
    assert_eq!(g, rtn_quantize(&w, n, k, &cfg).unwrap());
}

#[test]
fn quantizer_follows_the_reference_rules() {
    // Rows: mixed signs, no negative value, all zero, a tie at +-7.5.
    let cols = [0.3, 0.2, 0.0, 1.5, -0.6, 0.1, 0.0, -1.5];
    let g = GroupQuantizer::fit(&cols, 4, 15);
    assert_eq!(g.scale, vec![0.6 * 2.0 / 15.0, 0.2 / 15.0, 2.0 / 15.0, 1.5 * 2.0 / 15.0]);
    assert_eq!(g.zero, 8.0);
    assert_eq!(g.code(0.3, 0), (0.3f64 / (1.2 / 15.0)).round_ties_even() + 8.0);
    assert_eq!(g.code(1.5, 3), 15.0, "7.5 rounds to 8, clamped to 15");
    assert_eq!(g.code(-1.5, 3), 0.0, "-7.5 rounds to -8");
    assert_eq!(g.code(0.0, 2), 8.0);
}

#[test]
fn dead_columns_quantize_to_zero_and_bad_settings_are_refused() {
    let (n, k) = (3, 32);
    let w: Vec<f32> = (0..n * k).map(|i| noise(i) + 0.5).collect();
    let mut h: Vec<f64> = (0..k * k).map(|i| if i % (k + 1) == 0 { 2.0 } else { 0.01 }).collect();
    for j in 0..k {
        h[4 * k + j] = 0.0;
        h[j * k + 4] = 0.0;
    }
    let (q, stats) = gptq_quantize(&w, n, k, &h, &GptqConfig::new(4, 32, true)).unwrap();
    assert_eq!(stats.dead_columns, 1);
    let deq = q.dequantize();
    assert!((0..n).all(|r| deq[r * k + 4] == 0.0), "a dead column dequantizes to 0");
    assert_eq!(gptq_quantize(&w, n, k, &h, &GptqConfig::new(5, 32, false)).map(|_| ()), Ok(()));
    assert_eq!(gptq_quantize(&w, n, k, &h, &GptqConfig::new(9, 32, false)).unwrap_err(), GptqError::Bits(9));
    assert_eq!(
        rtn_quantize(&w, n, k, &GptqConfig::new(4, 64, false)).unwrap_err(),
        GptqError::Group { group: 64, cols: 32 }
    );
    assert!(matches!(gptq_quantize(&w, n, k, &h[1..], &GptqConfig::new(4, 32, false)), Err(GptqError::Length { .. })));
}

/// `H = 2/T Xᵀ X` of inputs with correlated columns.
fn correlated_hessian(k: usize, t: usize) -> Vec<f64> {
    let mut hs = Hessian::new(k);
    let x: Vec<f32> =
        (0..t * k).map(|i| noise(3 * i) + 0.7 * noise(3 * (i - i % k) + 1) + 0.3 * noise(i / k)).collect();
    hs.add(&x).unwrap();
    hs.finish()
}

#[test]
fn on_the_reference_grid_gptq_on_grid_picks_the_gptq_codes() {
    // One group spanning the row: the reference fits it from the untouched weights, so a grid
    // fixed in advance from those weights is the same grid.
    let (n, k) = (6, 64);
    let w: Vec<f32> = (0..n * k).map(|i| noise(i) * 0.1).collect();
    let h = correlated_hessian(k, 256);
    let cfg = GptqConfig { block: 16, ..GptqConfig::new(4, k, false) };
    let (q, stats) = gptq_quantize(&w, n, k, &h, &cfg).unwrap();
    let cols: Vec<f64> = (0..k).flat_map(|c| (0..n).map(move |r| (r, c))).map(|(r, c)| w[r * k + c] as f64).collect();
    let grid = GroupQuantizer::fit(&cols, n, cfg.maxq());
    let value = |r: usize, _c: usize, x: f32| grid.value(grid.code(x as f64, r), r) as f32;
    let (latent, s2) = gptq_on_grid(&w, n, k, &h, cfg.damp, cfg.block, false, &value).unwrap();
    let want = q.dequantize();
    let scales = q.scales_f16();
    for r in 0..n {
        for c in 0..k {
            // Compare codes (the checkpoint's values use f16 scales, the grid f64 ones).
            let code = grid.code(latent[r * k + c] as f64, r) as u8;
            assert_eq!(code, q.codes[r * k + c], "({r}, {c}): dequantized {}", want[r * k + c]);
        }
        assert!(scales[r] > 0.0);
    }
    assert!((stats.loss - s2.loss).abs() <= 1e-9 * stats.loss.max(1.0), "{} vs {}", stats.loss, s2.loss);
}

#[test]
fn gptq_on_grid_lowers_the_output_error_of_round_to_nearest_on_the_same_grid() {
    let (n, k) = (8, 128);
    let w: Vec<f32> = (0..n * k).map(|i| noise(5 * i) * 0.05).collect();
    let h = correlated_hessian(k, 512);
    // A fixed asymmetric 5-bit grid per row and group of 32 (a Q5_1-like grid).
    let step = |r: usize, c: usize| 0.1 / 31.0 * (1.0 + 0.1 * ((r + c / 32) % 3) as f32);
    let value = |r: usize, c: usize, x: f32| {
        let s = step(r, c);
        ((x + 0.05) / s).round_ties_even().clamp(0.0, 31.0) * s - 0.05
    };
    let rtn: Vec<f32> = w.iter().enumerate().map(|(i, &x)| value(i / k, i % k, x)).collect();
    for act_order in [false, true] {
        let (latent, _) = gptq_on_grid(&w, n, k, &h, 0.01, 32, act_order, &value).unwrap();
        let gptq: Vec<f32> = latent.iter().enumerate().map(|(i, &x)| value(i / k, i % k, x)).collect();
        let (e_rtn, e_gptq) = (output_error(&w, &rtn, &h, k), output_error(&w, &gptq, &h, k));
        assert!(e_gptq < 0.7 * e_rtn, "act-order {act_order}: GPTQ {e_gptq} vs RTN {e_rtn}");
    }
    // Uncorrelated inputs: nothing to compensate, the latent weights are the weights.
    let diag: Vec<f64> = (0..k * k).map(|i| if i % (k + 1) == 0 { 1.0 + (i % 5) as f64 } else { 0.0 }).collect();
    let (same, _) = gptq_on_grid(&w, n, k, &diag, 0.01, 32, true, &value).unwrap();
    assert_eq!(same, w);
    // A dead column keeps its weights; bad settings are refused.
    let mut dead = h.clone();
    for j in 0..k {
        dead[7 * k + j] = 0.0;
        dead[j * k + 7] = 0.0;
    }
    let (l, stats) = gptq_on_grid(&w, n, k, &dead, 0.01, 32, true, &value).unwrap();
    assert_eq!(stats.dead_columns, 1);
    assert!((0..n).all(|r| l[r * k + 7] == w[r * k + 7]), "a dead column is not compensated");
    assert!(matches!(gptq_on_grid(&w, n, k, &h, 0.01, 0, false, &value), Err(GptqError::Settings(_))));
    assert!(matches!(gptq_on_grid(&w, n, k, &h[1..], 0.01, 32, false, &value), Err(GptqError::Length { .. })));
}
