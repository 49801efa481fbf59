use super::*;
use crate::chat::ChatTemplate;
use crate::eval::overlap::NgramIndex;
use crate::eval::{generate_eval, EvalConfig};
use crate::tokenizer::{Tokenizer, TrainConfig};
use crate::world::{generate, World, WorldConfig};

fn world() -> World {
    generate(3, &WorldConfig::default()).unwrap()
}

fn examples(w: &World, n: usize) -> Vec<SftExample> {
    sft_examples(w, 5, &SftConfig { examples: n, hard_fraction: 0.15, mcq_fraction: 0.25, mcq_think_fraction: 0.15 })
}

#[test]
fn examples_are_seeded_and_follow_the_think_conventions() {
    let w = world();
    let ex = examples(&w, 400);
    assert_eq!(ex, examples(&w, 400), "same seed, different examples");
    let count = |kind: &str, think: bool| ex.iter().filter(|e| e.kind == kind && e.think == think).count();
    assert_eq!(count("two_hop_case", true), 60, "15% of 400 are hard cases");
    assert_eq!(count("two_hop_case", false), 0);
    assert_eq!(count("mcq", true) + count("mcq", false), 100, "25% of 400 are multiple-choice questions");
    assert_eq!(count("mcq", true), 15, "15% of the 100 questions under /think");
    for e in &ex {
        assert!(!e.think || e.kind == "two_hop_case" || e.kind == "mcq", "{}: {} under /think", e.id, e.kind);
        let flag = if e.think { " /think" } else { " /no_think" };
        for pair in e.messages.chunks(2) {
            assert_eq!(pair[0].role, "user");
            assert!(pair[0].content.ends_with(flag), "{}: {}", e.id, pair[0].content);
            assert_eq!(pair[1].role, "assistant");
            let c = &pair[1].content;
            if e.think {
                let r = crate::chat::rationale_of(c).unwrap_or_else(|| panic!("{}: no rationale in {c}", e.id));
                assert!(r.len() > 20, "{}: rationale too short", e.id);
            } else {
                assert!(c.starts_with("<think>\n\n</think>\n\n") && c.len() > 20, "{}: {c:?}", e.id);
            }
        }
    }
    for kind in ["fact_qa", "drug_label", "case_dialogue", "two_hop_case", "mcq"] {
        assert!(ex.iter().any(|e| e.kind == kind), "no {kind} example");
    }
}

/// SFT text keeps the evaluation held out by the corpus's own rules: no item (question + right
/// answer) shares a 13-gram with it, no fact-recall question an 8-gram; and no conversation
/// names a disease's first-line drug next to its symptoms.
#[test]
fn examples_keep_the_eval_sets_held_out() {
    let w = world();
    let ex = examples(&w, 3000);
    let texts: Vec<String> =
        ex.iter().map(|e| e.messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n")).collect();
    let eval = generate_eval(&w, 3, &EvalConfig::default()).unwrap();
    let idx13 = NgramIndex::new(texts.iter().map(String::as_str), 13);
    for items in [&eval.two_hop, &eval.fact_recall] {
        let r13 = idx13.check(items);
        assert!(r13.is_clean(), "13-gram overlap: {:?}", &r13.overlapping[..r13.overlapping.len().min(3)]);
    }
    // Questions alone (the right option blanked).
    let questions: Vec<_> = eval
        .fact_recall
        .iter()
        .map(|it| {
            let mut q = it.clone();
            q.options.insert(q.answer.clone(), String::new());
            q
        })
        .collect();
    let r8 = NgramIndex::new(texts.iter().map(String::as_str), 8).check(&questions);
    assert!(r8.is_clean(), "fact_recall overlap: {:?}", &r8.overlapping[..r8.overlapping.len().min(3)]);
    for (e, t) in ex.iter().zip(&texts) {
        for d in &w.diseases {
            let all_symptoms = d.symptoms.iter().all(|&s| t.contains(&w.symptoms[s].name));
            assert!(
                !(all_symptoms && t.contains(&w.drugs[d.first_line].name)),
                "{} joins {}'s symptoms and drug",
                e.id,
                d.name
            );
        }
    }
}

fn tokenizer_for(texts: &[String]) -> Tokenizer {
    Tokenizer::train(texts.iter().map(String::as_str), &TrainConfig { vocab_size: 600, min_frequency: 2 }).unwrap()
}

/// The mask trains exactly the assistant contents and their `<|im_end|>`, not the headers.
#[test]
fn mask_covers_assistant_content_and_turn_end_only() {
    let w = world();
    let ex = examples(&w, 60);
    let chat = ChatTemplate::builtin();
    let texts: Vec<String> = ex.iter().map(|e| chat.render(&e.messages, &Default::default()).unwrap()).collect();
    let tok = tokenizer_for(&texts);
    for (e, text) in ex.iter().zip(&texts) {
        let m = tokenize_chat(&tok, &chat, &e.messages).unwrap();
        assert_eq!(m.ids.len(), m.mask.len());
        // All tokens together give back the rendered text.
        assert_eq!(&tok.decode(&m.ids, false).unwrap(), text);
        // The trained tokens are the assistant turns' contents, each closed by <|im_end|>.
        let trained: Vec<u32> = m.ids.iter().zip(&m.mask).filter(|(_, &k)| k == 1).map(|(&t, _)| t).collect();
        let want: String =
            e.messages.iter().filter(|m| m.role == "assistant").map(|m| format!("{}<|im_end|>", m.content)).collect();
        assert_eq!(tok.decode(&trained, false).unwrap(), want, "{}", e.id);
        // The header right before each trained run is untrained.
        let header = tok.encode("<|im_start|>assistant\n").unwrap();
        for i in 1..m.mask.len() {
            if m.mask[i] == 1 && m.mask[i - 1] == 0 {
                assert_eq!(&m.ids[i - header.len()..i], &header[..], "{}", e.id);
            }
        }
    }
    let err = assistant_segments("<|im_start|>user\nhi<|im_end|>\n").unwrap_err().to_string();
    assert!(err.contains("no assistant turn"), "{err}");
    let err = assistant_segments("<|im_start|>assistant\nnever closed").unwrap_err().to_string();
    assert!(err.contains("no closing"), "{err}");
}

/// Packing: every document comes back whole from its segment, positions restart, targets are
/// the next trained token of the same document, padding and too-long documents are handled.
#[test]
fn packing_keeps_documents_apart() {
    let doc = |n: usize, salt: u32| MaskedTokens {
        ids: (0..n as u32).map(|i| 10 + i * 3 + salt).collect(),
        mask: (0..n).map(|i| (i >= n / 2) as u8).collect(),
    };
    let docs = vec![doc(7, 0), doc(3, 1), doc(12, 2), doc(5, 3), doc(4, 4), doc(9, 5)];
    let p = pack_sft(&docs, 12, 0);
    assert_eq!(p.too_long, Vec::<usize>::new());
    // Best-fit decreasing: 12 | 9+3 | 7+5 | 4.
    let members: Vec<Vec<usize>> = p.rows.iter().map(|r| r.docs.clone()).collect();
    assert_eq!(members, vec![vec![2], vec![5, 1], vec![0, 3], vec![4]]);
    let mut trained = 0;
    for row in &p.rows {
        assert_eq!(row.ids.len(), 12);
        let mut at = 0;
        for (s, &d) in row.docs.iter().enumerate() {
            let n = docs[d].ids.len();
            assert_eq!(&row.ids[at..at + n], &docs[d].ids[..]);
            assert!(row.seg[at..at + n].iter().all(|&x| x == s as u32));
            assert_eq!(row.pos[at..at + n], (0..n as u32).collect::<Vec<_>>()[..]);
            for t in 0..n {
                let want = if t + 1 < n && docs[d].mask[t + 1] == 1 { docs[d].ids[t + 1] as i32 } else { IGNORE };
                assert_eq!(row.targets[at + t], want);
            }
            at += n;
        }
        assert!(row.targets[at..].iter().all(|&t| t == IGNORE));
        assert!(row.seg[at..].iter().all(|&s| s == row.docs.len() as u32));
        trained += row.targets.iter().filter(|&&t| t != IGNORE).count();
    }
    assert_eq!(trained, p.trained_tokens);
    // Mask 1 on the last half: per doc of n tokens, n - n/2 trained tokens minus none at the
    // start (position n/2 - 1 predicts the first trained token): n - n/2.
    assert_eq!(p.trained_tokens, docs.iter().map(|d| d.ids.len() - d.ids.len() / 2).sum::<usize>());
    let q = pack_sft(&docs, 8, 0);
    assert_eq!(q.too_long, vec![2, 5]);
}

/// Mixed packing: every document once, whole, deterministic in the seed, and rows that mix
/// lengths where longest-first packing sorts them into rows of one kind.
#[test]
fn mixed_packing_mixes_documents_of_different_lengths_into_rows() {
    let doc = |n: usize, salt: u32| MaskedTokens { ids: vec![salt; n], mask: vec![1; n] };
    // 24 long (10 tokens) and 24 short (3 tokens) documents, rows of 64.
    let docs: Vec<MaskedTokens> = (0..48).map(|i| doc(if i < 24 { 10 } else { 3 }, i as u32)).collect();
    let most_short = |p: &SftPacking| p.rows.iter().map(|r| r.docs.iter().filter(|&&d| d >= 24).count()).max();
    let sorted = pack_sft(&docs, 64, 0);
    let mixed = pack_sft_mixed(&docs, 64, 0, 5);
    assert_eq!(mixed, pack_sft_mixed(&docs, 64, 0, 5), "deterministic");
    assert_ne!(mixed.rows, pack_sft_mixed(&docs, 64, 0, 6).rows, "the seed matters");
    let mut all: Vec<usize> = mixed.rows.iter().flat_map(|r| r.docs.clone()).collect();
    all.sort_unstable();
    assert_eq!(all, (0..48).collect::<Vec<_>>());
    for r in &mixed.rows {
        let n: usize = r.docs.iter().map(|&d| docs[d].ids.len()).sum();
        assert!(r.ids[..n].iter().zip(r.docs.iter().flat_map(|&d| &docs[d].ids)).all(|(a, b)| a == b));
    }
    assert_eq!(mixed.trained_tokens, sorted.trained_tokens);
    // Longest first: 4 rows of 6 long documents + 1 short, then one row of the other 20 short
    // ones; mixed: the short documents spread over the rows (about 5 a row).
    assert_eq!(sorted.rows.len(), 5);
    assert_eq!(most_short(&sorted), Some(20));
    assert!(most_short(&mixed).unwrap() <= 10, "{:?}", mixed.rows.iter().map(|r| r.docs.len()).collect::<Vec<_>>());
}
