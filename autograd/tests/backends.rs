//! One parity body per GPU backend: every op on a tape of that device against the same op on
//! `Device::Cpu`, outputs and input gradients through the tape (sizes not multiples of the block or
//! tile). The backends: `Device::Sim` always; `Device::Cuda` when `MOE_GPU_TESTS=1` (a GPU machine,
//! built with `--features cuda`).

use autograd::ops::{self, MoeConfig, RouterWeighting};
use autograd::{Device, Tape, Tensor};
use kernels_cpu::attention::AttnDims;
use kernels_cpu::check::{rand_vec, rel_norm_err};
use kernels_cpu::rope::RopeTable;
use std::sync::Arc;

/// The GPU backends to check here.
fn gpu_devices() -> Vec<Device> {
    let mut d = vec![Device::Sim];
    if std::env::var("MOE_GPU_TESTS").is_ok_and(|v| v == "1") {
        d.push(Device::Cuda);
    } else {
        eprintln!("cuda parity: skipped: MOE_GPU_TESTS not set");
    }
    d
}

/// Output and gradients of `sum(f(inputs) * r)` for each input, on `device`.
fn grads(device: Device, inputs: &[Tensor], f: impl Fn(&Tape, &[Tensor]) -> Tensor) -> Vec<Vec<f32>> {
    let tape = Tape::new_on(device).unwrap();
    assert_eq!(tape.device(), device);
    let leaves: Vec<Tensor> = inputs.iter().map(|t| tape.leaf(t)).collect();
    let out = f(&tape, &leaves);
    let r = rand_vec(out.numel(), 99);
    let mut all = vec![out.to_vec()];
    let g = if out.numel() == 1 { tape.backward(&out) } else { tape.backward_with(&out, &r) };
    all.extend(leaves.iter().map(|t| g.get(t).map_or_else(|| vec![0.0; t.numel()], |v| v.to_vec())));
    all
}

fn check(what: &str, inputs: &[Tensor], tol: f64, f: impl Fn(&Tape, &[Tensor]) -> Tensor) {
    let c = grads(Device::Cpu, inputs, &f);
    for dev in gpu_devices() {
        let s = grads(dev, inputs, &f);
        let errs: Vec<String> = c.iter().zip(&s).map(|(c, s)| format!("{:.2e}", rel_norm_err(s, c))).collect();
        println!("{dev} {what}: output, input gradients rel err {errs:?} (tol {tol:.0e})");
        assert!(c.iter().zip(&s).all(|(c, s)| rel_norm_err(s, c) <= tol), "{dev} {what}: {errs:?}");
    }
}

fn t(shape: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(rand_vec(shape.iter().product(), seed), shape)
}

#[test]
fn elementwise_norm_and_linear_ops_match_cpu() {
    check("swiglu", &[t(&[37, 5], 1), t(&[37, 5], 2)], 1e-6, |tp, x| ops::swiglu(tp, &x[0], &x[1]).unwrap());
    check("swiglu_fused", &[t(&[33, 14], 3)], 1e-6, |tp, x| ops::swiglu_fused(tp, &x[0]).unwrap());
    check("rmsnorm", &[t(&[45, 37], 4), t(&[37], 5)], 1e-5, |tp, x| ops::rmsnorm(tp, &x[0], &x[1], 1e-6).unwrap());
    check("linear", &[t(&[3, 11, 37], 6), t(&[35, 37], 7)], 1e-5, |tp, x| ops::linear(tp, &x[0], &x[1]).unwrap());
    check("add", &[t(&[29, 7], 10), t(&[29, 7], 11)], 0.0, |tp, x| ops::add(tp, &x[0], &x[1]).unwrap());
    check("add_scaled", &[t(&[29, 7], 12), t(&[29, 7], 13)], 0.0, |tp, x| {
        ops::add_scaled(tp, &x[0], &x[1], 0.37).unwrap()
    });
    check("slice_cols", &[t(&[31, 13], 14)], 0.0, |tp, x| {
        let a = ops::slice_cols(tp, &x[0], 3, 5).unwrap();
        let b = ops::slice_cols(tp, &x[0], 6, 7).unwrap();
        ops::add(tp, &ops::slice_cols(tp, &b, 0, 5).unwrap(), &a).unwrap()
    });
}

#[test]
fn embedding_rope_and_attention_match_cpu() {
    let (v, d) = (53, 12);
    let ids: Vec<u32> = (0..41).map(|i| (i * 7 % v) as u32).collect();
    check("embedding", &[t(&[v, d], 15)], 1e-6, |tp, x| ops::embedding(tp, &ids, &x[0]).unwrap());
    let (b, tt, h, kv, dh) = (2, 37, 4, 2, 8);
    let table = Arc::new(RopeTable::new(dh, 64, 10000.0));
    let pos: Arc<[u32]> = (0..b * tt).map(|i| (i % tt) as u32).collect();
    check("rope", &[t(&[b * tt, h * dh], 16)], 1e-6, |tp, x| ops::rope(tp, &x[0], &pos, &table, h).unwrap());
    let dims = AttnDims { b, t: tt, h, kv, dh };
    let seg: Arc<[u32]> = (0..b * tt).map(|i| u32::from(i % tt >= 20)).collect();
    for seg in [None, Some(&seg)] {
        let inputs = [t(&[b * tt, h * dh], 17), t(&[b * tt, kv * dh], 18), t(&[b * tt, kv * dh], 19)];
        check("attention", &inputs, 1e-5, |tp, x| ops::attention(tp, &x[0], &x[1], &x[2], seg, dims).unwrap());
    }
}

#[test]
fn moe_matches_cpu_with_capacity_dropout_noise_and_bias() {
    let (n, d, e, w) = (29, 10, 4, 6);
    let mut router = rand_vec(e * d, 2);
    router[0] = 1.5; // skewed towards expert 0, so capacity drops tokens
    let x = Tensor::from_vec(rand_vec(n * d, 1).iter().map(|v| v + 0.3).collect(), &[n, d]);
    let inputs = [x, Tensor::from_vec(router, &[e, d]), t(&[e, 3 * w * d], 3)];
    let bias = [0.01, 0.0, -0.01, 0.02];
    for weighting in [RouterWeighting::Ste, RouterWeighting::Prob, RouterWeighting::Sigmoid] {
        let cfg = MoeConfig {
            num_experts: e,
            expert_width: w,
            temperature: 0.8,
            weighting,
            capacity_factor: Some(1.0),
            expert_dropout: 0.1,
            // Noise on two of the three weightings: the GPU backend draws the same samples.
            router_noise: if weighting == RouterWeighting::Prob { 0.0 } else { 0.3 },
            ..MoeConfig::default()
        };
        // Each of out, lb and z separately, so each loss's gradient path is compared.
        for which in 0..3 {
            check(&format!("moe {weighting:?} loss {which}"), &inputs, 1e-5, |tp, x| {
                let o = ops::moe_routed(tp, &x[0], &x[1], &x[2], Some(&bias), &cfg, 7, true).unwrap();
                assert!(o.expert_of_token.iter().filter(|&&c| c == u32::MAX).count() > 3, "tokens dropped");
                [o.out, o.lb_loss, o.z_loss][which].clone()
            });
        }
    }
}

#[test]
fn adamw_step_matches_cpu() {
    use autograd::optim::AdamW;
    use autograd::{DType, ParamTable};
    use kernels_cpu::adamw::AdamWConfig;
    let specs = vec![("a".to_string(), vec![37, 5]), ("b".to_string(), vec![11])];
    let cfg = AdamWConfig { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 };
    let run = |device| {
        let mut p = ParamTable::new(&specs, DType::F32, |_, n| rand_vec(n, n as u64));
        let mut opt = AdamW::new(&p, cfg);
        for s in 0..3 {
            let g = rand_vec(p.numel(), 50 + s);
            assert!(opt.step_on(device, &mut p, &g).unwrap());
        }
        (p.flat().to_vec(), opt.m, opt.v, opt.step)
    };
    let c = run(Device::Cpu);
    for dev in gpu_devices() {
        let g = run(dev);
        assert_eq!(g.3, 3);
        let errs = [rel_norm_err(&g.0, &c.0), rel_norm_err(&g.1, &c.1), rel_norm_err(&g.2, &c.2)];
        println!("{dev} adamw: params, m, v rel err {errs:?}");
        assert!(errs.iter().all(|&e| e <= 1e-6), "{dev} adamw: {errs:?}");
    }
}

#[test]
fn lm_head_cross_entropy_matches_cpu() {
    let (n, d, v) = (23, 19, 101);
    let mut targets: Vec<i32> = (0..n).map(|i| ((i * 37) % v) as i32).collect();
    targets[4] = -100;
    targets[n - 1] = -100;
    let inputs = [t(&[n, d], 8), t(&[v, d], 9)];
    check("lm_head_cross_entropy", &inputs, 1e-5, |tp, x| {
        ops::lm_head_cross_entropy(tp, &x[0], &x[1], &targets).unwrap().loss
    });
    // Forward only (inference tape) and no counted rows.
    let run = |device, targets: &[i32]| {
        let tape = Tape::inference_on(device).unwrap();
        ops::lm_head_cross_entropy(&tape, &inputs[0], &inputs[1], targets).unwrap()
    };
    let (c, s) = (run(Device::Cpu, &targets), run(Device::Sim, &targets));
    assert!(rel_norm_err(&s.row_losses, &c.row_losses) <= 1e-5 && c.count == s.count);
    assert_eq!(run(Device::Sim, &[-100; 23]).loss.item(), 0.0);
    let bad = ops::lm_head_cross_entropy(&Tape::new_on(Device::Sim).unwrap(), &inputs[0], &inputs[1], &[v as i32; 23]);
    assert!(bad.is_err(), "targets outside the vocabulary are refused before any launch");
}

#[test]
fn distillation_kl_and_hidden_l2_match_cpu() {
    let (n, d, dt, v) = (21, 12, 16, 97);
    let mut targets: Vec<i32> = (0..n).map(|i| ((i * 31) % v) as i32).collect();
    targets[3] = -100;
    targets[n - 2] = -100;
    // Student hidden + head get gradients; the teacher's tensors are constants of the loss.
    let (ht, wt, hl) = (t(&[n, dt], 12), t(&[v, dt], 13), t(&[n, d], 14));
    let inputs = [t(&[n, d], 10), t(&[v, d], 11)];
    check("lm_head_distill", &inputs, 1e-5, |tp, x| {
        ops::lm_head_distill(tp, &x[0], &x[1], &ht, &wt, &targets, 2.0).unwrap().loss
    });
    check("hidden_l2", &inputs[..1], 1e-6, |tp, x| ops::hidden_l2(tp, &x[0], &hl, &targets).unwrap());
}

#[test]
fn cuda_without_a_usable_gpu_is_a_typed_error() {
    if std::env::var("MOE_GPU_TESTS").is_ok_and(|v| v == "1") {
        assert!(Tape::new_on(Device::Cuda).is_ok(), "MOE_GPU_TESTS=1 but no CUDA backend");
        return;
    }
    // Without the `cuda` feature, or with it on a machine without a driver: refused, never a panic.
    match Tape::new_on(Device::Cuda) {
        Err(err) => {
            assert!(matches!(err, autograd::AutogradError::DeviceUnavailable { device: Device::Cuda, .. }), "{err}");
            assert!(Tape::inference_on(Device::Cuda).is_err());
        }
        Ok(_) => eprintln!("a CUDA device is present (set MOE_GPU_TESTS=1 to run the parity checks on it)"),
    }
}

/// Issue 17: bf16 GEMM operands run on the CPU backend only (AMX, or emulated); other devices
/// refuse the precision with a typed error that names device and precision, never a panic.
#[test]
fn bf16_precision_is_a_cpu_backend_and_refused_elsewhere() {
    use autograd::{Compute, Precision};
    let f32_tape = Tape::new_on(Device::Cpu).unwrap();
    assert_eq!(f32_tape.compute(), Compute { device: Device::Cpu, precision: Precision::F32 });
    let bf16 = Compute { device: Device::Cpu, precision: Precision::Bf16 };
    assert_eq!(Tape::new_on(bf16).unwrap().compute(), bf16);
    assert_eq!(Tape::inference_on(bf16).unwrap().precision(), Precision::Bf16);
    for device in [Device::Sim, Device::Cuda] {
        let err = Tape::new_on(Compute { device, precision: Precision::Bf16 }).err().expect("refused");
        assert!(matches!(err, autograd::AutogradError::PrecisionUnavailable { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("bf16 precision is not supported on the {device} device")), "{msg}");
        assert!(Tape::inference_on(Compute { device, precision: Precision::Bf16 }).is_err());
    }
    // A bf16 tape's linear rounds its operands: equal to the f32 product of rounded inputs.
    let (x, w) = (rand_vec(5 * 40, 1), rand_vec(7 * 40, 2));
    let rounded = |v: &[f32]| v.iter().map(|&a| kernels_cpu::gemm::bf16::round_bf16(a)).collect::<Vec<f32>>();
    let lin = |tape: &Tape, x: &[f32], w: &[f32]| {
        let (x, w) = (Tensor::from_vec(x.to_vec(), &[5, 40]), Tensor::from_vec(w.to_vec(), &[7, 40]));
        ops::linear(tape, &x, &w).unwrap().to_vec()
    };
    let got = lin(&Tape::inference_on(bf16).unwrap(), &x, &w);
    let want = lin(&Tape::inference(), &rounded(&x), &rounded(&w));
    kernels_cpu::check::assert_close(&got, &want, 1e-6, 1e-5, "bf16 linear");
    assert!(rel_norm_err(&got, &lin(&Tape::inference(), &x, &w)) > 0.0, "bf16 linear equals the f32 one");
}
