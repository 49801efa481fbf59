//! GPTQ on the QAT grid (the Hessian-aware calibration of a QAT stage): on a tiny MoE whose
//! inputs are correlated (calibration and held-out text drawn from the same 48 token ids), the
//! latent weights it returns fake-quantize, with the steps and mins unchanged, to a model closer
//! to the float one than round-to-nearest on the same grid, layer by layer (output error) and at
//! the logits of held-out text. Every format path of the tiny MoE takes part: routed gate/up
//! Q5_K, routed down Q5_1, shared gate/up Q6_K, shared down Q8_0 (fallbacks), attention V Q8_0.

use autograd::DType;
use model::gguf::{Arch, Mask};
use model::gptq::QuantMethod;
use model::init::qwen3_init;
use model::qat::{gptq_on_qat_grid, qat_plan, QatState};
use model::{presets, Qwen3, TokenBatch};
use std::path::Path;

const MASK: &str = r#"[
  {"pattern": "blk.*.ffn_*_exps.weight", "type": "q5_k"},
  {"pattern": "blk.*.ffn_*_shexp.weight", "type": "q6_k"},
  {"pattern": "blk.*.attn_v.weight", "type": "q8_0"},
  {"pattern": "*", "type": "f32"}
]"#;

/// `b` rows of `t` ids from a vocabulary of 48 (a fixed pseudo-random walk per `seed`).
fn text(seed: u64, b: usize, t: usize) -> TokenBatch {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let ids = (0..b * t)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (100 + (x % 48) * 31) as u32
        })
        .collect();
    TokenBatch::new(ids, b, t).unwrap()
}

fn logits_mse(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / a.len() as f64
}

/// The tiny MoE (random init) and its QAT state under [`MASK`], steps and mins from min-max
/// refined by the clip ratios `ratios`.
fn tiny_with_state(ratios: &[f32]) -> (Qwen3, QatState) {
    let (c, spec) = presets::embedded_moe("tiny-k1p1-n16").unwrap();
    let m = Qwen3::from_init(c, Some(spec), DType::F32, qwen3_init(7, 0.02));
    let mask = Mask::from_json(MASK, Path::new("qat-mask.json")).unwrap();
    let plan = qat_plan(&m.config, m.moe.as_ref(), Arch::Glm4Moe, &mask, 32).unwrap();
    let state = QatState::init(&plan, &mask, &m, ratios).unwrap();
    (m, state)
}

#[test]
fn gptq_on_the_qat_grid_beats_round_to_nearest_on_the_same_grid() {
    let (m, state) = tiny_with_state(&[1.0, 0.9, 0.8]);
    let cal = gptq_on_qat_grid(&m, &state, &text(1, 16, 128), Some(16), false, None).unwrap();

    assert_eq!(cal.latent.len(), state.tensors.len(), "every QAT tensor is a linear the pass reaches");
    let (mut err, mut rtn) = (0f64, 0f64);
    let mut by_type = std::collections::BTreeMap::<&str, usize>::new();
    let mut unreached = 0;
    for r in &cal.report {
        let (Some(e), Some(re)) = (r.error, r.rtn_error) else {
            // An expert no calibration token reached: rounded to nearest.
            assert_eq!((r.method, r.tokens), (QuantMethod::Rtn, 0), "`{}`", r.name);
            unreached += 1;
            continue;
        };
        assert!(e <= re, "`{}`: {e} > round-to-nearest {re}", r.name);
        if r.method == QuantMethod::Gptq {
            *by_type.entry(state.tensors[&r.name].dims.ty.name()).or_default() += 1;
        } else {
            assert_eq!(cal.latent[&r.name], m.params.get(&r.name).unwrap().to_vec(), "`{}` kept", r.name);
        }
        err += e;
        rtn += re;
    }
    println!(
        "output error: GPTQ on the grid {err:.4e}, round-to-nearest {rtn:.4e}; GPTQ kept per type {by_type:?}; \
         {unreached} tensors of experts no token reached"
    );
    assert!(err < 0.7 * rtn, "GPTQ {err} vs RTN {rtn}");
    for ty in ["Q5_K", "Q5_1", "Q6_K", "Q8_0"] {
        assert!(by_type.get(ty).copied().unwrap_or(0) > 0, "no {ty} tensor kept GPTQ's codes: {by_type:?}");
    }

    // The whole model on held-out text of the same kind.
    let mut rtn_model = m.clone();
    state.apply(&mut rtn_model).unwrap();
    let mut gptq_model = m.clone();
    for (name, w) in &cal.latent {
        gptq_model.params.set(name, w).unwrap();
    }
    state.apply(&mut gptq_model).unwrap();
    let held_out = text(2, 4, 128);
    let want = m.logits(&held_out).unwrap();
    let (e_rtn, e_gptq) = (
        logits_mse(&want, &rtn_model.logits(&held_out).unwrap()),
        logits_mse(&want, &gptq_model.logits(&held_out).unwrap()),
    );
    println!("held-out logits MSE vs f32: round-to-nearest {e_rtn:.4e}, GPTQ on the grid {e_gptq:.4e}");
    assert!(e_gptq < 0.8 * e_rtn, "GPTQ {e_gptq} vs RTN {e_rtn}");
}

#[test]
fn a_calibration_token_outside_the_vocabulary_is_refused() {
    let (m, state) = tiny_with_state(&[1.0]);
    let bad = TokenBatch::new(vec![5, 4096, 7, 8], 1, 4).unwrap();
    let e = gptq_on_qat_grid(&m, &state, &bad, None, true, Some(0.1)).err().unwrap().to_string();
    assert!(e.contains("4096") && e.contains("vocabulary"), "{e}");
}
