//! Kernel micro-benchmarks at the tiny-dense training shapes (N = 2048 tokens, D = 256, F = 768,
//! H 8 / KV 2 x 32, V 4096) and the tiny MoE layer (16 experts of 64, top-1). `cargo bench -p medmoe-benches`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kernels_cpu::attention::{attention_backward, attention_forward, AttnDims};
use kernels_cpu::check::rand_vec;
use kernels_cpu::cross_entropy::{lm_head_ce_forward_backward, IGNORE_INDEX};
use kernels_cpu::gemm::{matmul, Trans};
use kernels_cpu::swiglu::swiglu_forward;

/// The tiny MoE layer: N 2048 tokens, D 256, 16 experts of W 64, top-1, capacity 1.25.
fn moe(c: &mut Criterion) {
    use kernels_cpu::moe::{moe_backward_out, moe_forward, MoeDims, MoeParams, MoePath, RouterWeighting};
    let dims = MoeDims { n: 2048, d: 256, e: 16, w: 64 };
    let x = rand_vec(dims.n * dims.d, 1);
    let router = rand_vec(dims.e * dims.d, 2);
    let experts = rand_vec(dims.e * dims.expert_len(), 3);
    let params = MoeParams {
        temperature: 0.9,
        weighting: RouterWeighting::Ste,
        capacity_factor: Some(1.25),
        expert_dropout: 0.0,
        router_noise: 0.0,
        seed: 0,
        dense_equivalent: false,
        gemm: kernels_cpu::gemm::GemmBackend::Auto,
    };
    c.bench_function("moe_forward n2048 d256 e16 w64", |bch| {
        bch.iter(|| moe_forward(MoePath::Fast, &x, &router, &experts, None, dims, &params))
    });
    let fwd = moe_forward(MoePath::Fast, &x, &router, &experts, None, dims, &params);
    let dout = rand_vec(dims.n * dims.d, 4);
    let (mut dx, mut dr, mut de) = (vec![0f32; x.len()], vec![0f32; router.len()], vec![0f32; experts.len()]);
    c.bench_function("moe_backward n2048 d256 e16 w64", |bch| {
        bch.iter(|| moe_backward_out(&mut dx, &mut dr, &mut de, &dout, &x, &router, &experts, &fwd.saved, dims))
    });
}

fn rmsnorm_adamw(c: &mut Criterion) {
    use kernels_cpu::adamw::{adamw_step, AdamWConfig};
    use kernels_cpu::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
    let (n, ch) = (2048, 256);
    let (x, w) = (rand_vec(n * ch, 1), rand_vec(ch, 2));
    let (mut out, mut rstd) = (vec![0f32; n * ch], vec![0f32; n]);
    c.bench_function("rmsnorm_forward 2048x256", |bch| {
        bch.iter(|| rmsnorm_forward(&mut out, &mut rstd, &x, &w, n, ch, 1e-6))
    });
    let dout = rand_vec(n * ch, 3);
    let (mut dx, mut dw) = (vec![0f32; n * ch], vec![0f32; ch]);
    c.bench_function("rmsnorm_backward 2048x256", |bch| {
        bch.iter(|| rmsnorm_backward(&mut dx, &mut dw, &dout, &x, &w, &rstd, n, ch))
    });
    let len = 4_000_000; // about the tiny-dense parameter count
    let (mut p, g) = (rand_vec(len, 4), rand_vec(len, 5));
    let (mut m, mut v) = (vec![0f32; len], vec![0f32; len]);
    let cfg = AdamWConfig { weight_decay: 0.05, ..AdamWConfig::default() };
    c.bench_function("adamw_step 4M", |bch| bch.iter(|| adamw_step(&mut p, &g, &mut m, &mut v, &cfg, 1)));
}

/// The p0 distillation loss over the vocabulary (student and teacher heads, N 2048, V 4096).
fn distill(c: &mut Criterion) {
    use kernels_cpu::distill::{lm_head_kl_forward_backward, DistillDims};
    let dims = DistillDims { n: 2048, d: 256, dt: 256, v: 4096 };
    let (hs, ws) = (rand_vec(dims.n * dims.d, 1), rand_vec(dims.v * dims.d, 2));
    let (ht, wt) = (rand_vec(dims.n * dims.dt, 3), rand_vec(dims.v * dims.dt, 4));
    let targets: Vec<i32> = (0..dims.n).map(|i| if i % 256 == 255 { IGNORE_INDEX } else { 1 }).collect();
    let (mut kl, mut dhs, mut dws) = (vec![0f32; dims.n], vec![0f32; hs.len()], vec![0f32; ws.len()]);
    c.bench_function("lm_head_kl_forward_backward n2048 d256 v4096", |bch| {
        bch.iter(|| {
            lm_head_kl_forward_backward(&mut kl, &mut dhs, &mut dws, &hs, &ws, &ht, &wt, &targets, dims, 1.0, 1.0, 1024)
        })
    });
}

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
    targets = gemm, attention, lm_head, swiglu, moe, rmsnorm_adamw, distill
}
criterion_main!(kernels);
