//! The world generator: determinism, the issue's minimum sizes, and the integrity of relations.

mod common;

use data::world::{generate, Contraindication, WorldConfig};
use std::collections::BTreeSet;

#[test]
fn world_is_deterministic_and_depends_on_seed() {
    let a = common::small_world(7);
    let b = common::small_world(7);
    let c = common::small_world(8);
    assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
    assert_ne!(a.diseases[0].name, c.diseases[0].name);
}

#[test]
fn default_world_meets_the_issue_minimums_and_relations_are_consistent() {
    let w = generate(0, &WorldConfig::default()).unwrap();
    assert!(w.diseases.len() >= 300 && w.drugs.len() >= 400, "issue 4 asks >= 300 diseases, >= 400 drugs");
    assert!(!w.symptoms.is_empty() && !w.lab_tests.is_empty() && !w.pathogens.is_empty());
    assert!(w.organ_systems.len() >= 10);
    // Every name is unique across all entity kinds.
    let mut names = BTreeSet::new();
    for n in w.diseases.iter().map(|d| &d.name).chain(w.drugs.iter().map(|d| &d.name)) {
        assert!(names.insert(n.to_lowercase()), "duplicate name {n}");
    }
    let mut first_lines = BTreeSet::new();
    for (i, d) in w.diseases.iter().enumerate() {
        assert!((3..=5).contains(&d.symptoms.len()));
        assert!(!d.labs.is_empty());
        assert!(first_lines.insert(d.first_line), "first-line drug of {} is shared", d.name);
        assert_ne!(d.first_line, d.second_line);
        assert_eq!(w.class_of(d.first_line).system, d.system);
        assert_eq!(w.class_of(d.second_line).system, d.system);
        for x in [d.first_line, d.second_line] {
            assert!(
                !w.drugs[x].contraindications.contains(&Contraindication::Disease(i)),
                "{} treats and is contraindicated",
                w.drugs[x].name
            );
        }
        // Two-hop questions need each symptom set to identify its disease.
        let si: BTreeSet<_> = d.symptoms.iter().collect();
        for (j, o) in w.diseases.iter().enumerate().filter(|(j, _)| *j != i) {
            let so: BTreeSet<_> = o.symptoms.iter().collect();
            assert!(!si.is_subset(&so), "symptoms of {} are a subset of those of disease {j}", d.name);
        }
    }
    for (a, x) in w.drugs.iter().enumerate() {
        assert!(x.dose_min_mg < x.dose_max_mg);
        assert!(!x.contraindications.is_empty());
        for i in &x.interactions {
            assert!(
                w.drugs[i.drug].interactions.iter().any(|j| j.drug == a),
                "interaction {a}-{} is one-sided",
                i.drug
            );
        }
    }
}

#[test]
fn impossible_world_configs_are_rejected_not_looped_on() {
    let mut c = common::small_config();
    c.drugs = c.diseases; // fewer drugs than diseases + classes
    assert!(generate(0, &c).is_err());
    let mut c = common::small_config();
    c.diseases = 5;
    assert!(generate(0, &c).is_err());
    let mut c = common::small_config();
    c.symptoms = 12;
    c.diseases = 2000;
    c.drugs = 2100;
    let err = generate(0, &c).unwrap_err().to_string();
    assert!(err.contains("symptom"), "{err}");
}

#[test]
fn shipped_default_config_is_the_built_in_default() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/data/world-default.json");
    let spec: data::world_dir::WorldSpec = data::fsutil::read_json(&path).unwrap();
    assert_eq!(spec, data::world_dir::WorldSpec::default());
}

#[test]
fn world_directory_is_byte_identical_for_same_seed_and_size_and_atomic_on_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = common::small_spec(4, 30_000);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    data::world_dir::build_world_dir(&spec, &a, &mut |_| {}).unwrap();
    data::world_dir::build_world_dir(&spec, &b, &mut |_| {}).unwrap();
    for rel in ["manifest.json", "world.json", "corpus/medical.jsonl", "corpus/general.jsonl", "eval/two_hop.jsonl"] {
        assert_eq!(std::fs::read(a.join(rel)).unwrap(), std::fs::read(b.join(rel)).unwrap(), "{rel}");
    }
    // An impossible spec fails and leaves nothing behind.
    let mut bad = spec.clone();
    bad.world.drugs = 10;
    let c = tmp.path().join("c");
    assert!(data::world_dir::build_world_dir(&bad, &c, &mut |_| {}).is_err());
    assert!(!c.exists());
    // A non-empty output directory is refused, not overwritten.
    let err = data::world_dir::build_world_dir(&spec, &a, &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("not empty"), "{err}");
}
