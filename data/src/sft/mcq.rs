//! Multiple-choice questions over single facts of the world, asked in one user-turn form
//! (`mcq_user_turn`: the question, `A. option` lines, "Reply with the letter of the right
//! option.", the mode switch). Phase P3 asks them as verifiable prompts (`verifiable`); phase P2
//! trains a share of them as SFT conversations answered with the letter and the option text
//! (`mcq_answer`), so the P2 model answers in the form P3's reward reads.
//!
//! Facts: a disease's first-line or backup drug, a disease's body system, a drug's family, in
//! the SFT fact Q&A's own phrasings (held out from the evaluation sets by the same n-gram rules,
//! see tests). Never symptoms, so the two-hop evaluation (symptoms -> disease -> first-line
//! drug) stays a composition that no training text shows. The right option's letter is uniform
//! over the four positions.

use crate::chat::{strip_rationale, with_rationale};
use crate::world::World;
use rand::seq::SliceRandom;
use rand::Rng;

/// Which fact a question asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactKind {
    /// A disease's first-line drug.
    FirstLine,
    /// A disease's backup (second-line) drug.
    SecondLine,
    /// A disease's body system.
    System,
    /// A drug's family (class).
    DrugFamily,
}

impl FactKind {
    /// The name used in prompt and example records.
    pub fn name(self) -> &'static str {
        match self {
            FactKind::FirstLine => "first_line",
            FactKind::SecondLine => "second_line",
            FactKind::System => "system",
            FactKind::DrugFamily => "drug_family",
        }
    }
}

/// One question with its options and key.
#[derive(Clone, Debug, PartialEq)]
pub struct FactMcq {
    /// The fact asked.
    pub kind: FactKind,
    /// The question (without options).
    pub question: String,
    /// Option texts in letter order (`A`, `B`, ...).
    pub options: Vec<String>,
    /// Index of the right option.
    pub answer: usize,
    /// One sentence stating the fact and the letter (the `/think` rationale).
    pub rationale: String,
}

/// The option pools of a world, built once.
pub struct FactPools {
    drugs: Vec<String>,
    systems: Vec<String>,
    classes: Vec<String>,
}

impl FactPools {
    /// Drug, body-system and drug-family names of `w`.
    pub fn new(w: &World) -> Self {
        FactPools {
            drugs: w.drugs.iter().map(|d| d.name.clone()).collect(),
            systems: w.organ_systems.iter().map(|s| s.name.clone()).collect(),
            classes: w.drug_classes.iter().map(|c| c.name.clone()).collect(),
        }
    }
}

/// Letter of option `i` (`A`, `B`, ...).
pub fn letter(i: usize) -> char {
    (b'A' + i as u8) as char
}

/// Three distinct options other than `right` from `pool`, plus `right` at a uniform position.
fn options(rng: &mut impl Rng, pool: &[String], right: &str) -> Option<(Vec<String>, usize)> {
    let mut others: Vec<&String> = pool.iter().filter(|p| p.as_str() != right).collect();
    others.sort();
    others.dedup();
    if others.len() < 3 {
        return None;
    }
    others.shuffle(rng);
    let mut opts: Vec<String> = others.into_iter().take(3).cloned().collect();
    let at = rng.gen_range(0..=3);
    opts.insert(at, right.to_string());
    Some((opts, at))
}

/// A question about a fact of a kind drawn uniformly from `kinds` (one draw for the kind, one
/// for the subject, then the options); None when the pool has fewer than four distinct options.
pub fn fact_mcq(w: &World, pools: &FactPools, rng: &mut impl Rng, kinds: &[FactKind]) -> Option<FactMcq> {
    let kind = kinds[rng.gen_range(0..kinds.len())];
    let (question, pool, right, fact) = match kind {
        FactKind::FirstLine | FactKind::SecondLine => {
            let d = &w.diseases[rng.gen_range(0..w.diseases.len())];
            if kind == FactKind::FirstLine {
                let drug = &w.drugs[d.first_line].name;
                let q = format!("Treating {}: which drug do you begin with?", d.name);
                (q, &pools.drugs, drug.clone(), format!("{} is treated first with {drug}", d.name))
            } else {
                let drug = &w.drugs[d.second_line].name;
                let q = format!("Name the backup drug for {}.", d.name);
                (q, &pools.drugs, drug.clone(), format!("The backup drug for {} is {drug}", d.name))
            }
        }
        FactKind::System => {
            let d = &w.diseases[rng.gen_range(0..w.diseases.len())];
            let sys = &pools.systems[d.system];
            let q = format!("What body system does {} affect?", d.name);
            (q, &pools.systems, sys.clone(), format!("{} affects the {sys} system", d.name))
        }
        FactKind::DrugFamily => {
            let x = rng.gen_range(0..w.drugs.len());
            let class = &w.class_of(x).name;
            let q = format!("Tell me the drug family of {}.", w.drugs[x].name);
            (q, &pools.classes, class.clone(), format!("{} belongs to the {class}", w.drugs[x].name))
        }
    };
    let (options, answer) = options(rng, pool, &right)?;
    let rationale = format!("{fact}, option {}.", letter(answer));
    Some(FactMcq { kind, question, options, answer, rationale })
}

/// The user turn of a multiple-choice question (P3's verifiable prompts, P2's MCQ
/// conversations and `moe-cli eval --chat`): the question, one `A. option` line per option, the
/// instruction, `/think` or `/no_think`.
pub fn mcq_user_turn(question: &str, options: &[String], think: bool) -> String {
    let listed: Vec<String> = options.iter().enumerate().map(|(i, o)| format!("{}. {o}", letter(i))).collect();
    format!(
        "{question}\n{}\nReply with the letter of the right option. {}",
        listed.join("\n"),
        if think { "/think" } else { "/no_think" }
    )
}

/// The assistant turn answering `q`: the letter and the option text (`B. hepatic`) after the
/// rationale (`/think`) or the empty think block (`/no_think`).
pub fn mcq_answer(q: &FactMcq, think: bool) -> String {
    let full = with_rationale(&q.rationale, &format!("{}. {}", letter(q.answer), q.options[q.answer]));
    if think {
        full
    } else {
        strip_rationale(&full)
    }
}
