//! One training step (forward, backward, AdamW) of a small MoE model on `Device::Sim` — the GPU
//! kernels run in kernels-gpu's SIMT simulator — against the same step on `Device::Cpu`.
//!
//! Model: preset tiny-k1p1-n16 shrunk so the simulator stays quick (one OS thread per simulated
//! thread): 2 layers, vocabulary 512, hidden 64 (4 heads, 2 KV heads of 16), 16 routed experts of
//! width 16 + a shared expert of 32, top-1 STE router, capacity factor 1.25 in training (tokens
//! overflow); batch 2 x 16 tokens. Tolerances (f32, the only Sim mode): loss relative <= 1e-5;
//! every parameter's gradient relative L2 <= 1e-4; every parameter after one AdamW step relative
//! L2 <= 1e-4. The AdamW kernel alone (same gradients on both devices) agrees to 1e-6.

use autograd::optim::AdamW;
use autograd::{DType, Device, Tape};
use kernels_cpu::adamw::AdamWConfig;
use kernels_cpu::check::rel_norm_err;
use model::init::qwen3_init;
use model::qwen3::{Qwen3, RunOptions};
use model::train::{loss_and_grads, train_step};
use model::moe_spec::MoeSpec;
use model::{presets, TokenBatch};

const LOSS_RTOL: f64 = 1e-5;
const GRAD_RTOL: f64 = 1e-4;
const PARAM_RTOL: f64 = 1e-4;
/// The AdamW kernel alone, on the same gradients: the same f32 operations in the same order.
const ADAMW_RTOL: f64 = 1e-6;

fn tiny_model() -> Qwen3 {
    let (mut config, moe) = presets::embedded_moe("tiny-k1p1-n16").expect("preset");
    config.num_hidden_layers = 2;
    config.vocab_size = 512;
    (config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim) = (64, 4, 2, 16);
    let moe = MoeSpec { expert_width: 16, shared_width: 32, ..moe };
    Qwen3::from_init(config, Some(moe), DType::F32, qwen3_init(11, 0.02))
}

/// `B` x `T` pseudo-random ids in `0..v`; targets are the next token (-100 at each row's end).
fn batch(b: usize, t: usize, v: usize) -> (TokenBatch, Vec<i32>) {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let ids: Vec<u32> = (0..b * t)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % v as u64) as u32
        })
        .collect();
    let targets = (0..b * t).map(|i| if i % t == t - 1 { -100 } else { ids[i + 1] as i32 }).collect();
    (TokenBatch::new(ids, b, t).expect("batch"), targets)
}

#[test]
fn training_step_on_sim_matches_cpu() {
    let model = tiny_model();
    let (batch, targets) = batch(2, 16, model.config.vocab_size);
    let cpu = RunOptions::train(5);
    let sim = cpu.on(Device::Sim);
    let started = std::time::Instant::now();
    let (loss_c, count_c, grads_c) = loss_and_grads(&model, &batch, &targets, &cpu).expect("cpu step");
    let cpu_s = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let (loss_s, count_s, grads_s) = loss_and_grads(&model, &batch, &targets, &sim).expect("sim step");
    let sim_s = started.elapsed().as_secs_f64();
    println!("forward + backward: cpu {cpu_s:.2} s, sim {sim_s:.2} s");
    assert_eq!(count_c, count_s);
    let loss_err = ((loss_s - loss_c) as f64).abs() / (loss_c as f64).abs();
    println!("loss cpu {loss_c:.7} sim {loss_s:.7} rel err {loss_err:.2e} (tol {LOSS_RTOL:.0e})");
    assert!(loss_err <= LOSS_RTOL, "loss: {loss_err:.2e}");

    let mut worst = (0f64, String::new());
    for e in model.params.entries() {
        let r = e.offset..e.offset + e.numel();
        let err = rel_norm_err(&grads_s[r.clone()], &grads_c[r]);
        if err > worst.0 {
            worst = (err, e.name.clone());
        }
        assert!(err <= GRAD_RTOL, "gradient of {}: rel err {err:.2e}", e.name);
    }
    println!("max gradient rel err {:.2e} ({}) (tol {GRAD_RTOL:.0e})", worst.0, worst.1);

    // One full step on each device from the same parameters and optimiser state.
    let cfg = AdamWConfig { lr: 1e-3, weight_decay: 0.1, ..AdamWConfig::default() };
    let (mut mc, mut ms) = (model.clone(), model.clone());
    let (mut oc, mut os) = (AdamW::new(&mc.params, cfg), AdamW::new(&ms.params, cfg));
    let sc = train_step(&mut mc, &mut oc, &batch, &targets, &cpu).expect("cpu train step");
    let ss = train_step(&mut ms, &mut os, &batch, &targets, &sim).expect("sim train step");
    assert_eq!((sc.loss, sc.tokens), (loss_c, count_c), "train_step on cpu is loss_and_grads");
    assert_eq!(ss.loss, loss_s, "train_step on sim is loss_and_grads");
    let (p0, pc, ps) = (model.params.flat(), mc.params.flat(), ms.params.flat());
    let mut worst = (0f64, 0f64, String::new());
    for e in model.params.entries() {
        let r = e.offset..e.offset + e.numel();
        let err = rel_norm_err(&ps[r.clone()], &pc[r.clone()]);
        // Relative to the update `p - p0` (informative only: Adam's first step is about
        // `lr * sign(g)`, so a gradient element near zero whose sign differs moves it by 2 lr).
        let update: Vec<f32> = pc[r.clone()].iter().zip(&p0[r.clone()]).map(|(a, b)| a - b).collect();
        let diff: Vec<f32> = ps[r.clone()].iter().zip(&pc[r]).map(|(a, b)| a - b).collect();
        let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let of_update = norm(&diff) / norm(&update).max(1e-30);
        if err > worst.0 {
            worst = (err, of_update, e.name.clone());
        }
        assert!(err <= PARAM_RTOL, "{} after the step: rel err {err:.2e}", e.name);
    }
    println!(
        "max updated-parameter rel err {:.2e} ({}; {:.2e} of its update) (tol {PARAM_RTOL:.0e})",
        worst.0, worst.2, worst.1
    );

    // The AdamW kernel alone: both devices update from the CPU gradients.
    let (mut pc, mut ps) = (model.clone(), model.clone());
    let (mut oc, mut os) = (AdamW::new(&pc.params, cfg), AdamW::new(&ps.params, cfg));
    for _ in 0..2 {
        assert!(oc.step_on(Device::Cpu, &mut pc.params, &grads_c).expect("cpu adamw"));
        assert!(os.step_on(Device::Sim, &mut ps.params, &grads_c).expect("sim adamw"));
    }
    let err = rel_norm_err(&ps.params.flat(), &pc.params.flat());
    let (em, ev) = (rel_norm_err(&os.m, &oc.m), rel_norm_err(&os.v, &oc.v));
    println!("adamw alone, 2 steps: params {err:.2e}, m {em:.2e}, v {ev:.2e} (tol {ADAMW_RTOL:.0e})");
    assert!(err <= ADAMW_RTOL && em <= ADAMW_RTOL && ev <= ADAMW_RTOL);
    assert_eq!((os.step, oc.step), (2, 2));
}

#[test]
fn cuda_device_is_a_typed_error_not_a_panic() {
    let err = Tape::new_on(Device::Cuda).err().expect("no CUDA dispatch in this build");
    assert!(err.to_string().contains("cuda device not available"), "{err}");
    let model = tiny_model();
    let (batch, targets) = batch(1, 4, model.config.vocab_size);
    let run = RunOptions::train(1).on(Device::Cuda);
    let err = loss_and_grads(&model, &batch, &targets, &run).err().expect("refused");
    assert!(err.to_string().contains("not available"), "{err}");
}
