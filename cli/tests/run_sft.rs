//! Phases p2 (SFT) and p3 (preference optimisation) through the real binary on a micro run
//! (world of 60k tokens, vocab 600, a few steps per phase): conversations from the world, untied
//! head, frozen embedding at the start; p3's refusals (no pairs, a reference of another
//! vocabulary); bad configs.

use model::safetensors_io::SafetensorsReader;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PHASES: [&str; 5] = ["base", "p0", "p1", "p2", "p3"];

fn moe_cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_moe-cli"));
    c.args(["--threads", "2"]);
    c
}

/// The micro configs: run.json and one phase file per training phase (p2: 5 steps of 4 rows of
/// 128 tokens, step 4's micro-batch 2 long rows of 256, 120 conversations, embedding frozen for
/// the first 2 steps, a checkpoint a step).
fn write_configs(dir: &Path) {
    let mut run: serde_json::Value = serde_json::from_str(include_str!("../../configs/runs/tiny.json")).unwrap();
    run["world"]["corpus"]["tokens"] = 60_000.into();
    run["world"]["eval"] = serde_json::json!({ "fact_recall": 24, "two_hop": 12, "general": 12 });
    run["vocab"] = 600.into();
    run["seq_len"] = 64.into();
    run["dev_every"] = 10.into();
    run["importance_batches"] = 2.into();
    std::fs::write(dir.join("run.json"), run.to_string()).unwrap();
    for (phase, text) in [
        ("base", include_str!("../../configs/phases/base.json")),
        ("p0", include_str!("../../configs/phases/p0.json")),
        ("p1", include_str!("../../configs/phases/p1.json")),
        ("p2", include_str!("../../configs/phases/p2.json")),
        ("p3", include_str!("../../configs/phases/p3.json")),
    ] {
        let mut p: serde_json::Value = serde_json::from_str(text).unwrap();
        let (steps, seq) = match phase {
            "base" => (8, 64),
            "p2" => (5, 128),
            "p3" => (2, 128),
            _ => (3, 64),
        };
        let tiny = p["presets"]["tiny"].as_object_mut().unwrap();
        tiny.insert("tokens".into(), (4 * seq * steps).into());
        tiny.insert("tokens_per_step".into(), (4 * seq).into());
        tiny.insert("micro_batch".into(), 4.into());
        tiny.insert("seq_len".into(), seq.into());
        tiny.insert("checkpoint_every".into(), if phase == "p2" { 1 } else { 2 }.into());
        tiny.insert("keep_last".into(), 8.into());
        tiny.insert(
            "eval".into(),
            serde_json::json!({ "every": 0, "dev_seqs": 2, "mcq_items": 4, "final_mcq_items": 4, "final_dev_seqs": 2 }),
        );
        if phase == "p2" {
            tiny.insert(
                "sft".into(),
                serde_json::json!({ "examples": 120, "hard_fraction": 0.15, "untie_embeddings": true,
                                    "freeze_embeddings_frac": 0.4, "q8_fraction": 0.0,
                                    "long": { "seq_len": 256, "fraction": 0.25 } }),
            );
        }
        if phase == "p3" {
            tiny.insert("preference".into(), serde_json::json!({ "prompts": 8, "candidates": 2, "max_new_tokens": 1 }));
        }
        std::fs::write(dir.join(format!("{phase}.json")), p.to_string()).unwrap();
    }
}

fn run_in(cfg: &Path, run_dir: &Path, what: &[&str]) -> Output {
    let mut c = moe_cli();
    c.arg("run").args(what).args(["--quiet", "--run-dir"]).arg(run_dir).arg("--config").arg(cfg.join("run.json"));
    for phase in PHASES {
        c.arg("--phase-config").arg(format!("{phase}={}", cfg.join(format!("{phase}.json")).display()));
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tensor(path: PathBuf, name: &str) -> Vec<f32> {
    SafetensorsReader::open(&path).unwrap().read_f32(name).unwrap()
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn p2_trains_the_worlds_conversations_with_an_untied_head_and_a_frozen_embedding_first() {
    let tmp = tempfile::tempdir().unwrap();
    write_configs(tmp.path());
    let run = tmp.path().join("run");
    let o = run_in(tmp.path(), &run, &["phase", "p2"]);
    assert!(o.status.success(), "moe-cli failed: {}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("sft_rows"), "{out}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("p2/summary.json")).unwrap()).unwrap();
    assert_eq!(summary["phase"], "p2");
    assert_eq!(summary["steps"], 5);
    assert_eq!(summary["data"]["sft_examples"], 120.0);
    // configs/phases/p2.json's shares: 18 two-hop cases (15% of 120) and 30 multiple-choice
    // questions (25%), round(0.15 * 30) = 5 of them under /think.
    assert_eq!(summary["data"]["sft_mcq_examples"], 30.0, "25% of 120 are multiple-choice questions");
    assert_eq!(summary["data"]["sft_think_examples"], 23.0, "18 two-hop cases + 5 questions under /think");
    assert!(summary["data"]["sft_rows"].as_f64().unwrap() >= 5.0, "{summary}");
    // A quarter of the micro-batches (step 4 of 5) trains 2 long rows of 256 holding the
    // conversations longer than 128 and others: every conversation is trained, none left out.
    assert!(summary["data"]["sft_long_rows"].as_f64().unwrap() >= 2.0, "{summary}");
    assert_eq!(summary["data"]["sft_too_long"], 0.0, "{summary}");
    assert!(summary["final_loss"].as_f64().unwrap().is_finite());
    let config = std::fs::read_to_string(run.join("p2/model/config.json")).unwrap();
    assert!(config.contains("\"tie_word_embeddings\": false"), "{config}");

    const EMBED: &str = "model.embed_tokens.weight";
    let p1 = tensor(run.join("p1/model/model.safetensors"), EMBED);
    let ckpt = |n: u64| run.join(format!("p2/checkpoints/step-{n:08}/model.safetensors"));
    // Frozen for round(0.4 * 5) = 2 steps: bit-identical to p1's embedding, while the new head moves.
    assert_eq!(tensor(ckpt(2), EMBED), p1, "the embedding moved while frozen");
    assert_ne!(tensor(ckpt(1), "lm_head.weight"), p1, "the untied head did not train");
    assert_ne!(tensor(ckpt(3), EMBED), p1, "the embedding stayed frozen after 40% of the steps");
    assert_ne!(tensor(run.join("p2/model/model.safetensors"), EMBED), p1);

    // A second run is a no-op; `run phase p9` lists p2 among the phases.
    let o = run_in(tmp.path(), &run, &["phase", "p2"]);
    assert!(o.status.success() && stderr(&o).contains("up to date"), "{}", stderr(&o));
    let o = run_in(tmp.path(), &run, &["phase", "p9"]);
    assert!(!o.status.success() && stderr(&o).contains("p2"), "{}", stderr(&o));

    // p3 on this model: one new token per answer can never close a think block and name an
    // option, so sampling yields no pair: a clear error with the counts, no p3 stage.
    let o = run_in(tmp.path(), &run, &["phase", "p3"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for m in ["no preference pairs", "8 prompts x 2 candidates = 16 samples", "0 correct", "16 invalid"] {
        assert!(err.contains(m), "`{m}` not in: {err}");
    }
    assert!(!run.join("p3/manifest.json").exists());
    // A DPO reference of another vocabulary is refused before sampling.
    let mut preset: serde_json::Value =
        serde_json::from_str(include_str!("../../configs/presets/tiny-dense.json")).unwrap();
    preset["vocab_size"] = 512.into();
    let preset_path = tmp.path().join("vocab512.json");
    std::fs::write(&preset_path, preset.to_string()).unwrap();
    let other = tmp.path().join("other-vocab");
    let o = moe_cli().args(["init", "--preset"]).arg(&preset_path).arg("--out").arg(&other).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    edit_json(&tmp.path().join("p3.json"), |v| {
        v["presets"]["tiny"]["preference"]["reference"] = other.display().to_string().into()
    });
    let o = run_in(tmp.path(), &run, &["phase", "p3"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for m in ["preference.reference", "vocabulary of 512 tokens", "has 4096"] {
        assert!(err.contains(m), "`{m}` not in: {err}");
    }
}

#[test]
fn q8_fake_quant_trains_the_final_fraction_of_p2() {
    let tmp = tempfile::tempdir().unwrap();
    write_configs(tmp.path());
    // 5 steps, the final round(0.4 * 5) = 2 through the Q8_0 fake quantizer.
    edit_json(&tmp.path().join("p2.json"), |v| v["presets"]["tiny"]["sft"]["q8_fraction"] = 0.4.into());
    let run = tmp.path().join("run");
    let o = run_in(tmp.path(), &run, &["phase", "p2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpt = |n: u64| run.join(format!("p2/checkpoints/step-{n:08}"));
    assert!(!ckpt(3).join("qat.json").exists(), "Q8 started before the final 40%");
    for n in [4, 5] {
        let qat: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(ckpt(n).join("qat.json")).unwrap()).unwrap();
        let tensors = qat["tensors"].as_object().unwrap();
        assert!(!tensors.is_empty() && tensors.values().all(|t| t["type"] == "Q8_0"), "{qat}");
        assert!(tensors.keys().all(|k| k.contains("experts")), "{qat}");
        assert!(ckpt(n).join("qat_moments.safetensors").is_file());
    }
    // The Q8 steps trained (steps 4 and 5 differ) and the checkpoint exports as a QAT model.
    assert_ne!(
        tensor(ckpt(4).join("qat.safetensors"), "model.layers.0.mlp.shared_experts.up_proj.weight.qat_step"),
        tensor(ckpt(5).join("qat.safetensors"), "model.layers.0.mlp.shared_experts.up_proj.weight.qat_step")
    );
    let out = tmp.path().join("q.gguf");
    let o = moe_cli()
        .args(["export", "gguf", "--type", "f32", "--no-tokenizer", "--model"])
        .arg(ckpt(5))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success() && stderr(&o).contains("written from their trained codes"), "{}", stderr(&o));
    // A p2 file given for p1 is refused too.
    std::fs::copy(tmp.path().join("p2.json"), tmp.path().join("p1.json")).unwrap();
    edit_json(&tmp.path().join("p1.json"), |v| v["presets"]["tiny"]["sft"]["q8_fraction"] = 0.0.into());
    let mut c = moe_cli();
    c.arg("run")
        .args(["phase", "p1", "--quiet", "--run-dir"])
        .arg(&run)
        .arg("--config")
        .arg(tmp.path().join("run.json"));
    for phase in PHASES {
        c.arg("--phase-config").arg(format!("{phase}={}", tmp.path().join(format!("{phase}.json")).display()));
    }
    let err = stderr(&c.output().unwrap());
    assert!(err.contains("config of phase `p2`"), "{err}");
}
