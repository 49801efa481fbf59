// THROWAWAY timing harness for attention (not to be committed).
use kernels_cpu::attention::*;
use kernels_cpu::check::rand_vec;
use std::time::Instant;

fn cpu_s() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse::<f64>().unwrap() * 1e-9
}

fn bench(d: AttnDims, threads: usize, reps: usize) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let q = rand_vec(d.b * d.t * d.h * d.dh, 1);
    let k = rand_vec(d.b * d.t * d.kv * d.dh, 2);
    let v = rand_vec(d.b * d.t * d.kv * d.dh, 3);
    let dout = rand_vec(q.len(), 4);
    let mut out = vec![0.0; q.len()];
    let mut lse = vec![0.0; d.b * d.h * d.t];
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    let mut tf = vec![];
    let mut tb = vec![];
    let mut cf = vec![];
    let mut cb = vec![];
    pool.install(|| {
        for _ in 0..reps + 1 {
            let s = Instant::now();
            let c = cpu_s();
            attention_forward(&mut out, &mut lse, &q, &k, &v, None, d);
            tf.push(s.elapsed().as_secs_f64());
            cf.push(cpu_s() - c);
            let s = Instant::now();
            let c = cpu_s();
            attention_backward(
                &mut dq, &mut dk, &mut dv, &dout, &out, &lse, &q, &k, &v, None, d,
            );
            tb.push(s.elapsed().as_secs_f64());
            cb.push(cpu_s() - c);
        }
    });
    tf.remove(0);
    tb.remove(0);
    cf.remove(0);
    cb.remove(0);
    cf.sort_by(|a, b| a.partial_cmp(b).unwrap());
    cb.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if threads == 1 {
        println!(
            "  1-thread cpu time: fwd min {:.2} ms med {:.2} | bwd min {:.2} med {:.2}",
            cf[0] * 1e3,
            cf[cf.len() / 2] * 1e3,
            cb[0] * 1e3,
            cb[cb.len() / 2] * 1e3
        );
    }
    tf.sort_by(|a, b| a.partial_cmp(b).unwrap());
    tb.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (f, b) = (tf[0], tb[0]);
    let (fm, bm) = (tf[tf.len() / 2], tb[tb.len() / 2]);
    let flops = 2.0 * 2.0 * (d.b * d.h * d.t * d.t * d.dh) as f64 / 2.0;
    println!("{d:?} threads={threads}: fwd min {:.2} ms med {:.2} ms ({:.1} GFLOP/s) | bwd min {:.2} ms med {:.2} ms ({:.1} GFLOP/s at 2.5x fwd flops)",
        f * 1e3, fm * 1e3, flops / f / 1e9, b * 1e3, bm * 1e3, 2.5 * flops / b / 1e9);
}

fn main() {
    let small = AttnDims {
        b: 8,
        t: 256,
        h: 8,
        kv: 2,
        dh: 32,
    };
    let big = AttnDims {
        b: 1,
        t: 2048,
        h: 16,
        kv: 8,
        dh: 128,
    };
    let which = std::env::args().nth(1).unwrap_or_default();
    if which == "gemm" { gemm_probe(); return; }
    let th: usize = std::env::args()
        .nth(2)
        .and_then(|x| x.parse().ok())
        .unwrap_or(2);
    if which != "big" {
        bench(small, th, 60);
    }
    if which != "small" {
        bench(big, th, 3);
    }
}

#[allow(dead_code)]
pub fn gemm_probe() {
    use kernels_cpu::gemm::{matmul_single, Trans};
    for &(m, k, n, ta, tb) in &[(256, 32, 64, Trans::No, Trans::Yes), (256, 64, 32, Trans::No, Trans::No), (64, 256, 32, Trans::Yes, Trans::No), (128,128,64,Trans::No,Trans::Yes),(128,64,128,Trans::No,Trans::No),(64,128,128,Trans::Yes,Trans::No)] {
        let a = rand_vec(m * k, 1); let b = rand_vec(k * n, 2); let mut c = vec![0.0; m * n];
        let reps = 2000;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let s = Instant::now();
            for _ in 0..reps { matmul_single(&mut c, &a, &b, m, k, n, ta, tb, true); }
            best = best.min(s.elapsed().as_secs_f64() / reps as f64);
        }
        println!("gemm m={m} k={k} n={n} {ta:?}{tb:?}: {:.2} us, {:.1} GFLOP/s", best * 1e6, 2.0 * (m * n * k) as f64 / best / 1e9);
    }
}
