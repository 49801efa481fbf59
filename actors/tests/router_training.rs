//! Router training settings live in the trainer, not in the model: a model saved after steps
//! with a temperature / capacity schedule has a config.json without them, and a trainer
//! restored from a checkpoint resumes with the checkpoint's knobs, bitwise. And aux-loss-free
//! bias balancing (DeepSeek-V3) turns a skewed router into a balanced one with lb = 0.
//!
//! Model: a small random MoE (vocabulary 64, hidden 32, 2 layers, 8 routed experts of width 8
//! plus a shared expert of 16), random token batches of 4 x 32.

use actors::checkpoint::{read_checkpoint, write_checkpoint, DiskBudget, Snapshot};
use actors::phase::{PhaseConfig, RouterSchedule};
use actors::trainer::Trainer;
use autograd::ops::RouterWeighting;
use data::pack::PackedBatch;
use model::moe_spec::{MoeSpec, LEGACY_TRAINING_FIELDS};
use model::qwen3::ForwardOptions;
use model::{Qwen3, Qwen3Config};

const E: usize = 8;
const V: usize = 64;

fn config() -> Qwen3Config {
    let json = format!(
        r#"{{"model_type": "qwen3", "vocab_size": {V}, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
            "max_position_embeddings": 64, "tie_word_embeddings": true, "rope_theta": 10000.0}}"#
    );
    Qwen3Config::from_json(&json, std::path::Path::new("tiny.json")).unwrap()
}

fn moe_model(weighting: RouterWeighting, seed: u64) -> Qwen3 {
    let spec = MoeSpec { num_experts: E, expert_width: 8, shared_width: 16, weighting };
    Qwen3::from_init(config(), Some(spec), autograd::DType::F32, model::init::qwen3_init(seed, 0.02))
}

/// Micro-batch `k`: `b` x `t` pseudo-random ids, one document per row.
fn micro_batch(k: u64, b: usize, t: usize) -> PackedBatch {
    let mut s = 0x9E37_79B9_7F4A_7C15u64 ^ k.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    let ids: Vec<u32> = (0..b * t)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % V as u64) as u32
        })
        .collect();
    PackedBatch {
        b,
        t,
        targets: (0..b * t).map(|j| if (j + 1) % t == 0 { -100 } else { ids[j + 1] as i32 }).collect(),
        pos: (0..b * t).map(|j| (j % t) as u32).collect(),
        seg: (0..b * t).map(|j| (j / t) as u32).collect(),
        ids,
        domains: vec!["random".into(); b],
        sequences: (0..b as u64).collect(),
    }
}

/// A p1-style phase of `steps` steps of two micro-batches of 2 x 16 (accumulation exercised)
/// with the given router schedule; breakers off (the test moves the knobs itself).
fn phase(router: RouterSchedule, steps: u64, b: usize, t: usize, micro: u64) -> PhaseConfig {
    let mut c = PhaseConfig::embedded("p1", "tiny").unwrap();
    (c.micro_batch, c.seq_len) = (b, t);
    c.tokens_per_step = (b * t) as u64 * micro;
    c.tokens = c.tokens_per_step * steps;
    c.router = Some(router);
    c.breakers.enabled = false;
    c
}

fn run_steps(t: &mut Trainer, steps: std::ops::Range<u64>) {
    let micro = t.config.accumulation();
    let (b, len) = (t.config.micro_batch, t.config.seq_len);
    for s in steps {
        let batches: Vec<PackedBatch> = (0..micro).map(|j| micro_batch(s * micro + j, b, len)).collect();
        let (rec, _) = t.step(&batches, Default::default()).unwrap();
        assert!(rec.applied, "step {s}: {rec:?}");
    }
}

#[test]
fn saved_model_has_no_router_training_settings_and_resume_uses_the_checkpoints_knobs() {
    let schedule = RouterSchedule {
        lb: [0.02, 0.01],
        temperature: [0.9, 0.5],
        z: 1e-4,
        capacity: 1.25,
        expert_dropout: 0.05,
        noise: 0.01,
        bias_update_rate: 1e-3,
        named_experts: None,
    };
    let cfg = phase(schedule, 6, 2, 16, 2);
    let straight = &mut Trainer::new(cfg.clone(), moe_model(RouterWeighting::Ste, 3), None).unwrap();
    let first = &mut Trainer::new(cfg.clone(), moe_model(RouterWeighting::Ste, 3), None).unwrap();
    run_steps(straight, 0..3);
    run_steps(first, 0..3);
    // A breaker moved the knobs after step 3 (in both runs alike).
    for t in [&mut *straight, &mut *first] {
        t.state.knobs.capacity_factor = 1.5;
        t.state.knobs.temperature -= 0.1;
    }
    let at3 = first.router_training_at(3).unwrap();
    assert_eq!(at3.capacity_factor, Some(1.5), "the breaker's capacity, not the phase's 1.25");
    assert!((at3.temperature - (0.9 - 0.4 * 3.0 / 5.0 - 0.1)).abs() < 1e-6, "{at3:?}");

    let dir = tempfile::tempdir().unwrap();
    let snap = Snapshot::take(&first.model, &first.opt, first.state.step, first.state_json());
    let ckpt = write_checkpoint(dir.path(), &snap, 2, &mut DiskBudget::default()).unwrap();
    // The model files: architecture + weights only, after steps whose temperature moved.
    let saved = dir.path().join("saved");
    first.model.save(&saved, None).unwrap();
    for config_json in [ckpt.join("config.json"), saved.join("config.json")] {
        let text = std::fs::read_to_string(&config_json).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let keys: Vec<&str> = v["moe"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["expert_width", "num_experts", "router_weighting", "shared_width"], "{config_json:?}");
        for f in LEGACY_TRAINING_FIELDS.iter().chain(&["temperature", "capacity", "lb_", "dropout", "noise"]) {
            assert!(!text.contains(f), "{config_json:?} holds `{f}`");
        }
    }
    // The trainer state holds them: the settings of the last step taken (step 3 of 6).
    let loaded = read_checkpoint(&ckpt).unwrap();
    let state: serde_json::Value = serde_json::from_str(&loaded.trainer_json).unwrap();
    let last = first.state.router_training.unwrap();
    assert!((last.temperature - (0.9 - 0.4 * 2.0 / 5.0)).abs() < 1e-6, "{last:?}");
    assert_eq!(state["router_training"]["capacity_factor"], 1.25);
    assert_eq!(state["knobs"]["capacity_factor"], 1.5);
    assert!(loaded.model.router_bias.iter().flatten().any(|&b| b != 0.0), "bias balancing ran");

    // A fresh process: new model, restored from the checkpoint, resumes with its knobs.
    let resumed = &mut Trainer::new(cfg, moe_model(RouterWeighting::Ste, 99), None).unwrap();
    resumed.restore(loaded).unwrap();
    assert_eq!(resumed.state.router_training, Some(last));
    assert_eq!(resumed.router_training_at(3), Some(at3));
    run_steps(straight, 3..6);
    run_steps(resumed, 3..6);
    let (a, b) = (straight.model.params.flat(), resumed.model.params.flat());
    let diff = a.iter().zip(b.iter()).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
    assert_eq!(diff, 0, "{diff} parameters differ after resume");
    assert_eq!(straight.model.router_bias, resumed.model.router_bias, "router bias");
    assert_eq!(straight.state, resumed.state, "trainer state (router settings, knobs, records)");
    let end = resumed.state.router_training.unwrap();
    assert!((end.temperature - (0.5 - 0.1)).abs() < 1e-6 && end.capacity_factor == Some(1.5), "{end:?}");
}

/// Load share per expert (mean over layers' shares is not taken: per layer) of an evaluation
/// forward (dropless, no noise) on 8 fresh batches.
fn eval_shares(model: &Qwen3) -> Vec<Vec<f64>> {
    let layers = model.config.num_hidden_layers;
    let mut counts = vec![vec![0usize; E]; layers];
    for k in 0..8 {
        let (batch, targets) = actors::eval::token_batch_of(micro_batch(1_000_000 + k, 4, 32));
        let tape = autograd::Tape::inference();
        let out = model.loss(&tape, &model.bind(&tape), &batch, &targets, &ForwardOptions::eval()).unwrap();
        for (l, r) in out.router.iter().enumerate() {
            counts[l].iter_mut().zip(&r.counts).for_each(|(c, &n)| *c += n);
        }
    }
    counts.iter().map(|c| c.iter().map(|&n| n as f64 / c.iter().sum::<usize>() as f64).collect()).collect()
}

/// Max share and load entropy (nats) of each layer.
fn balance(shares: &[Vec<f64>]) -> Vec<(f64, f64)> {
    shares
        .iter()
        .map(|s| {
            let max = s.iter().cloned().fold(0.0, f64::max);
            (max, -s.iter().filter(|&&p| p > 0.0).map(|p| p * p.ln()).sum::<f64>())
        })
        .collect()
}

/// A sigmoid-router MoE whose router prefers expert 0 for every token: every embedding row
/// shares a common direction `u`, and each layer's router row 0 points along it.
fn skewed_model() -> Qwen3 {
    let mut m = moe_model(RouterWeighting::Sigmoid, 5);
    let d = m.config.hidden_size;
    let r = kernels_cpu::check::rand_vec(d, 77);
    let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt();
    let u: Vec<f32> = r.iter().map(|x| x / norm).collect();
    let flat_entries = m.params.entries().to_vec();
    let flat = m.params.flat_mut().unwrap();
    for e in &flat_entries {
        let p = &mut flat[e.offset..e.offset + e.numel()];
        if e.name == "model.embed_tokens.weight" {
            p.chunks_mut(d).for_each(|row| row.iter_mut().zip(&u).for_each(|(x, &ui)| *x += 0.1 * ui));
        } else if e.name.ends_with(".mlp.gate.weight") {
            // Router rows of std 0.1 (scores spread over experts), row 0 along `u`.
            let noise = kernels_cpu::check::rand_vec(p.len(), e.offset as u64);
            p.iter_mut().zip(&noise).for_each(|(x, &n)| *x = 0.1 * n);
            p[..d].iter_mut().zip(&u).for_each(|(x, &ui)| *x += 0.5 * ui);
        }
    }
    m
}

#[test]
fn bias_updates_balance_a_skewed_router_without_a_balancing_loss() {
    const STEPS: u64 = 150;
    const RATE: f32 = 0.005;
    let schedule = |rate| RouterSchedule {
        lb: [0.0, 0.0],
        temperature: [1.0, 1.0],
        z: 0.0,
        capacity: 2.0,
        expert_dropout: 0.0,
        noise: 0.0,
        bias_update_rate: rate,
        named_experts: None,
    };
    let before = balance(&eval_shares(&skewed_model()));
    println!("at init: (max share, load entropy) per layer {before:.3?}");
    assert!(before.iter().all(|&(max, _)| max > 0.5), "the router is skewed at init: {before:?}");

    let mut outcome = Vec::new();
    for rate in [0.0, RATE] {
        let mut t = Trainer::new(phase(schedule(rate), STEPS, 4, 32, 1), skewed_model(), None).unwrap();
        run_steps(&mut t, 0..STEPS);
        let b = balance(&eval_shares(&t.model));
        println!("after {STEPS} steps with lb = 0, bias rate {rate}: (max share, load entropy) per layer {b:.3?}");
        outcome.push((b, t.model.router_bias.clone()));
    }
    let ln_e = (E as f64).ln();
    let (off, _) = &outcome[0];
    let (on, bias) = &outcome[1];
    // Without bias updates the skew stays; with them: max share <= 1.5 / E and load entropy
    // >= 0.95 ln E in every layer (on 1024 fresh tokens, evaluation mode).
    assert!(off.iter().all(|&(max, _)| max > 0.5), "without updates the router stays skewed: {off:?}");
    for &(max, ent) in on {
        assert!(max <= 1.5 / E as f64 && ent >= 0.95 * ln_e, "not balanced: max {max:.3}, entropy {ent:.3}");
    }
    // Expert 0 (the favourite) ended with the lowest bias of each layer.
    for b in bias {
        assert!(b.iter().skip(1).all(|&x| x > b[0]), "{b:?}");
    }
}
