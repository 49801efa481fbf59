//! GEMM GFLOP/s of every backend this CPU supports, on the same shapes, interleaved: for each
//! round, each shape, each backend, `--warmup` untimed runs then `--runs` timed runs (median).
//! Driven by tools/bench_gemm_isa.sh (which interleaves numpy and torch rounds too).
//!
//! ```sh
//! cargo run --release -p kernels-cpu --example bench_gemm -- \
//!     --shapes 2048x256x768,2048x768x256,512x2048x6144 --threads 2 --rounds 5 \
//!     --backends auto,avx2,gemm-crate,amx-bf16,avx512-bf16
//! ```
//!
//! Prints one JSON line per (round, shape, backend):
//! `{"bench":"gemm","impl":"medmoe-<backend>","resolved":"..","dtype":"f32"|"bf16","m":..,"k":..,
//! "n":..,"trans":"NN","threads":..,"round":..,"median_s":..,"gflops":..}` with
//! gflops = 2*M*K*N / median_s / 1e9. Backends the CPU lacks are reported on stderr and skipped.
//! Backends: auto, gemm-crate, avx2, amx-bf16, avx512-bf16, bf16-emulated (default: the first five).
//! `--trans NT` reads B transposed (`[N,K]` storage), `TN` reads A transposed, and so on.

use std::time::Instant;

use kernels_cpu::check::rand_vec;
use kernels_cpu::gemm::{matmul_with, GemmBackend, Trans};

struct Args {
    shapes: Vec<(usize, usize, usize)>,
    threads: usize,
    rounds: usize,
    runs: usize,
    warmup: usize,
    backends: Vec<GemmBackend>,
    trans: (Trans, Trans),
}

fn parse_backend(s: &str) -> Result<GemmBackend, String> {
    GemmBackend::from_name(s.trim()).ok_or_else(|| {
        let names: Vec<&str> = GemmBackend::ALL.iter().map(|b| b.name()).collect();
        format!("unknown backend `{s}` (one of {})", names.join(", "))
    })
}

fn parse_shape(s: &str) -> Result<(usize, usize, usize), String> {
    let d: Vec<usize> = s
        .trim()
        .to_lowercase()
        .split('x')
        .map(|p| p.parse().map_err(|e| format!("{s}: {e}")))
        .collect::<Result<_, _>>()?;
    match d[..] {
        [m, k, n] if m > 0 && k > 0 && n > 0 => Ok((m, k, n)),
        _ => Err(format!("shape `{s}` must be MxKxN with positive sizes")),
    }
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        shapes: vec![(2048, 256, 768), (2048, 768, 256), (512, 2048, 6144)],
        threads: 2,
        rounds: 3,
        runs: 20,
        warmup: 3,
        backends: vec![
            GemmBackend::Auto,
            GemmBackend::Avx2,
            GemmBackend::GemmCrate,
            GemmBackend::AmxBf16,
            GemmBackend::Avx512Bf16,
        ],
        trans: (Trans::No, Trans::No),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let num = |v: String, what: &str| v.parse::<usize>().map_err(|e| format!("{what}: {e}"));
        match flag.as_str() {
            "--shapes" => a.shapes = value()?.split(',').map(parse_shape).collect::<Result<_, _>>()?,
            "--threads" => a.threads = num(value()?, "--threads")?,
            "--rounds" => a.rounds = num(value()?, "--rounds")?,
            "--runs" => a.runs = num(value()?, "--runs")?,
            "--warmup" => a.warmup = num(value()?, "--warmup")?,
            "--backends" => a.backends = value()?.split(',').map(parse_backend).collect::<Result<_, _>>()?,
            "--trans" => {
                let t = |c: char| if c == 'T' { Trans::Yes } else { Trans::No };
                let v = value()?.to_uppercase();
                if v.len() != 2 || !v.chars().all(|c| c == 'N' || c == 'T') {
                    return Err(format!("--trans {v}: expected NN, NT, TN or TT"));
                }
                let c: Vec<char> = v.chars().collect();
                a.trans = (t(c[0]), t(c[1]));
            }
            other => return Err(format!("unknown argument {other} (see the docs at the top of bench_gemm.rs)")),
        }
    }
    if a.threads == 0 || a.runs == 0 || a.rounds == 0 {
        return Err("--threads, --runs and --rounds must be positive".into());
    }
    Ok(a)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> Result<(), String> {
    let a = parse_args()?;
    let backends: Vec<GemmBackend> = a
        .backends
        .iter()
        .copied()
        .filter(|b| {
            let ok = b.is_available();
            if !ok {
                eprintln!("[bench_gemm] skipping {}: not available on this CPU", b.name());
            }
            ok
        })
        .collect();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(a.threads).build().map_err(|e| e.to_string())?;
    let (ta, tb) = a.trans;
    let trans = format!("{}{}", if ta == Trans::Yes { 'T' } else { 'N' }, if tb == Trans::Yes { 'T' } else { 'N' });
    let data: Vec<_> =
        a.shapes.iter().map(|&(m, k, n)| (rand_vec(m * k, 1), rand_vec(k * n, 2), vec![0f32; m * n])).collect();
    let mut data = data;
    // The first product of a fresh process ran at half speed for whole rounds (clock ramp-up,
    // first-touch faults of the thread pool's buffers): run the first one untimed for 0.5 s.
    if let (Some(&be), Some((&(m, k, n), (x, w, c)))) = (backends.first(), a.shapes.iter().zip(data.iter_mut()).next())
    {
        let t0 = Instant::now();
        pool.install(|| {
            while t0.elapsed().as_secs_f64() < 0.5 {
                matmul_with(be, a.threads, c, x, w, m, k, n, ta, tb, false);
            }
        });
    }
    for round in 0..a.rounds {
        for (&(m, k, n), (x, w, c)) in a.shapes.iter().zip(data.iter_mut()) {
            for &be in &backends {
                let times = pool.install(|| {
                    let mut run = || matmul_with(be, a.threads, c, x, w, m, k, n, ta, tb, false);
                    for _ in 0..a.warmup {
                        run();
                    }
                    (0..a.runs)
                        .map(|_| {
                            let t0 = Instant::now();
                            run();
                            t0.elapsed().as_secs_f64()
                        })
                        .collect::<Vec<f64>>()
                });
                let med = median(times);
                let resolved = be.resolve();
                let dtype = if resolved.is_bf16() { "bf16" } else { "f32" };
                println!(
                    "{{\"bench\":\"gemm\",\"impl\":\"medmoe-{}\",\"resolved\":\"{}\",\"dtype\":\"{dtype}\",\"m\":{m},\"k\":{k},\"n\":{n},\"trans\":\"{trans}\",\"threads\":{},\"round\":{round},\"median_s\":{med},\"gflops\":{:.3}}}",
                    be.name(),
                    resolved.name(),
                    a.threads,
                    2.0 * (m * k * n) as f64 / med / 1e9
                );
            }
        }
    }
    Ok(())
}
