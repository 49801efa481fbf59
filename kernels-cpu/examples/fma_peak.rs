//! The arithmetic peak of this CPU, measured: the denominator of "x% of the FMA peak" in
//! BENCHMARKS.md. Each thread runs a loop of 12 independent accumulator chains (enough to hide
//! the latency of two FMA pipes) of one instruction on registers only (inline asm, so nothing is
//! spilled), no memory:
//! `vfmadd231ps` on ymm (AVX2+FMA: 16 flops each) and zmm (AVX-512F: 32 flops), and
//! `vdpbf16ps` on zmm (AVX512-BF16: 16 lanes x 2 products = 64 flops). 1 thread, then
//! `--threads N` threads at once (each pinned to nothing: the OS spreads them).
//!
//! ```sh
//! cargo run --release -p kernels-cpu --example fma_peak -- --threads 2 --rounds 5
//! ```
//!
//! Prints one JSON line per (round, instruction, thread count):
//! `{"bench":"peak","isa":"avx512f-fma","threads":2,"round":0,"gflops":..}` (median of the
//! threads' own rates, times the thread count).

use std::time::Instant;

/// Loop iterations per measurement (~0.3 s per thread at 4 GHz for zmm FMA).
const ITERS: u64 = 200_000_000;
/// Independent instructions per loop iteration.
const ACCUMULATORS: f64 = 12.0;

/// `iters` x `N` independent register-only instructions `op` (AT&T-free Intel syntax, one
/// accumulator per line), accumulators and operands zeroed first; nothing touches memory.
macro_rules! probe_loop {
    ($name:ident, $feat:literal, $zero:literal, $($line:literal),+ $(,)?) => {
        #[target_feature(enable = $feat)]
        fn $name(iters: u64) {
            // SAFETY: the target feature is enabled (callers check the CPU has it); the asm
            // only touches the registers it declares clobbered and the loop counter.
            unsafe {
                std::arch::asm!(
                    $zero,
                    "2:",
                    $($line,)+
                    "dec {n}",
                    "jnz 2b",
                    n = inout(reg) iters => _,
                    out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _, out("xmm4") _, out("xmm5") _,
                    out("xmm6") _, out("xmm7") _, out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
                    out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
                    options(nostack, nomem),
                );
            }
        }
    };
}

// AVX2: 12 ymm accumulators (ymm0-11), operands ymm14, ymm15 (16 registers in all).
probe_loop!(
    ymm_fma,
    "avx2,fma",
    "vxorps ymm14, ymm14, ymm14\nvxorps ymm15, ymm15, ymm15",
    "vfmadd231ps ymm0, ymm14, ymm15",
    "vfmadd231ps ymm1, ymm14, ymm15",
    "vfmadd231ps ymm2, ymm14, ymm15",
    "vfmadd231ps ymm3, ymm14, ymm15",
    "vfmadd231ps ymm4, ymm14, ymm15",
    "vfmadd231ps ymm5, ymm14, ymm15",
    "vfmadd231ps ymm6, ymm14, ymm15",
    "vfmadd231ps ymm7, ymm14, ymm15",
    "vfmadd231ps ymm8, ymm14, ymm15",
    "vfmadd231ps ymm9, ymm14, ymm15",
    "vfmadd231ps ymm10, ymm14, ymm15",
    "vfmadd231ps ymm11, ymm14, ymm15",
);
// AVX-512: 12 zmm accumulators as well (enough for 2 pipes x latency 4..6), operands zmm14, zmm15.
probe_loop!(
    zmm_fma,
    "avx512f",
    "vxorps zmm14, zmm14, zmm14\nvxorps zmm15, zmm15, zmm15",
    "vfmadd231ps zmm0, zmm14, zmm15",
    "vfmadd231ps zmm1, zmm14, zmm15",
    "vfmadd231ps zmm2, zmm14, zmm15",
    "vfmadd231ps zmm3, zmm14, zmm15",
    "vfmadd231ps zmm4, zmm14, zmm15",
    "vfmadd231ps zmm5, zmm14, zmm15",
    "vfmadd231ps zmm6, zmm14, zmm15",
    "vfmadd231ps zmm7, zmm14, zmm15",
    "vfmadd231ps zmm8, zmm14, zmm15",
    "vfmadd231ps zmm9, zmm14, zmm15",
    "vfmadd231ps zmm10, zmm14, zmm15",
    "vfmadd231ps zmm11, zmm14, zmm15",
);
probe_loop!(
    zmm_dpbf16,
    "avx512f,avx512bf16",
    "vxorps zmm14, zmm14, zmm14\nvxorps zmm15, zmm15, zmm15",
    "vdpbf16ps zmm0, zmm14, zmm15",
    "vdpbf16ps zmm1, zmm14, zmm15",
    "vdpbf16ps zmm2, zmm14, zmm15",
    "vdpbf16ps zmm3, zmm14, zmm15",
    "vdpbf16ps zmm4, zmm14, zmm15",
    "vdpbf16ps zmm5, zmm14, zmm15",
    "vdpbf16ps zmm6, zmm14, zmm15",
    "vdpbf16ps zmm7, zmm14, zmm15",
    "vdpbf16ps zmm8, zmm14, zmm15",
    "vdpbf16ps zmm9, zmm14, zmm15",
    "vdpbf16ps zmm10, zmm14, zmm15",
    "vdpbf16ps zmm11, zmm14, zmm15",
);

/// One instruction's probe: its name, flops per instruction, whether this CPU has it, the loop.
struct Probe {
    isa: &'static str,
    flops: f64,
    available: bool,
    run: fn(u64),
}

fn probes() -> Vec<Probe> {
    let has = |f: &str| match f {
        "avx2" => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        "avx512f" => is_x86_feature_detected!("avx512f"),
        _ => is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16"),
    };
    // SAFETY (each closure): only called when `available`, i.e. the CPU has the features.
    vec![
        Probe { isa: "avx2-fma", flops: 16.0, available: has("avx2"), run: |n| unsafe { ymm_fma(n) } },
        Probe { isa: "avx512f-fma", flops: 32.0, available: has("avx512f"), run: |n| unsafe { zmm_fma(n) } },
        Probe { isa: "avx512-bf16-dp", flops: 64.0, available: has("bf16"), run: |n| unsafe { zmm_dpbf16(n) } },
    ]
}

/// GFLOP/s of `threads` threads running `probe` at once (each thread's own rate, median, x threads).
fn measure(probe: &Probe, threads: usize) -> f64 {
    let rates: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let t0 = Instant::now();
                    (probe.run)(ITERS);
                    ITERS as f64 * ACCUMULATORS * probe.flops / t0.elapsed().as_secs_f64() / 1e9
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("probe thread")).collect()
    });
    let mut r = rates;
    r.sort_by(f64::total_cmp);
    r[r.len() / 2] * threads as f64
}

fn main() -> Result<(), String> {
    let (mut threads, mut rounds) = (2usize, 3usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = || -> Result<usize, String> {
            it.next().ok_or(format!("{flag} needs a value"))?.parse().map_err(|e| format!("{flag}: {e}"))
        };
        match flag.as_str() {
            "--threads" => threads = num()?,
            "--rounds" => rounds = num()?,
            other => return Err(format!("unknown argument {other} (--threads N, --rounds R)")),
        }
    }
    let probes = probes();
    for p in probes.iter().filter(|p| !p.available) {
        eprintln!("[fma_peak] skipping {}: not available on this CPU", p.isa);
    }
    for round in 0..rounds {
        for p in probes.iter().filter(|p| p.available) {
            for t in [1, threads] {
                let g = measure(p, t);
                println!(
                    "{{\"bench\":\"peak\",\"isa\":\"{}\",\"threads\":{t},\"round\":{round},\"gflops\":{g:.1}}}",
                    p.isa
                );
            }
        }
    }
    Ok(())
}
