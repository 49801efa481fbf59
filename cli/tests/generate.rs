//! `moe-cli generate` end to end on a tiny dense model with a small trained tokenizer: plain and
//! chat prompts, a batch from JSONL, seeded sampling, and bad input (a chat template that does
//! not parse, a prompt longer than the context) failing with a clear message.

use data::tokenizer::{Tokenizer, TrainConfig};
use std::path::Path;
use std::process::{Command, Output};

fn moe_cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moe-cli")).current_dir(dir).args(["--threads", "2"]).args(args).output().unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = moe_cli(dir, args);
    assert!(out.status.success(), "moe-cli {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The JSON lines at the end of the output.
fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|v| v.is_object()).collect()
}

/// A tiny dense model directory carrying a tokenizer trained on a few chat-like lines.
fn model_dir(d: &Path) {
    ok(d, &["init", "--preset", "tiny-dense", "--seed", "3", "--out", "m"]);
    let texts: Vec<String> = (0..200)
        .map(|i| {
            format!("<|im_start|>user\nwhat treats disease {i}?<|im_end|>\n<|im_start|>assistant\ndrug {i}<|im_end|>\n")
        })
        .collect();
    let tok =
        Tokenizer::train(texts.iter().map(String::as_str), &TrainConfig { vocab_size: 400, min_frequency: 2 }).unwrap();
    tok.save(&d.join("m")).unwrap();
}

#[test]
fn generate_plain_chat_batch_and_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    model_dir(d);

    let out = ok(d, &["generate", "--model", "m", "--prompt", "what treats", "--max-new-tokens", "6"]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    let g = &lines[0];
    let generated = g["generated_ids"].as_array().unwrap();
    assert!(!generated.is_empty() && generated.len() <= 6);
    assert_eq!(g["prefill_tokens"].as_u64().unwrap() as usize, g["prompt_ids"].as_array().unwrap().len());
    assert!(g["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);
    // The same greedy run twice: the same tokens.
    let again = json_lines(&ok(d, &["generate", "--model", "m", "--prompt", "what treats", "--max-new-tokens", "6"]));
    assert_eq!(again[0]["generated_ids"], g["generated_ids"]);
    // --ignore-eos (decode speed runs): always --max-new-tokens tokens.
    let args = ["generate", "--model", "m", "--prompt", "what treats", "--max-new-tokens", "24", "--ignore-eos"];
    let g = &json_lines(&ok(d, &args))[0];
    // The first token comes from the prefill; 23 decode steps follow.
    assert_eq!((g["decode_tokens"].as_u64(), g["finish"].as_str()), (Some(23), Some("max_new_tokens")), "{g}");
    assert_eq!(g["generated_ids"].as_array().unwrap().len(), 24, "{g}");

    // Chat: the prompt is rendered through the template (ends with the assistant header; with
    // --no-think, with the empty think block).
    let tok = Tokenizer::load(&d.join("m")).unwrap();
    let out = ok(
        d,
        &["generate", "--model", "m", "--prompt", "hi /no_think", "--chat", "--no-think", "--max-new-tokens", "3"],
    );
    let ids: Vec<u32> =
        json_lines(&out)[0]["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let text = tok.decode(&ids, false).unwrap();
    assert_eq!(text, "<|im_start|>user\nhi /no_think<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");

    // A batch from JSONL, sampled with a seed: one JSON line per prompt, reproducible.
    std::fs::write(
        d.join("p.jsonl"),
        "{\"prompt\": \"what treats disease 1?\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"drug?\"}], \"enable_thinking\": false}\n",
    )
    .unwrap();
    let args = [
        "generate",
        "--model",
        "m",
        "--prompts",
        "p.jsonl",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0.8",
        "--top-p",
        "0.9",
        "--top-k",
        "20",
        "--seed",
        "7",
    ];
    let a = json_lines(&ok(d, &args));
    let b = json_lines(&ok(d, &args));
    assert_eq!(a.len(), 2);
    assert_eq!(
        a,
        b.iter()
            .map(|v| {
                let mut v = v.clone();
                for k in ["prefill_tokens_per_s", "decode_tokens_per_s"] {
                    v[k] = a[v["index"].as_u64().unwrap() as usize][k].clone();
                }
                v
            })
            .collect::<Vec<_>>()
    );

    // A prompt longer than the context: a clear error, non-zero exit, no JSON.
    let cfg_path = d.join("m/config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    v["max_position_embeddings"] = 8.into();
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    let long = "what treats disease 1? what treats disease 2? what treats disease 3?";
    let out = moe_cli(d, &["generate", "--model", "m", "--prompt", long]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("prompt 0 has") && err.contains("context"), "{err}");
    assert!(json_lines(&String::from_utf8_lossy(&out.stdout)).is_empty());
    std::fs::write(&cfg_path, cfg).unwrap();

    // A chat template that does not parse: the error names tokenizer_config.json.
    let tc = d.join("m/tokenizer_config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&tc).unwrap()).unwrap();
    v["chat_template"] = "{% for m in messages %}{{ m.content }".into();
    std::fs::write(&tc, v.to_string()).unwrap();
    let out = moe_cli(d, &["generate", "--model", "m", "--prompt", "hi", "--chat"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("tokenizer_config.json") && err.contains("chat template"), "{err}");
    // Plain prompts do not need the template.
    ok(d, &["generate", "--model", "m", "--prompt", "hi", "--max-new-tokens", "2"]);
}
