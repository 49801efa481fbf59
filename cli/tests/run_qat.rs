//! `moe-cli run phase p4` (staged QAT) through the real binary on a micro run (the micro configs
//! of `common`, p4 at Q8_0 256 -> Q6_K 256 -> Q5_K 512 tokens, GPTQ's codes on each stage's grid
//! from 32 calibration rows): the ledger, stop-anytime exports
//! (GGUF written from the trained codes) and summary; an injected QAT regression
//! (`MEDMOE_FAULT_QAT_PENALTY_PP`) that the V/O gate refuses, the breaker rolls back (512 -> 768
//! tokens) and, persisting, ships the pre-QAT model beside the Q5; an interrupted p4 that resumes
//! to the same model bit for bit; bad input (a mask quantizing the router, an unknown stage type,
//! resuming with another mask).

mod common;

use common::{copy_tree, run_micro, write_micro_configs};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

const MASK: &str = r#"[
  {"pattern": "blk.*.ffn_*_exps.weight", "type": "q5_k"},
  {"pattern": "blk.*.ffn_*_shexp.weight", "type": "q5_k"},
  {"pattern": "*", "type": "f32"}
]"#;

/// p4.json for the micro run: 4 x 64-token rows a step, the stages above, an evaluation point
/// every 256 tokens, the breaker after 2 regressed evaluations, the gate after 512 Q5 tokens.
fn write_p4(dir: &Path) {
    std::fs::write(dir.join("mask.json"), MASK).unwrap();
    let mut p: serde_json::Value = serde_json::from_str(include_str!("../../configs/phases/p4.json")).unwrap();
    let tiny = p["presets"]["tiny"].as_object_mut().unwrap();
    tiny.insert("tokens".into(), 25_600.into());
    tiny.insert("tokens_per_step".into(), 256.into());
    tiny.insert("micro_batch".into(), 4.into());
    tiny.insert("seq_len".into(), 64.into());
    tiny.insert(
        "eval".into(),
        serde_json::json!({ "every": 0, "dev_seqs": 2, "mcq_items": 4, "final_mcq_items": 4, "final_dev_seqs": 2 }),
    );
    tiny.insert(
        "qat".into(),
        serde_json::json!({
            "mask": dir.join("mask.json").display().to_string(), "group": 32, "ema_decay": 0.8,
            "stages": [{"type": "q8_0", "tokens": 256}, {"type": "q6_k", "tokens": 256}, {"type": "q5_k", "tokens": 512}],
            "vo_gate": {"after_tokens": 512, "medical_pp": -1.0, "general_pp": -0.5, "trial_tokens": 256},
            "breaker": {"threshold_pp": 1.5, "evals": 2, "extra_tokens": 256, "max_rollbacks": 1},
            "export_every": 256, "full_evals": {"at": [], "every": 0}
        }),
    );
    std::fs::write(dir.join("p4.json"), p.to_string()).unwrap();
}

/// The micro run through p1, built once per test process; every test copies it (its micro
/// configs are the same files' contents, so data .. p1 are up to date in each copy).
fn prerequisites() -> &'static Path {
    static PRE: OnceLock<PathBuf> = OnceLock::new();
    PRE.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("run_qat-prerequisites");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        write_micro_configs(&root);
        let pre = root.join("pre");
        let o = run_micro(&root, &pre, &["phase", "p1"], &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        pre
    })
}

fn p4(cfg: &Path, run: &Path, envs: &[(&str, &str)]) -> Output {
    let p4 = format!("p4={}", cfg.join("p4.json").display());
    let mut c = common::moe_cli();
    c.args(["run", "phase", "p4", "--quiet", "--run-dir"]).arg(run).arg("--config").arg(cfg.join("run.json"));
    for phase in ["base", "p0", "p1"] {
        c.arg("--phase-config").arg(format!("{phase}={}", cfg.join(format!("{phase}.json")).display()));
    }
    c.args(["--phase-config", &p4]).envs(envs.iter().copied()).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ledger(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("p4/ledger.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn model_bytes(dir: &Path) -> Vec<u8> {
    [std::fs::read(dir.join("model.safetensors")).unwrap(), std::fs::read(dir.join("qat.safetensors")).unwrap()]
        .concat()
}

#[test]
fn p4_trains_staged_qat_exports_stop_anytime_and_resumes_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path();
    write_micro_configs(cfg);
    write_p4(cfg);
    let pre = prerequisites();

    // Bad input first: refused with the reason, nothing trained.
    let bad = cfg.join("bad");
    copy_tree(pre, &bad);
    std::fs::write(cfg.join("mask.json"), MASK.replace("ffn_*_exps", "ffn_gate_inp")).unwrap();
    let o = p4(cfg, &bad, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("mask.json") && err.contains("router") && err.contains("refused"), "{err}");
    assert!(!bad.join("p4/manifest.json").exists() && !err.contains("panicked"));
    std::fs::write(cfg.join("mask.json"), MASK).unwrap();
    let text = std::fs::read_to_string(cfg.join("p4.json")).unwrap();
    std::fs::write(cfg.join("p4.json"), text.replace("\"q6_k\"", "\"q4_k\"")).unwrap();
    let o = p4(cfg, &bad, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("p4.json") && err.contains("qat.stages[1].type") && err.contains("q4_k"), "{err}");
    std::fs::write(cfg.join("p4.json"), text).unwrap();

    // The whole p4, uninterrupted.
    let full = cfg.join("full");
    copy_tree(pre, &full);
    let o = p4(cfg, &full, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary = json(&full.join("summary.json"));
    assert_eq!(summary["phase"], "p4");
    let q = &summary["qat"];
    assert_eq!(q["source"], "p1");
    assert!(q["kl"]["all"].as_f64().unwrap() >= 0.0, "{q}");
    let exports = q["exports"].as_array().unwrap();
    let types: Vec<&str> = exports.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"Q8_0") && types.contains(&"Q6_K") && types.contains(&"Q5_K"), "{types:?}");
    for e in exports {
        let gguf = full.join(e["gguf"].as_str().unwrap());
        assert!(gguf.is_file() && e["qat_tensors"].as_u64().unwrap() > 0, "{e}");
        assert!(full.join(e["model"].as_str().unwrap()).join("qat.json").is_file(), "{e}");
    }
    let events: Vec<String> = ledger(&full).iter().map(|e| e["event"].as_str().unwrap().to_string()).collect();
    for want in ["pre_qat", "ptq", "stage_start", "eval", "export", "vo_gate"] {
        assert!(events.iter().any(|e| e == want), "no `{want}` in the ledger: {events:?}");
    }
    assert_eq!(json(&full.join("p4/mask.json")), json(&cfg.join("mask.json")));
    // Every stage's calibration chose GPTQ's codes on its grid (`qat.gptq` of p4.json), with a
    // lower output error than round-to-nearest on the same grid; the V/O trial kept the others'.
    for e in ledger(&full).iter().filter(|e| e["event"] == "stage_start") {
        let g = &e["gptq"];
        if e["type"].as_str().unwrap().contains("vo_q8_0") {
            assert!(g.is_null(), "{e}");
            continue;
        }
        assert!(g["gptq_tensors"].as_u64().unwrap() > 0 && g["tokens"].as_u64() == Some(32 * 64), "{e}");
        assert!(g["output_error"].as_f64().unwrap() < g["rtn_output_error"].as_f64().unwrap(), "{e}");
    }

    // Interrupted after 3 steps, then resumed: the same model, bit for bit.
    let cut = cfg.join("cut");
    copy_tree(pre, &cut);
    let o = p4(cfg, &cut, &[("MEDMOE_FAULT_STOP_AFTER", "3")]);
    assert!(!o.status.success() && stderr(&o).contains("stopped early"), "{}", stderr(&o));
    // Resuming with another mask is refused, naming both files.
    std::fs::write(cfg.join("mask.json"), MASK.replace("\"q5_k\"", "\"q6_k\"")).unwrap();
    let o = p4(cfg, &cut, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&cfg.join("mask.json").display().to_string()) && err.contains("p4/mask.json"), "{err}");
    std::fs::write(cfg.join("mask.json"), MASK).unwrap();
    let o = p4(cfg, &cut, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(model_bytes(&cut.join("p4/model")) == model_bytes(&full.join("p4/model")), "resume differs");
    assert_eq!(ledger(&cut), ledger(&full));
}

#[test]
fn an_injected_qat_regression_is_gated_rolled_back_and_ships_the_pre_qat_model() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path();
    write_micro_configs(cfg);
    write_p4(cfg);
    let run = cfg.join("run");
    copy_tree(prerequisites(), &run);
    let o = p4(cfg, &run, &[("MEDMOE_FAULT_QAT_PENALTY_PP", "50")]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    // stderr, ledger and summary all carry the decisions with their reasons.
    assert!(err.contains("p4 qat_breaker: rollback") && err.contains("512 -> 768"), "{err}");
    assert!(err.contains("p4 qat_breaker: ship_pre_qat") && err.contains("p4 vo_gate: skip"), "{err}");
    let l = ledger(&run);
    let rollback = l.iter().find(|e| e["action"] == "rollback").unwrap();
    assert_eq!((rollback["budget_before"].as_u64(), rollback["budget_after"].as_u64()), (Some(512), Some(768)));
    let gate = l.iter().find(|e| e["event"] == "vo_gate").unwrap();
    assert_eq!(gate["decision"], "skip");
    assert!(gate["reason"].as_str().unwrap().contains("medical"), "{gate}");
    let summary = json(&run.join("summary.json"));
    let q = &summary["qat"];
    assert_eq!(q["ship_pre_qat"], true);
    assert_eq!(q["budgets"][2], 768);
    assert_eq!(q["events"].as_array().unwrap().len(), 3, "{q}");
    let pre = summary["artifacts"]["pre_qat_model"].as_str().unwrap();
    assert_eq!(
        std::fs::read(run.join(pre).join("model.safetensors")).unwrap(),
        std::fs::read(run.join("p1/model/model.safetensors")).unwrap()
    );
    // The stage after the rollback started again from min-max (recalibrated).
    let starts: Vec<&str> =
        l.iter().filter(|e| e["event"] == "stage_start").map(|e| e["calibration"].as_str().unwrap()).collect();
    assert_eq!(starts.len(), 4, "{starts:?}");
    assert!(starts[1].contains("kept") && starts[3].contains("min-max"), "{starts:?}");
}
