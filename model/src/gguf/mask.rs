//! `--mask`: per-tensor type rules over GGUF tensor names, so a mixed-precision file ("experts +
//! shared Q5_K, attention V/O Q8_0, rest BF16") is one JSON file:
//!
//! ```json
//! [
//!   {"pattern": "blk.*.ffn_*_exps.weight",  "type": "q5_k"},
//!   {"pattern": "blk.*.ffn_*_shexp.weight", "type": "q5_k"},
//!   {"pattern": "blk.*.attn_v.weight",      "type": "q8_0"},
//!   {"pattern": "blk.*.attn_output.weight", "type": "q8_0"},
//!   {"pattern": "*",                        "type": "bf16"}
//! ]
//! ```
//! Patterns are globs (`*` any run of characters, `?` one character) matched against the whole
//! GGUF name; the first matching rule wins. Rules only apply to tensors llama-quantize would
//! quantize (norms, the router and 1-D tensors stay F32), and override `--type`'s policy there.
//! Types: f32, f16, bf16, q8_0, q5_0, q5_1, q4_0, q4_k, q5_k, q6_k.
//!
//! Strict by design: a rule that matches no tensor, and a type a matched tensor's rows cannot take
//! (no silent fallback, unlike the policy), are errors naming the rule, the tensor and its row length.

use super::policy::quantizable;
use crate::error::{ModelError, Result};
use kernels_cpu::quant::BlockType;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// One rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Glob over GGUF tensor names.
    pub pattern: String,
    /// The type matched tensors get.
    pub ty: BlockType,
}

/// The rules of a mask file.
#[derive(Clone, Debug, PartialEq)]
pub struct Mask {
    /// The file (for messages).
    pub path: PathBuf,
    /// Rules in order.
    pub rules: Vec<Rule>,
}

/// Whether `name` matches glob `pattern` (`*`, `?`; everything else literal).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

impl Mask {
    /// Reads and validates a mask file.
    pub fn from_file(path: &Path) -> Result<Mask> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Mask::from_json(&text, path)
    }

    /// Parses mask JSON text (`path` names it in errors).
    pub fn from_json(text: &str, path: &Path) -> Result<Mask> {
        let field = |f: String, msg: String| ModelError::ConfigField { path: path.to_path_buf(), field: f, msg };
        let value: Value = serde_json::from_str(text)
            .map_err(|e| ModelError::ConfigJson { path: path.to_path_buf(), msg: e.to_string() })?;
        let Value::Array(items) = value else {
            return Err(ModelError::ConfigJson {
                path: path.to_path_buf(),
                msg: "expected a JSON list of {\"pattern\": ..., \"type\": ...} rules".into(),
            });
        };
        let mut rules = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let get = |k: &str| item.get(k).and_then(Value::as_str);
            let pattern = get("pattern")
                .filter(|p| !p.is_empty())
                .ok_or_else(|| field(format!("[{i}].pattern"), "missing or not a non-empty string".into()))?;
            let ty_name = get("type").ok_or_else(|| field(format!("[{i}].type"), "missing or not a string".into()))?;
            let ty = BlockType::from_name(ty_name).ok_or_else(|| {
                    field(
                        format!("[{i}].type"),
                        format!("unknown type `{ty_name}` (expected one of f32, f16, bf16, q8_0, q5_0, q5_1, q4_0, q4_k, q5_k, q6_k)"),
                    )
                })?;
            if let Some(k) = item.as_object().and_then(|o| o.keys().find(|k| *k != "pattern" && *k != "type")) {
                return Err(field(format!("[{i}].{k}"), "unknown key (a rule has `pattern` and `type`)".into()));
            }
            rules.push(Rule { pattern: pattern.to_string(), ty });
        }
        if rules.is_empty() {
            return Err(ModelError::ConfigJson { path: path.to_path_buf(), msg: "the mask has no rules".into() });
        }
        Ok(Mask { path: path.to_path_buf(), rules })
    }

    /// The type each tensor `(name, ne)` gets from the mask (None: not matched or not quantizable),
    /// checking that every rule matches a tensor and every matched tensor can take its type.
    pub fn resolve(&self, tensors: &[(&str, &[usize])]) -> Result<Vec<Option<BlockType>>> {
        let mut used = vec![false; self.rules.len()];
        let mut out = Vec::with_capacity(tensors.len());
        for &(name, ne) in tensors {
            if !quantizable(name, ne) {
                out.push(None);
                continue;
            }
            let Some(i) = self.rules.iter().position(|r| glob_match(&r.pattern, name)) else {
                out.push(None);
                continue;
            };
            used[i] = true;
            let ty = self.rules[i].ty;
            if ty.row_bytes(ne[0]).is_err() {
                return Err(ModelError::Tensor {
                    path: self.path.clone(),
                    tensor: name.to_string(),
                    msg: format!(
                        "rule [{i}] (`{}`) asks for {ty}, but the tensor's rows have {} values, not a multiple of {}",
                        self.rules[i].pattern,
                        ne[0],
                        ty.block_size()
                    ),
                });
            }
            out.push(Some(ty));
        }
        if let Some(i) = used.iter().position(|u| !u) {
            return Err(ModelError::ConfigField {
                path: self.path.clone(),
                field: format!("[{i}].pattern"),
                msg: format!(
                    "`{}` matches no quantizable tensor of this model (GGUF names such as `blk.0.attn_v.weight`, \
                     `blk.0.ffn_down_exps.weight`, `token_embd.weight`)",
                    self.rules[i].pattern
                ),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("blk.*.ffn_*_exps.weight", "blk.12.ffn_down_exps.weight"));
        assert!(!glob_match("blk.*.ffn_*_exps.weight", "blk.12.ffn_down_shexp.weight"));
        assert!(glob_match("*", "token_embd.weight"));
        assert!(glob_match("blk.?.attn_v.weight", "blk.3.attn_v.weight"));
        assert!(!glob_match("blk.?.attn_v.weight", "blk.13.attn_v.weight"));
        assert!(!glob_match("attn_v", "blk.0.attn_v.weight"));
    }

    #[test]
    fn rules_are_checked_against_the_tensors() {
        let p = Path::new("mask.json");
        let m =
            Mask::from_json(r#"[{"pattern": "*exps*", "type": "q5_k"}, {"pattern": "*", "type": "bf16"}]"#, p).unwrap();
        let ne_ok: &[usize] = &[256, 64, 4];
        let ne_norm: &[usize] = &[256];
        let ne_q: &[usize] = &[256, 256];
        let tensors =
            [("blk.0.ffn_up_exps.weight", ne_ok), ("blk.0.attn_norm.weight", ne_norm), ("blk.0.attn_q.weight", ne_q)];
        let got = m.resolve(&tensors).unwrap();
        assert_eq!(got, vec![Some(BlockType::Q5_K), None, Some(BlockType::BF16)]);
        // A rule that matches only tensors that are never quantized (norms) matches nothing.
        let e = m.resolve(&tensors[..2]).unwrap_err().to_string();
        assert!(e.contains("[1].pattern"), "{e}");
        let ne_bad: &[usize] = &[64, 256, 4];
        let e = m.resolve(&[("blk.0.ffn_down_exps.weight", ne_bad)]).unwrap_err().to_string();
        assert!(e.contains("blk.0.ffn_down_exps.weight") && e.contains("64 values") && e.contains("Q5_K"), "{e}");
        let e = m.resolve(&[("blk.0.attn_q.weight", &[256, 256])]).unwrap_err().to_string();
        assert!(e.contains("[0].pattern") && e.contains("*exps*"), "{e}");
        for bad in [r#"{}"#, r#"[]"#, r#"[{"pattern": "*", "type": "q3_k"}]"#, r#"[{"type": "f16"}]"#, "nope"] {
            assert!(Mask::from_json(bad, p).is_err(), "{bad}");
        }
    }
}
