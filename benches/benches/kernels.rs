//! Kernel micro-benchmarks at the tiny-dense training shapes (N = 2048 tokens, D = 256, F = 768,
//! H 8 / KV 2 x 32, V 4096). `cargo bench -p medmoe-benches`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kernels_cpu::attention::{attention_backward, attention_forward, AttnDims};
use kernels_cpu::check::rand_vec;
use kernels_cpu::cross_entropy::{lm_head_ce_forward_backward, IGNORE_INDEX};
use kernels_cpu::gemm::{matmul, Trans};
use kernels_cpu::swiglu::swiglu_forward;

fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm");
    for (m, k, n) in [(2048, 256, 768), (2048, 768, 256), (512, 2048, 6144)] {
        let (a, b) = (rand_vec(m * k, 1), rand_vec(k * n, 2));
        let mut out = vec![0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        g.bench_function(format!("{m}x{k}x{n}"), |bch| {
            bch.iter(|| matmul(&mut out, &a, &b, m, k, n, Trans::No, Trans::No, false))
        });
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    let dims = AttnDims { b: 8, t: 256, h: 8, kv: 2, dh: 32 };
    let n = dims.b * dims.t;
    let q = rand_vec(n * dims.h * dims.dh, 1);
    let k = rand_vec(n * dims.kv * dims.dh, 2);
    let v = rand_vec(n * dims.kv * dims.dh, 3);
    let mut out = vec![0f32; q.len()];
    let mut lse = vec![0f32; dims.b * dims.h * dims.t];
    c.bench_function("attention_forward b8 t256 h8 kv2 dh32", |bch| {
        bch.iter(|| attention_forward(&mut out, &mut lse, &q, &k, &v, None, dims))
    });
    let dout = rand_vec(q.len(), 4);
    let (mut dq, mut dk, mut dv) = (vec![0f32; q.len()], vec![0f32; k.len()], vec![0f32; v.len()]);
    c.bench_function("attention_backward b8 t256 h8 kv2 dh32", |bch| {
        bch.iter(|| attention_backward(&mut dq, &mut dk, &mut dv, &dout, &out, &lse, &q, &k, &v, None, dims))
    });
}

fn lm_head(c: &mut Criterion) {
    let (n, d, v) = (2048, 256, 4096);
    let h = rand_vec(n * d, 1);
    let w = rand_vec(v * d, 2);
    let targets: Vec<i32> = (0..n).map(|i| if i % 256 == 255 { IGNORE_INDEX } else { (i * 7 % v) as i32 }).collect();
    let (mut losses, mut dh, mut dw) = (vec![0f32; n], vec![0f32; n * d], vec![0f32; v * d]);
    c.bench_function("lm_head_ce_forward_backward n2048 d256 v4096", |bch| {
        bch.iter(|| lm_head_ce_forward_backward(&mut losses, &mut dh, &mut dw, &h, &w, &targets, n, d, v, 1.0, 1024))
    });
}

fn swiglu(c: &mut Criterion) {
    let len = 2048 * 768;
    let (gate, up) = (rand_vec(len, 1), rand_vec(len, 2));
    let mut out = vec![0f32; len];
    c.bench_function("swiglu_forward 2048x768", |bch| bch.iter(|| swiglu_forward(&mut out, &gate, &up)));
}

criterion_group! {
    name = kernels;
    config = Criterion::default().sample_size(10);
    targets = gemm, attention, lm_head, swiglu
}
criterion_main!(kernels);
