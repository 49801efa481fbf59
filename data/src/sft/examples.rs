//! SFT conversations from the synthetic world: fact Q&A, drug-label Q&A, case dialogues
//! (answered under `/no_think` with the empty think block inside the assistant turn, as Qwen3
//! trains it), hard two-hop cases (~15%, under `/think` with a `<think>` rationale) and
//! multiple-choice questions over single facts (`mcq_fraction`, ~25% in configs/phases/p2.json)
//! in the user-turn form of P3's verifiable prompts, answered with the letter and the option
//! text (`B. hepatic`), a share of them (`mcq_think_fraction`) under `/think` with a one-sentence
//! rationale.
//!
//! The hard cases chain symptoms -> (unnamed) disease -> its specialty, laboratory marker or
//! pathogen; never its drug, so the two_hop evaluation (symptoms -> first-line drug) stays a
//! composition the model was never shown. Phrasings are our own (tests check the n-gram
//! overlap with the evaluation sets).

use super::mcq::{fact_mcq, mcq_answer, mcq_user_turn, FactKind, FactPools};
use crate::chat::{strip_rationale, with_rationale, Message};
use crate::rng::sub_rng;
use crate::world::World;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Sizes of the SFT set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    /// Conversations to generate.
    pub examples: usize,
    /// Share of hard two-hop cases answered with a rationale under `/think`.
    pub hard_fraction: f64,
    /// Share of multiple-choice questions answered with a letter (`hard_fraction +
    /// mcq_fraction` <= 1).
    pub mcq_fraction: f64,
    /// Share of the multiple-choice questions asked under `/think` (with a rationale).
    pub mcq_think_fraction: f64,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig { examples: 4000, hard_fraction: 0.15, mcq_fraction: 0.25, mcq_think_fraction: 0.15 }
    }
}

/// One SFT conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SftExample {
    /// `sft-NNNNNN`.
    pub id: String,
    /// `fact_qa`, `drug_label`, `case_dialogue`, `two_hop_case` or `mcq`.
    pub kind: String,
    /// Answered with a rationale (`/think`) or with the empty think block (`/no_think`).
    pub think: bool,
    /// User and assistant turns; assistant turns start with their think block.
    pub messages: Vec<Message>,
}

/// A user question, the rationale and the answer of one turn.
type Turn = (String, String, String);

/// Turns into messages: each user turn ends with the mode's soft switch; each assistant turn
/// carries the rationale (`/think`) or the empty think block (`/no_think`).
fn messages(turns: &[Turn], think: bool) -> Vec<Message> {
    let mut out = Vec::new();
    for (q, rationale, answer) in turns {
        out.push(Message::new("user", format!("{q} {}", if think { "/think" } else { "/no_think" })));
        let full = with_rationale(rationale, answer);
        out.push(Message::new("assistant", if think { full } else { strip_rationale(&full) }));
    }
    out
}

fn pick<'a>(rng: &mut ChaCha8Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.gen_range(0..xs.len())]
}

fn fact_qa(w: &World, rng: &mut ChaCha8Rng) -> Turn {
    let d = &w.diseases[rng.gen_range(0..w.diseases.len())];
    let x = rng.gen_range(0..w.drugs.len());
    let drug = &w.drugs[x];
    match rng.gen_range(0..5) {
        0 => (
            format!(
                "{} Name the drug to begin with.",
                pick(rng, &["Treating {D}:", "Case of {D}:"]).replace("{D}", &d.name)
            ),
            String::new(),
            format!("Begin with {}.", w.drugs[d.first_line].name),
        ),
        1 => (
            format!("Name the backup drug for {}.", d.name),
            String::new(),
            format!("The backup is {}.", w.drugs[d.second_line].name),
        ),
        2 => (
            format!("What body system does {} affect?", d.name),
            String::new(),
            format!("It affects the {} system ({}).", w.organ_systems[d.system].name, w.organ_systems[d.system].organ),
        ),
        3 => (
            format!("Tell me the drug family of {}.", drug.name),
            String::new(),
            format!("{} belongs to the {}.", drug.name, w.class_of(x).name),
        ),
        _ => (
            format!("In one sentence, what does {} do?", drug.name),
            String::new(),
            format!("It {}.", w.class_of(x).mechanism),
        ),
    }
}

fn drug_label(w: &World, rng: &mut ChaCha8Rng) -> Turn {
    let x = rng.gen_range(0..w.drugs.len());
    let d = &w.drugs[x];
    match rng.gen_range(0..4) {
        0 => (
            format!("Label check: usual dose of {}?", d.name),
            String::new(),
            format!("{} to {} mg {}, {} route.", d.dose_min_mg, d.dose_max_mg, d.frequency, d.route),
        ),
        1 => {
            (format!("Label check: half-life of {}?", d.name), String::new(), format!("About {} hours.", d.half_life_h))
        }
        2 => {
            let c: Vec<String> = d.contraindications.iter().map(|c| w.contraindication_text(c)).collect();
            (
                format!("Label check: who must avoid {}?", d.name),
                String::new(),
                if c.is_empty() {
                    "No listed contraindications.".to_string()
                } else {
                    format!("Avoid in {}.", c.join("; "))
                },
            )
        }
        _ => match d.interactions.first() {
            Some(i) => (
                format!("Label check: any interaction between {} and {}?", d.name, w.drugs[i.drug].name),
                String::new(),
                format!("Yes: {} {} {}.", d.name, i.effect, w.drugs[i.drug].name),
            ),
            None => {
                (format!("Label check: route of {}?", d.name), String::new(), format!("{} ({}).", d.route, d.frequency))
            }
        },
    }
}

fn symptom_list(w: &World, rng: &mut ChaCha8Rng, d: usize) -> String {
    let mut s: Vec<&str> = w.diseases[d].symptoms.iter().map(|&i| w.symptoms[i].name.as_str()).collect();
    s.shuffle(rng);
    s.join(", ")
}

fn case_dialogue(w: &World, rng: &mut ChaCha8Rng) -> Vec<Turn> {
    let i = rng.gen_range(0..w.diseases.len());
    let d = &w.diseases[i];
    let m = &d.labs[0];
    vec![
        (
            format!("Clinic note: {} patient with {}. Working diagnosis?", d.population, symptom_list(w, rng, i)),
            String::new(),
            format!("Working diagnosis: {}.", d.name),
        ),
        (
            "And the lab result to look for?".to_string(),
            String::new(),
            format!("{} {}.", w.lab_tests[m.test].name, m.direction.word()),
        ),
    ]
}

fn two_hop_case(w: &World, rng: &mut ChaCha8Rng) -> Turn {
    let i = rng.gen_range(0..w.diseases.len());
    let d = &w.diseases[i];
    let sys = &w.organ_systems[d.system];
    let s = symptom_list(w, rng, i);
    let first = format!("Together, {s} identify {}.", d.name);
    match (rng.gen_range(0..3), d.pathogen) {
        (0, Some(p)) => (
            format!("Clinic note: {s}. Which organism is behind it?"),
            format!("{first} {} is caused by {}, a {}.", d.name, w.pathogens[p].name, w.pathogens[p].kind),
            format!("{}.", w.pathogens[p].name),
        ),
        (1, _) => {
            let m = &d.labs[0];
            (
                format!("Clinic note: {s}. Which lab result do you expect?"),
                format!("{first} In {} the {} is {}.", d.name, w.lab_tests[m.test].name, m.direction.word()),
                format!("{} {}.", w.lab_tests[m.test].name, m.direction.word()),
            )
        }
        _ => (
            format!("Clinic note: {s}. Which specialty should take over?"),
            format!("{first} {} is a disease of the {} system, so {} manages it.", d.name, sys.name, sys.specialty),
            format!("{}.", crate::corpus::text::cap(&sys.specialty)),
        ),
    }
}

/// The facts P2's multiple-choice conversations ask about.
const MCQ_KINDS: &[FactKind] = &[FactKind::FirstLine, FactKind::SecondLine, FactKind::System, FactKind::DrugFamily];

/// What one position of the plan holds.
#[derive(Clone, Copy, PartialEq)]
enum Slot {
    /// A two-hop case under `/think`.
    Hard,
    /// A multiple-choice question, under `/think` or not.
    Mcq { think: bool },
    /// Fact Q&A, drug label or case dialogue.
    Plain,
}

/// A multiple-choice conversation (the world always has four distinct options for every fact;
/// a degenerate world whose pool is too small gets a fact Q&A instead).
fn mcq(w: &World, pools: &FactPools, rng: &mut ChaCha8Rng, think: bool) -> Option<Vec<Message>> {
    let q = fact_mcq(w, pools, rng, MCQ_KINDS)?;
    Some(vec![
        Message::new("user", mcq_user_turn(&q.question, &q.options, think)),
        Message::new("assistant", mcq_answer(&q, think)),
    ])
}

/// Generates `config.examples` conversations; same world, seed and config, same examples.
/// A shuffled plan holds `round(hard_fraction * examples)` hard cases and `round(mcq_fraction *
/// examples)` multiple-choice questions (`round(mcq_think_fraction * that)` of them under
/// `/think`); with `mcq_fraction` 0 the examples are those of the builder before it had MCQs.
pub fn sft_examples(w: &World, seed: u64, config: &SftConfig) -> Vec<SftExample> {
    let mut rng = sub_rng(seed, "sft");
    let n = config.examples;
    let share = |f: f64, of: usize| ((f.clamp(0.0, 1.0) * of as f64).round() as usize).min(of);
    let hard = share(config.hard_fraction, n);
    let mcqs = share(config.mcq_fraction, n).min(n - hard);
    let mcq_think = share(config.mcq_think_fraction, mcqs);
    let mut plan: Vec<Slot> = (0..n)
        .map(|i| match i {
            _ if i < hard => Slot::Hard,
            _ if i < hard + mcq_think => Slot::Mcq { think: true },
            _ if i < hard + mcqs => Slot::Mcq { think: false },
            _ => Slot::Plain,
        })
        .collect();
    plan.shuffle(&mut rng);
    let pools = FactPools::new(w);
    plan.into_iter()
        .enumerate()
        .map(|(k, slot)| {
            let (kind, think, messages) = match slot {
                Slot::Hard => ("two_hop_case", true, messages(&[two_hop_case(w, &mut rng)], true)),
                Slot::Mcq { think } => match mcq(w, &pools, &mut rng, think) {
                    Some(m) => ("mcq", think, m),
                    None => ("fact_qa", false, messages(&[fact_qa(w, &mut rng)], false)),
                },
                Slot::Plain => match rng.gen_range(0..3) {
                    0 => ("fact_qa", false, messages(&[fact_qa(w, &mut rng)], false)),
                    1 => ("drug_label", false, messages(&[drug_label(w, &mut rng)], false)),
                    _ => ("case_dialogue", false, messages(&case_dialogue(w, &mut rng), false)),
                },
            };
            SftExample { id: format!("sft-{k:06}"), kind: kind.into(), think, messages }
        })
        .collect()
}
