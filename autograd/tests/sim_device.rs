//! Every op with a GPU kernel, on a `Device::Sim` tape against the same op on `Device::Cpu`:
//! outputs and input gradients through the tape (sizes not multiples of the block or tile).

use autograd::ops;
use autograd::{Device, Tape, Tensor};
use kernels_cpu::check::{rand_vec, rel_norm_err};

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
    let (c, s) = (grads(Device::Cpu, inputs, &f), grads(Device::Sim, inputs, &f));
    let errs: Vec<String> = c.iter().zip(&s).map(|(c, s)| format!("{:.2e}", rel_norm_err(s, c))).collect();
    println!("sim {what}: output, input gradients rel err {errs:?} (tol {tol:.0e})");
    assert!(c.iter().zip(&s).all(|(c, s)| rel_norm_err(s, c) <= tol), "{what}: {errs:?}");
}

fn t(shape: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(rand_vec(shape.iter().product(), seed), shape)
}

#[test]
fn sim_elementwise_norm_and_linear_ops_match_cpu() {
    check("swiglu", &[t(&[37, 5], 1), t(&[37, 5], 2)], 1e-6, |tp, x| ops::swiglu(tp, &x[0], &x[1]).unwrap());
    check("swiglu_fused", &[t(&[33, 14], 3)], 1e-6, |tp, x| ops::swiglu_fused(tp, &x[0]).unwrap());
    check("rmsnorm", &[t(&[45, 37], 4), t(&[37], 5)], 1e-5, |tp, x| ops::rmsnorm(tp, &x[0], &x[1], 1e-6).unwrap());
    check("linear", &[t(&[3, 11, 37], 6), t(&[35, 37], 7)], 1e-5, |tp, x| ops::linear(tp, &x[0], &x[1]).unwrap());
}

#[test]
fn sim_lm_head_cross_entropy_matches_cpu() {
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
fn cuda_tape_is_refused_with_a_typed_error() {
    let err = Tape::new_on(Device::Cuda).err().expect("no CUDA dispatch");
    assert!(matches!(err, autograd::AutogradError::DeviceUnavailable { device: Device::Cuda, .. }), "{err}");
    assert!(Tape::inference_on(Device::Cuda).is_err());
}
