//! Verifiable prompts for preference optimisation (phase P3): multiple-choice questions about
//! the synthetic world with a known key, and the rule-based reward of an answer.
//!
//! The questions use the SFT phrasings (held out from the evaluation sets by the same rules, see
//! tests) over three facts: a disease's first-line drug, a disease's body system, a drug's
//! family; never symptoms, so the two-hop evaluation stays a composition the model was never
//! rewarded for. Half of them (by `think_fraction`) end with `/think`, the rest with `/no_think`.
//!
//! Reward of a generated answer (Qwen3 format: `<think>…</think>` then the answer):
//! `Invalid` without a closing `</think>`, else the option named after it: a standalone letter
//! (`A`..), or failing that the one option whose text appears; none or several is `Invalid`;
//! then `Correct` or `Wrong` against the key.

use super::mcq::{fact_mcq, mcq_user_turn, FactKind, FactPools};
use crate::chat::Message;
use crate::rng::sub_rng;
use crate::world::World;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// One verifiable prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerifiablePrompt {
    /// `po-NNNNNN`.
    pub id: String,
    /// `first_line`, `system` or `drug_family`.
    pub kind: String,
    /// Asked under `/think` (else `/no_think`).
    pub think: bool,
    /// The user turn.
    pub messages: Vec<Message>,
    /// Option texts, in letter order (`A`, `B`, ...).
    pub options: Vec<String>,
    /// Index of the right option.
    pub answer: usize,
}

/// The rule-based reward of one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reward {
    /// The key.
    Correct,
    /// Another option.
    Wrong,
    /// No closing `</think>`, no option or several.
    Invalid,
}

/// The facts P3 asks about (P2's MCQ conversations add the backup drug).
const PROMPT_KINDS: &[FactKind] = &[FactKind::FirstLine, FactKind::System, FactKind::DrugFamily];

/// `n` prompts from the world; same world, seed and counts, same prompts.
pub fn verifiable_prompts(w: &World, seed: u64, n: usize, think_fraction: f64) -> Vec<VerifiablePrompt> {
    let mut rng = sub_rng(seed, "preference-prompts");
    let pools = FactPools::new(w);
    let think_n = ((think_fraction.clamp(0.0, 1.0) * n as f64).round() as usize).min(n);
    let mut out = Vec::with_capacity(n);
    let mut tries = 0;
    while out.len() < n && tries < 20 * n + 100 {
        tries += 1;
        let Some(q) = fact_mcq(w, &pools, &mut rng, PROMPT_KINDS) else { continue };
        let think = out.len() < think_n;
        out.push(VerifiablePrompt {
            id: format!("po-{:06}", out.len()),
            kind: q.kind.name().to_string(),
            think,
            messages: vec![Message::new("user", mcq_user_turn(&q.question, &q.options, think))],
            options: q.options,
            answer: q.answer,
        });
    }
    // Modes interleaved rather than the first `think_n` all thinking.
    out.shuffle(&mut rng);
    for (i, p) in out.iter_mut().enumerate() {
        p.id = format!("po-{i:06}");
    }
    out
}

/// The option an answer's text after its think block names: a standalone letter (`A`..), all
/// such letters the same, or failing that the one option whose text appears; None when it names
/// none or several. `options` are the option texts in letter order.
pub fn option_named(tail: &str, options: &[String]) -> Option<usize> {
    let n = options.len();
    let letters: Vec<usize> = tail
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter_map(|w| {
            let mut cs = w.chars();
            match (cs.next(), cs.next()) {
                (Some(c), None) if c.is_ascii_uppercase() && ((c as u8 - b'A') as usize) < n => {
                    Some((c as u8 - b'A') as usize)
                }
                _ => None,
            }
        })
        .collect();
    match letters.first() {
        Some(&l) if letters.iter().all(|&x| x == l) => Some(l),
        Some(_) => None,
        None => {
            let named: Vec<usize> = (0..n).filter(|&i| tail.contains(options[i].as_str())).collect();
            (named.len() == 1).then(|| named[0])
        }
    }
}

/// The text after the last `</think>` of a generated answer (None: the think block never closes).
pub fn after_think(answer: &str) -> Option<&str> {
    answer.rfind("</think>").map(|end| &answer[end + "</think>".len()..])
}

/// The reward of `answer` (the generated text, special tokens kept) to `prompt`.
pub fn reward(prompt: &VerifiablePrompt, answer: &str) -> Reward {
    let Some(tail) = after_think(answer) else { return Reward::Invalid };
    match option_named(tail, &prompt.options) {
        None => Reward::Invalid,
        Some(i) if i == prompt.answer => Reward::Correct,
        Some(_) => Reward::Wrong,
    }
}

#[cfg(test)]
mod tests {
    use super::super::mcq::letter;
    use super::*;
    use crate::eval::overlap::NgramIndex;
    use crate::eval::{generate_eval, EvalConfig};
    use crate::world::{generate, WorldConfig};

    fn prompt(answer: usize) -> VerifiablePrompt {
        VerifiablePrompt {
            id: "po-000000".into(),
            kind: "system".into(),
            think: false,
            messages: vec![],
            options: ["renal", "hepatic", "cardiac", "neural"].map(String::from).to_vec(),
            answer,
        }
    }

    #[test]
    fn reward_follows_the_rules() {
        let p = prompt(1);
        assert_eq!(reward(&p, "<think>\n\n</think>\n\nB"), Reward::Correct);
        assert_eq!(reward(&p, "<think>\nwhy\n</think>\n\nThe answer is B."), Reward::Correct);
        assert_eq!(reward(&p, "<think>\n\n</think>\n\nIt affects the hepatic system."), Reward::Correct);
        assert_eq!(reward(&p, "<think>\n\n</think>\n\nC<|im_end|>"), Reward::Wrong);
        assert_eq!(reward(&p, "B"), Reward::Invalid, "no closing think tag");
        assert_eq!(reward(&p, "<think>\n\n</think>\n\nB or C"), Reward::Invalid, "two letters");
        assert_eq!(reward(&p, "<think>\n\n</think>\n\nrenal or cardiac"), Reward::Invalid, "two options named");
        assert_eq!(reward(&p, "<think>\n\n</think>\n\nno idea"), Reward::Invalid);
        assert_eq!(reward(&p, "<think>B</think>"), Reward::Invalid, "a letter inside the think block only");
    }

    #[test]
    fn prompts_are_seeded_keyed_and_held_out_from_the_eval_sets() {
        let w = generate(3, &WorldConfig::default()).unwrap();
        let ps = verifiable_prompts(&w, 9, 300, 0.5);
        assert_eq!(ps, verifiable_prompts(&w, 9, 300, 0.5));
        assert_eq!(ps.len(), 300);
        assert_eq!(ps.iter().filter(|p| p.think).count(), 150);
        for p in &ps {
            let text = &p.messages[0].content;
            assert!(text.ends_with(if p.think { "/think" } else { "/no_think" }), "{text}");
            assert_eq!(p.options.len(), 4);
            let right = format!("<think>\n\n</think>\n\n{}", letter(p.answer));
            assert_eq!(reward(p, &right), Reward::Correct);
        }
        let eval = generate_eval(&w, 3, &EvalConfig::default()).unwrap();
        let texts: Vec<String> = ps.iter().map(|p| p.messages[0].content.clone()).collect();
        let idx = NgramIndex::new(texts.iter().map(String::as_str), 13);
        for (_, items) in eval.sets() {
            let r = idx.check(items);
            assert!(r.is_clean(), "13-gram overlap: {:?}", &r.overlapping[..r.overlapping.len().min(3)]);
        }
    }
}
