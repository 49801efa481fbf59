//! The synthetic evaluation sets, generated from the world with their own phrasings (never used
//! by the corpus forms; `overlap` checks it).

use super::{letters, McqItem, SET_FACT_RECALL, SET_GENERAL, SET_TWO_HOP};
use crate::corpus::GLOSSARY;
use crate::error::{DataError, Result};
use crate::rng::sub_rng;
use crate::world::{Direction, World};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Sizes of the synthetic sets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Fact-recall items (capped by the facts the world has).
    pub fact_recall: usize,
    /// Two-hop items (at most one per disease).
    pub two_hop: usize,
    /// General items.
    pub general: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig { fact_recall: 600, two_hop: 300, general: 300 }
    }
}

/// The three synthetic sets.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalSets {
    /// Single facts (first/second line, organ system, class, mechanism, pathogen, lab marker).
    pub fact_recall: Vec<McqItem>,
    /// Symptoms -> disease -> first-line drug, the disease not named.
    pub two_hop: Vec<McqItem>,
    /// Arithmetic, definitions, sequences.
    pub general: Vec<McqItem>,
}

impl EvalSets {
    /// `(set name, items)` in a fixed order.
    pub fn sets(&self) -> [(&'static str, &[McqItem]); 3] {
        [(SET_FACT_RECALL, &self.fact_recall), (SET_TWO_HOP, &self.two_hop), (SET_GENERAL, &self.general)]
    }
}

/// Builds an item with the right answer at a random letter and the distractors after it.
fn item(
    rng: &mut ChaCha8Rng,
    (set, domain, n): (&str, &str, usize),
    question: String,
    answer: String,
    distractors: Vec<String>,
    meta: &[(&str, &str)],
) -> McqItem {
    let mut opts = vec![answer.clone()];
    opts.extend(distractors);
    opts.shuffle(rng);
    let pos = opts.iter().position(|o| *o == answer).expect("answer is among the options");
    let options: BTreeMap<String, String> = letters(opts.len()).zip(opts).collect();
    McqItem {
        id: format!("{set}-{n:05}"),
        set: set.to_string(),
        domain: domain.to_string(),
        question,
        context: None,
        answer: letters(pos + 1).last().expect("pos + 1 >= 1"),
        options,
        meta: meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

/// Three distinct values from `pool` that are not in `exclude` (pool order shuffled first).
fn distract(rng: &mut ChaCha8Rng, pool: &[String], exclude: &[&str]) -> Option<Vec<String>> {
    let mut cands: Vec<&String> = pool.iter().filter(|p| !exclude.contains(&p.as_str())).collect();
    cands.sort();
    cands.dedup();
    cands.shuffle(rng);
    (cands.len() >= 3).then(|| cands.into_iter().take(3).cloned().collect())
}

/// Generates the sets; same world, seed and config, same items.
pub fn generate_eval(world: &World, seed: u64, config: &EvalConfig) -> Result<EvalSets> {
    let mut rng = sub_rng(seed, "eval");
    let fact_recall = fact_recall(world, &mut rng, config.fact_recall)?;
    let two_hop = two_hop(world, &mut rng, config.two_hop);
    let general = general(&mut rng, config.general);
    if two_hop.len() < config.two_hop.min(world.diseases.len()) {
        return Err(DataError::Check("could not build enough two-hop items".into()));
    }
    Ok(EvalSets { fact_recall, two_hop, general })
}

const FACT_KINDS: &[&str] =
    &["first_line", "second_line", "organ_system", "drug_class", "mechanism", "pathogen", "lab_marker"];

fn fact_recall(w: &World, rng: &mut ChaCha8Rng, n: usize) -> Result<Vec<McqItem>> {
    let drug_names: Vec<String> = w.drugs.iter().map(|d| d.name.clone()).collect();
    let systems: Vec<String> = w.organ_systems.iter().map(|s| s.name.clone()).collect();
    let classes: Vec<String> = w.drug_classes.iter().map(|c| c.name.clone()).collect();
    let mechanisms: Vec<String> = w.drug_classes.iter().map(|c| c.mechanism.clone()).collect();
    let pathogens: Vec<String> = w.pathogens.iter().map(|p| p.name.clone()).collect();
    // Every (kind, subject) pair, shuffled; take the first n that can be asked.
    let mut cands: Vec<(usize, usize)> = Vec::new();
    for (k, kind) in FACT_KINDS.iter().enumerate() {
        let subjects = if matches!(*kind, "drug_class" | "mechanism") { w.drugs.len() } else { w.diseases.len() };
        cands.extend((0..subjects).map(|s| (k, s)));
    }
    cands.shuffle(rng);
    let mut out = Vec::new();
    for (k, s) in cands {
        if out.len() == n {
            break;
        }
        let kind = FACT_KINDS[k];
        let (question, answer, pool, subject): (String, String, &[String], &str) = match kind {
            "first_line" | "second_line" => {
                let d = &w.diseases[s];
                let (x, q) = if kind == "first_line" {
                    (d.first_line, format!("Which agent is the preferred initial pharmacotherapy for {}?", d.name))
                } else {
                    (
                        d.second_line,
                        format!(
                            "Which agent is the fallback choice for {} when the preferred drug cannot be used?",
                            d.name
                        ),
                    )
                };
                (q, w.drugs[x].name.clone(), &drug_names, &d.name)
            }
            "organ_system" => {
                let d = &w.diseases[s];
                (
                    format!("Disorders like {} belong to which organ system?", d.name),
                    w.organ_systems[d.system].name.clone(),
                    &systems,
                    &d.name,
                )
            }
            "drug_class" => {
                let x = &w.drugs[s];
                (
                    format!("{} is a member of which pharmacological family?", x.name),
                    w.class_of(s).name.clone(),
                    &classes,
                    &x.name,
                )
            }
            "mechanism" => {
                let x = &w.drugs[s];
                (
                    format!("By what mechanism does {} produce its effect?", x.name),
                    w.class_of(s).mechanism.clone(),
                    &mechanisms,
                    &x.name,
                )
            }
            "pathogen" => {
                let d = &w.diseases[s];
                let Some(p) = d.pathogen else { continue };
                (
                    format!("Which organism is responsible for {}?", d.name),
                    w.pathogens[p].name.clone(),
                    &pathogens,
                    &d.name,
                )
            }
            _ => {
                let d = &w.diseases[s];
                let m = &d.labs[0];
                let answer = format!("{} {}", m.direction.word(), w.lab_tests[m.test].name);
                let wrong: Vec<String> = w
                    .lab_tests
                    .iter()
                    .enumerate()
                    .filter(|(t, _)| d.labs.iter().all(|l| l.test != *t))
                    .map(|(t, lt)| {
                        let dir = if (t + s) % 2 == 0 { Direction::Elevated } else { Direction::Decreased };
                        format!("{} {}", dir.word(), lt.name)
                    })
                    .collect();
                let Some(dis) = distract(rng, &wrong, &[]) else { continue };
                let q = format!("Which laboratory abnormality would support a diagnosis of {}?", d.name);
                out.push(item(
                    rng,
                    (SET_FACT_RECALL, "medical", out.len()),
                    q,
                    answer,
                    dis,
                    &[("kind", kind), ("subject", &d.name)],
                ));
                continue;
            }
        };
        let Some(dis) = distract(rng, pool, &[&answer]) else { continue };
        out.push(item(
            rng,
            (SET_FACT_RECALL, "medical", out.len()),
            question,
            answer,
            dis,
            &[("kind", kind), ("subject", subject)],
        ));
    }
    Ok(out)
}

fn two_hop(w: &World, rng: &mut ChaCha8Rng, n: usize) -> Vec<McqItem> {
    let mut diseases: Vec<usize> = (0..w.diseases.len()).collect();
    diseases.shuffle(rng);
    let first_lines: Vec<String> = w.diseases.iter().map(|d| w.drugs[d.first_line].name.clone()).collect();
    let mut out = Vec::new();
    for i in diseases.into_iter().take(n) {
        let d = &w.diseases[i];
        let mut symptoms: Vec<String> = d.symptoms.iter().map(|&s| w.symptoms[s].name.clone()).collect();
        symptoms.sort();
        let answer = w.drugs[d.first_line].name.clone();
        // Hard distractors first: first-line drugs of diseases that share a symptom.
        let mut near: Vec<String> = w
            .diseases
            .iter()
            .enumerate()
            .filter(|(j, o)| *j != i && o.symptoms.iter().any(|s| d.symptoms.contains(s)))
            .map(|(_, o)| w.drugs[o.first_line].name.clone())
            .collect();
        near.shuffle(rng);
        let mut dis: Vec<String> = near.into_iter().take(2).collect();
        let exclude: Vec<&str> = dis.iter().map(|s| s.as_str()).chain([answer.as_str()]).collect();
        let Some(rest) = distract(rng, &first_lines, &exclude) else { continue };
        dis.extend(rest.into_iter().take(3 - dis.len()));
        let q = format!(
            "An individual is evaluated for the following findings: {}. Which medication is the preferred initial \
             pharmacotherapy for the most probable condition?",
            symptoms.iter().enumerate().map(|(k, s)| format!("({}) {s}", k + 1)).collect::<Vec<_>>().join(" ")
        );
        out.push(item(
            rng,
            (SET_TWO_HOP, "medical", out.len()),
            q,
            answer,
            dis,
            &[("kind", "two_hop"), ("disease", &d.name)],
        ));
    }
    out
}

fn general(rng: &mut ChaCha8Rng, n: usize) -> Vec<McqItem> {
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let words: Vec<String> = GLOSSARY.iter().map(|(w, _)| w.to_string()).collect();
    let defs: Vec<&(&str, &str)> = GLOSSARY.iter().filter(|(_, d)| d.split_whitespace().count() <= 10).collect();
    let mut out = Vec::new();
    for k in 0..n {
        let it = match k % 3 {
            0 => {
                let (x, y) = (rng.gen_range(10..100i64), rng.gen_range(10..100i64));
                let a = x + y;
                let dis = [a + 1, a - 10, a + 10, a - 1, a + 2];
                let mut dis: Vec<String> = dis.iter().map(|v| v.to_string()).collect();
                dis.shuffle(rng);
                dis.truncate(3);
                item(
                    rng,
                    (SET_GENERAL, "general", k),
                    format!("Calculate the sum of {x} and {y}."),
                    a.to_string(),
                    dis,
                    &[("kind", "arithmetic")],
                )
            }
            1 => {
                let (word, def) = defs[rng.gen_range(0..defs.len())];
                let dis = distract(rng, &words, &[word]).expect("the glossary has more than 4 words");
                item(
                    rng,
                    (SET_GENERAL, "general", k),
                    format!("Pick the term whose sense is: {def}."),
                    word.to_string(),
                    dis,
                    &[("kind", "definition")],
                )
            }
            _ => {
                let d = rng.gen_range(0..7);
                let pool: Vec<String> = DAYS.iter().map(|s| s.to_string()).collect();
                let dis = distract(rng, &pool, &[DAYS[(d + 1) % 7]]).expect("seven days");
                item(
                    rng,
                    (SET_GENERAL, "general", k),
                    format!("Name the weekday immediately after {}.", DAYS[d]),
                    DAYS[(d + 1) % 7].to_string(),
                    dis,
                    &[("kind", "weekday")],
                )
            }
        };
        out.push(it);
    }
    out
}
