//! Tests of the evaluator: scores against a naive log-softmax over `Qwen3::logits`, batching
//! invariance, a rigged model, a uniform model's perplexity, typed errors on bad files.

use super::*;
use autograd::DType;
use data::corpus::Document;
use data::error::DataError;
use data::eval::McqItem;
use data::pack::PackedDataset;
use data::pack::{pack_documents, PackConfig};
use data::tokenizer::{Tokenizer, TrainConfig};
use model::init::qwen3_init;
use model::{Qwen3, Qwen3Config, TokenBatch};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::OnceLock;

/// Training text of the test tokenizer: the words of the test items in Q&A lines.
const LINES: &[&str] = &[
    "Q: What is the first-line treatment for zorbitis?\nA: Cranoxil is the first-line treatment for zorbitis.",
    "Q: And if that does not work?\nA: The second-line drug for zorbitis is velomab, not dufenac or pirotide.",
    "Q: Which organism is responsible for kelmora fever?\nA: Brevix aurantia, unlike Soltus minor or Quellia fusca.",
    "A trial of forty patients compared talvine with placebo. Did talvine help? Yes, no or maybe.",
    "Worked examples\n12 + 30 = 42\n43 - 11 = 32\n50 + 2 = 52\n40 + 3 = 43",
    "The days of the week starting from Monday: Monday, Tuesday, Wednesday, Thursday, Friday.",
];

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let texts: Vec<&str> = LINES.iter().copied().cycle().take(LINES.len() * 20).collect();
        Tokenizer::train(texts.into_iter(), &TrainConfig { vocab_size: 320, min_frequency: 2 }).expect("train")
    })
}

fn tiny_model(vocab: usize, tie: bool, std: f32) -> Qwen3 {
    let json = format!(
        r#"{{"model_type": "qwen3", "vocab_size": {vocab}, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
            "max_position_embeddings": 512, "tie_word_embeddings": {tie}}}"#
    );
    let config = Qwen3Config::from_json(&json, Path::new("tiny/config.json")).expect("config");
    Qwen3::from_init(config, None, DType::F32, qwen3_init(7, std))
}

fn item(id: &str, question: &str, context: Option<&str>, options: &[&str], answer: &str) -> McqItem {
    McqItem {
        id: id.into(),
        set: "test".into(),
        domain: "medical".into(),
        question: question.into(),
        context: context.map(String::from),
        options: data::eval::letters(options.len()).zip(options.iter().map(|o| o.to_string())).collect(),
        answer: answer.into(),
        meta: BTreeMap::new(),
    }
}

fn items() -> Vec<McqItem> {
    vec![
        item(
            "q0",
            "Which agent is the preferred initial pharmacotherapy for zorbitis?",
            None,
            &["velomab", "Cranoxil", "dufenac", "pirotide"],
            "B",
        ),
        item(
            "q1",
            "Which organism is responsible for kelmora fever?",
            None,
            &["Brevix aurantia", "Soltus minor", "Quellia fusca"],
            "A",
        ),
        item(
            "q2",
            "Did talvine help?",
            Some("A trial of forty patients compared talvine with placebo."),
            &["yes", "no", "maybe"],
            "C",
        ),
        item("q3", "Calculate the sum of 12 and 30.", None, &["42", "43", "32", "52"], "A"),
    ]
}

/// `Σ log p(option token | prefix)` in f64 from the full logits of the single row `prefix + option`.
fn naive_loglik(model: &Qwen3, prompt: &[u32], option: &[u32]) -> f64 {
    let row: Vec<u32> = prompt.iter().chain(option).copied().collect();
    let logits = model.logits(&TokenBatch::from_rows(&[row]).unwrap()).unwrap();
    let v = model.config.vocab_size;
    option
        .iter()
        .enumerate()
        .map(|(j, &tok)| {
            let r = &logits[(prompt.len() - 1 + j) * v..(prompt.len() + j) * v];
            let max = r.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
            let lse = max + r.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            r[tok as usize] as f64 - lse
        })
        .sum()
}

fn assert_close(got: f64, want: f64, tol: f64, what: &str) {
    assert!((got - want).abs() <= tol * (1.0 + want.abs()), "{what}: got {got}, want {want}");
}

#[test]
fn prompt_follows_the_corpus_qa_form() {
    let its = items();
    assert_eq!(mcq_prompt(&its[0]), "Q: Which agent is the preferred initial pharmacotherapy for zorbitis?\nA:");
    assert_eq!(
        mcq_prompt(&its[2]),
        "A trial of forty patients compared talvine with placebo.\n\nQ: Did talvine help?\nA:"
    );
    assert_eq!(option_continuation("Cranoxil"), " Cranoxil");
}

#[test]
fn option_loglik_matches_naive_log_softmax() {
    let tok = tokenizer();
    let model = tiny_model(tok.vocab_size(), false, 0.3);
    let enc = encode_items(tok, &items()).unwrap();
    // Rows of 120 tokens hold several sequences each; 2 rows per forward (several forwards).
    let longest = enc.iter().flat_map(|e| e.options.iter().map(|o| e.prompt.len() + o.len())).max().unwrap();
    assert!(longest * 2 <= 120, "rows must hold several sequences (longest is {longest})");
    let cfg = McqConfig { row_len: 120, rows_per_batch: 2, ..McqConfig::default() };
    let scores = score_items(&model, &enc, &cfg).unwrap();
    let mut worst = 0f64;
    for (e, s) in enc.iter().zip(&scores) {
        assert_eq!((s.answer, &s.tokens), (e.answer, &e.options.iter().map(Vec::len).collect::<Vec<_>>()));
        for (o, &got) in e.options.iter().zip(&s.loglik) {
            let want = naive_loglik(&model, &e.prompt, o);
            worst = worst.max((got - want).abs());
            assert!((got - want).abs() <= 1e-5, "item {} option {o:?}: got {got}, want {want}", e.id);
        }
    }
    eprintln!("max |packed - naive| option log-likelihood: {worst:.2e}");
}

#[test]
fn long_prompts_lose_their_beginning() {
    let tok = tokenizer();
    let model = tiny_model(tok.vocab_size(), true, 0.3);
    let enc = encode_items(tok, &items()[..1]).unwrap();
    let max_seq_len = enc[0].prompt.len() - 3 + enc[0].options.iter().map(Vec::len).max().unwrap();
    let cfg = McqConfig { row_len: 8, rows_per_batch: 3, max_seq_len, ..McqConfig::default() };
    let scores = score_items(&model, &enc, &cfg).unwrap();
    for (o, &got) in enc[0].options.iter().zip(&scores[0].loglik) {
        let keep = max_seq_len - o.len();
        let want = naive_loglik(&model, &enc[0].prompt[enc[0].prompt.len() - keep..], o);
        assert_close(got, want, 1e-5, &format!("option {o:?}"));
    }
}

#[test]
fn batching_items_matches_one_at_a_time() {
    let tok = tokenizer();
    let model = tiny_model(tok.vocab_size(), true, 0.3);
    let enc = encode_items(tok, &items()).unwrap();
    let together = score_items(&model, &enc, &McqConfig { row_len: 64, rows_per_batch: 4, ..Default::default() });
    let together = together.unwrap();
    for (e, t) in enc.iter().zip(&together) {
        let cfg = McqConfig { row_len: 1, rows_per_batch: 1, ..Default::default() };
        let alone = score_items(&model, std::slice::from_ref(e), &cfg).unwrap();
        assert_eq!(alone[0].id, t.id);
        for (a, b) in alone[0].loglik.iter().zip(&t.loglik) {
            assert_close(*b, *a, 1e-5, &format!("item {}", e.id));
        }
    }
}

#[test]
fn rigged_model_gets_every_item_right() {
    let tok = tokenizer();
    let v = tok.vocab_size();
    let mut model = tiny_model(v, false, 0.3);
    let enc = encode_items(tok, &items()).unwrap();
    let right: BTreeSet<u32> = enc.iter().flat_map(|e| e.options[e.answer].iter().copied()).collect();
    for e in &enc {
        for (j, o) in e.options.iter().enumerate().filter(|(j, _)| *j != e.answer) {
            assert!(o.iter().any(|t| !right.contains(t)), "item {} option {j}: all its tokens are right ones", e.id);
        }
    }
    // The residual stream stays the embedding (attention and FFN outputs zeroed), every
    // embedding is e0, the final norm keeps dimension 0 only, and the LM head gives the
    // right-answer tokens a large logit: every position predicts them.
    let c = model.config.clone();
    let d = c.hidden_size;
    for i in 0..c.num_hidden_layers {
        for (name, n) in [("self_attn.o_proj", d * c.num_attention_heads * c.head_dim), ("mlp.down_proj", d * 48)] {
            model.params.set(&format!("model.layers.{i}.{name}.weight"), &vec![0.0; n]).unwrap();
        }
    }
    let one_hot: Vec<f32> = (0..d).map(|k| if k == 0 { 1.0 } else { 0.0 }).collect();
    model.params.set("model.embed_tokens.weight", &one_hot.repeat(v)).unwrap();
    model.params.set("model.norm.weight", &one_hot).unwrap();
    let head: Vec<f32> = (0..v)
        .flat_map(|t| {
            let hot = if right.contains(&(t as u32)) { 20.0 } else { 0.0 };
            one_hot.iter().map(move |&x| x * hot)
        })
        .collect();
    model.params.set("lm_head.weight", &head).unwrap();
    let report = evaluate_mcq(&model, tok, "rigged", &items(), &McqConfig::default()).unwrap();
    assert_eq!(report.items, 4);
    assert_eq!((report.accuracy, report.accuracy_norm), (1.0, 1.0));
    assert_close(report.chance, (0.25 + 1.0 / 3.0 + 1.0 / 3.0 + 0.25) / 4.0, 1e-12, "chance");
    // Same model, the right answers moved to another letter: the score follows the text.
    let mut moved = items();
    for it in &mut moved {
        let right = it.answer_text().to_string();
        let other = if it.answer == "A" { "B" } else { "A" };
        let other_text = it.options[other].clone();
        it.options.insert(it.answer.clone(), other_text);
        it.options.insert(other.to_string(), right);
        it.answer = other.to_string();
    }
    let report = evaluate_mcq(&model, tok, "rigged", &moved, &McqConfig::default()).unwrap();
    assert_eq!((report.accuracy, report.accuracy_norm), (1.0, 1.0));
    // Wrong answer keys: everything is wrong.
    let mut keyed_wrong = items();
    for it in &mut keyed_wrong {
        it.answer = if it.answer == "A" { "B".into() } else { "A".into() };
    }
    let report = evaluate_mcq(&model, tok, "rigged", &keyed_wrong, &McqConfig::default()).unwrap();
    assert_eq!((report.accuracy, report.accuracy_norm), (0.0, 0.0));
}

#[test]
fn subset_is_deterministic_and_evenly_spread() {
    assert_eq!(subset_indices(10, Some(3)), vec![0, 3, 6]);
    assert_eq!(subset_indices(4, None), vec![0, 1, 2, 3]);
    assert_eq!(subset_indices(4, Some(9)), vec![0, 1, 2, 3]);
    let tok = tokenizer();
    let model = tiny_model(tok.vocab_size(), true, 0.3);
    let cfg = McqConfig { max_items: Some(2), ..Default::default() };
    let r = evaluate_mcq(&model, tok, "s", &items(), &cfg).unwrap();
    assert_eq!(r.items, 2);
    assert_close(r.chance, 0.5 * (0.25 + 1.0 / 3.0), 1e-12, "chance of items 0 and 2");
    let cfg = McqConfig { max_items: Some(0), ..Default::default() };
    assert!(matches!(evaluate_mcq(&model, tok, "s", &items(), &cfg), Err(EvalError::Config { .. })));
}

#[test]
fn bad_inputs_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("eval")).unwrap();
    let write = |set: &str, text: &str| std::fs::write(dir.path().join(format!("eval/{set}.jsonl")), text).unwrap();
    write("empty", "");
    write("blank", "\n\n  \n");
    write("garbled", "{\"id\": \"x\", \"question\": \n");
    let mut bad_answer = items()[0].clone();
    bad_answer.answer = "E".into();
    let good = serde_json::to_string(&items()[0]).unwrap();
    write("bad_answer", &format!("{good}\n{}\n", serde_json::to_string(&bad_answer).unwrap()));
    write("ok", &format!("{good}\n"));
    for set in ["empty", "blank"] {
        assert!(matches!(load_eval_set(dir.path(), set), Err(EvalError::EmptySet { .. })), "{set}");
    }
    assert!(matches!(load_eval_set(dir.path(), "garbled"), Err(EvalError::Data(DataError::Line { line: 1, .. }))));
    assert!(matches!(load_eval_set(dir.path(), "bad_answer"), Err(EvalError::Data(DataError::Line { line: 2, .. }))));
    assert!(matches!(load_eval_set(dir.path(), "missing"), Err(EvalError::Data(DataError::Io { .. }))));
    assert_eq!(load_eval_set(dir.path(), "ok").unwrap(), vec![items()[0].clone()]);

    let tok = tokenizer();
    let small = tiny_model(8, true, 0.3);
    let enc = encode_items(tok, &items()).unwrap();
    assert!(matches!(score_items(&small, &enc, &McqConfig::default()), Err(EvalError::Item { .. })));
    let model = tiny_model(tok.vocab_size(), true, 0.3);
    let cfg = McqConfig { rows_per_batch: 0, ..Default::default() };
    assert!(matches!(score_items(&model, &enc, &cfg), Err(EvalError::Config { .. })));
    let cfg = McqConfig { max_seq_len: 1, ..Default::default() };
    assert!(matches!(score_items(&model, &enc, &cfg), Err(EvalError::Item { .. })));
    let mut invalid = items();
    invalid[1].options.insert("B".into(), "Brevix aurantia".into());
    assert!(matches!(encode_items(tok, &invalid), Err(EvalError::Item { .. })));
}

/// A pack of two domains (sequences of 24 tokens, documents split across sequences).
fn tiny_pack(dir: &Path) -> PackedDataset {
    let docs: Vec<Document> = LINES
        .iter()
        .enumerate()
        .map(|(i, text)| Document {
            id: format!("d{i}"),
            domain: if i < 4 { "medical".into() } else { "general".into() },
            topic: String::new(),
            form: String::new(),
            source: "test".into(),
            license: "CC0-1.0".into(),
            text: text.to_string(),
            messages: None,
        })
        .collect();
    let out = dir.join("pack");
    let cfg = PackConfig { seq_len: 24, shard_tokens: 1 << 12, batch_docs: 16 };
    pack_documents(&docs, tokenizer(), &cfg, &out, &mut |_| {}).unwrap();
    PackedDataset::open(&out).unwrap()
}

#[test]
fn uniform_model_perplexity_is_the_vocab_size() {
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_pack(dir.path());
    let v = tokenizer().vocab_size();
    let mut model = tiny_model(v, false, 0.3);
    model.params.set("lm_head.weight", &vec![0.0; v * model.config.hidden_size]).unwrap();
    let by_domain = ds.sequences_by_domain();
    let report = dev_perplexity(&model, &ds, &by_domain, 2).unwrap();
    assert_eq!(report.per_domain.keys().collect::<Vec<_>>(), ["general", "medical"]);
    for (domain, seqs) in &by_domain {
        let r = &report.per_domain[domain];
        let p = data::pack::batch_of(&ds, seqs);
        assert_eq!(r.tokens, p.targets.iter().filter(|&&t| t != -100).count() as u64, "{domain}");
        assert!((r.ppl / v as f64 - 1.0).abs() < 1e-3, "{domain}: ppl {} vs vocab {v}", r.ppl);
    }
    assert!((report.overall().unwrap().ppl / v as f64 - 1.0).abs() < 1e-3);
}

#[test]
fn dev_perplexity_matches_naive_and_ignores_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let ds = tiny_pack(dir.path());
    let model = tiny_model(tokenizer().vocab_size(), true, 0.3);
    let by_domain = ds.sequences_by_domain();
    let one = dev_perplexity(&model, &ds, &by_domain, 1).unwrap();
    let three = dev_perplexity(&model, &ds, &by_domain, 3).unwrap();
    for (domain, seqs) in &by_domain {
        let (a, b) = (&one.per_domain[domain], &three.per_domain[domain]);
        assert_eq!(a.tokens, b.tokens);
        assert_close(a.mean_ce, b.mean_ce, 1e-5, domain);
        // Naive: every segment on its own row, full logits, log-softmax in f64.
        let (mut sum, mut count) = (0f64, 0u64);
        for &g in seqs {
            let s = ds.sequence(g);
            for seg in s.segments {
                let toks = &s.tokens[seg.start as usize..(seg.start + seg.len) as usize];
                if toks.len() < 2 {
                    continue;
                }
                sum -= naive_loglik(&model, &toks[..1], &toks[1..]);
                count += toks.len() as u64 - 1;
            }
        }
        assert_eq!(a.tokens, count, "{domain}");
        assert_close(a.mean_ce, sum / count as f64, 1e-5, domain);
        assert_close(a.ppl, a.mean_ce.exp(), 1e-12, domain);
    }
    let mut empty = BTreeMap::new();
    empty.insert("medical".to_string(), Vec::new());
    assert!(matches!(dev_perplexity(&model, &ds, &empty, 2), Err(EvalError::NoTokens { .. })));
    let mut beyond = BTreeMap::new();
    beyond.insert("medical".to_string(), vec![ds.len()]);
    assert!(matches!(dev_perplexity(&model, &ds, &beyond, 2), Err(EvalError::Config { .. })));
    assert!(matches!(dev_perplexity(&model, &ds, &by_domain, 0), Err(EvalError::Config { .. })));
    let small = tiny_model(8, true, 0.3);
    assert!(matches!(dev_perplexity(&small, &ds, &by_domain, 2), Err(EvalError::Config { .. })));
}
