//! Rotary embedding against kernels-cpu `rope`.

use super::report;
use kernels_cpu::check::rand_vec;
use kernels_cpu::rope::RopeTable;
use kernels_gpu::launcher::SimLauncher;
use kernels_gpu::ops;

/// Deterministic values in `0..bound`.
fn below(n: usize, bound: usize, seed: u64) -> Vec<u32> {
    rand_vec(n, seed).iter().map(|&v| (((v + 1.0) * 0.5 * bound as f32) as usize).min(bound - 1) as u32).collect()
}

#[test]
fn rope_forward_and_backward_match_kernels_cpu() {
    // (N, H, Dh, max_pos): odd head counts, Dh not a multiple of the warp, N not of the block.
    for &(n, heads, dh, max_pos) in
        &[(1usize, 1usize, 2usize, 1usize), (37, 3, 18, 64), (131, 2, 128, 512), (300, 5, 64, 40)]
    {
        let table = RopeTable::new(dh, max_pos, 1_000_000.0);
        let x = rand_vec(n * heads * dh, 1);
        let pos = below(n, max_pos, 2);
        let (mut got, mut want) = (vec![f32::NAN; x.len()], vec![0f32; x.len()]);
        ops::rope_forward(&SimLauncher, &mut got, &x, &pos, &table.cos, &table.sin, heads, dh).unwrap();
        kernels_cpu::rope::rope_forward(&mut want, &x, &pos, &table, n, heads);
        // Same products and sums in the same order (no FMA): bit-identical.
        let tag = format!("rope n={n} h={heads} dh={dh} max_pos={max_pos}");
        report(&format!("{tag} forward"), &got, &want, 0.0, 0.0);
        let dout = rand_vec(x.len(), 3);
        let mut dx = rand_vec(x.len(), 4);
        let mut wdx = dx.clone();
        ops::rope_backward(&SimLauncher, &mut dx, &dout, &pos, &table.cos, &table.sin, heads, dh).unwrap();
        kernels_cpu::rope::rope_backward(&mut wdx, &dout, &pos, &table, n, heads);
        report(&format!("{tag} backward (accumulated)"), &dx, &wdx, 0.0, 0.0);
    }
}

#[test]
fn rope_rejects_positions_past_the_table_and_odd_head_dims() {
    let table = RopeTable::new(4, 8, 10_000.0);
    let mut out = vec![0f32; 4];
    assert!(ops::rope_forward(&SimLauncher, &mut out, &[1.0; 4], &[8], &table.cos, &table.sin, 1, 4).is_err());
    assert!(ops::rope_forward(&SimLauncher, &mut out, &[1.0; 4], &[7], &table.cos, &table.sin, 1, 4).is_ok());
    let mut out = vec![0f32; 3];
    assert!(ops::rope_backward(&SimLauncher, &mut out, &[1.0; 3], &[0], &table.cos, &table.sin, 1, 3).is_err());
}
