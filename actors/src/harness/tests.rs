//! Tests of the harness: Wilson intervals against published values, capacity overflow by hand,
//! the seed rule, answer parsing, text perplexity against a naive log-softmax over
//! `Qwen3::logits`, router tallies of a MoE model, CSV quoting.

use super::*;
use autograd::DType;
use data::eval::McqItem;
use kernels_cpu::moe::{RouterStats, RouterWeighting};
use model::init::qwen3_init;
use model::moe_spec::MoeSpec;
use model::{Qwen3, Qwen3Config, TokenBatch};
use std::collections::BTreeMap;
use std::path::Path;

/// Newcombe, R. G. (1998). Two-sided confidence intervals for the single proportion: comparison
/// of seven methods. Statistics in Medicine 17, 857-872, Table I, method 3 (Wilson score, no
/// continuity correction), given to 4 decimals; tools/wilson_reference.py recomputes them.
#[test]
fn wilson_matches_newcombe_1998_table_1() {
    let table = [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)];
    for (k, n, lo, hi) in table {
        let (l, h) = wilson_interval(k, n, Z95);
        assert!((l - lo).abs() < 5e-5 && (h - hi).abs() < 5e-5, "{k}/{n}: ({l:.5}, {h:.5}) vs ({lo}, {hi})");
    }
    // All right: the upper end is 1 and the lower end below it; nothing known for n = 0.
    let (l, h) = wilson_interval(20, 20, Z95);
    assert!((h - 1.0).abs() < 1e-12 && (l - 0.8389).abs() < 5e-5, "({l}, {h})");
    assert_eq!(wilson_interval(0, 0, Z95), (0.0, 1.0));
}

#[test]
fn overflow_counts_tokens_over_capacity_and_the_seed_rule() {
    // N = 20 over E = 4: capacity ceil(cf * 5) = 5 (1.0), 6 (1.05), 7 (1.25).
    let counts = [9, 5, 4, 2];
    assert_eq!(would_drop(&counts, 1.0), 4);
    assert_eq!(would_drop(&counts, 1.05), 3);
    assert_eq!(would_drop(&counts, 1.25), 2);
    assert_eq!(would_drop(&[5, 5, 5, 5], 1.0), 0);
    assert_eq!(ship_capacity(4), 1.25);
    assert_eq!(ship_capacity(0), 1.05);

    let stats = |counts: Vec<usize>| RouterStats { counts, ..RouterStats::default() };
    let mut t = RoutingTally::default();
    t.add(&[stats(vec![9, 5, 4, 2]), stats(vec![5, 5, 5, 5])]);
    t.add(&[stats(vec![5, 5, 5, 5]), stats(vec![5, 5, 5, 5])]);
    assert_eq!(t.layers[0].counts, vec![14, 10, 9, 7]);
    assert_eq!(t.layers[0].tokens, 40);
    assert_eq!(t.layers[0].dropped, vec![4, 3, 2]);
    assert_eq!(t.dropped_total(), (vec![4, 3, 2], 80));
    assert_eq!(t.ship(), Some(1.25));
    let balanced: f64 = t.layers[1].load_entropy();
    assert!((balanced - 4f64.ln()).abs() < 1e-12);
    assert_eq!(RoutingTally::default().ship(), None);
}

fn mcq(options: &[&str], answer: &str) -> McqItem {
    McqItem {
        id: "x".into(),
        set: "t".into(),
        domain: "medical".into(),
        question: "Which drug?".into(),
        context: Some("Some context.".into()),
        options: data::eval::letters(options.len()).zip(options.iter().map(|o| o.to_string())).collect(),
        answer: answer.into(),
        meta: BTreeMap::new(),
    }
}

#[test]
fn generated_answers_parse_by_letter_or_by_option_text() {
    let it = mcq(&["velomab", "cranoxil", "cranoxil forte", "Brevix"], "B");
    assert_eq!(
        generation_prompt(&it),
        "Some context.\n\nQ: Which drug?\nA) velomab\nB) cranoxil\nC) cranoxil forte\nD) Brevix\nAnswer:"
    );
    for (text, want) in [
        (" B", Some(1)),
        (" B) cranoxil", Some(1)),
        ("(C)", Some(2)),
        (" D.", Some(3)),
        (" Cranoxil is the answer", Some(1)),
        (" cranoxil forte.", Some(2)),
        (" brevix", Some(3)),
        (" E", None),
        (" Because", None),
        ("", None),
        (" Velo", None),
    ] {
        assert_eq!(parse_answer(text, &it), want, "{text:?}");
    }
}

#[test]
fn chat_answers_are_asked_like_p3_and_read_after_the_think_block() {
    let it = mcq(&["velomab", "cranoxil", "cranoxil forte", "Brevix"], "B");
    assert_eq!(
        chat_question(&it, false),
        "Some context.\n\nWhich drug?\nA. velomab\nB. cranoxil\nC. cranoxil forte\nD. Brevix\n\
         Reply with the letter of the right option. /no_think"
    );
    assert!(chat_question(&it, true).ends_with("option. /think"));
    for (text, want) in [
        ("<think>\n\n</think>\n\nB", Some(1)),
        ("<think>\nthe case points to C\n</think>\n\nThe answer is D.", Some(3)),
        ("<think>\n\n</think>\n\nBrevix", Some(3)),
        ("<think>\n\n</think>\n\nB or C", None),
        ("<think>\nB", None),
        ("B", None),
    ] {
        assert_eq!(parse_chat_answer(text, &it), want, "{text:?}");
    }
}

fn tiny(moe: Option<MoeSpec>) -> Qwen3 {
    tiny_seeded(moe, 5)
}

fn tiny_seeded(moe: Option<MoeSpec>, seed: u64) -> Qwen3 {
    let json = r#"{"model_type": "qwen3", "vocab_size": 50, "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
        "max_position_embeddings": 64, "tie_word_embeddings": true}"#;
    let config = Qwen3Config::from_json(json, Path::new("tiny/config.json")).expect("config");
    Qwen3::from_init(config, moe, DType::F32, qwen3_init(seed, 0.3))
}

/// Mean next-token cross-entropy of one document by a full forward and a naive log-softmax.
fn naive_ce(model: &Qwen3, ids: &[u32]) -> (f64, u64) {
    let batch = TokenBatch::new(ids.to_vec(), 1, ids.len()).expect("batch");
    let logits = model.logits(&batch).expect("logits");
    let v = model.config.vocab_size;
    let mut sum = 0f64;
    for j in 0..ids.len() - 1 {
        let row: Vec<f64> = logits[j * v..(j + 1) * v].iter().map(|&x| x as f64).collect();
        let m = row.iter().cloned().fold(f64::MIN, f64::max);
        let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        sum += lse - row[ids[j + 1] as usize];
    }
    (sum, ids.len() as u64 - 1)
}

#[test]
fn text_perplexity_equals_naive_per_document_log_softmax() {
    let spec = MoeSpec { num_experts: 4, expert_width: 6, shared_width: 8, weighting: RouterWeighting::Ste };
    for model in [tiny(None), tiny(Some(spec))] {
        let doc = |domain: &str, n: usize, k: u32| PplDoc {
            domain: domain.into(),
            ids: (0..n as u32).map(|i| (i * 7 + k) % 50).collect(),
        };
        // Row length 16: documents of 5 and 11 fill one row, 16 the next; no document is cut.
        let docs = vec![doc("a", 5, 1), doc("a", 11, 2), doc("a", 16, 3), doc("b", 12, 4)];
        let mut tally = RoutingTally::default();
        let mut seen = 0;
        let got = text_perplexity(&model, &docs, 16, 2, &mut tally, &mut |n| seen += n).expect("ppl");
        assert_eq!(seen, 32 + 12);
        for (domain, want) in [("a", &docs[..3]), ("b", &docs[3..])] {
            let (sum, count) =
                want.iter().map(|d| naive_ce(&model, &d.ids)).fold((0.0, 0), |(s, c), (a, b)| (s + a, c + b));
            let g = &got[domain];
            assert_eq!(g.tokens, count, "{domain}");
            assert!((g.mean_ce - sum / count as f64).abs() < 1e-5, "{domain}: {} vs {}", g.mean_ce, sum / count as f64);
        }
        if model.moe.is_some() {
            assert_eq!(tally.layers.len(), 2);
            assert!(tally.layers.iter().all(|l| l.tokens == 44 && l.counts.len() == 4));
            assert!(tally.ship().is_some());
        } else {
            assert!(tally.layers.is_empty());
        }
    }
    // A document token outside the vocabulary is an error, not a panic.
    let bad = [PplDoc { domain: "a".into(), ids: vec![1, 2, 99] }];
    let err = text_perplexity(&tiny(None), &bad, 16, 2, &mut RoutingTally::default(), &mut |_| {});
    assert!(err.unwrap_err().to_string().contains("outside the model's vocabulary"));
}

/// Naive `KL(p || q)` in f64 of two rows of logits.
fn naive_kl(t: &[f32], s: &[f32]) -> f64 {
    let softmax = |z: &[f32]| {
        let e: Vec<f64> = z.iter().map(|&x| (x as f64).exp()).collect();
        let sum: f64 = e.iter().sum();
        e.into_iter().map(|x| x / sum).collect::<Vec<f64>>()
    };
    let (p, q) = (softmax(t), softmax(s));
    p.iter().zip(&q).map(|(a, b)| a * (a / b).ln()).sum()
}

#[test]
fn text_kl_equals_naive_per_document_kl_and_is_zero_against_itself() {
    let spec = MoeSpec { num_experts: 4, expert_width: 6, shared_width: 8, weighting: RouterWeighting::Ste };
    for moe in [None, Some(spec)] {
        let (model, reference) = (tiny_seeded(moe.clone(), 5), tiny_seeded(moe, 6));
        let doc = |domain: &str, n: usize, k: u32| PplDoc {
            domain: domain.into(),
            ids: (0..n as u32).map(|i| (i * 7 + k) % 50).collect(),
        };
        // Row length 16: the 20-token document is cut, its rest a new segment of the next row.
        let docs = vec![doc("a", 5, 1), doc("a", 20, 2), doc("b", 12, 4)];
        let mut seen = 0;
        let got = text_kl(&model, &reference, &docs, 16, 2, &mut |n| seen += n).expect("kl");
        assert_eq!(seen, 25 + 12);
        let v = model.config.vocab_size;
        let pieces = |ids: &[u32]| -> Vec<Vec<u32>> {
            ids.chunks(11).map(<[u32]>::to_vec).collect() // 5 + 11 = 16, then the 9 left
        };
        for (domain, segments) in
            [("a", [vec![docs[0].ids.clone()], pieces(&docs[1].ids)].concat()), ("b", vec![docs[2].ids.clone()])]
        {
            let (mut sum, mut n, mut same) = (0f64, 0u64, 0u64);
            for ids in segments {
                let batch = TokenBatch::new(ids.clone(), 1, ids.len()).expect("batch");
                let (zs, zt) = (model.logits(&batch).expect("logits"), reference.logits(&batch).expect("logits"));
                for j in 0..ids.len() - 1 {
                    let (t, s) = (&zt[j * v..(j + 1) * v], &zs[j * v..(j + 1) * v]);
                    sum += naive_kl(t, s);
                    n += 1;
                    let top = |z: &[f32]| z.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
                    same += u64::from(top(t) == top(s));
                }
            }
            let g = &got[domain];
            assert_eq!(g.tokens, n, "{domain}");
            assert!((g.mean_kl - sum / n as f64).abs() < 1e-6, "{domain}: {} vs {}", g.mean_kl, sum / n as f64);
            assert!(g.mean_kl > 1e-3, "different models differ");
            assert!((g.same_top1 - same as f64 / n as f64).abs() < 1e-12);
            assert!(g.p99_kl >= g.mean_kl * 0.5);
        }
        let itself = text_kl(&model, &model, &docs, 16, 2, &mut |_| {}).expect("kl");
        assert!(itself.values().all(|d| d.mean_kl < 1e-9 && d.same_top1 == 1.0), "{itself:?}");
    }
    let json = r#"{"model_type": "qwen3", "vocab_size": 60, "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
        "max_position_embeddings": 64, "tie_word_embeddings": true}"#;
    let other = Qwen3::from_init(
        Qwen3Config::from_json(json, Path::new("other/config.json")).expect("config"),
        None,
        DType::F32,
        qwen3_init(1, 0.3),
    );
    let docs = [PplDoc { domain: "a".into(), ids: vec![1, 2, 3] }];
    let err = text_kl(&tiny(None), &other, &docs, 16, 2, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("vocabulary has 60 tokens"), "{err}");
}

#[test]
fn set_result_tallies_and_csv_quotes() {
    let gen = |p: Option<usize>, text: &str| GenAnswer {
        predicted: p,
        text: text.into(),
        prompt_tokens: 10,
        prefill_secs: 0.5,
        decode_tokens: 3,
        decode_secs: 0.25,
    };
    let row = |id: &str, answer, loglik: Vec<f64>, g| {
        let s = crate::eval::ItemScores { id: id.into(), answer, tokens: vec![1; loglik.len()], loglik };
        ItemRow::new(&s, Some(g))
    };
    let rows = vec![
        row("a", 0, vec![-1.0, -2.0, -3.0], gen(Some(0), "A")),
        row("b,\"q\"", 1, vec![-1.0, -2.0, -3.0], gen(None, "say, \"x\"")),
        row("c", 2, vec![-3.0, -2.0, -1.0, -9.0], gen(Some(1), "B")),
    ];
    let r = SetResult::from_rows("k".into(), "m", "s", &rows, 1.0);
    assert_eq!((r.items, r.correct, r.correct_gen, r.parsed_gen), (3, 2, Some(1), Some(2)));
    assert_eq!(r.letters, ["A", "B", "C", "D"]);
    assert_eq!(r.confusion[1][0], 1);
    assert_eq!(r.confusion_gen.as_ref().unwrap()[1][4], 1);
    assert!((r.chance - (1.0 / 3.0 + 1.0 / 3.0 + 0.25) / 3.0).abs() < 1e-12);
    let lat = r.latency.as_ref().unwrap();
    assert_eq!((lat.prefill_tokens, lat.decode_tokens), (30, 9));
    assert!((lat.prefill_tokens_per_s() - 20.0).abs() < 1e-9 && (lat.decode_tokens_per_s() - 12.0).abs() < 1e-9);
    let csv = csv_of(&rows);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[1], "a,A,A,A,1,1,-1.000000;-2.000000;-3.000000,1;1;1,A,1,A");
    assert!(lines[2].starts_with("\"b,\"\"q\"\"\",B,A,A,0,0,"), "{}", lines[2]);
    assert!(lines[2].ends_with(",,0,\"say, \"\"x\"\"\""), "{}", lines[2]);
}
