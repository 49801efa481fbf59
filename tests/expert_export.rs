//! Named experts: `export expert` (shared + one routed expert as a dense Qwen3) against the
//! transformers oracle, against our MoE on the tokens routed to that expert, and bad input.
//!
//! The `expert_forced_a` fixture (tools/gen_expert_fixture.py) holds the logits transformers'
//! Qwen3ForCausalLM computed on the export the CLI wrote of an upcycled MoE whose router bias sends
//! every token to the expert, the sha256 of the exported files, and how the MoE was made. This test
//! rebuilds the MoE in-process, exports it, and requires the same bytes and the same logits from
//! transformers, our dense runtime and our MoE (<= 1e-4 max abs, f32).

use kernels_cpu::check::max_errors;
use medmoe_tests::{fixture_dir, open_reference};
use model::export::expert::{route_choices, routed_prefix};
use model::export::{expert_as_dense, export_expert};
use model::surgery::upcycle::{upcycle, UpcycleOptions};
use model::{ModelError, Qwen3, TokenBatch};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// f32 logits against transformers and between our MoE and the dense export.
const TOL: f64 = 1e-4;

struct Fixture {
    meta: HashMap<String, String>,
    batch: TokenBatch,
    logits: Vec<f32>,
}

fn fixture() -> Fixture {
    let r = open_reference(&fixture_dir("expert_forced_a"));
    let shape = r.info("input_ids").unwrap().shape.clone();
    let ids = r.read_i64("input_ids").unwrap().iter().map(|&x| x as u32).collect();
    Fixture {
        meta: r.metadata().unwrap().clone(),
        batch: TokenBatch::new(ids, shape[0], shape[1]).unwrap(),
        logits: r.read_f32("logits").unwrap(),
    }
}

/// The fixture's upcycled MoE, without the forcing bias.
fn upcycled(f: &Fixture) -> (Qwen3, usize) {
    let m = |k: &str| f.meta.get(k).unwrap_or_else(|| panic!("metadata `{k}`")).as_str();
    let dense = Qwen3::load(&fixture_dir(m("dense"))).unwrap();
    let opts = UpcycleOptions {
        experts: m("experts").parse().unwrap(),
        shared: m("shared") == "copy",
        drop: m("drop").parse().unwrap(),
        seed: m("seed").parse().unwrap(),
    };
    (upcycle(&dense, &opts).unwrap().0, m("expert").parse().unwrap())
}

fn max_abs_where(a: &[f32], b: &[f32], v: usize, rows: &[bool]) -> f32 {
    rows.iter()
        .enumerate()
        .filter(|(_, &on)| on)
        .flat_map(|(r, _)| (r * v..(r + 1) * v).map(|i| (a[i] - b[i]).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn expert_export_reproduces_transformers_and_the_moe_on_routed_tokens() {
    let f = fixture();
    let (mut moe, expert) = upcycled(&f);
    let force: f32 = f.meta["force_bias"].parse().unwrap();
    for b in &mut moe.router_bias {
        b[expert] = force;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("expert");
    let files = export_expert(&moe, expert, &out).unwrap();
    for p in &files {
        let n = p.file_name().unwrap().to_string_lossy();
        let got: String = Sha256::digest(std::fs::read(p).unwrap()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, f.meta[&format!("sha256.{n}")], "sha256 of {n}: not the bytes transformers ran on");
    }
    let dense = Qwen3::load(&out).unwrap();
    assert!(dense.moe.is_none());
    let spec = moe.moe.clone().unwrap();
    assert_eq!(dense.config.intermediate_size, spec.shared_width + spec.expert_width);

    // Every token is routed to `expert` in every layer, so every position must match.
    let choices = route_choices(&moe, &f.batch).unwrap();
    assert!(routed_prefix(&choices, f.batch.t, None, expert as u32).iter().all(|&r| r));
    let ours_dense = dense.logits(&f.batch).unwrap();
    let ours_moe = moe.logits(&f.batch).unwrap();
    let (d_abs, _) = max_errors(&ours_dense, &f.logits);
    let (m_abs, _) = max_errors(&ours_moe, &f.logits);
    println!("expert {expert}: dense export vs transformers {d_abs:.3e}, MoE (routed to {expert}) vs transformers {m_abs:.3e}");
    assert!(d_abs <= TOL, "dense export vs transformers: {d_abs:.3e}");
    assert!(m_abs <= TOL, "MoE vs transformers on the export: {m_abs:.3e}");
}

#[test]
fn expert_export_matches_the_moe_exactly_where_the_prefix_was_routed_to_it() {
    let f = fixture();
    let (moe, _) = upcycled(&f);
    let v = moe.config.vocab_size;
    // Natural routing (no bias): many short rows, so some documents start on each expert.
    let (rows, t) = (96, 3);
    let ids: Vec<u32> = (0..rows * t).map(|i| ((i * 37 + 11) % v) as u32).collect();
    let batch = TokenBatch::new(ids, rows, t).unwrap();
    let choices = route_choices(&moe, &batch).unwrap();
    let logits = moe.logits(&batch).unwrap();
    let mut checked = 0;
    for e in 0..moe.moe.as_ref().unwrap().num_experts {
        let routed = routed_prefix(&choices, t, None, e as u32);
        let dense = expert_as_dense(&moe, e).unwrap().logits(&batch).unwrap();
        let on = max_abs_where(&dense, &logits, v, &routed);
        let off = max_abs_where(&dense, &logits, v, &routed.iter().map(|r| !r).collect::<Vec<_>>());
        let n = routed.iter().filter(|&&r| r).count();
        println!("expert {e}: {n} positions routed, max abs {on:.3e} there, {off:.3e} elsewhere");
        assert!(f64::from(on) <= TOL, "expert {e}: routed positions differ by {on:.3e}");
        assert!(off > 1e-3, "expert {e}: positions not routed to it should differ ({off:.3e})");
        checked += n;
    }
    assert!(checked > 0, "no position was routed to one expert in every layer: choose other ids");
}

#[test]
fn bad_expert_indices_and_prob_weighting_are_refused() {
    let f = fixture();
    let (mut moe, _) = upcycled(&f);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x");
    let e = export_expert(&moe, 4, &out).unwrap_err().to_string();
    assert!(e.contains("--expert 4") && e.contains("4 routed experts"), "{e}");
    assert!(!out.exists(), "no partial output");
    moe.moe.as_mut().unwrap().weighting = autograd::ops::RouterWeighting::Prob;
    let e = export_expert(&moe, 0, &out).unwrap_err();
    assert!(matches!(e, ModelError::Unsupported(_)) && e.to_string().contains("prob"), "{e}");
    let dense = Qwen3::load(&fixture_dir("qwen3_untied_b")).unwrap();
    assert!(export_expert(&dense, 0, &out).unwrap_err().to_string().contains("dense"));
    assert!(!out.exists());
}
