//! The cached inference forward against the full forward (`Qwen3::logits`) on the tiny presets,
//! dense and MoE (dropless eval routing): logits of prefill + token-by-token decoding equal the
//! full forward's rows, also with ragged sequences decoded together; greedy generation equals
//! the argmax of the full forward step by step; prompts beyond the context are refused.

use autograd::DType;
use model::generate::{generate, Decoder, Finish, GenerateOptions, KvCache, LogitRows, Sampling, StepInput};
use model::init::qwen3_init;
use model::{presets, Qwen3, TokenBatch};

/// Largest |incremental - full| allowed on a logit (f32 rounding: the two attentions differ
/// by about one ulp, which the layers amplify).
const TOL: f32 = 1e-5;

/// The presets' `initializer_range` (what `moe-cli init` uses): logits up to ~1.7.
const STD: f32 = 0.02;

/// A random tiny model with weights normal(0, `std`); the MoE routing varies per token.
fn tiny_with(moe: bool, std: f32) -> Qwen3 {
    let mut m = if moe {
        let (c, spec) = presets::embedded_moe("tiny-k1p1-n16").unwrap();
        Qwen3::from_init(c, Some(spec), DType::F32, qwen3_init(11, std))
    } else {
        let c = presets::embedded("tiny-dense").unwrap().unwrap();
        Qwen3::from_init(c, None, DType::F32, qwen3_init(12, std))
    };
    // A non-zero balancing bias, which the cached path must apply as the full forward does.
    for (l, b) in m.router_bias.iter_mut().enumerate() {
        b.iter_mut().enumerate().for_each(|(e, x)| *x = ((l * 7 + e * 3) % 5) as f32 * 0.01);
    }
    m
}

fn tiny(moe: bool) -> Qwen3 {
    tiny_with(moe, STD)
}

fn ids(n: usize, salt: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 977 + salt * 131 + 7) % 4096) as u32).collect()
}

fn full_logits(m: &Qwen3, seq: &[u32]) -> Vec<f32> {
    m.logits(&TokenBatch::new(seq.to_vec(), 1, seq.len()).unwrap()).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Two sequences (lengths 13 and 9): prefill of 5 and 3 tokens, then one token per step for
/// both together (ragged: the shorter one drops out); every row's logits against the full
/// forward, at most `tol` apart. Returns the largest |logit|.
fn incremental_matches_full(m: &Qwen3, tol: f32) -> f32 {
    let moe = m.moe.is_some();
    let v = m.config.vocab_size;
    let seqs = [ids(13, 1), ids(9, 2)];
    let prefill = [5, 3];
    let dec = Decoder::new(m);
    let mut caches: Vec<KvCache> = seqs.iter().map(|_| dec.new_cache()).collect();
    let mut got: Vec<Vec<f32>> = vec![Vec::new(), Vec::new()];
    let inputs: Vec<StepInput> = (0..2).map(|s| StepInput { seq: s, tokens: &seqs[s][..prefill[s]] }).collect();
    let all = dec.step(&mut caches, &inputs, LogitRows::All).unwrap();
    got[0].extend_from_slice(&all[..5 * v]);
    got[1].extend_from_slice(&all[5 * v..]);
    for t in 0..8 {
        let live: Vec<usize> = (0..2).filter(|&s| prefill[s] + t < seqs[s].len()).collect();
        let inputs: Vec<StepInput> =
            live.iter().map(|&s| StepInput { seq: s, tokens: &seqs[s][prefill[s] + t..][..1] }).collect();
        let out = dec.step(&mut caches, &inputs, LogitRows::Last).unwrap();
        for (r, &s) in live.iter().enumerate() {
            got[s].extend_from_slice(&out[r * v..][..v]);
        }
    }
    let (mut worst, mut largest) = (0f32, 0f32);
    for (s, seq) in seqs.iter().enumerate() {
        let want = full_logits(m, seq);
        let d = max_diff(&got[s], &want);
        largest = want.iter().fold(largest, |a, &b| a.max(b.abs()));
        eprintln!("moe={moe} seq {s}: max |incremental - full| = {d:.3e} over {} rows", seq.len());
        worst = worst.max(d);
        assert_eq!(caches[s].len(), seq.len());
    }
    eprintln!("moe={moe}: largest |logit| {largest:.2}");
    assert!(worst <= tol, "moe={moe}: incremental logits differ from the full forward by {worst} > {tol}");
    largest
}

#[test]
fn incremental_logits_equal_full_forward_dense() {
    incremental_matches_full(&tiny(false), TOL);
}

#[test]
fn incremental_logits_equal_full_forward_moe() {
    incremental_matches_full(&tiny(true), TOL);
}

/// Weights 5x larger (logits up to ~7): the same agreement relative to the logits' scale.
#[test]
fn incremental_logits_track_full_forward_at_larger_scale() {
    for moe in [false, true] {
        let m = tiny_with(moe, 0.1);
        let largest = incremental_matches_full(&m, 4.0 * TOL);
        assert!(largest > 4.0, "moe={moe}: the stress model's logits are small ({largest})");
    }
}

/// Greedy generation of a batch of two prompts: each new token is the argmax of the full
/// forward over the prompt and the tokens before it.
fn greedy_equals_full_argmax(moe: bool) {
    let m = tiny(moe);
    let v = m.config.vocab_size;
    let prompts = vec![ids(6, 3), ids(4, 4)];
    let opts = GenerateOptions {
        max_new_tokens: 7,
        sampling: Sampling::greedy(),
        seed: 0,
        stop_tokens: Vec::new(),
        stop_strings: Vec::new(),
    };
    let mut streamed = vec![Vec::new(), Vec::new()];
    let out = generate(&Decoder::new(&m), &prompts, &opts, None, &mut |i, t| streamed[i].push(t)).unwrap();
    for (p, g) in prompts.iter().zip(&out) {
        assert_eq!(g.tokens.len(), 7);
        assert_eq!(g.finish, Finish::MaxNewTokens);
        assert_eq!(g.decode_steps, 6);
        let mut seq = p.clone();
        for &t in &g.tokens {
            let logits = full_logits(&m, &seq);
            let last = &logits[(seq.len() - 1) * v..];
            assert_eq!(t, model::generate::sampling::argmax(last), "moe={moe}: greedy token differs after {seq:?}");
            seq.push(t);
        }
    }
    assert_eq!(streamed, [out[0].tokens.clone(), out[1].tokens.clone()]);
}

#[test]
fn greedy_generation_equals_full_forward_argmax_dense() {
    greedy_equals_full_argmax(false);
}

#[test]
fn greedy_generation_equals_full_forward_argmax_moe() {
    greedy_equals_full_argmax(true);
}

/// Stop tokens end a sequence (kept as its last token); the other keeps going.
#[test]
fn stop_token_ends_only_its_sequence() {
    let m = tiny(false);
    let prompts = vec![ids(5, 5), ids(5, 6)];
    let mut opts = GenerateOptions {
        max_new_tokens: 6,
        sampling: Sampling::greedy(),
        seed: 0,
        stop_tokens: Vec::new(),
        stop_strings: Vec::new(),
    };
    let dec = Decoder::new(&m);
    let free = generate(&dec, &prompts, &opts, None, &mut |_, _| {}).unwrap();
    opts.stop_tokens = vec![free[0].tokens[2]];
    let stopped = generate(&dec, &prompts, &opts, None, &mut |_, _| {}).unwrap();
    let first = free[0].tokens.iter().position(|&t| t == free[0].tokens[2]).unwrap();
    assert_eq!(stopped[0].tokens, free[0].tokens[..=first]);
    assert_eq!(stopped[0].finish, Finish::StopToken);
    if !free[1].tokens.contains(&free[0].tokens[2]) {
        assert_eq!(stopped[1].tokens, free[1].tokens);
    }
}

/// Sampling with a seed is reproducible, and a prompt's tokens do not depend on its batch.
#[test]
fn seeded_sampling_is_reproducible_and_batch_independent() {
    let m = tiny(true);
    let prompts = vec![ids(5, 7), ids(3, 8)];
    let opts = GenerateOptions {
        max_new_tokens: 6,
        sampling: Sampling { temperature: 1.5, top_k: 50, top_p: 0.95 },
        seed: 42,
        stop_tokens: Vec::new(),
        stop_strings: Vec::new(),
    };
    let dec = Decoder::new(&m);
    let a = generate(&dec, &prompts, &opts, None, &mut |_, _| {}).unwrap();
    let b = generate(&dec, &prompts, &opts, None, &mut |_, _| {}).unwrap();
    assert_eq!(a[1].tokens, b[1].tokens);
    let alone = generate(&dec, &prompts[..1], &opts, None, &mut |_, _| {}).unwrap();
    assert_eq!(a[0].tokens, alone[0].tokens);
    let other = GenerateOptions { seed: 43, ..opts.clone() };
    let c = generate(&dec, &prompts, &other, None, &mut |_, _| {}).unwrap();
    assert!(a.iter().zip(&c).any(|(x, y)| x.tokens != y.tokens), "seed 43 drew the same tokens as seed 42");
}

/// A prompt longer than the context is refused before any work; one that fits stops at the context.
#[test]
fn context_limits() {
    let mut m = tiny(false);
    m.config.max_position_embeddings = 12;
    let opts = GenerateOptions {
        max_new_tokens: 50,
        sampling: Sampling::greedy(),
        seed: 0,
        stop_tokens: Vec::new(),
        stop_strings: Vec::new(),
    };
    let dec = Decoder::new(&m);
    let err = generate(&dec, &[ids(4, 1), ids(13, 9)], &opts, None, &mut |_, _| panic!("no token before the check"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("prompt 1 has 13 tokens") && err.contains("context"), "{err}");
    let out = generate(&dec, &[ids(9, 1)], &opts, None, &mut |_, _| {}).unwrap();
    // Positions 0..12: the prompt fills 9, three generated tokens are fed back, the fourth is not.
    assert_eq!(out[0].finish, Finish::Context);
    assert_eq!(out[0].tokens.len(), 4);
}
