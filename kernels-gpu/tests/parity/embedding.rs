//! Embedding lookup and its deterministic scatter-add against kernels-cpu `embedding`.

use super::report;
use kernels_cpu::check::rand_vec;
use kernels_gpu::launcher::SimLauncher;
use kernels_gpu::ops;

/// Deterministic values in `0..bound`.
fn below(n: usize, bound: usize, seed: u64) -> Vec<u32> {
    rand_vec(n, seed).iter().map(|&v| (((v + 1.0) * 0.5 * bound as f32) as usize).min(bound - 1) as u32).collect()
}

#[test]
fn embedding_forward_and_backward_match_kernels_cpu() {
    // (N, V, D): repeated ids (V < N), a single id, D below and above the block size.
    for &(n, v, d) in &[(1usize, 1usize, 1usize), (37, 11, 75), (1031, 500, 13), (200, 1, 130), (300, 3001, 129)] {
        let table = rand_vec(v * d, 1);
        let ids = below(n, v, 2);
        let (mut got, mut want) = (vec![f32::NAN; n * d], vec![0f32; n * d]);
        ops::embedding_forward(&SimLauncher, &mut got, &ids, &table, d).unwrap();
        kernels_cpu::embedding::embedding_forward(&mut want, &ids, &table, d);
        let tag = format!("embedding n={n} v={v} d={d}");
        report(&format!("{tag} forward"), &got, &want, 0.0, 0.0);
        let dout = rand_vec(n * d, 3);
        let mut dt = rand_vec(v * d, 4);
        let mut wdt = dt.clone();
        ops::embedding_backward(&SimLauncher, &mut dt, &dout, &ids, d).unwrap();
        kernels_cpu::embedding::embedding_backward(&mut wdt, &dout, &ids, d);
        // Each table row sums its tokens in ascending order from its old value, as the CPU: exact.
        report(&format!("{tag} backward (accumulated)"), &dt, &wdt, 0.0, 0.0);
    }
    let mut out = vec![0f32; 2];
    assert!(ops::embedding_forward(&SimLauncher, &mut out, &[2], &[0.0; 4], 2).is_err());
    assert!(ops::embedding_backward(&SimLauncher, &mut [0.0; 4], &[1.0, 1.0], &[2], 2).is_err());
}
