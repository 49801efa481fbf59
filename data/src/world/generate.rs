//! World generation from a seed.

use super::names::{capitalize, NameGen};
use super::vocab::*;
use super::*;
use crate::error::{DataError, Result};
use crate::rng::sub_rng;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;

/// Generates the world for `seed` and `config`; same inputs, same world.
pub fn generate(seed: u64, config: &WorldConfig) -> Result<World> {
    validate(config)?;
    let mut rng = sub_rng(seed, "world");
    let mut names = NameGen::new();
    let organ_systems: Vec<OrganSystem> = ORGAN_SYSTEMS
        .iter()
        .map(|(n, s, o, _)| OrganSystem { name: n.to_string(), specialty: s.to_string(), organ: o.to_string() })
        .collect();
    let symptoms = symptoms(&mut rng, &mut names, config.symptoms);
    let lab_tests = lab_tests(&mut rng, &mut names, config.lab_tests);
    let pathogens = pathogens(&mut rng, &mut names, config.pathogens);
    let drug_classes = drug_classes(&mut rng, &mut names, config.drug_classes);
    let mut drugs = drugs(&mut rng, &mut names, &drug_classes, config.drugs);
    let diseases = diseases(&mut rng, &mut names, config, &drug_classes, &drugs, pathogens.len())?;
    add_contraindications(&mut rng, &mut drugs, &diseases);
    add_interactions(&mut rng, &mut drugs);
    Ok(World {
        seed,
        config: config.clone(),
        organ_systems,
        symptoms,
        lab_tests,
        pathogens,
        drug_classes,
        drugs,
        diseases,
    })
}

fn validate(c: &WorldConfig) -> Result<()> {
    let systems = ORGAN_SYSTEMS.len();
    let max_symptoms = SYMPTOM_BASES.len() * (SYMPTOM_QUALIFIERS.len() + 1) + 400;
    let checks = [
        (c.diseases >= systems, format!("diseases must be >= {systems} (one per organ system)")),
        (c.drug_classes >= 2 * systems, format!("drug_classes must be >= {} (two per organ system)", 2 * systems)),
        (c.drugs >= 2 * c.drug_classes, "drugs must be >= 2 x drug_classes".to_string()),
        (
            c.drugs >= c.diseases + c.drug_classes,
            "drugs must be >= diseases + drug_classes (every disease has its own first-line drug)".to_string(),
        ),
        (c.symptoms >= 12 && c.symptoms <= max_symptoms, format!("symptoms must be in 12..={max_symptoms}")),
        (c.lab_tests >= 2, "lab_tests must be >= 2".to_string()),
        (c.pathogens >= 1, "pathogens must be >= 1".to_string()),
        (c.diseases <= 5000 && c.drugs <= 10000, "at most 5000 diseases and 10000 drugs".to_string()),
    ];
    for (ok, msg) in checks {
        if !ok {
            return Err(DataError::config("world config", msg));
        }
    }
    Ok(())
}

fn symptoms(rng: &mut ChaCha8Rng, names: &mut NameGen, n: usize) -> Vec<Symptom> {
    let mut all: Vec<String> = Vec::new();
    for b in SYMPTOM_BASES {
        all.push(b.to_string());
        for q in SYMPTOM_QUALIFIERS {
            all.push(format!("{q} {b}"));
        }
    }
    all.shuffle(rng);
    // About one in eight symptoms is an invented eponymous sign.
    let signs = (n / 8).max(1);
    let mut out: Vec<Symptom> = all.into_iter().take(n - signs).map(|name| Symptom { name }).collect();
    for _ in 0..signs {
        let s = names.stem(rng, 2, 2);
        out.push(Symptom { name: format!("{}'s sign", capitalize(&s)) });
    }
    out.shuffle(rng);
    out
}

fn lab_tests(rng: &mut ChaCha8Rng, names: &mut NameGen, n: usize) -> Vec<LabTest> {
    (0..n)
        .map(|_| {
            let stem = names.stem(rng, 2, 2);
            let name = format!(
                "{} {}{}",
                LAB_PREFIXES[rng.gen_range(0..LAB_PREFIXES.len())],
                stem,
                LAB_ENDINGS[rng.gen_range(0..LAB_ENDINGS.len())]
            );
            let low = [1u32, 2, 5, 10, 20, 40, 80][rng.gen_range(0..7)];
            let high = low * rng.gen_range(2..6);
            LabTest {
                name,
                unit: LAB_UNITS[rng.gen_range(0..LAB_UNITS.len())].to_string(),
                low: low as f32,
                high: high as f32,
            }
        })
        .collect()
}

fn pathogens(rng: &mut ChaCha8Rng, names: &mut NameGen, n: usize) -> Vec<Pathogen> {
    (0..n)
        .map(|_| {
            let (genus_end, kind) = PATHOGEN_GENERA[rng.gen_range(0..PATHOGEN_GENERA.len())];
            let genus = names.stem(rng, 1, 2);
            let species = names.stem(rng, 1, 2);
            let sp_end = PATHOGEN_SPECIES[rng.gen_range(0..PATHOGEN_SPECIES.len())];
            Pathogen { name: format!("{}{genus_end} {species}{sp_end}", capitalize(&genus)), kind: kind.to_string() }
        })
        .collect()
}

fn drug_classes(rng: &mut ChaCha8Rng, names: &mut NameGen, n: usize) -> Vec<DrugClass> {
    let mut suffixes = BTreeSet::new();
    (0..n)
        .map(|i| {
            let system = i % ORGAN_SYSTEMS.len();
            let (kind, actions) = TARGET_KINDS[rng.gen_range(0..TARGET_KINDS.len())];
            let (noun, verb) = actions[rng.gen_range(0..actions.len())];
            let stem = names.stem(rng, 1, 2);
            let (target, short) = if kind == "ase" {
                let t = format!("{stem}ase");
                (t.clone(), t)
            } else {
                (format!("{stem} {kind}"), stem.clone())
            };
            let suffix = loop {
                let s = names.stem(rng, 1, 1);
                if suffixes.insert(s.clone()) {
                    break s;
                }
            };
            DrugClass {
                name: format!("{short} {noun}s"),
                mechanism: format!("{}, which {}", verb.replace("{t}", &target), ORGAN_SYSTEMS[system].3),
                target: if kind == "ase" { target } else { format!("the {target}") },
                suffix,
                system,
            }
        })
        .collect()
}

fn drugs(rng: &mut ChaCha8Rng, names: &mut NameGen, classes: &[DrugClass], n: usize) -> Vec<Drug> {
    (0..n)
        .map(|i| {
            let class = i % classes.len();
            let name = loop {
                let stem = names.stem(rng, 1, 2);
                let name = format!("{stem}{}", classes[class].suffix);
                if names.claim(&name) {
                    break name;
                }
            };
            let dose_min_mg = DOSES_MG[rng.gen_range(0..DOSES_MG.len())];
            let route = if ORGAN_SYSTEMS[classes[class].system].0 == "dermatological" && rng.gen_bool(0.6) {
                "topical"
            } else {
                ROUTES[rng.gen_range(0..ROUTES.len() - 1)]
            };
            Drug {
                name,
                class,
                dose_min_mg,
                dose_max_mg: dose_min_mg * DOSE_SPANS[rng.gen_range(0..DOSE_SPANS.len())],
                frequency: FREQUENCIES[rng.gen_range(0..FREQUENCIES.len())].to_string(),
                route: route.to_string(),
                half_life_h: rng.gen_range(2..49),
                contraindications: Vec::new(),
                interactions: Vec::new(),
            }
        })
        .collect()
}

fn disease_name(rng: &mut ChaCha8Rng, names: &mut NameGen) -> String {
    loop {
        let stem = names.stem(rng, 2, 2);
        let pat = DISEASE_PATTERNS[rng.gen_range(0..DISEASE_PATTERNS.len())];
        let name = pat.replace("{S}", &capitalize(&stem)).replace("{s}", &stem);
        if names.claim(&name) {
            return name;
        }
    }
}

fn diseases(
    rng: &mut ChaCha8Rng,
    names: &mut NameGen,
    config: &WorldConfig,
    classes: &[DrugClass],
    drugs: &[Drug],
    n_pathogens: usize,
) -> Result<Vec<Disease>> {
    let systems = ORGAN_SYSTEMS.len();
    // Drugs of each system, in a shuffled order; first-line drugs are taken without reuse.
    let mut by_system: Vec<Vec<usize>> = vec![Vec::new(); systems];
    for (d, drug) in drugs.iter().enumerate() {
        by_system[classes[drug.class].system].push(d);
    }
    for v in &mut by_system {
        v.shuffle(rng);
    }
    let mut unused = by_system.clone();
    let mut symptom_sets: Vec<BTreeSet<usize>> = Vec::new();
    let mut out = Vec::with_capacity(config.diseases);
    let mut order: Vec<usize> = (0..config.diseases).map(|i| i % systems).collect();
    order.shuffle(rng);
    for system in order {
        let name = disease_name(rng, names);
        let mut attempts = 0;
        let symptoms = loop {
            attempts += 1;
            if attempts > 100_000 {
                return Err(DataError::config(
                    "world config",
                    format!("{} symptoms are too few for {} distinct symptom sets", config.symptoms, config.diseases),
                ));
            }
            let k = rng.gen_range(3..=5);
            let set: BTreeSet<usize> = rand::seq::index::sample(rng, config.symptoms, k).into_iter().collect();
            if symptom_sets.iter().all(|s| !s.is_subset(&set) && !set.is_subset(s)) {
                symptom_sets.push(set.clone());
                let mut v: Vec<usize> = set.into_iter().collect();
                v.shuffle(rng);
                break v;
            }
        };
        let n_labs = rng.gen_range(1..=2);
        let labs = rand::seq::index::sample(rng, config.lab_tests, n_labs)
            .into_iter()
            .map(|test| LabMarker {
                test,
                direction: if rng.gen_bool(0.5) { Direction::Elevated } else { Direction::Decreased },
            })
            .collect();
        let pathogen = rng.gen_bool(0.35).then(|| rng.gen_range(0..n_pathogens));
        // The system's drug pool is large enough by validate(): drugs >= diseases + classes.
        let first_line = match unused[system].pop() {
            Some(d) => d,
            None => steal_unused(&mut unused, system).ok_or_else(|| {
                DataError::config("world config", "not enough drugs for one first-line drug per disease")
            })?,
        };
        let first_class = drugs[first_line].class;
        let pool = &by_system[classes[first_class].system];
        let candidates: Vec<usize> = pool.iter().copied().filter(|&d| drugs[d].class != first_class).collect();
        let second_line = if candidates.is_empty() {
            *pool.iter().find(|&&d| d != first_line).unwrap_or(&first_line)
        } else {
            candidates[rng.gen_range(0..candidates.len())]
        };
        out.push(Disease {
            name,
            system: classes[first_class].system,
            symptoms,
            labs,
            pathogen,
            course: COURSES[rng.gen_range(0..COURSES.len())].to_string(),
            population: POPULATIONS[rng.gen_range(0..POPULATIONS.len())].to_string(),
            first_line,
            second_line,
        });
    }
    Ok(out)
}

/// A first-line drug from another system when a system ran out (only with unusual configs).
fn steal_unused(unused: &mut [Vec<usize>], _system: usize) -> Option<usize> {
    let richest = (0..unused.len()).max_by_key(|&s| unused[s].len())?;
    unused[richest].pop()
}

fn add_contraindications(rng: &mut ChaCha8Rng, drugs: &mut [Drug], diseases: &[Disease]) {
    for (d, drug) in drugs.iter_mut().enumerate() {
        let n = rng.gen_range(1..=2);
        while drug.contraindications.len() < n {
            let c = if rng.gen_bool(0.6) {
                let x = rng.gen_range(0..diseases.len());
                if diseases[x].first_line == d || diseases[x].second_line == d {
                    continue;
                }
                Contraindication::Disease(x)
            } else {
                Contraindication::Condition(CONDITIONS[rng.gen_range(0..CONDITIONS.len())].to_string())
            };
            if !drug.contraindications.contains(&c) {
                drug.contraindications.push(c);
            }
        }
    }
}

fn add_interactions(rng: &mut ChaCha8Rng, drugs: &mut [Drug]) {
    let n = drugs.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    for &a in &order {
        if drugs[a].interactions.len() >= 2 {
            continue;
        }
        let b = rng.gen_range(0..n);
        if b == a || drugs[b].interactions.len() >= 3 || drugs[a].interactions.iter().any(|i| i.drug == b) {
            continue;
        }
        let effect = INTERACTION_EFFECTS[rng.gen_range(0..INTERACTION_EFFECTS.len())].to_string();
        drugs[a].interactions.push(Interaction { drug: b, effect: effect.clone() });
        drugs[b].interactions.push(Interaction { drug: a, effect });
    }
}
