//! Throwaway GEMM timing (delete when done).
use kernels_cpu::check::rand_vec;
use kernels_cpu::gemm::{matmul_with, GemmBackend, Trans};
use std::time::Instant;

fn t(c: char) -> Trans {
    if c == 'T' {
        Trans::Yes
    } else {
        Trans::No
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args[1].parse().unwrap();
    let reps: usize = args[2].parse().unwrap();
    // shapes: MxKxN:TT
    let shapes = &args[3];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        for s in shapes.split(',') {
            let (dims, tt) = s.split_once(':').unwrap_or((s, "NN"));
            let d: Vec<usize> = dims.split('x').map(|x| x.parse().unwrap()).collect();
            let (m, k, n) = (d[0], d[1], d[2]);
            let tc: Vec<char> = tt.chars().collect();
            let (ta, tb) = (t(tc[0]), t(tc[1]));
            let a = rand_vec(m * k, 1);
            let b = rand_vec(k * n, 2);
            let mut c = vec![0f32; m * n];
            let bes = [GemmBackend::Avx2, GemmBackend::GemmCrate];
            let mut times = vec![Vec::new(); 2];
            for _ in 0..3 {
                for be in bes {
                    matmul_with(be, threads, &mut c, &a, &b, m, k, n, ta, tb, false);
                }
            }
            for _ in 0..reps {
                for (i, be) in bes.iter().enumerate() {
                    let t0 = Instant::now();
                    matmul_with(*be, threads, &mut c, &a, &b, m, k, n, ta, tb, false);
                    times[i].push(t0.elapsed().as_secs_f64());
                }
            }
            let fl = 2.0 * (m * k * n) as f64;
            let g: Vec<f64> = times
                .into_iter()
                .map(|mut v| {
                    v.sort_by(|x, y| x.total_cmp(y));
                    fl / v[v.len() / 2] / 1e9
                })
                .collect();
            println!("t={threads} {m}x{k}x{n} {tt}: avx2 {:.1}  gemm {:.1}", g[0], g[1]);
        }
    });
}
