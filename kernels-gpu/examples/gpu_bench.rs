//! Times the grouped expert GEMM on a CUDA GPU at the seed shapes (Qwen3-1.7B-k1p1-n16: D 2048,
//! 16 routed experts of width 512, top-1) and prints one JSON line. Part of `tools/gpu_check.sh`.
//!
//! `cargo run --release -p kernels-gpu --features cuda --example gpu_bench [-- TOKENS [REPS]]`
//!
//! The GEMM is the experts' gate/up projection `hgu [Nk, 2W] = xp [Nk, D] · guᵀ` for every expert
//! (one grouped launch), device-resident, timed over REPS launches after 3 warm-ups (median), for
//! the f32 FMA kernel and the bf16 tensor-core MMA kernel.

use kernels_gpu::host::Gpu;
use kernels_gpu::kernels::gemm::{GroupedGemm, Operand, TokenAxis, TOKENS};
use kernels_gpu::launcher::{Elem, Launcher};
use kernels_gpu::ops::{grouped_gemm, GemmElem};
use std::time::Instant;

const D: usize = 2048;
const E: usize = 16;
const W: usize = 512;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// Median milliseconds of the gate/up grouped GEMM in element type `T` with `offsets` (`[E+1]`).
fn time_gate_up<T: GemmElem + Elem>(gpu: &Gpu, offsets: &[u32], reps: usize) -> Result<f64, String> {
    let nk = offsets[E] as usize;
    let err = |e: kernels_gpu::launcher::LaunchError| e.to_string();
    let x = gpu.scratch::<T>(nk * D).map_err(err)?;
    let w = gpu.scratch::<T>(E * 3 * W * D).map_err(err)?;
    let out = gpu.scratch::<f32>(nk * 2 * W).map_err(err)?;
    let off = gpu.input(offsets).map_err(err)?;
    let p = GroupedGemm {
        a: Operand { ptr: gpu.ptr::<T>(&x), rs: D, cs: 1, group_stride: 0, offset: 0, axis: TokenAxis::Rows },
        b: Operand { ptr: gpu.ptr::<T>(&w), rs: 1, cs: D, group_stride: 3 * W * D, offset: 0, axis: TokenAxis::None },
        c: Operand { ptr: gpu.ptr::<f32>(&out), rs: 2 * W, cs: 1, group_stride: 0, offset: 0, axis: TokenAxis::Rows },
        m: TOKENS,
        n: 2 * W,
        k: D,
        offsets: gpu.ptr::<u32>(&off),
        accumulate: false,
    };
    let mut times = Vec::new();
    for i in 0..reps + 3 {
        let t0 = Instant::now();
        // SAFETY: x [Nk, D], w [E, 3*W*D], out [Nk, 2W] device buffers; offsets [E+1] on the device.
        unsafe { grouped_gemm(gpu, p, Some(offsets), E) }.map_err(err)?;
        gpu.synchronize().map_err(|e| e.to_string())?;
        if i >= 3 {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(median(times))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let tokens: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(8192);
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
    let gpu = match Gpu::new(0) {
        Ok(g) => g,
        Err(e) => {
            println!("{{\"grouped_gemm\":{{\"error\":{:?}}}}}", e.to_string());
            std::process::exit(1);
        }
    };
    // Top-1 routing with a mild skew: expert i gets a share proportional to 1 + i/16.
    let weights: Vec<f64> = (0..E).map(|i| 1.0 + i as f64 / E as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut offsets = vec![0u32; E + 1];
    for i in 0..E {
        let n = if i + 1 == E { tokens - offsets[i] as usize } else { (tokens as f64 * weights[i] / total) as usize };
        offsets[i + 1] = offsets[i] + n as u32;
    }
    let flops = 2.0 * tokens as f64 * (2 * W) as f64 * D as f64;
    let fma = time_gate_up::<f32>(&gpu, &offsets, reps);
    let mma = time_gate_up::<u16>(&gpu, &offsets, reps);
    let field = |r: &Result<f64, String>| match r {
        Ok(ms) => format!("{{\"ms\":{ms:.4},\"tflops\":{:.3}}}", flops / (ms * 1e-3) / 1e12),
        Err(e) => format!("{{\"error\":{e:?}}}"),
    };
    println!(
        "{{\"grouped_gemm\":{{\"device\":{:?},\"tokens\":{tokens},\"d\":{D},\"experts\":{E},\"width\":{W},\"fma_f32\":{},\"mma_bf16\":{}}}}}",
        gpu.name().unwrap_or_default(),
        field(&fma),
        field(&mma)
    );
    if fma.is_err() || mma.is_err() {
        std::process::exit(1);
    }
}
