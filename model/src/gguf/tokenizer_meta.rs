//! GGUF tokenizer metadata from a model directory's HF `tokenizer.json` / `tokenizer_config.json`,
//! as llama.cpp's converter writes it for Qwen2/3 byte-level BPE (`src/llama-vocab.cpp` reads it):
//!
//! - `tokenizer.ggml.model = "gpt2"`, `tokenizer.ggml.pre = "qwen2"` (Qwen's pre-tokenisation regex,
//!   which our trained tokenizers use too);
//! - `tokenizer.ggml.tokens`: one string per embedding row, id order; ids the tokenizer does not
//!   define become `[PAD{id}]` (llama.cpp requires as many tokens as `token_embd` rows);
//! - `tokenizer.ggml.token_type`: 1 normal, 3 control (special added tokens), 4 user-defined
//!   (other added tokens, e.g. `<think>`), 5 unused (the pads);
//! - `tokenizer.ggml.merges` (`"a b"` strings; the file may hold them as pairs);
//! - special ids: `eos`/`bos`/`padding_token_id` from tokenizer_config.json's token strings, else
//!   config.json's `*_token_id`; `add_bos_token` (false unless the config says otherwise);
//! - `tokenizer.chat_template` when tokenizer_config.json has one.

use super::format::MetaValue;
use crate::error::{ModelError, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ModelError::ConfigJson { path: path.to_path_buf(), msg: e.to_string() })
}

/// A token field of tokenizer_config.json: a string or `{"content": ...}`.
fn token_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The chat template: a string, or a list of `{name, template}` (the `default` one).
fn chat_template(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => items
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

/// The tokenizer keys for a model with `n_vocab` embedding rows, read from `dir` (which must hold
/// `tokenizer.json`; `tokenizer_config.json` is optional). `config` is the model's config.json
/// object (fallback special ids).
pub fn tokenizer_metadata(
    dir: &Path,
    n_vocab: usize,
    config: &serde_json::Map<String, Value>,
) -> Result<Vec<(String, MetaValue)>> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Err(ModelError::Invalid(format!(
            "{}: no tokenizer.json in the model directory; copy the tokenizer files (tokenizer.json, \
             tokenizer_config.json) there, or pass --no-tokenizer for a GGUF without a vocabulary",
            path.display()
        )));
    }
    let tok = read_json(&path)?;
    let bad = |field: &str, msg: String| ModelError::ConfigField { path: path.clone(), field: field.into(), msg };
    let model = tok.get("model").ok_or_else(|| bad("model", "missing".into()))?;
    if let Some(t) = model.get("type").and_then(Value::as_str).filter(|t| *t != "BPE") {
        return Err(bad("model.type", format!("`{t}` is not supported: only byte-level BPE (Qwen-style) tokenizers")));
    }
    let vocab = model.get("vocab").and_then(Value::as_object).ok_or_else(|| bad("model.vocab", "missing".into()))?;
    let mut tokens: Vec<Option<String>> = vec![None; n_vocab];
    let mut types = vec![UNUSED; n_vocab];
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut place = |s: &str, id: Option<u64>, ty: i32, field: &str| -> Result<()> {
        let id = id.ok_or_else(|| bad(field, format!("token {s:?} has no integer id")))? as usize;
        if id >= n_vocab {
            return Err(bad(
                field,
                format!("token {s:?} has id {id}, beyond the model's {n_vocab} embedding rows (vocab_size)"),
            ));
        }
        tokens[id] = Some(s.to_string());
        types[id] = ty;
        ids.insert(s.to_string(), id);
        Ok(())
    };
    for (s, id) in vocab {
        place(s, id.as_u64(), NORMAL, "model.vocab")?;
    }
    for t in tok.get("added_tokens").and_then(Value::as_array).into_iter().flatten() {
        let content =
            t.get("content").and_then(Value::as_str).ok_or_else(|| bad("added_tokens", "no content".into()))?;
        let special = t.get("special").and_then(Value::as_bool).unwrap_or(false);
        place(
            content,
            t.get("id").and_then(Value::as_u64),
            if special { CONTROL } else { USER_DEFINED },
            "added_tokens",
        )?;
    }
    let tokens: Vec<String> =
        tokens.into_iter().enumerate().map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]"))).collect();
    let merges: Vec<String> = match model.get("merges").and_then(Value::as_array) {
        Some(m) => m
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(s.clone()),
                Value::Array(p) if p.len() == 2 && p.iter().all(Value::is_string) => {
                    Ok(format!("{} {}", p[0].as_str().unwrap_or(""), p[1].as_str().unwrap_or("")))
                }
                other => Err(bad("model.merges", format!("entry {other} is neither \"a b\" nor [\"a\", \"b\"]"))),
            })
            .collect::<Result<_>>()?,
        None => return Err(bad("model.merges", "missing (llama.cpp needs the BPE merges)".into())),
    };

    let cfg_path = dir.join("tokenizer_config.json");
    let cfg = if cfg_path.is_file() { read_json(&cfg_path)? } else { Value::Null };
    let mut kv = vec![
        ("tokenizer.ggml.model".to_string(), MetaValue::Str("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), MetaValue::Str("qwen2".into())),
        ("tokenizer.ggml.tokens".to_string(), MetaValue::StrArray(tokens)),
        ("tokenizer.ggml.token_type".to_string(), MetaValue::I32Array(types)),
        ("tokenizer.ggml.merges".to_string(), MetaValue::StrArray(merges)),
    ];
    for (key, field) in [("eos", "eos_token"), ("bos", "bos_token"), ("padding", "pad_token")] {
        let from_tokenizer = token_string(cfg.get(field)).and_then(|s| ids.get(&s).copied());
        let from_config =
            config.get(&format!("{}_token_id", if key == "padding" { "pad" } else { key })).and_then(Value::as_u64);
        if let Some(id) = from_tokenizer.or(from_config.map(|x| x as usize)).filter(|&id| id < n_vocab) {
            kv.push((format!("tokenizer.ggml.{key}_token_id"), MetaValue::u32(id)));
        }
    }
    let add_bos = cfg.get("add_bos_token").and_then(Value::as_bool).unwrap_or(false);
    kv.push(("tokenizer.ggml.add_bos_token".into(), MetaValue::Bool(add_bos)));
    if let Some(t) = chat_template(cfg.get("chat_template")) {
        kv.push(("tokenizer.chat_template".into(), MetaValue::Str(t)));
    }
    Ok(kv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocab_is_padded_and_typed() {
        let dir = tempfile::tempdir().unwrap();
        let tok = r#"{"model": {"type": "BPE", "vocab": {"a": 2, "b": 3, "ab": 4}, "merges": [["a", "b"]]},
            "added_tokens": [{"id": 0, "content": "<|endoftext|>", "special": true},
                             {"id": 1, "content": "<think>", "special": false}]}"#;
        std::fs::write(dir.path().join("tokenizer.json"), tok).unwrap();
        let cfg = r#"{"eos_token": "<|endoftext|>", "chat_template": "{{ x }}"}"#;
        std::fs::write(dir.path().join("tokenizer_config.json"), cfg).unwrap();
        let kv: HashMap<String, MetaValue> =
            tokenizer_metadata(dir.path(), 7, &serde_json::Map::new()).unwrap().into_iter().collect();
        let toks = ["<|endoftext|>", "<think>", "a", "b", "ab", "[PAD5]", "[PAD6]"].map(String::from).to_vec();
        assert_eq!(kv["tokenizer.ggml.tokens"], MetaValue::StrArray(toks));
        assert_eq!(kv["tokenizer.ggml.token_type"], MetaValue::I32Array(vec![3, 4, 1, 1, 1, 5, 5]));
        assert_eq!(kv["tokenizer.ggml.merges"], MetaValue::StrArray(vec!["a b".into()]));
        assert_eq!(kv["tokenizer.ggml.eos_token_id"], MetaValue::u32(0));
        assert_eq!(kv["tokenizer.chat_template"], MetaValue::Str("{{ x }}".into()));
        let e = tokenizer_metadata(dir.path(), 4, &serde_json::Map::new()).unwrap_err().to_string();
        assert!(e.contains("beyond the model's 4 embedding rows"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = tokenizer_metadata(empty.path(), 4, &serde_json::Map::new()).unwrap_err().to_string();
        assert!(e.contains("--no-tokenizer"), "{e}");
    }
}
