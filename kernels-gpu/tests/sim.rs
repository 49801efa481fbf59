//! Tests of the SIMT simulator itself: barriers, divergence and deadlock detection, shuffles,
//! votes, MMA fragments, ldmatrix, cp.async, atomics.

use kernels_gpu::kernels::reduce::block_sum;
use kernels_gpu::sim::{launch, launch_with, LaunchOptions, SimError};
use kernels_gpu::simt::{bf16_from_f32, bf16_to_f32, pack_bf16x2, Dim3, Gmem, Simt, Smem};
use std::time::{Duration, Instant};

fn gmem<T: Copy>(v: &mut [T]) -> Gmem<T> {
    Gmem::new(v.as_mut_ptr())
}

#[test]
fn shared_memory_tree_reduction_needs_and_gets_real_barriers() {
    // 4 blocks of 128 threads, each sums 128 values through a shared-memory tree (7 barriers).
    let x: Vec<f32> = (0..512).map(|i| (i % 37) as f32 - 11.0).collect();
    let mut out = vec![0f32; 4];
    let (xp, op) = (Gmem::new(x.as_ptr() as *mut f32), gmem(&mut out));
    launch(Dim3::x(4), Dim3::x(128), 128 * 4, |ctx| {
        let s: Smem<f32> = ctx.dyn_shared();
        let t = ctx.thread_linear() as usize;
        let b = ctx.block_idx().x as usize;
        unsafe {
            s.write(t, xp.read(b * 128 + t));
            ctx.sync_threads();
            let mut half = 64;
            while half > 0 {
                if t < half {
                    s.write(t, s.read(t) + s.read(t + half));
                }
                ctx.sync_threads();
                half /= 2;
            }
            if t == 0 {
                op.write(b, s.read(0));
            }
        }
    })
    .unwrap();
    for b in 0..4 {
        let want: f32 = x[b * 128..(b + 1) * 128].iter().sum();
        assert_eq!(out[b], want, "block {b}");
    }
    // The same through the warp-shuffle block reduction.
    let mut out2 = vec![0f32; 4];
    let o2 = gmem(&mut out2);
    launch(Dim3::x(4), Dim3::x(128), 0, |ctx| {
        let t = ctx.thread_linear() as usize;
        let b = ctx.block_idx().x as usize;
        let total = block_sum(ctx, unsafe { xp.read(b * 128 + t) });
        if t == 0 {
            unsafe { o2.write(b, total) };
        }
    })
    .unwrap();
    assert_eq!(out, out2);
}

#[test]
fn a_barrier_inside_a_divergent_branch_is_an_error() {
    let err = launch(Dim3::x(2), Dim3::x(64), 0, |ctx| {
        if ctx.thread_linear() < 10 {
            ctx.sync_threads();
        }
    })
    .unwrap_err();
    assert!(matches!(err, SimError::BarrierDivergence { .. }), "{err}");
    eprintln!("divergent barrier: {err}");
    // Two barriers at different call sites, reached by different halves.
    #[allow(clippy::if_same_then_else)]
    let err = launch(Dim3::x(1), Dim3::x(64), 0, |ctx| {
        if ctx.thread_linear() < 32 {
            ctx.sync_threads();
        } else {
            ctx.sync_threads();
        }
    })
    .unwrap_err();
    assert!(matches!(err, SimError::BarrierDivergence { .. }), "{err}");
    // An early return before a barrier.
    let err = launch(Dim3::x(1), Dim3::x(40), 0, |ctx| {
        if ctx.thread_linear() == 39 {
            return;
        }
        ctx.sync_threads();
    })
    .unwrap_err();
    assert!(matches!(err, SimError::BarrierDivergence { .. }), "{err}");
}

#[test]
fn lanes_of_a_warp_in_different_collectives_is_an_error() {
    let err = launch(Dim3::x(1), Dim3::x(32), 0, |ctx| {
        if ctx.lane_id() % 2 == 0 {
            ctx.shfl_xor(1, 1);
        } else {
            ctx.vote_any(true);
        }
    })
    .unwrap_err();
    assert!(matches!(err, SimError::WarpDivergence { warp: 0, .. }), "{err}");
    let err = launch(Dim3::x(1), Dim3::x(64), 0, |ctx| {
        if ctx.thread_linear() == 40 {
            return;
        }
        ctx.vote_all(true);
    })
    .unwrap_err();
    assert!(matches!(err, SimError::WarpDivergence { warp: 1, .. }), "{err}");
}

#[test]
fn deadlocks_are_reported_within_bounded_time() {
    // Half a warp waits in a shuffle, the rest of the block at the barrier: nobody can move.
    let start = Instant::now();
    let err = launch(Dim3::x(1), Dim3::x(64), 0, |ctx| {
        if ctx.thread_linear() < 16 {
            ctx.shfl_idx(0, 0);
        } else {
            ctx.sync_threads();
        }
    })
    .unwrap_err();
    assert!(matches!(err, SimError::Deadlock { .. }), "{err}");
    eprintln!("deadlock: {err}");
    // Warp 0 keeps voting (progress of a sort) waiting for a flag warp 1 only sets after a
    // barrier warp 0 never reaches: caught by the timeout.
    let opts = LaunchOptions { timeout: Duration::from_millis(300), ..Default::default() };
    let err = launch_with(opts, Dim3::x(1), Dim3::x(64), 16, |ctx| {
        let s: Smem<u32> = ctx.dyn_shared();
        unsafe {
            if ctx.warp_id() == 0 {
                while !ctx.vote_any(std::ptr::read_volatile(s.as_ptr()) == 1) {}
            } else {
                ctx.sync_threads();
                s.write(0, 1);
            }
        }
    })
    .unwrap_err();
    assert!(matches!(err, SimError::Deadlock { .. }), "{err}");
    assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
}

#[test]
fn kernel_panics_and_bad_launches_are_errors() {
    let err = launch(Dim3::x(3), Dim3::x(32), 0, |ctx| {
        let v = [1u32; 4];
        if ctx.block_idx().x == 2 {
            let i = ctx.thread_linear() as usize;
            std::hint::black_box(v[i]);
        }
        ctx.sync_threads();
    })
    .unwrap_err();
    assert!(matches!(err, SimError::KernelPanic { block: Dim3 { x: 2, .. }, .. }), "{err}");
    assert!(matches!(launch(Dim3::x(1), Dim3::x(2048), 0, |_| {}), Err(SimError::InvalidLaunch(_))));
    assert!(matches!(launch(Dim3::x(0), Dim3::x(32), 0, |_| {}), Err(SimError::InvalidLaunch(_))));
    assert!(matches!(launch(Dim3::x(1), Dim3::x(32), 1 << 30, |_| {}), Err(SimError::InvalidLaunch(_))));
}

#[test]
fn shuffles_and_votes_follow_ptx_semantics() {
    // Block of 64 = 2 warps; each lane records several collectives' results.
    const K: usize = 8;
    let mut out = vec![0u32; 64 * K];
    let o = gmem(&mut out);
    launch(Dim3::x(1), Dim3::x(64), 0, |ctx| {
        let (t, lane) = (ctx.thread_linear(), ctx.lane_id());
        let v = 1000 + t;
        let r = [
            ctx.shfl_idx(v, (lane * 7) % 32),
            ctx.shfl_xor(v, 5),
            ctx.shfl_down(v, 3),
            ctx.shfl_up(v, 2),
            ctx.vote_any(t == 40) as u32,
            ctx.vote_all(lane < 32) as u32 + 2 * ctx.vote_all(lane != 7) as u32,
            ctx.vote_ballot(lane % 3 == 0),
            ctx.shfl_xor_f32(t as f32 * 0.5, 16).to_bits(),
        ];
        for (k, x) in r.into_iter().enumerate() {
            unsafe { o.write(t as usize * K + k, x) };
        }
    })
    .unwrap();
    let ballot: u32 = (0..32).filter(|l| l % 3 == 0).map(|l| 1u32 << l).sum();
    for t in 0..64u32 {
        let (w, lane) = (t / 32, t % 32);
        let at = |l: u32| 1000 + w * 32 + l;
        let r = &out[t as usize * K..(t as usize + 1) * K];
        assert_eq!(r[0], at((lane * 7) % 32), "idx t={t}");
        assert_eq!(r[1], at(lane ^ 5), "xor t={t}");
        assert_eq!(r[2], if lane + 3 > 31 { at(lane) } else { at(lane + 3) }, "down t={t}");
        assert_eq!(r[3], if lane < 2 { at(lane) } else { at(lane - 2) }, "up t={t}");
        assert_eq!(r[4], (w == 1) as u32, "any t={t}");
        assert_eq!(r[5], 1, "all t={t}");
        assert_eq!(r[6], ballot, "ballot t={t}");
        assert_eq!(f32::from_bits(r[7]), (w * 32 + (lane ^ 16)) as f32 * 0.5, "xor f32 t={t}");
    }
    // A partial warp (block of 40: warp 1 has 8 lanes): votes cover existing lanes, reading a
    // missing lane is an error.
    let mut out = vec![0u32; 40];
    let o = gmem(&mut out);
    launch(Dim3::x(1), Dim3::x(40), 0, |ctx| {
        let b = ctx.vote_ballot(true);
        unsafe { o.write(ctx.thread_linear() as usize, b) };
    })
    .unwrap();
    assert_eq!((out[0], out[39]), (u32::MAX, 0xFF));
    let err = launch(Dim3::x(1), Dim3::x(40), 0, |ctx| {
        ctx.shfl_down(1, 4);
    })
    .unwrap_err();
    assert!(matches!(err, SimError::WarpDivergence { warp: 1, .. }), "{err}");
}

/// Value of A[r][k] (16x16) and B[k][n] (16x8) of the MMA test: small integers (exact in bf16).
fn mma_inputs() -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = (0..256).map(|i| ((i * 7 % 19) as f32 - 9.0) * 0.25).collect();
    let b: Vec<f32> = (0..128).map(|i| ((i * 5 % 13) as f32 - 6.0) * 0.5).collect();
    let c: Vec<f32> = (0..128).map(|i| (i % 11) as f32 - 5.0).collect();
    (a, b, c)
}

#[test]
fn mma_fragments_follow_the_ptx_layout() {
    let (a, b, c) = mma_inputs();
    let mut d = vec![f32::NAN; 128];
    let (ap, bp, cp, dp) = (
        Gmem::new(a.as_ptr() as *mut f32),
        Gmem::new(b.as_ptr() as *mut f32),
        Gmem::new(c.as_ptr() as *mut f32),
        gmem(&mut d),
    );
    launch(Dim3::x(1), Dim3::x(32), 0, |ctx| {
        let l = ctx.lane_id() as usize;
        let (g, t) = (l / 4, l % 4);
        let h = |p: Gmem<f32>, i: usize| bf16_from_f32(unsafe { p.read(i) });
        let mut fa = [0u32; 4];
        for (r, slot) in fa.iter_mut().enumerate() {
            let (row, col) = (g + 8 * (r & 1), 2 * t + 8 * (r >> 1));
            *slot = pack_bf16x2(h(ap, row * 16 + col), h(ap, row * 16 + col + 1));
        }
        let mut fb = [0u32; 2];
        for (r, slot) in fb.iter_mut().enumerate() {
            let k = 2 * t + 8 * r;
            *slot = pack_bf16x2(h(bp, k * 8 + g), h(bp, (k + 1) * 8 + g));
        }
        let mut fc = [0f32; 4];
        for (i, slot) in fc.iter_mut().enumerate() {
            *slot = unsafe { cp.read((g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)) };
        }
        let fd = ctx.mma_m16n8k16_bf16(fa, fb, fc);
        for (i, v) in fd.into_iter().enumerate() {
            unsafe { dp.write((g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1), v) };
        }
    })
    .unwrap();
    for r in 0..16 {
        for n in 0..8 {
            let want: f32 = c[r * 8 + n] + (0..16).map(|k| a[r * 16 + k] * b[k * 8 + n]).sum::<f32>();
            assert_eq!(d[r * 8 + n], want, "D[{r}][{n}]");
        }
    }
    // An MMA in a partial warp is an error.
    let err = launch(Dim3::x(1), Dim3::x(16), 0, |ctx| {
        ctx.mma_m16n8k16_bf16([0; 4], [0; 2], [0.0; 4]);
    })
    .unwrap_err();
    assert!(matches!(err, SimError::WarpDivergence { .. }), "{err}");
}

#[test]
fn ldmatrix_and_cp_async_feed_mma_fragments() {
    // A (16x16) row-major and B stored as [n][k] (8x16) are staged with cp.async into shared
    // memory, loaded with ldmatrix (A: x4; B: x2 non-trans from [n][k] and x2 trans from [k][n]).
    let (a, b, _) = mma_inputs();
    let a16: Vec<u16> = a.iter().map(|&v| bf16_from_f32(v)).collect();
    // b_nk[n][k] = B[k][n]; b_kn = B as stored [k][n].
    let b_nk: Vec<u16> = (0..128).map(|i| bf16_from_f32(b[(i % 16) * 8 + i / 16])).collect();
    let b_kn: Vec<u16> = b.iter().map(|&v| bf16_from_f32(v)).collect();
    // Copy into 16-byte aligned buffers.
    let mut buf = vec![0u128; (256 + 128 + 128) / 8];
    let base = buf.as_mut_ptr() as *mut u16;
    unsafe {
        std::ptr::copy_nonoverlapping(a16.as_ptr(), base, 256);
        std::ptr::copy_nonoverlapping(b_nk.as_ptr(), base.add(256), 128);
        std::ptr::copy_nonoverlapping(b_kn.as_ptr(), base.add(384), 128);
    }
    let src = Gmem::new(base);
    let mut d = vec![0f32; 2 * 128];
    let dp = gmem(&mut d);
    launch(Dim3::x(1), Dim3::x(32), 512 * 2, |ctx| {
        let s: Smem<u16> = ctx.dyn_shared();
        let l = ctx.lane_id() as usize;
        unsafe {
            for chunk in (l..64).step_by(32) {
                ctx.cp_async_16(s.add(chunk * 8), src.add(chunk * 8));
            }
            ctx.cp_async_commit();
            ctx.cp_async_wait_all();
            ctx.sync_threads();
            let fa = ctx.ldmatrix_x4(s.add((l % 8 + ((l / 8) % 2) * 8) * 16 + (l / 16) * 8), false);
            let fb1 = ctx.ldmatrix_x2(s.add(256 + (l % 8) * 16 + ((l / 8) % 2) * 8), false);
            let fb2 = ctx.ldmatrix_x2(s.add(384 + ((l % 8) + ((l / 8) % 2) * 8) * 8), true);
            let (g, t) = (l / 4, l % 4);
            for (j, fb) in [fb1, fb2].into_iter().enumerate() {
                let fd = ctx.mma_m16n8k16_bf16(fa, fb, [0.0; 4]);
                for (i, v) in fd.into_iter().enumerate() {
                    dp.write(j * 128 + (g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1), v);
                }
            }
        }
    })
    .unwrap();
    for r in 0..16 {
        for n in 0..8 {
            let want: f32 = (0..16)
                .map(|k| bf16_to_f32(bf16_from_f32(a[r * 16 + k])) * bf16_to_f32(bf16_from_f32(b[k * 8 + n])))
                .sum();
            assert_eq!(d[r * 8 + n], want, "non-trans D[{r}][{n}]");
            assert_eq!(d[128 + r * 8 + n], want, "trans D[{r}][{n}]");
        }
    }
}

#[test]
fn cp_async_lands_only_at_wait_and_needs_alignment() {
    let mut buf = vec![7u128; 2];
    let src = Gmem::new(buf.as_mut_ptr() as *mut u32);
    let mut out = vec![0u32; 2];
    let o = gmem(&mut out);
    launch(Dim3::x(1), Dim3::x(1), 16, |ctx| {
        let s: Smem<u32> = ctx.dyn_shared();
        unsafe {
            ctx.cp_async_16(s, src);
            o.write(0, s.read(0)); // not landed yet: still the 0xFF fill
            ctx.cp_async_wait_all();
            o.write(1, s.read(0));
        }
    })
    .unwrap();
    assert_eq!(out, [u32::MAX, 7]);
    let err = launch(Dim3::x(1), Dim3::x(1), 32, |ctx| {
        let s: Smem<u32> = ctx.dyn_shared();
        unsafe { ctx.cp_async_16(s.add(1), src) };
    })
    .unwrap_err();
    assert!(matches!(err, SimError::KernelPanic { .. }), "{err}");
}

#[test]
fn atomics_from_many_blocks_add_up() {
    let mut acc = vec![0f32; 3];
    let mut cnt = vec![0u32; 1];
    let (a, c) = (gmem(&mut acc), gmem(&mut cnt));
    launch(Dim3::new(2, 3, 1), Dim3::new(8, 4, 2), 0, |ctx| unsafe {
        ctx.atomic_add_f32(a, ctx.block_idx().y as usize, 0.5);
        ctx.atomic_add_u32(c, 0, 1);
    })
    .unwrap();
    assert_eq!(acc, [64.0 * 2.0 * 0.5; 3]);
    assert_eq!(cnt[0], 6 * 64);
}

#[test]
fn three_d_indices_cover_the_grid_once() {
    let (grid, block) = (Dim3::new(3, 2, 2), Dim3::new(4, 3, 2));
    let total = (grid.volume() * block.volume()) as usize;
    let mut hits = vec![0u32; total];
    let h = gmem(&mut hits);
    launch(grid, block, 0, |ctx| {
        let (b, t, bd, gd) = (ctx.block_idx(), ctx.thread_idx(), ctx.block_dim(), ctx.grid_dim());
        let blin = (b.x + gd.x * (b.y + gd.y * b.z)) as usize;
        let i = blin * bd.volume() as usize + ctx.thread_linear() as usize;
        assert_eq!(ctx.thread_linear(), t.x + bd.x * (t.y + bd.y * t.z));
        unsafe { ctx.atomic_add_u32(h, i, 1) };
    })
    .unwrap();
    assert!(hits.iter().all(|&x| x == 1));
}

/// Regression: a thread that returned from block b could miss the end-of-block release (exit and
/// wait were two lock holds) and hang the launch. Many short blocks exercise the hand-over.
#[test]
fn many_short_blocks_hand_over_without_losing_a_thread() {
    let mut cnt = vec![0u32; 1];
    let c = gmem(&mut cnt);
    launch(Dim3::x(600), Dim3::x(64), 0, |ctx| unsafe {
        if ctx.thread_linear() % 3 == 0 {
            ctx.atomic_add_u32(c, 0, 1);
        }
    })
    .unwrap();
    assert_eq!(cnt[0], 600 * 22);
}
