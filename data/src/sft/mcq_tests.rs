//! P2's multiple-choice conversations: right under P3's own reward rule, no letter bias, and
//! none of them an evaluation item.

use super::mcq::{fact_mcq, letter, mcq_answer, FactKind, FactPools};
use super::*;
use crate::chat::Message;
use crate::eval::overlap::NgramIndex;
use crate::eval::{generate_eval, EvalConfig};
use crate::world::{generate, World, WorldConfig};
use std::collections::HashSet;

fn world() -> World {
    generate(3, &WorldConfig::default()).unwrap()
}

fn mcq_examples(w: &World, n: usize) -> Vec<SftExample> {
    let cfg = SftConfig { examples: n, hard_fraction: 0.15, mcq_fraction: 0.25, mcq_think_fraction: 0.15 };
    sft_examples(w, 11, &cfg).into_iter().filter(|e| e.kind == "mcq").collect()
}

/// The option texts of a user turn in P3's form (`A. text` lines).
fn listed_options(user: &str) -> Vec<String> {
    user.lines()
        .filter_map(|l| {
            let (head, text) = l.split_once(". ")?;
            (head.len() == 1 && head.chars().all(|c| c.is_ascii_uppercase())).then(|| text.to_string())
        })
        .collect()
}

/// The world's answer to a question in the SFT phrasings, found from the question alone.
fn truth(w: &World, question: &str) -> String {
    let disease = |name: &str| w.diseases.iter().find(|d| d.name == name).unwrap_or_else(|| panic!("{name}"));
    if let Some(d) = question.strip_prefix("Treating ").and_then(|q| q.strip_suffix(": which drug do you begin with?"))
    {
        w.drugs[disease(d).first_line].name.clone()
    } else if let Some(d) = question.strip_prefix("Name the backup drug for ").and_then(|q| q.strip_suffix('.')) {
        w.drugs[disease(d).second_line].name.clone()
    } else if let Some(d) = question.strip_prefix("What body system does ").and_then(|q| q.strip_suffix(" affect?")) {
        w.organ_systems[disease(d).system].name.clone()
    } else if let Some(x) = question.strip_prefix("Tell me the drug family of ").and_then(|q| q.strip_suffix('.')) {
        w.class_of(w.drugs.iter().position(|d| d.name == x).unwrap_or_else(|| panic!("{x}"))).name.clone()
    } else {
        panic!("not an SFT phrasing: {question}")
    }
}

/// Every MCQ conversation's answer is `Correct` under P3's `reward` (the function P3 scores
/// with), for a prompt built from the user turn with the world's key; the same answer to a
/// prompt keyed on another option is `Wrong`, so the rule reads the letter given.
#[test]
fn mcq_answers_are_right_under_p3s_reward_rule() {
    let w = world();
    let ex = mcq_examples(&w, 4000);
    assert_eq!(ex.len(), 1000);
    let mut kinds = HashSet::new();
    for e in &ex {
        let [user, assistant] = &e.messages[..] else { panic!("{}: one question, one answer", e.id) };
        assert_eq!((user.role.as_str(), assistant.role.as_str()), ("user", "assistant"));
        let options = listed_options(&user.content);
        assert_eq!(options.len(), 4, "{}: {}", e.id, user.content);
        let question = user.content.lines().next().unwrap();
        let key = options.iter().position(|o| *o == truth(&w, question)).expect("the right option is listed");
        kinds.insert(question.split_whitespace().next().unwrap().to_string());
        let prompt = |answer: usize| VerifiablePrompt {
            id: e.id.clone(),
            kind: String::new(),
            think: e.think,
            messages: vec![Message::new("user", user.content.clone())],
            options: options.clone(),
            answer,
        };
        assert_eq!(reward(&prompt(key), &assistant.content), Reward::Correct, "{}: {:?}", e.id, assistant.content);
        assert_eq!(reward(&prompt((key + 1) % 4), &assistant.content), Reward::Wrong, "{}", e.id);
        let tail = after_think(&assistant.content).unwrap().trim_start();
        assert_eq!(tail, format!("{}. {}", letter(key), options[key]), "{}", e.id);
        if e.think {
            let r = crate::chat::rationale_of(&assistant.content).expect("a rationale under /think");
            assert!(r.ends_with(&format!("option {}.", letter(key))), "{}: {r}", e.id);
        }
    }
    assert_eq!(kinds.len(), 4, "all four phrasings asked: {kinds:?}");
    // The question builder itself, on every kind: its key is the world's answer.
    let pools = FactPools::new(&w);
    let mut rng = crate::rng::sub_rng(1, "mcq-test");
    for kind in [FactKind::FirstLine, FactKind::SecondLine, FactKind::System, FactKind::DrugFamily] {
        for _ in 0..50 {
            let q = fact_mcq(&w, &pools, &mut rng, &[kind]).unwrap();
            assert_eq!(q.kind, kind);
            assert_eq!(q.options[q.answer], truth(&w, &q.question), "{q:?}");
            let p = VerifiablePrompt {
                id: String::new(),
                kind: kind.name().into(),
                think: false,
                messages: vec![],
                options: q.options.clone(),
                answer: q.answer,
            };
            for think in [false, true] {
                assert_eq!(reward(&p, &mcq_answer(&q, think)), Reward::Correct, "{q:?}");
            }
        }
    }
}

/// The right letter is uniform over A-D: chi-square over 1,000 questions below 16.27 (3 degrees
/// of freedom, p = 0.001), every letter 20-30% (a builder that always put the key first, or
/// never last, fails both).
#[test]
fn mcq_answer_letters_are_uniform() {
    let w = world();
    let ex = mcq_examples(&w, 4000);
    let mut counts = [0usize; 4];
    for e in &ex {
        let tail = after_think(&e.messages[1].content).unwrap().trim_start();
        let l = tail.chars().next().unwrap();
        counts[(l as u8 - b'A') as usize] += 1;
    }
    let n = ex.len() as f64;
    let chi2: f64 = counts.iter().map(|&c| (c as f64 - n / 4.0).powi(2) / (n / 4.0)).sum();
    assert!(chi2 < 16.27, "letters {counts:?}: chi-square {chi2:.2}");
    for c in counts {
        assert!((0.2..=0.3).contains(&(c as f64 / n)), "letters {counts:?}");
    }
}

/// No MCQ conversation is an evaluation item: no user turn equals an eval item put in P3's form
/// (either mode), no question equals an eval question, and the conversations share no 8-gram
/// with any eval question (the right option blanked) nor a 13-gram with question + answer.
#[test]
fn mcq_conversations_are_not_eval_items() {
    let w = world();
    let ex = mcq_examples(&w, 4000);
    let eval = generate_eval(&w, 3, &EvalConfig::default()).unwrap();
    let users: HashSet<&str> = ex.iter().map(|e| e.messages[0].content.as_str()).collect();
    let questions: HashSet<&str> = users.iter().map(|u| u.lines().next().unwrap()).collect();
    let texts: Vec<String> =
        ex.iter().map(|e| format!("{}\n{}", e.messages[0].content, e.messages[1].content)).collect();
    let idx8 = NgramIndex::new(texts.iter().map(String::as_str), 8);
    let idx13 = NgramIndex::new(texts.iter().map(String::as_str), 13);
    for (set, items) in eval.sets() {
        for it in items {
            let opts: Vec<String> = it.options.values().cloned().collect();
            for think in [false, true] {
                assert!(!users.contains(mcq_user_turn(&it.question, &opts, think).as_str()), "{set}: {}", it.id);
            }
            assert!(!questions.contains(it.question.as_str()), "{set}: {}", it.id);
        }
        let blanked: Vec<_> = items
            .iter()
            .map(|it| {
                let mut q = it.clone();
                q.options.insert(q.answer.clone(), String::new());
                q
            })
            .collect();
        let r8 = idx8.check(&blanked);
        assert!(r8.is_clean(), "{set}: 8-gram overlap {:?}", &r8.overlapping[..r8.overlapping.len().min(3)]);
        let r13 = idx13.check(items);
        assert!(r13.is_clean(), "{set}: 13-gram overlap {:?}", &r13.overlapping[..r13.overlapping.len().min(3)]);
    }
}
