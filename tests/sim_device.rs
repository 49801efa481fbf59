//! One training step (the product step, `actors::trainer::Trainer::step`: forward, backward,
//! AdamW) of a small MoE model and of a small dense model on each GPU backend — `Device::Sim`
//! (the GPU kernels in kernels-gpu's SIMT simulator) always, `Device::Cuda` when
//! `MOE_GPU_TESTS=1` (built with `--features cuda`, run by tools/gpu_check.sh) — against the same
//! step on `Device::Cpu`.
//!
//! Models: preset tiny-k1p1-n16 shrunk so the simulator stays quick (one OS thread per simulated
//! thread): 2 layers, vocabulary 512, hidden 64 (4 heads, 2 KV heads of 16), 16 routed experts of
//! width 16 + a shared expert of 32, top-1 STE router, capacity factor 1.25 in training (tokens
//! overflow); the dense one is the same without the `moe` section (tiny-dense shapes: FFN 192);
//! batch 2 x 8 tokens. One simulated step; the per-parameter gradients are read from
//! AdamW's first moment. Tolerances (f32, the only Sim mode): loss relative <= 1e-5;
//! every parameter's gradient relative L2 <= 1e-4; every parameter after one AdamW step relative
//! L2 <= 1e-4. The AdamW kernel alone (same gradients on both devices) agrees to 1e-6.

use actors::phase::RouterSchedule;
use actors::trainer::Trainer;
use autograd::optim::AdamW;
use autograd::{DType, Device, Tape};
use kernels_cpu::adamw::AdamWConfig;
use kernels_cpu::check::rel_norm_err;
use model::init::qwen3_init;
use model::moe_spec::MoeSpec;
use model::qwen3::{ForwardOptions, Qwen3};
use model::router_training::RouterTraining;
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

fn tiny_dense_model() -> Qwen3 {
    let mut config = presets::embedded("tiny-dense").expect("preset").expect("valid preset");
    config.num_hidden_layers = 2;
    config.vocab_size = 512;
    (config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim) = (64, 4, 2, 16);
    config.intermediate_size = 192;
    Qwen3::from_init(config, None, DType::F32, qwen3_init(12, 0.02))
}

/// The GPU backends to compare with the CPU: Sim always, Cuda with `MOE_GPU_TESTS=1`.
fn gpu_devices() -> Vec<Device> {
    if std::env::var("MOE_GPU_TESTS").is_ok_and(|v| v == "1") {
        vec![Device::Sim, Device::Cuda]
    } else {
        eprintln!("cuda step parity: skipped: MOE_GPU_TESTS not set");
        vec![Device::Sim]
    }
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

/// `(name, range)` of every parameter in the flat layout.
fn ranges(model: &Qwen3) -> Vec<(String, std::ops::Range<usize>)> {
    model.params.entries().iter().map(|e| (e.name.clone(), e.offset..e.offset + e.numel())).collect()
}

/// Worst per-parameter relative L2 error of `got` against `want` (flat layout), and its name.
fn worst(model: &Qwen3, got: &[f32], want: &[f32], what: &str, tol: f64) -> (f64, String) {
    let mut worst = (0f64, String::new());
    for (name, r) in ranges(model) {
        let err = rel_norm_err(&got[r.clone()], &want[r]);
        assert!(err <= tol, "{what} of {name}: rel err {err:.2e} > {tol:.0e}");
        if err >= worst.0 {
            worst = (err, name);
        }
    }
    println!("max {what} rel err {:.2e} ({}) (tol {tol:.0e})", worst.0, worst.1);
    worst
}

/// The router of the step: capacity 1.25 (tokens overflow), temperature 0.9, lb 0.01, z 1e-4.
const ROUTER: RouterTraining = RouterTraining {
    temperature: 0.9,
    capacity_factor: Some(1.25),
    lb_coef: 0.01,
    z_coef: 1e-4,
    expert_dropout: 0.0,
    noise: 0.0,
};

/// A trainer of `model` on `device` for one step on `batch` with AdamW `cfg` and [`ROUTER`].
fn trainer(model: Qwen3, batch: &TokenBatch, cfg: AdamWConfig, device: Device) -> Trainer {
    let mut phase = medmoe_tests::plain_phase(batch.b, batch.t, 1, cfg.lr, [cfg.beta1, cfg.beta2], cfg.weight_decay);
    let moe = model.moe.is_some();
    phase.router = moe.then_some(RouterSchedule {
        lb: [ROUTER.lb_coef; 2],
        temperature: [ROUTER.temperature; 2],
        z: ROUTER.z_coef,
        capacity: ROUTER.capacity_factor.unwrap(),
        expert_dropout: 0.0,
        noise: 0.0,
        bias_update_rate: 0.0,
        named_experts: None,
    });
    let mut t = Trainer::new(phase, model, None).expect("trainer");
    t.opt.cfg = cfg;
    t.set_device(device).expect("device");
    if moe {
        assert_eq!(t.router_training_at(0), Some(ROUTER));
    }
    t
}

#[test]
fn moe_training_step_on_each_gpu_backend_matches_cpu() {
    for device in gpu_devices() {
        step_matches_cpu(tiny_model(), device);
    }
}

#[test]
fn dense_training_step_on_each_gpu_backend_matches_cpu() {
    for device in gpu_devices() {
        step_matches_cpu(tiny_dense_model(), device);
    }
}

/// One product step of `model` on `device` against the CPU, then the AdamW kernel alone.
fn step_matches_cpu(model: Qwen3, device: Device) {
    println!("{} model on {device}", if model.moe.is_some() { "MoE" } else { "dense" });
    let (batch, targets) = batch(2, 8, model.config.vocab_size);
    let micro = [medmoe_tests::packed(&batch, &targets)];
    let cfg = AdamWConfig { lr: 1e-3, weight_decay: 0.1, ..AdamWConfig::default() };
    let (mut tc, mut ts) =
        (trainer(model.clone(), &batch, cfg, Device::Cpu), trainer(model.clone(), &batch, cfg, device));
    let started = std::time::Instant::now();
    let (sc, _) = tc.step(&micro, Default::default()).expect("cpu step");
    let cpu_s = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let (ss, _) = ts.step(&micro, Default::default()).expect("gpu backend step");
    println!("one training step: cpu {cpu_s:.2} s, {device} {:.2} s", started.elapsed().as_secs_f64());
    assert!(sc.applied && ss.applied);
    assert_eq!(sc.tokens, ss.tokens);
    let loss_err = ((ss.loss - sc.loss) as f64).abs() / (sc.loss as f64).abs();
    println!("loss cpu {:.7} {device} {:.7} rel err {loss_err:.2e} (tol {LOSS_RTOL:.0e})", sc.loss, ss.loss);
    assert!(loss_err <= LOSS_RTOL, "loss: {loss_err:.2e}");
    let norm_err = ((ss.grad_norm - sc.grad_norm) as f64).abs() / sc.grad_norm as f64;
    println!("gradient norm cpu {:.6} {device} {:.6} rel err {norm_err:.2e}", sc.grad_norm, ss.grad_norm);
    assert!(norm_err <= GRAD_RTOL);

    // After one step from zero moments the first moment is `(1 - beta1) * g` on both devices: the
    // per-parameter gradients of the step, compared without a second simulated pass.
    let (_, cpu_grads) = model.loss_and_grads(&batch, &targets, &ForwardOptions::train(5, ROUTER)).expect("cpu grads");
    let scaled: Vec<f32> = cpu_grads.iter().map(|&g| g * (1.0 - cfg.beta1)).collect();
    assert!(rel_norm_err(&tc.opt.m, &scaled) <= 1e-6, "the first moment is (1 - beta1) g");
    worst(&model, &ts.opt.m, &tc.opt.m, "gradient", GRAD_RTOL);
    worst(&model, &ts.model.params.flat(), &tc.model.params.flat(), "updated parameter", PARAM_RTOL);

    // The AdamW kernel alone: both devices update from the CPU gradients, two steps.
    let (mut pc, mut ps) = (model.clone(), model.clone());
    let (mut oc, mut os) = (AdamW::new(&pc.params, cfg), AdamW::new(&ps.params, cfg));
    for _ in 0..2 {
        assert!(oc.step_on(Device::Cpu, &mut pc.params, &cpu_grads).expect("cpu adamw"));
        assert!(os.step_on(device, &mut ps.params, &cpu_grads).expect("gpu backend adamw"));
    }
    let err = rel_norm_err(&ps.params.flat(), &pc.params.flat());
    let (em, ev) = (rel_norm_err(&os.m, &oc.m), rel_norm_err(&os.v, &oc.v));
    println!("adamw alone, 2 steps: params {err:.2e}, m {em:.2e}, v {ev:.2e} (tol {ADAMW_RTOL:.0e})");
    assert!(err <= ADAMW_RTOL && em <= ADAMW_RTOL && ev <= ADAMW_RTOL);
    assert_eq!((os.step, oc.step), (2, 2));
}

#[test]
fn cuda_device_is_a_typed_error_not_a_panic() {
    if std::env::var("MOE_GPU_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("cuda_device_is_a_typed_error_not_a_panic: skipped: MOE_GPU_TESTS=1 (a GPU is present)");
        return;
    }
    let err = Tape::new_on(Device::Cuda).err().expect("no CUDA dispatch in this build");
    assert!(err.to_string().contains("cuda device not available"), "{err}");
    let model = tiny_model();
    let (batch, targets) = batch(1, 4, model.config.vocab_size);
    let run = ForwardOptions::train(1, ROUTER).on(Device::Cuda);
    let err = model.loss_and_grads(&batch, &targets, &run).err().expect("refused");
    assert!(err.to_string().contains("not available"), "{err}");
    // The trainer refuses the device up front, with autograd's typed error.
    let cfg = AdamWConfig::default();
    let mut phase = medmoe_tests::plain_phase(batch.b, batch.t, 1, 1e-3, [cfg.beta1, cfg.beta2], 0.0);
    phase.router = Some(RouterSchedule {
        lb: [0.0; 2],
        temperature: [1.0; 2],
        z: 0.0,
        capacity: 1.25,
        expert_dropout: 0.0,
        noise: 0.0,
        bias_update_rate: 0.0,
        named_experts: None,
    });
    let mut t = Trainer::new(phase, model, None).expect("trainer");
    let err = t.set_device(Device::Cuda).expect_err("refused");
    assert!(matches!(err, actors::EngineError::Autograd(autograd::AutogradError::DeviceUnavailable { .. })), "{err:?}");
    assert_eq!(t.device(), Device::Cpu);
}
