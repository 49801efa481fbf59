//! The p3 training step: DPO against a reference computed from the starting model starts at
//! exactly `ln 2` (policy = reference, zero rewards) and moves the margin the right way; SimPO
//! needs no reference.

use actors::batches::{BatchStream, LoaderCursor};
use actors::phase::PhaseConfig;
use actors::preference_data::PreferencePair;
use actors::trainer::Trainer;
use model::preference::{sequence_logprobs, PreferenceLoss};
use model::{Qwen3, TokenBatch};
use std::sync::Arc;

const T: usize = 16;

fn dense() -> Qwen3 {
    let config = model::presets::embedded("tiny-dense").unwrap().unwrap();
    Qwen3::from_init(config, None, autograd::DType::F32, model::init::qwen3_init(5, 0.02))
}

/// `prompt + completion` padded to `T` and its completion targets.
fn row(prompt: &[u32], completion: &[u32]) -> (Vec<u32>, Vec<i32>) {
    let mut ids: Vec<u32> = prompt.iter().chain(completion).copied().collect();
    let n = ids.len();
    ids.resize(T, 0);
    let targets = (0..T).map(|i| if i + 1 >= prompt.len() && i + 1 < n { ids[i + 1] as i32 } else { -100 }).collect();
    (ids, targets)
}

/// Four pairs with the starting model's log-probabilities as DPO's reference.
fn pairs(m: &Qwen3) -> Vec<PreferencePair> {
    (0..4u32)
        .map(|j| {
            let prompt: Vec<u32> = (0..5 + j).map(|i| 10 + (i * 31 + j * 7) % 400).collect();
            let good: Vec<u32> = (0..3 + j % 2).map(|i| 500 + (i * 13 + j) % 50).collect();
            let bad: Vec<u32> = (0..4).map(|i| 700 + (i * 17 + j * 3) % 60).collect();
            let (chosen, chosen_targets) = row(&prompt, &good);
            let (rejected, rejected_targets) = row(&prompt, &bad);
            let batch = TokenBatch::new([chosen.clone(), rejected.clone()].concat(), 2, T).unwrap();
            let targets = [chosen_targets.clone(), rejected_targets.clone()].concat();
            let lp = sequence_logprobs(m, &batch, &targets, autograd::Device::Cpu).unwrap().logp;
            PreferencePair { chosen, chosen_targets, rejected, rejected_targets, reference: [lp[0], lp[1]] }
        })
        .collect()
}

fn config(loss: PreferenceLoss) -> PhaseConfig {
    let mut c = PhaseConfig::embedded("p3", "tiny").unwrap();
    c.router = None; // a dense model
    c.seq_len = T;
    c.micro_batch = 4; // two pairs
    c.tokens_per_step = (4 * T) as u64;
    c.tokens = (4 * T * 6) as u64;
    c.lr = actors::phase::LrConfig { max: 1e-3, min: 1e-3, warmup_frac: 0.0 };
    c.autoclip = actors::phase::AutoClipConfig { percentile: 100.0, window: 1 };
    c.preference.as_mut().unwrap().loss = loss;
    c
}

fn losses(loss: PreferenceLoss, with_reference: bool) -> Vec<f32> {
    let m = dense();
    let pairs = pairs(&m);
    let reference = Arc::new(pairs.iter().map(|p| p.reference).collect::<Vec<_>>());
    let mut trainer = Trainer::new(config(loss), m, None).unwrap();
    if with_reference {
        trainer.pair_reference = Some(reference);
    }
    let stream = BatchStream::pairs(Arc::new(pairs), 4, 3).unwrap();
    let mut cursor = LoaderCursor::default();
    let mut out = Vec::new();
    while !trainer.done() {
        let (batch, next) = stream.next(&cursor).unwrap();
        assert_eq!(batch.b, 4);
        let (rec, _) = trainer.step(&[batch], next.clone()).unwrap();
        assert!(rec.applied);
        out.push(rec.loss);
        cursor = next;
    }
    out
}

#[test]
fn dpo_starts_at_ln2_against_its_own_reference_and_learns_the_preference() {
    let l = losses(PreferenceLoss::Dpo { beta: 0.1 }, true);
    assert_eq!(l.len(), 6);
    println!("dpo losses {l:?}");
    assert!((l[0] - std::f32::consts::LN_2).abs() < 1e-6, "first DPO loss {} is not ln 2", l[0]);
    assert!(l[5] < l[0] - 1e-3, "DPO did not move the margin: {l:?}");
}

#[test]
fn dpo_without_reference_is_an_error_and_simpo_needs_none() {
    let m = dense();
    let pairs = pairs(&m);
    let mut trainer = Trainer::new(config(PreferenceLoss::Dpo { beta: 0.1 }), m, None).unwrap();
    let stream = BatchStream::pairs(Arc::new(pairs), 4, 3).unwrap();
    let (batch, next) = stream.next(&LoaderCursor::default()).unwrap();
    let e = trainer.step(&[batch], next).unwrap_err().to_string();
    assert!(e.contains("reference"), "{e}");
    let l = losses(PreferenceLoss::Simpo { beta: 2.5, gamma_beta_ratio: 0.55 }, false);
    println!("simpo losses {l:?}");
    assert!(l.iter().all(|x| x.is_finite()) && l[5] < l[0], "{l:?}");
}
