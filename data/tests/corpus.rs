//! The corpus: byte-identical per (seed, size), token budget and mixture, forms, phrasing variety,
//! the two-hop invariant and the think / no_think convention.

mod common;

use data::chat::rationale_of;
use data::corpus::{estimate_tokens, form_names, DOMAIN_GENERAL, DOMAIN_MEDICAL, DOMAIN_MEDICAL_CHAT};
use data::jsonl::to_jsonl;
use std::collections::{BTreeMap, BTreeSet};

#[test]
fn same_seed_and_size_give_byte_identical_corpus() {
    let w = common::small_world(3);
    let a = to_jsonl(&common::small_corpus(&w, 3, 40_000));
    let b = to_jsonl(&common::small_corpus(&w, 3, 40_000));
    assert_eq!(a, b);
    let c = to_jsonl(&common::small_corpus(&w, 4, 40_000));
    assert_ne!(a, c);
}

#[test]
fn corpus_reaches_its_budget_in_the_configured_shares() {
    let w = common::small_world(1);
    let docs = common::small_corpus(&w, 1, 150_000);
    let mut by_domain: BTreeMap<&str, u64> = BTreeMap::new();
    for d in &docs {
        *by_domain.entry(d.domain.as_str()).or_default() += estimate_tokens(&d.text);
    }
    let total: u64 = by_domain.values().sum();
    assert!((150_000..150_000 + 2_000).contains(&total), "total {total}");
    for (domain, share) in [(DOMAIN_MEDICAL, 0.6), (DOMAIN_MEDICAL_CHAT, 0.15), (DOMAIN_GENERAL, 0.25)] {
        let got = by_domain[domain] as f64 / total as f64;
        assert!((got - share).abs() < 0.01, "{domain}: {got} vs {share}");
    }
}

#[test]
fn corpus_uses_at_least_30_forms_and_tags_every_document() {
    let all: usize = form_names().values().map(|v| v.len()).sum();
    assert!(all >= 30, "only {all} forms");
    let w = common::small_world(2);
    let docs = common::small_corpus(&w, 2, 150_000);
    let used: BTreeSet<&str> = docs.iter().map(|d| d.form.as_str()).collect();
    assert_eq!(used.len(), all, "forms never used: {:?}", form_names());
    let ids: BTreeSet<&str> = docs.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids.len(), docs.len());
    assert!(docs.iter().all(|d| !d.domain.is_empty() && !d.source.is_empty() && !d.license.is_empty()));
}

#[test]
fn each_treatment_fact_is_seen_in_several_forms() {
    let w = common::small_world(5);
    let docs = common::small_corpus(&w, 5, 150_000);
    for d in &w.diseases {
        let drug = &w.drugs[d.first_line].name;
        let forms: BTreeSet<&str> = docs
            .iter()
            .filter(|x| x.text.contains(&d.name) && x.text.contains(drug.as_str()))
            .map(|x| x.form.as_str())
            .collect();
        assert!(forms.len() >= 3, "{} -> {drug} only in {forms:?}", d.name);
    }
}

#[test]
fn no_document_links_a_full_symptom_set_to_its_first_line_drug() {
    // The two-hop MCQ asks symptoms -> disease -> drug; that chain must never be written down.
    let w = common::small_world(6);
    let docs = common::small_corpus(&w, 6, 150_000);
    for d in &w.diseases {
        let drug = &w.drugs[d.first_line].name;
        for x in docs.iter().filter(|x| x.text.to_lowercase().contains(&drug.to_lowercase())) {
            let all = d.symptoms.iter().all(|&s| x.text.contains(&w.symptoms[s].name));
            assert!(!all, "document {} ({}) names every symptom of {} and {drug}", x.id, x.form, d.name);
        }
    }
}

#[test]
fn chats_answer_think_with_a_rationale_and_no_think_with_an_empty_block() {
    let w = common::small_world(9);
    let docs = common::small_corpus(&w, 9, 80_000);
    let chats: Vec<_> = docs.iter().filter(|d| d.messages.is_some()).collect();
    assert!(chats.len() > 50);
    for d in chats {
        let msgs = d.messages.as_ref().unwrap();
        assert!(d.text.starts_with("<|im_start|>user\n"));
        for pair in msgs.chunks(2) {
            let (user, assistant) = (&pair[0], &pair[1]);
            assert_eq!(assistant.role, "assistant");
            if user.content.ends_with("/no_think") {
                assert!(assistant.content.starts_with("<think>\n\n</think>\n\n"), "{}", assistant.content);
                assert_eq!(rationale_of(&assistant.content), None);
            } else {
                assert!(user.content.ends_with("/think"));
                assert!(rationale_of(&assistant.content).is_some(), "{}", assistant.content);
            }
            assert!(d.text.contains(&assistant.content));
        }
    }
}
