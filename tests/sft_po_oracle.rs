//! The losses of phases p2 (masked SFT cross-entropy, accumulated over micro-batches) and p3
//! (DPO, SimPO) against torch (tools/gen_sft_fixtures.py, tests/fixtures/sft_po/). Logits go
//! through our fused LM-head ops with an identity head (`h = logits`, `w = I`), so `∂/∂h` is
//! `∂/∂logits`; the per-sequence scales of DPO / SimPO go through
//! `ops::lm_head_sequence_objective`, the micro-batch weights through the trainer's own
//! `token_mean_weights`.

use autograd::ops;
use autograd::{Tape, Tensor};
use model::preference::{preference_value, PreferenceLoss};
use serde_json::Value;

fn fixture() -> Value {
    let path = medmoe_tests::fixture_dir("sft_po").join("reference.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["format"], "medmoe-sft-po-fixture", "fixture magic");
    assert_eq!(v["version"], 1, "fixture version");
    v
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

fn identity(v: usize) -> Tensor {
    Tensor::from_vec((0..v * v).map(|i| if i / v == i % v { 1.0 } else { 0.0 }).collect(), &[v, v])
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn sft_masked_ce_is_the_token_mean_over_the_accumulated_batch() {
    let f = fixture();
    let sft = &f["sft"];
    let micro = sft["micro"].as_array().unwrap();
    let mut parts = Vec::new();
    for m in micro {
        let (b, t, v) =
            (m["b"].as_u64().unwrap() as usize, m["t"].as_u64().unwrap() as usize, m["v"].as_u64().unwrap() as usize);
        let targets: Vec<i32> = ints(&m["targets"]).into_iter().map(|x| x as i32).collect();
        let tape = Tape::new();
        let h = tape.leaf(&Tensor::from_vec(floats(&m["logits"]), &[b * t, v]));
        let out = ops::lm_head_cross_entropy(&tape, &h, &identity(v), &targets).unwrap();
        assert_eq!(out.count as u64, m["count"].as_u64().unwrap(), "counted tokens");
        let loss = out.loss.item();
        let grads = tape.backward(&out.loss);
        parts.push((out.count, loss, grads.get(&h).unwrap().to_vec(), floats(&m["dlogits"])));
    }
    let weights = actors::trainer::token_mean_weights(&parts.iter().map(|p| p.0).collect::<Vec<_>>());
    let loss: f32 = parts.iter().zip(&weights).map(|(p, w)| w * p.1).sum();
    let want = sft["loss"].as_f64().unwrap() as f32;
    println!("sft loss {loss} vs torch {want}");
    assert!((loss - want).abs() < 1e-5, "sft loss {loss} vs {want}");
    let mean_of_means = sft["mean_of_means"].as_f64().unwrap() as f32;
    assert!((loss - mean_of_means).abs() > 1e-3, "the fixture must tell the two means apart");
    for (i, (p, w)) in parts.iter().zip(&weights).enumerate() {
        let got: Vec<f32> = p.2.iter().map(|g| g * w).collect();
        let d = max_abs_diff(&got, &p.3);
        println!("sft micro-batch {i}: max |dlogits - torch| = {d:.2e}");
        assert!(d < 1e-6, "micro-batch {i}: dlogits differ by {d}");
    }
}

fn check_preference(part: &Value, loss_kind: PreferenceLoss) {
    let p = part["pairs"].as_u64().unwrap() as usize;
    let (t, v) = (part["t"].as_u64().unwrap() as usize, part["v"].as_u64().unwrap() as usize);
    let targets: Vec<i32> = ints(&part["targets"]).into_iter().map(|x| x as i32).collect();
    let reference = part.get("reference_logps").map(floats);
    let tape = Tape::new();
    let h = tape.leaf(&Tensor::from_vec(floats(&part["logits"]), &[2 * p * t, v]));
    let mut value = None;
    let (obj, lp) = ops::lm_head_sequence_objective(&tape, &h, &identity(v), &targets, t, |lp| {
        let val = preference_value(&loss_kind, &lp.logp, &lp.counts, reference.as_deref()).unwrap();
        let r = (val.loss, val.dlogp.clone());
        value = Some(val);
        r
    })
    .unwrap();
    let value = value.unwrap();
    let name = format!("{loss_kind:?}");
    let lens: Vec<usize> = ints(&part["completion_lengths"]).into_iter().map(|x| x as usize).collect();
    assert_eq!(lp.counts, lens, "{name}: completion lengths");
    let checks = [
        ("policy logps", lp.logp.clone(), floats(&part["policy_logps"]), 2e-5),
        ("chosen rewards", value.chosen_rewards.clone(), floats(&part["chosen_rewards"]), 2e-5),
        ("rejected rewards", value.rejected_rewards.clone(), floats(&part["rejected_rewards"]), 2e-5),
        ("dloss/dlogp", value.dlogp.clone(), floats(&part["dlogp"]), 1e-6),
    ];
    for (what, got, want, tol) in checks {
        let d = max_abs_diff(&got, &want);
        println!("{name}: max |{what} - torch| = {d:.2e}");
        assert!(d < tol, "{name}: {what} differ by {d}: {got:?} vs {want:?}");
    }
    let want = part["loss"].as_f64().unwrap() as f32;
    assert!((obj.item() - want).abs() < 1e-5, "{name}: loss {} vs {want}", obj.item());
    let grads = tape.backward(&obj);
    let got = grads.get(&h).unwrap();
    let d = max_abs_diff(got, &floats(&part["dlogits"]));
    println!("{name}: loss {} vs torch {want}; max |dlogits - torch| = {d:.2e}", obj.item());
    assert!(d < 1e-6, "{name}: dlogits differ by {d}");
    // Prompt and padding rows get exactly no gradient.
    for (r, &tg) in targets.iter().enumerate() {
        if tg == -100 {
            assert!(got[r * v..(r + 1) * v].iter().all(|&g| g == 0.0), "{name}: row {r} is not a completion row");
        }
    }
}

#[test]
fn dpo_loss_rewards_and_gradient_match_torch() {
    let f = fixture();
    let beta = f["dpo"]["beta"].as_f64().unwrap() as f32;
    check_preference(&f["dpo"], PreferenceLoss::Dpo { beta });
}

#[test]
fn simpo_loss_rewards_and_gradient_match_torch() {
    let f = fixture();
    let s = &f["simpo"];
    let loss = PreferenceLoss::Simpo {
        beta: s["beta"].as_f64().unwrap() as f32,
        gamma_beta_ratio: s["gamma_beta_ratio"].as_f64().unwrap() as f32,
    };
    check_preference(s, loss);
}

#[test]
fn preference_value_refuses_batches_that_are_not_pairs() {
    let dpo = PreferenceLoss::Dpo { beta: 0.1 };
    assert!(preference_value(&dpo, &[-1.0, -2.0, -3.0], &[1, 1, 1], Some(&[0.0; 3])).is_err());
    assert!(preference_value(&dpo, &[-1.0, -2.0], &[1, 1], None).unwrap_err().to_string().contains("reference"));
    let e = preference_value(&dpo, &[-1.0, -2.0], &[1, 0], Some(&[0.0; 2])).unwrap_err().to_string();
    assert!(e.contains("no completion token"), "{e}");
    assert!(PreferenceLoss::Simpo { beta: 0.0, gamma_beta_ratio: 0.5 }.validate().is_err());
}
