//! Throwaway GEMM timing (delete when done).
//! usage: gemm_bench_tmp THREADS REPS MxKxN:TT,... [ROUNDS]
//! Backends interleaved per repetition: avx2, gemm crate, OpenBLAS (numpy's, dlopen'ed).
use kernels_cpu::check::rand_vec;
use kernels_cpu::gemm::{matmul_with, GemmBackend, Trans};
use std::ffi::{c_char, c_int, c_void};
use std::time::Instant;

extern "C" {
    fn dlopen(f: *const c_char, flag: c_int) -> *mut c_void;
    fn dlsym(h: *mut c_void, s: *const c_char) -> *mut c_void;
    fn clock_gettime(clk: c_int, ts: *mut [i64; 2]) -> c_int;
}

/// Seconds of CPU time of this thread (threads == 1) or wall time.
fn now(cpu: bool) -> f64 {
    if cpu {
        let mut ts = [0i64; 2];
        unsafe { clock_gettime(3, &mut ts) };
        ts[0] as f64 + ts[1] as f64 * 1e-9
    } else {
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        T0.get_or_init(Instant::now).elapsed().as_secs_f64()
    }
}
type Sgemm = unsafe extern "C" fn(
    i32, i32, i32, i64, i64, i64, f32, *const f32, i64, *const f32, i64, f32, *mut f32, i64,
);
type SetThreads = unsafe extern "C" fn(c_int);

fn t(c: char) -> Trans {
    if c == 'T' { Trans::Yes } else { Trans::No }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args[1].parse().unwrap();
    let reps: usize = args[2].parse().unwrap();
    let shapes = &args[3];
    let rounds: usize = args.get(4).map(|x| x.parse().unwrap()).unwrap_or(1);
    let (sgemm, set_threads) = unsafe {
        let h = dlopen(
            c"/work/pyenv/lib/python3.11/site-packages/numpy.libs/libscipy_openblas64_-32a4b2a6.so".as_ptr(),
            2,
        );
        assert!(!h.is_null());
        let f = dlsym(h, c"scipy_cblas_sgemm64_".as_ptr());
        let s = dlsym(h, c"scipy_openblas_set_num_threads64_".as_ptr());
        assert!(!f.is_null() && !s.is_null());
        (std::mem::transmute::<*mut c_void, Sgemm>(f), std::mem::transmute::<*mut c_void, SetThreads>(s))
    };
    unsafe { set_threads(threads as c_int) };
    let cpu = threads == 1 && std::env::var("WALL").is_err();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        for _round in 0..rounds {
        for s in shapes.split(',') {
            let (dims, tt) = s.split_once(':').unwrap_or((s, "NN"));
            let d: Vec<usize> = dims.split('x').map(|x| x.parse().unwrap()).collect();
            let (m, k, n) = (d[0], d[1], d[2]);
            let tc: Vec<char> = tt.chars().collect();
            let (ta, tb) = (t(tc[0]), t(tc[1]));
            let a = rand_vec(m * k, 1);
            let b = rand_vec(k * n, 2);
            let mut c = vec![0f32; m * n];
            let run = |i: usize, c: &mut [f32]| match i {
                0 => matmul_with(GemmBackend::Avx2, threads, c, &a, &b, m, k, n, ta, tb, false),
                1 => matmul_with(GemmBackend::GemmCrate, threads, c, &a, &b, m, k, n, ta, tb, false),
                _ => unsafe {
                    let lda = if ta == Trans::No { k } else { m };
                    let ldb = if tb == Trans::No { n } else { k };
                    sgemm(
                        101,
                        if ta == Trans::No { 111 } else { 112 },
                        if tb == Trans::No { 111 } else { 112 },
                        m as i64, n as i64, k as i64, 1.0, a.as_ptr(), lda as i64, b.as_ptr(),
                        ldb as i64, 0.0, c.as_mut_ptr(), n as i64,
                    )
                },
            };
            let nb = if std::env::var("BLAS").is_ok() { 3 } else { 2 };
            let mut times = vec![vec![f64::NAN]; 3];
            for v in times.iter_mut().take(nb) {
                v.clear();
            }
            for _ in 0..3 {
                for i in 0..nb {
                    run(i, &mut c);
                }
            }
            // interleave in small bursts so each backend sees the same machine state
            let burst = 5;
            for r in 0..reps.div_ceil(burst) {
                for j in 0..nb {
                    let i = (j + r) % nb;
                    for _ in 0..burst {
                        let t0 = now(cpu);
                        run(i, &mut c);
                        times[i].push(now(cpu) - t0);
                    }
                }
            }
            let fl = 2.0 * (m * k * n) as f64;
            for v in times.iter_mut() {
                v.sort_by(|x, y| x.total_cmp(y));
            }
            let g: Vec<f64> = times.iter().map(|v| fl / v[v.len() / 2] / 1e9).collect();
            let best: Vec<f64> = times.iter().map(|v| fl / v[0] / 1e9).collect();
            println!(
                "t={threads} {m}x{k}x{n} {tt}: med avx2 {:6.1} gemm {:6.1} blas {:6.1} r {:.3} | best avx2 {:6.1} gemm {:6.1} blas {:6.1} r {:.3}",
                g[0], g[1], g[2], g[0] / g[2], best[0], best[1], best[2], best[0] / best[2]
            );
        }
        }
    });
}
