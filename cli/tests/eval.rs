//! `moe-cli eval` and `moe-cli report` end to end on tiny models: a dense model and its MoE
//! (surgery) scored on the same items of a small world, resumed without recomputation, the
//! report built from the eval and a phase's metrics; bad input (unknown schema, an answer key
//! outside the options, models with different tokenizers compared on perplexity, eval items
//! that overlap the training text).

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn moe_cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moe-cli")).current_dir(dir).args(["--threads", "2"]).args(args).output().unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> Output {
    let out = moe_cli(dir, args);
    assert!(out.status.success(), "moe-cli {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Fails with exit code 1 and a message holding every one of `must`; returns stderr.
fn fails(dir: &Path, args: &[&str], must: &[&str]) -> String {
    let out = moe_cli(dir, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "moe-cli {args:?} should fail: {err}");
    for m in must {
        assert!(err.contains(m), "stderr lacks `{m}`: {err}");
    }
    err
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const EVAL: &[&str] = &[
    "eval",
    "--model",
    "dense=dense",
    "--model",
    "moe=moe",
    "--model",
    "q8=moe.gguf",
    "--sets",
    "W",
    "--tokenizer",
    "T",
    "--max-items",
    "5",
    "--gen-tokens",
    "4",
    "--ppl-docs",
    "3",
    "--dev-every",
    "5",
    "--ppl-seq-len",
    "64",
    "--quiet",
];

#[test]
fn eval_scores_every_model_on_the_same_items_resumes_and_feeds_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["data", "world", "--seed", "1", "--tokens", "30000", "--out", "W"]);
    ok(d, &["data", "tokenizer", "--corpus", "W", "--vocab", "1024", "--out", "T"]);
    ok(d, &["init", "--preset", "tiny-dense", "--seed", "2", "--out", "dense"]);
    ok(d, &["surgery", "--model", "dense", "--preset", "tiny-k1p1-n16", "--out", "moe"]);
    ok(d, &["export", "gguf", "--model", "moe", "--type", "q8_0", "--no-tokenizer", "--out", "moe.gguf"]);

    let mut args = EVAL.to_vec();
    args.extend(["--out", "E"]);
    let first = String::from_utf8(ok(d, &args).stdout).unwrap();
    let s = json(&d.join("E/summary.json"));
    let sets: Vec<&str> = s["sets"].as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
    assert_eq!(sets, ["fact_recall", "general", "two_hop"]);
    let mcq = s["mcq"].as_array().unwrap();
    assert_eq!(mcq.len(), 9);
    for r in mcq {
        assert_eq!(r["items"], 5);
        for k in ["loglik", "loglik_norm", "generated"] {
            let a = &r[k];
            let (v, lo, hi) = (a["value"].as_f64().unwrap(), a["lo"].as_f64().unwrap(), a["hi"].as_f64().unwrap());
            assert!(lo <= v && v <= hi && (0.0..=1.0).contains(&lo) && hi <= 1.0, "{k}: {a}");
            assert!((v - a["correct"].as_f64().unwrap() / 5.0).abs() < 1e-12);
        }
        let confusion: u64 = r["confusion"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap())
            .map(|x| x.as_u64().unwrap())
            .sum();
        assert_eq!(confusion, 5);
    }
    // Same items, same order, for both models.
    for set in &sets {
        let ids = |m: &str| -> Vec<String> {
            let csv = std::fs::read_to_string(d.join(format!("E/{m}/{set}.csv"))).unwrap();
            csv.lines().skip(1).map(|l| l.split(',').next().unwrap().to_string()).collect()
        };
        assert_eq!(ids("dense"), ids("moe"));
        assert_eq!(ids("dense"), ids("q8"));
        assert_eq!(ids("dense").len(), 5);
    }
    // Perplexity for all (same tokenizer), routing and the capacity rule for the MoEs only.
    let ppl = s["ppl"].as_array().unwrap();
    for m in ["dense", "moe", "q8"] {
        assert!(ppl.iter().any(|r| r["model"] == m), "{m}");
    }
    assert!(ppl.iter().all(|r| r["ppl"].as_f64().unwrap() > 1.0 && r["tokens"].as_u64().unwrap() > 0));
    let routing = s["routing"].as_array().unwrap();
    assert_eq!(routing.len(), 2);
    assert_eq!((routing[0]["model"].as_str(), routing[1]["model"].as_str()), (Some("moe"), Some("q8")));
    assert_eq!(routing[0]["share"].as_array().unwrap().len(), 4);
    let over = routing[0]["overflow"].as_array().unwrap();
    let factors: Vec<f64> = over.iter().map(|o| o["capacity_factor"].as_f64().unwrap()).collect();
    assert_eq!(factors.len(), 3);
    let dropped: Vec<u64> = over.iter().map(|o| o["dropped"].as_u64().unwrap()).collect();
    assert!(dropped[0] >= dropped[1] && dropped[1] >= dropped[2], "{dropped:?}");
    let ship = routing[0]["ship_capacity"].as_f64().unwrap();
    assert!((ship - if dropped[0] > 0 { 1.25 } else { 1.05 }).abs() < 1e-6);
    let latency = s["latency"].as_array().unwrap();
    assert_eq!(latency.len(), 3);
    assert!(latency.iter().all(|l| l["prefill_tokens_per_s"].as_f64().unwrap() > 0.0));
    assert!(!first.contains("(reused)"));

    // Again: every result is reused, nothing rewritten.
    let csv = std::fs::read(d.join("E/moe/two_hop.csv")).unwrap();
    let again = String::from_utf8(ok(d, &args).stdout).unwrap();
    assert_eq!(again.matches("(reused)").count(), 9 + ppl.len(), "{again}");
    assert_eq!(std::fs::read(d.join("E/moe/two_hop.csv")).unwrap(), csv);
    // A changed setting recomputes (a different item count is a different key).
    let mut more = args.clone();
    let at = more.iter().position(|a| *a == "--max-items").unwrap() + 1;
    more[at] = "6";
    let third = String::from_utf8(ok(d, &more).stdout).unwrap();
    assert_eq!(third.matches("(reused)").count(), ppl.len(), "only the perplexity is reused: {third}");

    // KL from a reference model: every other model, per domain; the Q8_0 export of `moe` stays
    // close to it, the dense model it came from (top-1 of 16 experts) does not; reused next time.
    let mut kl_args = args.clone();
    kl_args.extend(["--kl-ref", "moe"]);
    let kl_out = String::from_utf8(ok(d, &kl_args).stdout).unwrap();
    let s = json(&d.join("E/summary.json"));
    let kl = s["kl"].as_array().unwrap();
    let domains = ppl.iter().filter(|r| r["model"] == "moe").count();
    assert_eq!(kl.len(), 2 * domains, "dense and q8, not the reference: {kl:?}");
    let mean = |m: &str| -> f64 {
        let rows: Vec<&Value> = kl.iter().filter(|r| r["model"] == m).collect();
        assert!(rows.iter().all(|r| r["reference"] == "moe" && r["tokens"].as_u64().unwrap() > 0));
        rows.iter().map(|r| r["mean_kl"].as_f64().unwrap()).sum::<f64>() / rows.len() as f64
    };
    let (q8, dense) = (mean("q8"), mean("dense"));
    assert!(q8 > 0.0 && q8 < 0.01 && dense > 10.0 * q8, "q8 {q8}, dense {dense}");
    assert_eq!(
        kl_out.lines().filter(|l| l.starts_with("kl ") && !l.ends_with("(reused)")).count(),
        kl.len(),
        "{kl_out}"
    );
    let again = String::from_utf8(ok(d, &kl_args).stdout).unwrap();
    assert_eq!(again.lines().filter(|l| l.starts_with("kl ") && l.ends_with("(reused)")).count(), kl.len(), "{again}");
    let mut bad = args.clone();
    bad.extend(["--kl-ref", "nope"]);
    fails(d, &bad, &["--kl-ref `nope`", "no --model is named so"]);
    bad.extend(["--no-ppl"]);
    let at = bad.iter().position(|a| *a == "nope").unwrap();
    bad[at] = "moe";
    fails(d, &bad, &["--kl-ref `moe`", "perplexity documents"]);

    // The report: a phase's metrics and the evaluation, PNGs that exist, no network.
    let run = d.join("R");
    std::fs::create_dir_all(run.join("p1/metrics")).unwrap();
    let mut lines = String::new();
    for step in 1..=20u64 {
        lines.push_str(&format!(
            "{{\"step\":{step},\"wall_time\":1.0,\"kind\":\"train\",\"loss\":{},\"ce\":{}}}\n",
            3.0 / step as f64,
            2.9 / step as f64
        ));
        // The routing share of the step: expert 0 gains on layer 0 over training.
        let a = 0.3 + 0.02 * step as f64;
        lines.push_str(&format!(
            "{{\"step\":{step},\"wall_time\":1.0,\"kind\":\"router\",\"share\":[[{a},{b},{b}],[0.2,0.3,0.5]]}}\n",
            b = (1.0 - a) / 2.0
        ));
    }
    lines.push_str("{\"step\":10,\"wall_time\":1.0,\"kind\":\"eval\",\"ppl_medical\":5.0,\"ppl_general\":6.0}\n");
    lines.push_str("{\"step\":20,\"wall_time\":1.0,\"kind\":\"eval\",\"ppl_medical\":4.0,\"ppl_general\":5.5}\n");
    lines.push_str("{\"step\":12,\"wall_time\":1.0,\"kind\":\"breaker\",\"action\":{\"breaker\":\"overflow\",\"reason\":\"layer 0: <overflow>\",\"rollback\":false,\"step\":12}}\n");
    std::fs::write(run.join("p1/metrics/metrics.jsonl"), lines).unwrap();
    std::fs::write(
        run.join("p1/summary.json"),
        r#"{"router": [{"share": [0.5, 0.25, 0.25]}, {"share": [0.2, 0.3, 0.5]}]}"#,
    )
    .unwrap();
    let out = String::from_utf8(ok(d, &["report", "--run-dir", "R", "--eval", "E"]).stdout).unwrap();
    assert!(out.contains("report.html"), "{out}");
    let html = std::fs::read_to_string(run.join("report/report.html")).unwrap();
    assert!(!html.contains("http"), "the report must open without network");
    assert!(html.contains("layer 0: &lt;overflow&gt;"), "breaker reasons are listed, escaped");
    let imgs: Vec<&str> = html.split("<img src=\"").skip(1).map(|s| s.split('"').next().unwrap()).collect();
    for want in [
        "loss_p1.png",
        "ppl_p1.png",
        "routing_p1.png",
        "routing_steps_p1.png",
        "accuracy.png",
        "latency.png",
        "routing_eval_moe.png",
        "confusion_moe_two_hop.png",
        "confusion_gen_dense_general.png",
    ] {
        assert!(imgs.contains(&want), "{want} missing from {imgs:?}");
    }
    for img in &imgs {
        let bytes = std::fs::read(run.join("report").join(img)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{img}");
    }
    // Nothing to report is an error; a broken metrics line names file and line.
    fails(d, &["report", "--run-dir", "W"], &["nothing to report"]);
    std::fs::write(run.join("p1/metrics/metrics.jsonl"), "{\"step\":1,\"kind\":\"train\",\"loss\":1}\nnot json\n{}\n")
        .unwrap();
    fails(d, &["report", "--run-dir", "R"], &["metrics.jsonl: line 2"]);
    std::fs::write(run.join("p1/metrics/metrics.jsonl"), "{\"step\":1,\"kind\":\"router\",\"share\":3}\n{}\n").unwrap();
    fails(d, &["report", "--run-dir", "R"], &["metrics.jsonl: line 1", "`router` line"]);
}

#[test]
fn bad_eval_input_is_refused_or_warned_with_the_file_and_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["data", "world", "--seed", "3", "--tokens", "20000", "--out", "W"]);
    ok(d, &["data", "tokenizer", "--corpus", "W", "--vocab", "512", "--out", "T"]);
    ok(d, &["data", "tokenizer", "--corpus", "W", "--vocab", "400", "--out", "T2"]);
    ok(d, &["init", "--preset", "tiny-dense", "--seed", "2", "--out", "dense"]);
    ok(d, &["init", "--preset", "tiny-dense", "--seed", "4", "--out", "other"]);
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(d.join("T2").join(f), d.join("other").join(f)).unwrap();
    }
    let base = ["eval", "--model", "dense=dense", "--tokenizer", "T", "--no-generate", "--quiet"];
    let run = |extra: &[&str]| -> Vec<String> { base.iter().chain(extra).map(|s| s.to_string()).collect() };

    // An unknown schema names the file and the fields it found.
    std::fs::write(d.join("odd.jsonl"), "{\"prompt\": \"x\", \"label\": 1}\n").unwrap();
    let a = run(&["--sets", "odd.jsonl", "--out", "E1"]);
    fails(d, &strs(&a), &["odd.jsonl", "unknown eval schema", "label"]);
    // An answer key outside the options: file and line.
    std::fs::write(
        d.join("medqa.jsonl"),
        "{\"question\": \"q?\", \"options\": {\"A\": \"a\", \"B\": \"b\"}, \"answer_idx\": \"A\"}\n\
         {\"question\": \"q2?\", \"options\": {\"A\": \"a\", \"B\": \"b\"}, \"answer_idx\": \"E\"}\n",
    )
    .unwrap();
    let a = run(&["--sets", "medqa.jsonl", "--out", "E2"]);
    fails(d, &strs(&a), &["medqa.jsonl:2", "answer_idx `E` is not an option"]);
    // Perplexity across different tokenizers is refused; without perplexity the comparison runs.
    let a = run(&["--model", "other=other", "--sets", "W", "--max-items", "2", "--out", "E3"]);
    fails(d, &strs(&a), &["`dense` and `other` have different tokenizers", "perplexity is per tokenizer", "--no-ppl"]);
    for e in ["E1", "E2", "E3"] {
        assert!(!d.join(e).join("summary.json").exists(), "{e} has a summary");
    }
    let a = run(&["--model", "other=other", "--sets", "W", "--max-items", "2", "--no-ppl", "--out", "E4"]);
    ok(d, &strs(&a));
    assert!(json(&d.join("E4/summary.json"))["ppl"].as_array().unwrap().is_empty());

    // Items copied from the training text: a warning with counts, and the counts in the summary.
    let doc: Value = serde_json::from_str(
        std::fs::read_to_string(d.join("W/corpus/medical.jsonl")).unwrap().lines().find(|l| l.len() > 400).unwrap(),
    )
    .unwrap();
    let words: Vec<&str> = doc["text"].as_str().unwrap().split_whitespace().take(20).collect();
    let item = |id: &str, q: &str| {
        serde_json::json!({"id": id, "set": "leak", "domain": "medical", "question": q,
                           "options": {"A": "yes", "B": "no"}, "answer": "A"})
        .to_string()
    };
    std::fs::write(
        d.join("leak.jsonl"),
        format!("{}\n{}\n", item("l0", &words.join(" ")), item("l1", "Is water wet?")),
    )
    .unwrap();
    let a = run(&["--sets", "leak.jsonl", "--train-text", "W", "--out", "E5"]);
    let out = ok(d, &strs(&a));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: set `leak`: 1 of 2 items share a 13-gram with the training text"), "{err}");
    let overlap = &json(&d.join("E5/summary.json"))["sets"][0]["overlap"];
    assert_eq!((overlap["overlapping"].as_u64(), overlap["items"].as_u64()), (Some(1), Some(2)));
}
