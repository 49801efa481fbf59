//! Evaluation sets: held out from the corpus (n-gram check that can fail), answers that agree
//! with the world, the schema's validation, and readers for the public formats.

mod common;

use data::eval::overlap::NgramIndex;
use data::eval::readers::{read_eval_file, CopBase, EvalFormat};
use data::eval::{generate_eval, read_mcq_jsonl, EvalConfig, McqItem};
use data::world_dir::{build_world_dir, read_corpus};
use std::collections::BTreeMap;
use std::io::Write;

fn small_eval(seed: u64) -> (data::world::World, data::eval::EvalSets) {
    let w = common::small_world(seed);
    let cfg = EvalConfig { fact_recall: 200, two_hop: 40, general: 60 };
    let e = generate_eval(&w, seed, &cfg).unwrap();
    (w, e)
}

#[test]
fn eval_sets_are_held_out_from_the_corpus() {
    for seed in [0, 11] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("world");
        let m = build_world_dir(&common::small_spec(seed, 120_000), &out, &mut |_| {}).unwrap();
        assert!(m.overlap.is_clean() && m.overlap.items == 220);
        let docs = read_corpus(&out).unwrap();
        let mut items = Vec::new();
        for set in ["fact_recall", "two_hop", "general"] {
            items.extend(read_mcq_jsonl(&out.join(format!("eval/{set}.jsonl"))).unwrap());
        }
        // Recomputed here from the files written.
        let index = NgramIndex::new(docs.iter().map(|d| d.text.as_str()), 13);
        let report = index.check(&items);
        assert!(report.is_clean(), "{:?}", &report.overlapping[..report.overlapping.len().min(3)]);
        // Stricter on single-fact questions: not even 8 words of a question stem occur in training
        // (answers are facts, so they are left out; general questions quote definitions).
        let stems: Vec<McqItem> = items
            .iter()
            .filter(|it| it.set == "fact_recall")
            .map(|it| McqItem {
                options: [("A".into(), "-".into()), ("B".into(), "+".into())].into(),
                answer: "A".into(),
                ..it.clone()
            })
            .collect();
        let report = NgramIndex::new(docs.iter().map(|d| d.text.as_str()), 8).check(&stems);
        assert!(report.is_clean(), "{:?}", &report.overlapping[..report.overlapping.len().min(3)]);
        for it in &items {
            assert!(docs.iter().all(|d| !d.text.contains(&it.question)), "{} appears verbatim", it.id);
        }
    }
}

#[test]
fn overlap_check_catches_a_planted_question() {
    let (_, e) = small_eval(2);
    let it = &e.two_hop[0];
    let planted = format!("Some notes. {} Answer: {}.", it.question, it.answer_text());
    let clean = NgramIndex::new(["unrelated text about a story"], 13).check(&e.two_hop);
    assert!(clean.is_clean());
    let report = NgramIndex::new(["unrelated text about a story", planted.as_str()], 13).check(&e.two_hop);
    assert!(report.overlapping.iter().any(|(id, _)| *id == it.id), "{:?}", report.overlapping);
    // A copy of the answer alone is a fact, not a leaked question: not flagged.
    let answer_only = format!("The drug {} is used.", it.answer_text());
    assert!(NgramIndex::new([answer_only.as_str()], 13).check(&e.two_hop).is_clean());
}

#[test]
fn answers_agree_with_the_world() {
    let (w, e) = small_eval(4);
    let drug = |name: &str| w.drugs.iter().position(|d| d.name == name).unwrap();
    let disease = |name: &str| w.diseases.iter().position(|d| d.name == name).unwrap();
    assert_eq!(e.fact_recall.len(), 200);
    for it in &e.fact_recall {
        it.validate().unwrap();
        assert_eq!(it.options.len(), 4);
        let s = &it.meta["subject"];
        let expected = match it.meta["kind"].as_str() {
            "first_line" => w.drugs[w.diseases[disease(s)].first_line].name.clone(),
            "second_line" => w.drugs[w.diseases[disease(s)].second_line].name.clone(),
            "organ_system" => w.organ_systems[w.diseases[disease(s)].system].name.clone(),
            "drug_class" => w.class_of(drug(s)).name.clone(),
            "mechanism" => w.class_of(drug(s)).mechanism.clone(),
            "pathogen" => w.pathogens[w.diseases[disease(s)].pathogen.unwrap()].name.clone(),
            "lab_marker" => {
                let m = &w.diseases[disease(s)].labs[0];
                format!("{} {}", m.direction.word(), w.lab_tests[m.test].name)
            }
            k => panic!("unknown kind {k}"),
        };
        assert_eq!(it.answer_text(), expected, "{}", it.id);
    }
    for it in &e.two_hop {
        let d = &w.diseases[disease(&it.meta["disease"])];
        assert_eq!(it.answer_text(), w.drugs[d.first_line].name);
        assert!(!it.question.contains(&d.name), "two-hop question names the disease");
        for &s in &d.symptoms {
            assert!(it.question.contains(&w.symptoms[s].name));
        }
        // The intermediate disease is unique: no other disease has all the listed symptoms.
        let listed: Vec<usize> = d.symptoms.clone();
        let matches = w.diseases.iter().filter(|o| listed.iter().all(|s| o.symptoms.contains(s))).count();
        assert_eq!(matches, 1);
    }
    for it in &e.general {
        if it.meta["kind"] == "arithmetic" {
            let nums: Vec<i64> =
                it.question.split(|c: char| !c.is_ascii_digit()).filter_map(|t| t.parse().ok()).collect();
            assert_eq!(it.answer_text().parse::<i64>().unwrap(), nums[0] + nums[1]);
        }
    }
}

#[test]
fn answer_letters_are_balanced() {
    let (_, e) = small_eval(6);
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for it in e.fact_recall.iter().chain(&e.general) {
        *count.entry(it.answer.clone()).or_default() += 1;
    }
    let n: usize = count.values().sum();
    for (letter, c) in count {
        let share = c as f64 / n as f64;
        assert!((0.15..0.35).contains(&share), "{letter}: {share}");
    }
}

fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
    p
}

#[test]
fn medqa_reader_reads_the_public_format() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        &tmp,
        "medqa.jsonl",
        br#"{"question": "A 23-year-old woman has fever. Which drug?", "answer": "Nitrofurantoin", "options": {"A": "Ampicillin", "B": "Ceftriaxone", "C": "Doxycycline", "D": "Nitrofurantoin"}, "meta_info": "step2&3", "answer_idx": "D"}

{"question": "Second?", "answer": "Yes", "options": {"A": "Yes", "B": "No", "C": "Maybe", "D": "Never", "E": "Always"}, "meta_info": "step1", "answer_idx": "A"}
"#,
    );
    let items = read_eval_file(&p, EvalFormat::MedQa).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!((items[0].answer.as_str(), items[0].answer_text()), ("D", "Nitrofurantoin"));
    assert_eq!(items[0].id, "medqa-1");
    assert_eq!(items[1].id, "medqa-3", "ids follow file lines");
    assert_eq!(items[1].options.len(), 5);
    assert_eq!(items[0].meta["meta_info"], "step2&3");
}

#[test]
fn medqa_reader_rejects_an_answer_that_contradicts_answer_idx() {
    let tmp = tempfile::tempdir().unwrap();
    let good = r#"{"question": "Q?", "answer": "x", "options": {"A": "x", "B": "y"}, "answer_idx": "A"}"#;
    let bad = r#"{"question": "Q?", "answer": "y", "options": {"A": "x", "B": "y"}, "answer_idx": "A"}"#;
    let p = write(&tmp, "m.jsonl", format!("{good}\n{bad}\n").as_bytes());
    let err = read_eval_file(&p, EvalFormat::MedQa).unwrap_err().to_string();
    assert!(err.contains("m.jsonl:2:") && err.contains("differs"), "{err}");
}

#[test]
fn medmcqa_reader_maps_cop_in_both_numberings() {
    let tmp = tempfile::tempdir().unwrap();
    let line = |cop: i64| {
        format!(
            r#"{{"id": "e9ad", "question": "Which vitamin?", "exp": "..", "cop": {cop}, "opa": "A1", "opb": "B2", "opc": "C3", "opd": "D4", "subject_name": "Biochemistry", "topic_name": null, "choice_type": "single"}}"#
        )
    };
    let p = write(&tmp, "one.jsonl", format!("{}\n{}\n", line(1), line(4)).as_bytes());
    let items = read_eval_file(&p, EvalFormat::MedMcqa(CopBase::One)).unwrap();
    assert_eq!((items[0].answer_text(), items[1].answer_text()), ("A1", "D4"));
    assert_eq!(items[0].meta["subject_name"], "Biochemistry");
    let p = write(&tmp, "zero.jsonl", format!("{}\n{}\n", line(0), line(3)).as_bytes());
    let items = read_eval_file(&p, EvalFormat::MedMcqa(CopBase::Zero)).unwrap();
    assert_eq!((items[0].answer_text(), items[1].answer_text()), ("A1", "D4"));
    // 0 is out of range for the 1-based files: an error, not a shifted answer.
    let err = read_eval_file(&p, EvalFormat::MedMcqa(CopBase::One)).unwrap_err().to_string();
    assert!(err.contains("zero.jsonl:1:") && err.contains("cop 0"), "{err}");
    let p = write(&tmp, "test.jsonl", br#"{"question": "Q", "opa": "a", "opb": "b", "opc": "c", "opd": "d"}"#);
    let err = read_eval_file(&p, EvalFormat::MedMcqa(CopBase::One)).unwrap_err().to_string();
    assert!(err.contains("no `cop`"), "{err}");
}

#[test]
fn pubmedqa_reader_maps_decisions_to_yes_no_maybe() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        &tmp,
        "ori_pqal.json",
        br#"{"21645374": {"QUESTION": "Do mitochondria play a role?", "CONTEXTS": ["First.", "Second."], "LABELS": ["BACKGROUND", "RESULTS"], "MESHES": [], "YEAR": "2011", "reasoning_required_pred": "yes", "reasoning_free_pred": "yes", "final_decision": "yes", "LONG_ANSWER": "Yes."},
            "16418930": {"QUESTION": "Is it useful?", "CONTEXTS": ["Only."], "final_decision": "maybe"}}"#,
    );
    let items = read_eval_file(&p, EvalFormat::PubMedQa).unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].id, "pubmedqa-16418930");
    assert_eq!(items[0].answer_text(), "maybe");
    assert_eq!(items[1].answer_text(), "yes");
    assert_eq!(items[1].context.as_deref(), Some("First.\nSecond."));
    let p = write(&tmp, "bad.json", br#"{"1": {"QUESTION": "Q", "final_decision": "perhaps"}}"#);
    let err = read_eval_file(&p, EvalFormat::PubMedQa).unwrap_err().to_string();
    assert!(err.contains("bad.json") && err.contains("PMID 1") && err.contains("perhaps"), "{err}");
}

#[test]
fn bad_eval_lines_are_errors_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, e) = small_eval(1);
    let good = serde_json::to_string(&e.general[0]).unwrap();
    let p = write(&tmp, "utf8.jsonl", &[good.as_bytes(), b"\n{\"question\": \"caf\xe9\"}\n"].concat());
    let err = read_mcq_jsonl(&p).unwrap_err().to_string();
    assert!(err.contains("utf8.jsonl:2:") && err.contains("UTF-8"), "{err}");
    let p = write(&tmp, "json.jsonl", format!("{good}\n{good}\n{{\"id\": 3,\n").as_bytes());
    let err = read_mcq_jsonl(&p).unwrap_err().to_string();
    assert!(err.contains("json.jsonl:3:"), "{err}");
    let mut it: McqItem = e.general[0].clone();
    it.answer = "E".into();
    let p = write(&tmp, "answer.jsonl", serde_json::to_string(&it).unwrap().as_bytes());
    let err = read_mcq_jsonl(&p).unwrap_err().to_string();
    assert!(err.contains("answer.jsonl:1:") && err.contains("not one of the options"), "{err}");
}
