//! `data::prepare` end to end on small hand-made corpora: every step's counts, the outputs
//! (packable, hashed, scrubbed), the reports, resume and thread-count independence, injected
//! duplicates, and bad input (wrong Parquet schema, too many bad records, an eval file inside the
//! corpus), each failing before or without any output.

use data::prepare::finish::shingle_jaccard;
use data::prepare::manifest::{DupReportLine, PrepareManifest};
use data::prepare::sources::parquet_write::{write_parquet, ColumnData};
use data::prepare::{prepare, prepare_with, Hooks, PrepareConfig};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const SENTENCES: &[&str] = &[
    "The patient was admitted with shortness of breath and a productive cough.",
    "Chest radiography showed a right lower lobe consolidation consistent with pneumonia.",
    "Empirical antibiotic therapy was started after blood cultures were drawn.",
    "Her blood pressure remained stable throughout the night on the ward.",
    "The cardiology team reviewed the electrocardiogram and found atrial fibrillation.",
    "Anticoagulation was discussed with the family before discharge.",
    "A low dose of the beta blocker controlled the heart rate within two days.",
    "Renal function improved once the dehydration had been corrected.",
    "The dermatology consult described a widespread maculopapular rash on the trunk.",
    "Thyroid function tests were ordered to exclude an endocrine cause of fatigue.",
    "Insulin requirements rose during the infection and fell again afterwards.",
    "An abdominal ultrasound showed gallstones without signs of cholecystitis.",
    "The neurologist found no focal deficit and the headache resolved with rest.",
    "Physiotherapy helped the elderly man walk again after his hip fracture.",
    "Screening for depression was positive and a psychiatry referral was made.",
    "The child was vaccinated according to the national immunisation schedule.",
    "Iron deficiency anaemia was treated with oral supplements for three months.",
    "The surgeon recommended a laparoscopic approach because of the small lesion.",
    "Follow up imaging in six weeks showed complete resolution of the opacity.",
    "Smoking cessation advice was given at every visit during the year.",
    "Genetic counselling was offered because of the family history of cancer.",
    "The asthma action plan was updated with a higher inhaled steroid dose.",
    "Urinary symptoms improved after a short course of treatment for the infection.",
    "The midwife monitored the pregnancy closely because of rising blood pressure.",
];

/// `n` distinct English documents of 8 sentences each, from a seed.
fn documents(n: usize, seed: u64) -> Vec<String> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let mut s: Vec<&str> = SENTENCES.choose_multiple(&mut rng, 8).copied().collect();
            s.shuffle(&mut rng);
            format!("Case {i} (record {}). {}", rng.gen::<u32>(), s.join(" "))
        })
        .collect()
}

const Q1: &str = "A 45-year-old man presents with crushing chest pain radiating to the left arm and \
                  diaphoresis. What is the most likely diagnosis?";

fn write_eval(dir: &Path) -> PathBuf {
    let path = dir.join("medqa.jsonl");
    let lines = [
        json!({"question": Q1, "options": {"A": "Acute myocardial infarction", "B": "Pneumothorax"}, "answer_idx": "A"}),
        json!({"question": "Which vitamin deficiency causes scurvy in sailors on long voyages without fruit?",
               "options": {"A": "Vitamin C", "B": "Vitamin D"}, "answer_idx": "A"}),
    ];
    std::fs::write(&path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    path
}

fn line(v: Value) -> Vec<u8> {
    let mut b = serde_json::to_vec(&v).unwrap();
    b.push(b'\n');
    b
}

/// A corpus of three sources with one case of every step; returns the config path.
fn fixture(dir: &Path) -> PathBuf {
    let docs = documents(6, 1);
    let mut notes = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        notes.extend(line(json!({"doc_id": format!("n{i}"), "body": {"text": d}})));
    }
    // Exact duplicate of n1 (differs only in spacing), near duplicate of n2 (one word changed).
    notes.extend(line(json!({"doc_id": "dup-exact", "body": {"text": docs[1].replace(". ", ".   ")}})));
    notes.extend(line(json!({"doc_id": "dup-near", "body": {"text": docs[2].replacen("the", "a", 1)}})));
    notes.extend(line(json!({"doc_id": "pii", "body": {"text": format!(
        "Contact jane.doe@example.org or call 555-123-4567. MRN: 00482913. {}", documents(1, 9)[0])}})));
    notes.extend(line(json!({"doc_id": "german", "body": {"text":
        "Der Patient klagte über starke Brustschmerzen, die in den linken Arm ausstrahlten, und wurde \
         sofort in die Notaufnahme gebracht, wo ein Herzinfarkt festgestellt wurde."}})));
    notes.extend(line(json!({"doc_id": "short", "body": {"text": "Too short."}})));
    notes.extend(line(json!({"doc_id": "empty", "body": {"text": " \u{200B} "}})));
    notes.extend(line(json!({"doc_id": "leak", "body": {"text": format!("Exam question bank. {Q1} Answer: acute myocardial infarction.")}})));
    notes.extend(b"{\"doc_id\": \"latin1\", \"body\": {\"text\": \"caf\xe9 au lait\"}}\n");
    notes.extend(line(json!({"doc_id": "no-text", "title": "only a title"})));
    notes.extend(b"{not json\n\n");
    std::fs::write(dir.join("notes.jsonl"), notes).unwrap();

    let abstracts = documents(3, 2);
    let mut text: Vec<Option<Vec<u8>>> = abstracts.iter().map(|a| Some(a.as_bytes().to_vec())).collect();
    text.push(None);
    text.push(Some(b"bad \xff bytes".to_vec()));
    write_parquet(
        &dir.join("abstracts.parquet"),
        &[
            ("text", ColumnData::Strings(text)),
            ("pmid", ColumnData::Ints((0..5).map(|i| Some(1000 + i)).collect())),
            (
                "url",
                ColumnData::Strings((0..5).map(|i| Some(format!("https://pubmed.example/{i}").into_bytes())).collect()),
            ),
        ],
        2,
    )
    .unwrap();

    let texts = dir.join("letters");
    std::fs::create_dir_all(texts.join("sub")).unwrap();
    let letters = documents(2, 3);
    std::fs::write(texts.join("a.txt"), &letters[0]).unwrap();
    std::fs::write(texts.join("sub/b.txt"), &letters[1]).unwrap();
    std::fs::write(texts.join("ignored.md"), "not a txt file").unwrap();

    write_eval(dir);
    let config = json!({
        "sources": [
            {"name": "notes", "format": "jsonl", "path": "notes.jsonl", "text_fields": ["body.text"],
             "id_field": "doc_id", "domain": "medical", "license": "CC-BY-4.0"},
            {"name": "abstracts", "format": "parquet", "path": "abstracts.parquet", "id_field": "pmid",
             "url_field": "url", "domain": "medical", "license": "CC0-1.0"},
            {"name": "letters", "format": "text", "path": "letters", "domain": "medical_chat",
             "license": "proprietary", "split": "val"}
        ],
        "eval": [{"name": "medqa", "format": "medqa", "path": "medqa.jsonl"}],
        "max_bad_fraction": 0.5,
        "batch_docs": 3
    });
    let path = dir.join("prepare.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    path
}

fn read_lines<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Every file under `dir` with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn every_step_is_counted_and_the_output_is_packable() {
    let tmp = tempfile::tempdir().unwrap();
    let config = data::prepare::load_config(&fixture(tmp.path())).unwrap();
    let out = tmp.path().join("out");
    let m: PrepareManifest = prepare(&config, &out, &mut |_| {}).unwrap();
    let c = &m.counts;
    // notes: 16 records (the blank line is not one); abstracts: 5 rows; letters: 2 files.
    assert_eq!(c.records, 16 + 5 + 2, "{c:#?}");
    assert_eq!(c.bad_records, 3 + 2);
    let notes = &m.files[0];
    assert_eq!((notes.invalid_utf8, notes.invalid_json, notes.missing_text, notes.blank_lines), (1, 1, 1, 1));
    assert!(notes.examples[0].starts_with("line 14: not valid UTF-8"), "{:?}", notes.examples);
    let abstracts = &m.files[1];
    assert_eq!((abstracts.invalid_utf8, abstracts.missing_text), (1, 1), "{abstracts:?}");
    assert_eq!((c.empty, c.too_short), (1, 1));
    assert_eq!(c.language, BTreeMap::from([("deu".to_string(), 1)]));
    assert_eq!(c.pii.get("email"), Some(&1));
    assert_eq!(c.pii.get("phone"), Some(&1));
    assert_eq!(c.pii.get("record_id"), Some(&1));
    assert_eq!(c.pii_documents, 1);
    assert_eq!(c.contaminated, BTreeMap::from([("medqa".to_string(), 1)]));
    assert_eq!((c.exact_duplicates, c.near_duplicates), (1, 1));
    assert_eq!(c.kept, 6 + 1 + 3 + 2);
    assert_eq!(c.splits.values().sum::<u64>(), c.kept);
    assert!(c.splits["val"] >= 2, "the letters source is all val");
    assert_eq!(m.eval[0].items_found_in_corpus, 1);
    assert!(m.warnings.is_empty());

    // Shards: hashes and counts match the files; `data pack`'s reader takes every split.
    let mut docs = 0;
    for s in &m.shards {
        let p = out.join(&s.file);
        assert_eq!(data::fsutil::sha256_file(&p).unwrap(), s.sha256, "{}", s.file);
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count() as u64, s.documents);
        docs += s.documents;
    }
    assert_eq!(docs, c.kept);
    let mut all = Vec::new();
    for split in ["train", "val", "test"] {
        if out.join(split).is_dir() {
            all.extend(data::world_dir::read_corpus(&out.join(split)).unwrap());
        }
    }
    assert_eq!(all.len() as u64, c.kept);
    let text: String = all.iter().map(|d| d.text.as_str()).collect::<Vec<_>>().join("\n");
    assert!(!text.contains("jane.doe@example.org") && !text.contains("555-123-4567") && !text.contains("00482913"));
    assert!(text.contains("Contact <EMAIL> or call <PHONE>. MRN: <ID>."));
    assert!(!text.contains("crushing chest pain"), "the contaminated document is gone");
    let prepared: Vec<data::prepare::manifest::PreparedDoc> =
        m.shards.iter().flat_map(|s| read_lines::<data::prepare::manifest::PreparedDoc>(&out.join(&s.file))).collect();
    let ab = prepared.iter().find(|d| d.id == "1000").expect("parquet ids from the pmid column");
    assert_eq!(ab.url.as_deref(), Some("https://pubmed.example/0"));
    assert_eq!(ab.license, "CC0-1.0");
    assert!(prepared.iter().any(|d| d.id == "letters:sub/b.txt" && d.source == "letters"));
    assert!(prepared.iter().any(|d| d.tags.iter().any(|t| t.starts_with("C14"))), "cardiovascular tags");

    // Reports.
    let pairs: Vec<DupReportLine> = read_lines(&out.join("dedup_report.jsonl"));
    assert_eq!(pairs.len(), 2);
    let exact = pairs.iter().find(|p| p.removed_id == "dup-exact").unwrap();
    assert_eq!((exact.kept_id.as_str(), exact.jaccard), ("n1", 1.0));
    let near = pairs.iter().find(|p| p.removed_id == "dup-near").unwrap();
    assert!(near.kept_id == "n2" && near.jaccard > 0.7 && near.jaccard < 1.0, "{near:?}");
    let contam: Vec<Value> = read_lines(&out.join("contamination_report.jsonl"));
    assert_eq!(contam.len(), 1);
    assert_eq!(contam[0]["id"], "leak");
    assert!(contam[0]["evidence"].as_str().unwrap().contains("crushing chest pain"), "{}", contam[0]);
    // Nothing else left behind.
    assert!(!tmp.path().join(".out.prepare-work").exists());
    assert!(!out.join("state.json").exists());
}

#[test]
fn a_resumed_run_and_any_thread_count_give_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let config = data::prepare::load_config(&fixture(tmp.path())).unwrap();
    let one = tmp.path().join("one");
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| prepare(&config, &one, &mut |_| {}).unwrap());
    let three = tmp.path().join("three");
    rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap()
        .install(|| prepare(&config, &three, &mut |_| {}).unwrap());
    assert_eq!(tree(&one), tree(&three));

    let resumed = tmp.path().join("resumed");
    let e = prepare_with(&config, &resumed, &mut |_| {}, &Hooks { stop_after_units: Some(2) }).unwrap_err();
    assert!(e.to_string().contains("test hook"), "{e}");
    assert!(!resumed.exists() && tmp.path().join(".resumed.prepare-work/state.json").exists());
    let mut events = Vec::new();
    prepare(&config, &resumed, &mut |p| events.push(p)).unwrap();
    assert!(
        events.iter().any(|p| matches!(p, data::prepare::PrepareProgress::Resumed { units: 2, restarted: None, .. })),
        "{events:?}"
    );
    assert_eq!(tree(&one), tree(&resumed));

    // A changed config discards the interrupted work.
    let other = tmp.path().join("other");
    prepare_with(&config, &other, &mut |_| {}, &Hooks { stop_after_units: Some(1) }).unwrap_err();
    let mut changed = config.clone();
    changed.filter.min_words = 6;
    let mut restarted = None;
    prepare(&changed, &other, &mut |p| {
        if let data::prepare::PrepareProgress::Resumed { restarted: r, .. } = p {
            restarted = r;
        }
    })
    .unwrap();
    assert!(restarted.unwrap().contains("config changed"));
    // The output is never written over.
    let e = prepare(&config, &one, &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("not empty"), "{e}");
}

#[test]
fn injected_duplicates_are_found() {
    // 400 documents of random words, 40 exact copies (re-spaced) and 80 near copies (1.5% of the
    // words replaced): every exact copy and >= 95% of the near copies go, originals stay.
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let vocab: Vec<String> = (0..4000).map(|i| format!("w{i}q{}", rng.gen::<u16>())).collect();
    let base: Vec<Vec<&str>> = (0..400)
        .map(|_| (0..rng.gen_range(80..200)).map(|_| vocab.choose(&mut rng).unwrap().as_str()).collect())
        .collect();
    let mut lines = Vec::new();
    for (i, b) in base.iter().enumerate() {
        lines.extend(line(json!({"id": format!("orig-{i}"), "text": b.join(" ")})));
    }
    for i in 0..40 {
        lines.extend(line(json!({"id": format!("exact-{i}"), "text": base[i * 3].join("  ")})));
    }
    let mut similarity = Vec::new();
    for i in 0..80 {
        // 1% of the words replaced, and at least one (a copy without edits would be exact).
        let orig = &base[i * 5 + 1];
        let forced = rng.gen_range(0..orig.len());
        let near: Vec<&str> = orig
            .iter()
            .enumerate()
            .map(|(j, &w)| if j == forced || rng.gen_bool(0.01) { vocab.choose(&mut rng).unwrap().as_str() } else { w })
            .collect();
        similarity.push(shingle_jaccard(&near.join(" "), &base[i * 5 + 1].join(" "), 5));
        lines.extend(line(json!({"id": format!("near-{i}"), "text": near.join(" ")})));
    }
    std::fs::write(tmp.path().join("c.jsonl"), lines).unwrap();
    let config: PrepareConfig = serde_json::from_value(json!({
        "sources": [{"name": "c", "format": "jsonl", "path": tmp.path().join("c.jsonl"), "id_field": "id",
                     "domain": "general", "license": "CC0-1.0"}],
        "filter": {"languages": []},
        "dedup": {"report_pairs": 1000}
    }))
    .unwrap();
    let out = tmp.path().join("out");
    let m = prepare(&config, &out, &mut |_| {}).unwrap();
    let kept: Vec<String> = m
        .shards
        .iter()
        .flat_map(|s| read_lines::<data::prepare::manifest::PreparedDoc>(&out.join(&s.file)))
        .map(|d| d.id)
        .collect();
    let count = |p: &str| kept.iter().filter(|id| id.starts_with(p)).count();
    assert_eq!(m.counts.exact_duplicates, 40);
    assert_eq!(count("exact-"), 0);
    // Recall over the copies that really are near duplicates (Jaccard of 5-word shingles >= 0.8).
    let similar: Vec<usize> = (0..80).filter(|&i| similarity[i] >= 0.8).collect();
    let found = similar.iter().filter(|&&i| !kept.contains(&format!("near-{i}"))).count();
    println!(
        "near copies removed {} / 80; with J >= 0.8: {found} / {}; originals kept {} / 400",
        80 - count("near-"),
        similar.len(),
        count("orig-")
    );
    assert!(similar.len() >= 60, "{similarity:?}");
    assert!(found as f64 >= 0.95 * similar.len() as f64, "near-duplicate recall {found}/{}", similar.len());
    assert_eq!(count("orig-"), 400, "an original was removed: precision");
    let pairs: Vec<DupReportLine> = read_lines(&out.join("dedup_report.jsonl"));
    assert_eq!(pairs.len() as u64, m.counts.exact_duplicates + m.counts.near_duplicates);
    assert!(pairs.iter().all(|p| p.jaccard > 0.4), "every reported pair is similar");
}

fn expect_clean_error(config: &PrepareConfig, dir: &Path, must: &[&str]) -> String {
    let out = dir.join("out");
    let e = prepare(config, &out, &mut |_| {}).unwrap_err().to_string();
    for m in must {
        assert!(e.contains(m), "`{m}` missing from: {e}");
    }
    assert!(!out.exists(), "no output after: {e}");
    assert!(!dir.join(".out.prepare-work").exists(), "no work directory after: {e}");
    e
}

#[test]
fn a_parquet_file_with_the_wrong_schema_names_file_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("wrong.parquet");
    write_parquet(&p, &[("body", ColumnData::Strings(vec![Some(b"x".to_vec())]))], 10).unwrap();
    let mut config: PrepareConfig = serde_json::from_value(json!({
        "sources": [{"name": "w", "format": "parquet", "path": p, "domain": "medical", "license": "CC0-1.0"}]
    }))
    .unwrap();
    expect_clean_error(&config, tmp.path(), &["wrong.parquet", "no column `text`", "columns: body"]);
    write_parquet(&p, &[("text", ColumnData::Ints(vec![Some(1)]))], 10).unwrap();
    expect_clean_error(&config, tmp.path(), &["wrong.parquet", "column `text` is INT64", "expected a string"]);
    std::fs::write(&p, b"PAR1 this is not parquet").unwrap();
    expect_clean_error(&config, tmp.path(), &["wrong.parquet", "not a readable Parquet file"]);
    config.sources[0].path = tmp.path().join("missing.parquet");
    expect_clean_error(&config, tmp.path(), &["missing.parquet"]);
}

#[test]
fn too_many_bad_records_or_a_wrong_field_mapping_fail_with_the_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("c.jsonl");
    let mut bytes = line(json!({"content": documents(1, 5)[0]}));
    bytes.extend(line(json!({"content": documents(1, 6)[0]})));
    std::fs::write(&p, &bytes).unwrap();
    let config: PrepareConfig = serde_json::from_value(json!({
        "sources": [{"name": "c", "format": "jsonl", "path": p, "domain": "medical", "license": "CC0-1.0"}]
    }))
    .unwrap();
    expect_clean_error(
        &config,
        tmp.path(),
        &["c.jsonl", "2 of 2 records are bad", "without text in [\"text\"]", "line 1"],
    );
}

#[test]
fn an_eval_file_inside_the_corpus_is_refused_or_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let eval = write_eval(tmp.path());
    // The corpus holds both eval items (in MedQA's own JSON lines) and some ordinary documents.
    let mut bytes = Vec::new();
    for l in std::fs::read_to_string(&eval).unwrap().lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        bytes.extend(line(
            json!({"text": format!("{} {}", v["question"].as_str().unwrap(), v["options"]["A"].as_str().unwrap())}),
        ));
    }
    for d in documents(3, 8) {
        bytes.extend(line(json!({ "text": d })));
    }
    std::fs::write(tmp.path().join("c.jsonl"), bytes).unwrap();
    let mut config: PrepareConfig = serde_json::from_value(json!({
        "sources": [{"name": "c", "format": "jsonl", "path": tmp.path().join("c.jsonl"), "domain": "medical", "license": "CC0-1.0"}],
        "eval": [{"name": "medqa", "format": "medqa", "path": eval}]
    }))
    .unwrap();
    expect_clean_error(
        &config,
        tmp.path(),
        &["medqa.jsonl", "every one of its 2 items", "2 documents", "on_full_overlap"],
    );
    config.contamination.on_full_overlap = data::prepare::config::OnFullOverlap::Warn;
    let m = prepare(&config, &tmp.path().join("out"), &mut |_| {}).unwrap();
    assert_eq!(m.warnings.len(), 1);
    assert_eq!((m.counts.kept, m.counts.contaminated["medqa"]), (3, 2));
    // An eval file that does not parse fails first, naming file and line.
    std::fs::write(&eval, "{\"question\": \"q\"}\n").unwrap();
    let e = prepare(&config, &tmp.path().join("out2"), &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("medqa.jsonl:1"), "{e}");
}

#[test]
fn the_example_config_parses_and_validates() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/data/prepare-example.json");
    let c: PrepareConfig = data::fsutil::read_json(&p).unwrap();
    data::prepare::check_config(&c).unwrap();
    assert_eq!(c.sources.len(), 4);
    assert_eq!(c.eval.len(), 3);
}
