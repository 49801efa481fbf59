//! The QAT forward (`model::qat::qat_gradient`) against the fake-quantized model: the same loss
//! bit for bit; the latent weights' gradient is the fake-quant model's gradient straight through
//! (inside the clamp range) and the step / min gradients are the kernels' LSQ gradients of it;
//! parameters that are not fake-quantized get exactly the fake-quant model's gradient.

use autograd::{DType, Device, Tape, Tensor};
use kernels_cpu::fake_quant::fake_quant_backward;
use model::gguf::{Arch, Mask};
use model::init::qwen3_init;
use model::qat::{qat_gradient, qat_plan, QatState};
use model::qwen3::{Bound, ForwardOptions};
use model::{presets, Qwen3, TokenBatch};
use std::path::Path;

const MASK: &str = r#"[
  {"pattern": "blk.*.ffn_*_exps.weight", "type": "q5_k"},
  {"pattern": "blk.*.ffn_*_shexp.weight", "type": "q6_k"},
  {"pattern": "blk.*.attn_v.weight", "type": "q8_0"},
  {"pattern": "blk.*.attn_output.weight", "type": "q5_1"},
  {"pattern": "*", "type": "f32"}
]"#;

/// The next-token loss of `model` as an objective for `gradient` / `qat_gradient`.
fn loss_of<'a>(
    model: &'a Qwen3,
    batch: &'a TokenBatch,
    targets: &'a [i32],
    opts: &'a ForwardOptions,
) -> impl FnOnce(&Tape, &Bound) -> model::Result<(Tensor, ())> + Send + 'a {
    move |tape, bound| {
        let o = model.loss(tape, bound, batch, targets, opts)?;
        Ok((o.loss.clone(), ()))
    }
}

#[test]
fn qat_gradient_is_the_fake_quant_models_gradient_through_the_quantizer() {
    let (c, spec) = presets::embedded_moe("tiny-k1p1-n16").unwrap();
    let m = Qwen3::from_init(c, Some(spec), DType::F32, qwen3_init(5, 0.02));
    let mask = Mask::from_json(MASK, Path::new("mask.json")).unwrap();
    let plan = qat_plan(&m.config, m.moe.as_ref(), Arch::Glm4Moe, &mask, 32).unwrap();
    let mut state = QatState::init(&plan, &mask, &m, &[1.0]).unwrap();
    // Clip some weights so both sides of the straight-through estimator are exercised.
    for t in state.tensors.values_mut() {
        t.step.iter_mut().enumerate().for_each(|(i, s)| *s *= if i % 3 == 0 { 0.7 } else { 1.0 });
    }
    let mut fq = m.clone();
    state.apply(&mut fq).unwrap();

    let ids: Vec<u32> = (0..64).map(|i| (i * 613 + 5) % 4096).collect();
    let targets: Vec<i32> = ids.iter().skip(1).map(|&x| x as i32).chain([-100]).collect();
    let batch = TokenBatch::new(ids, 2, 32).unwrap();
    let opts = ForwardOptions::eval();
    let (v_qat, _, g_qat, q_grads) =
        qat_gradient(&m, &state, Device::Cpu, loss_of(&m, &batch, &targets, &opts)).unwrap();
    let (v_fq, _, g_fq) = fq.gradient(Device::Cpu, loss_of(&fq, &batch, &targets, &opts)).unwrap();
    assert_eq!(v_qat.to_bits(), v_fq.to_bits(), "loss {v_qat} vs fake-quant model {v_fq}");
    assert_eq!(q_grads.len(), state.tensors.len());

    let (mut clipped, mut checked) = (0, 0);
    for e in m.params.entries() {
        let range = e.offset..e.offset + e.numel();
        let (got, dq) = (&g_qat[range.clone()], &g_fq[range]);
        match state.tensors.get(&e.name) {
            None => assert!(got.iter().zip(dq).all(|(a, b)| a.to_bits() == b.to_bits()), "`{}` gradient", e.name),
            Some(t) => {
                let w = m.params.get(&e.name).unwrap().to_vec();
                let (mut dw, mut ds, mut dm) = (vec![0f32; w.len()], vec![0f32; t.step.len()], vec![0f32; t.min.len()]);
                fake_quant_backward(&mut dw, &mut ds, &mut dm, dq, &w, &t.step, &t.min, t.dims);
                assert!(got.iter().zip(&dw).all(|(a, b)| a.to_bits() == b.to_bits()), "`{}` latent gradient", e.name);
                let (gs, gm) = &q_grads[&e.name];
                assert!(gs.iter().zip(&ds).all(|(a, b)| a.to_bits() == b.to_bits()), "`{}` step gradient", e.name);
                assert!(gm.iter().zip(&dm).all(|(a, b)| a.to_bits() == b.to_bits()), "`{}` min gradient", e.name);
                assert_eq!(gm.len(), t.min.len());
                clipped += got.iter().zip(dq).filter(|(a, b)| **a == 0.0 && **b != 0.0).count();
                checked += 1;
            }
        }
    }
    assert!(checked > 40 && clipped > 0, "{checked} tensors, {clipped} clipped weights");
}
