//! Hugging Face Qwen3 `config.json` reader and writer.
//!
//! Field names and defaults follow transformers' `Qwen3Config`. Fields we do not model are kept in
//! [`Qwen3Config::raw`] and written back by [`Qwen3Config::to_json_string`], so a config survives a round trip.
//! Both the transformers v4 layout (`rope_theta`, `torch_dtype` at top level) and the v5 layout
//! (`rope_parameters: {"rope_theta": .., "rope_type": "default"}`, `dtype`) are accepted.
//!
//! A `null` value of an optional field means "use the default" (as transformers does for
//! `num_key_value_heads`).

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{ModelError, Result};

/// Default `head_dim` of transformers' `Qwen3Config`.
pub const DEFAULT_HEAD_DIM: usize = 128;
/// Default `rms_norm_eps`.
pub const DEFAULT_RMS_NORM_EPS: f64 = 1e-6;
/// Default `rope_theta`.
pub const DEFAULT_ROPE_THETA: f64 = 10000.0;
/// Default `max_position_embeddings`.
pub const DEFAULT_MAX_POSITION_EMBEDDINGS: usize = 32768;

/// A dense Qwen3 model configuration, as read from an HF `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct Qwen3Config {
    /// V: vocabulary size.
    pub vocab_size: usize,
    /// D: hidden (residual stream) width.
    pub hidden_size: usize,
    /// F: SwiGLU FFN width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// H: number of query heads.
    pub num_attention_heads: usize,
    /// KV: number of key/value heads (divides H).
    pub num_key_value_heads: usize,
    /// Dh: per-head width (not necessarily D / H).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// Whether `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Maximum sequence length the RoPE tables are meant for.
    pub max_position_embeddings: usize,
    /// Storage dtype recorded by HF (`torch_dtype`, or `dtype` in transformers v5), e.g. `"bfloat16"`.
    pub torch_dtype: Option<String>,
    /// The whole JSON object as read (unknown fields included); typed fields override it on write.
    pub raw: Map<String, Value>,
}

impl Qwen3Config {
    /// Reads and validates a `config.json`. A missing file is [`ModelError::Io`].
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Parses and validates config JSON text; `path` is only used in error messages.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        Self::from_json_accepting(text, path, &[])
    }

    /// [`Self::from_json`] that also accepts the `model_type`s in `also` (every other check still applies).
    /// Only readers that validate those types' own fields call it (the Dots1 export reader).
    pub(crate) fn from_json_accepting(text: &str, path: &Path, also: &[&str]) -> Result<Self> {
        let json_err = |msg: String| ModelError::ConfigJson { path: path.to_path_buf(), msg };
        if text.trim().is_empty() {
            return Err(json_err("file is empty".into()));
        }
        let value: Value = serde_json::from_str(text).map_err(|e| json_err(e.to_string()))?;
        let raw = match value {
            Value::Object(map) => map,
            other => return Err(json_err(format!("top level is {}, expected an object", describe(&other)))),
        };
        let r = Reader { path, raw: &raw };

        r.check_unsupported(also)?;

        let vocab_size = r.required_usize("vocab_size")?;
        let hidden_size = r.required_usize("hidden_size")?;
        let intermediate_size = r.required_usize("intermediate_size")?;
        let num_hidden_layers = r.required_usize("num_hidden_layers")?;
        let num_attention_heads = r.required_usize("num_attention_heads")?;
        let num_key_value_heads = r.optional_usize("num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(r.field_err(
                "num_key_value_heads",
                format!("{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"),
            ));
        }
        let head_dim = r.optional_usize("head_dim")?.unwrap_or(DEFAULT_HEAD_DIM);
        let rms_norm_eps =
            r.optional_positive_f64(&raw, "rms_norm_eps", "rms_norm_eps")?.unwrap_or(DEFAULT_RMS_NORM_EPS);
        let rope_theta = r.rope_theta()?.unwrap_or(DEFAULT_ROPE_THETA);
        let tie_word_embeddings = r.optional_bool("tie_word_embeddings")?.unwrap_or(false);
        let max_position_embeddings =
            r.optional_usize("max_position_embeddings")?.unwrap_or(DEFAULT_MAX_POSITION_EMBEDDINGS);
        let torch_dtype = match r.optional_string("torch_dtype")? {
            Some(s) => Some(s),
            None => r.optional_string("dtype")?,
        };

        Ok(Qwen3Config {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            tie_word_embeddings,
            max_position_embeddings,
            torch_dtype,
            raw,
        })
    }

    /// The config as pretty JSON (keys sorted, like transformers): [`Self::raw`] with the typed fields written
    /// back. A typed field whose value equals the raw one keeps its original spelling (e.g. `1000000` stays an
    /// integer). `rope_theta` goes where it was read from (`rope_parameters` or top level; top level if new).
    pub fn to_json_string(&self) -> String {
        let mut m = self.raw.clone();
        let ints = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (k, v) in ints {
            if m.get(k).and_then(Value::as_u64) != Some(v as u64) {
                m.insert(k.to_string(), Value::from(v as u64));
            }
        }
        set_f64(&mut m, "rms_norm_eps", self.rms_norm_eps);
        let theta_in_params = matches!(
            m.get("rope_parameters"),
            Some(Value::Object(p)) if p.contains_key("rope_theta")
        );
        if theta_in_params {
            if let Some(Value::Object(p)) = m.get_mut("rope_parameters") {
                set_f64(p, "rope_theta", self.rope_theta);
            }
            if m.contains_key("rope_theta") {
                set_f64(&mut m, "rope_theta", self.rope_theta);
            }
        } else {
            set_f64(&mut m, "rope_theta", self.rope_theta);
        }
        m.insert("tie_word_embeddings".into(), Value::Bool(self.tie_word_embeddings));
        match &self.torch_dtype {
            Some(d) => {
                let key =
                    if m.contains_key("dtype") && !m.contains_key("torch_dtype") { "dtype" } else { "torch_dtype" };
                m.insert(key.into(), Value::String(d.clone()));
            }
            None => {
                m.remove("torch_dtype");
                m.remove("dtype");
            }
        }
        // Serialising a Map of plain JSON values cannot fail.
        serde_json::to_string_pretty(&Value::Object(m)).unwrap_or_default()
    }
}

/// Writes `v` under `key` unless the existing value already equals it.
fn set_f64(m: &mut Map<String, Value>, key: &str, v: f64) {
    if m.get(key).and_then(Value::as_f64) != Some(v) {
        if let Some(n) = serde_json::Number::from_f64(v) {
            m.insert(key.to_string(), Value::Number(n));
        }
    }
}

/// A short description of a JSON value for error messages, e.g. `string "256"`.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {}", Value::String(s.clone())),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Field accessors over the raw object that produce errors naming the file and the field.
struct Reader<'a> {
    path: &'a Path,
    raw: &'a Map<String, Value>,
}

impl Reader<'_> {
    fn field_err(&self, field: &str, msg: String) -> ModelError {
        ModelError::ConfigField { path: self.path.to_path_buf(), field: field.to_string(), msg }
    }

    fn unsupported(&self, field: &str, msg: String) -> ModelError {
        ModelError::Unsupported(format!("{}: field `{field}`: {msg}", self.path.display()))
    }

    /// The value of `field`, `None` when absent or null.
    fn get(&self, field: &str) -> Option<&Value> {
        self.raw.get(field).filter(|v| !v.is_null())
    }

    fn to_usize(&self, field: &str, v: &Value) -> Result<usize> {
        let bad = || self.field_err(field, format!("expected a positive integer, got {}", describe(v)));
        match v {
            Value::Number(n) => match n.as_u64() {
                Some(0) | None => Err(bad()),
                Some(u) => usize::try_from(u).map_err(|_| bad()),
            },
            _ => Err(bad()),
        }
    }

    fn required_usize(&self, field: &str) -> Result<usize> {
        match self.raw.get(field) {
            None => Err(self.field_err(field, "missing required field".into())),
            Some(v) => self.to_usize(field, v),
        }
    }

    fn optional_usize(&self, field: &str) -> Result<Option<usize>> {
        self.get(field).map(|v| self.to_usize(field, v)).transpose()
    }

    /// A finite positive number (integers accepted) under `key` of `obj`, reported as `field`.
    fn optional_positive_f64(&self, obj: &Map<String, Value>, key: &str, field: &str) -> Result<Option<f64>> {
        match obj.get(key).filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x)),
                _ => Err(self.field_err(field, format!("expected a positive number, got {}", describe(v)))),
            },
        }
    }

    fn optional_bool(&self, field: &str) -> Result<Option<bool>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.field_err(field, format!("expected a boolean, got {}", describe(v)))),
        }
    }

    fn optional_string(&self, field: &str) -> Result<Option<String>> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.field_err(field, format!("expected a string, got {}", describe(v)))),
        }
    }

    /// `rope_theta` from the top level or from v5 `rope_parameters`; both present must agree.
    fn rope_theta(&self) -> Result<Option<f64>> {
        let top = self.optional_positive_f64(self.raw, "rope_theta", "rope_theta")?;
        let nested = match self.get("rope_parameters") {
            None => None,
            Some(Value::Object(p)) => self.optional_positive_f64(p, "rope_theta", "rope_parameters.rope_theta")?,
            Some(v) => {
                return Err(self.field_err("rope_parameters", format!("expected an object, got {}", describe(v))))
            }
        };
        match (top, nested) {
            (Some(a), Some(b)) if a != b => {
                Err(self.field_err("rope_theta", format!("{a} disagrees with rope_parameters.rope_theta {b}")))
            }
            (Some(a), _) => Ok(Some(a)),
            (None, b) => Ok(b),
        }
    }

    /// Rejects features of HF Qwen3 that this toolkit does not implement.
    fn check_unsupported(&self, also: &[&str]) -> Result<()> {
        if let Some(v) = self.get("model_type") {
            match v {
                // "medmoe": Qwen3 attention with the MoE FFN described by the `moe` section.
                Value::String(s) if s == "qwen3" || s == "medmoe" || also.contains(&s.as_str()) => {}
                Value::String(s) => {
                    return Err(self.unsupported(
                        "model_type",
                        format!("model_type {s:?} is not supported, expected \"qwen3\" or \"medmoe\""),
                    ))
                }
                _ => return Err(self.field_err("model_type", format!("expected a string, got {}", describe(v)))),
            }
        }
        if let Some(act) = self.optional_string("hidden_act")? {
            if act != "silu" {
                return Err(
                    self.unsupported("hidden_act", format!("activation {act:?} is not supported, only \"silu\""))
                );
            }
        }
        if self.optional_bool("attention_bias")? == Some(true) {
            return Err(self.unsupported("attention_bias", "attention biases are not supported".into()));
        }
        if self.optional_bool("use_sliding_window")? == Some(true) {
            return Err(self.unsupported("use_sliding_window", "sliding-window attention is not supported".into()));
        }
        for field in ["rope_scaling", "rope_parameters"] {
            if let Some(v) = self.get(field) {
                self.check_rope_type(field, v)?;
            }
        }
        Ok(())
    }

    /// RoPE parameters are only supported for the default (unscaled) RoPE.
    fn check_rope_type(&self, field: &str, v: &Value) -> Result<()> {
        let Value::Object(p) = v else {
            return Err(self.field_err(field, format!("expected an object, got {}", describe(v))));
        };
        let ty = p.get("rope_type").or_else(|| p.get("type"));
        match ty {
            Some(Value::String(s)) if s == "default" => Ok(()),
            Some(Value::String(s)) => {
                Err(self.unsupported(field, format!("rope_type {s:?} is not supported, only \"default\" RoPE")))
            }
            None if field == "rope_parameters" => Ok(()),
            _ => Err(self.unsupported(
                field,
                format!("RoPE scaling {} is not supported, only default RoPE", Value::Object(p.clone())),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN3_1_7B: &str = r#"{
      "architectures": ["Qwen3ForCausalLM"],
      "attention_bias": false,
      "attention_dropout": 0.0,
      "bos_token_id": 151643,
      "eos_token_id": 151645,
      "head_dim": 128,
      "hidden_act": "silu",
      "hidden_size": 2048,
      "initializer_range": 0.02,
      "intermediate_size": 6144,
      "max_position_embeddings": 40960,
      "max_window_layers": 28,
      "model_type": "qwen3",
      "num_attention_heads": 16,
      "num_hidden_layers": 28,
      "num_key_value_heads": 8,
      "rms_norm_eps": 1e-06,
      "rope_scaling": null,
      "rope_theta": 1000000,
      "sliding_window": null,
      "tie_word_embeddings": true,
      "torch_dtype": "bfloat16",
      "transformers_version": "4.51.0",
      "use_cache": true,
      "use_sliding_window": false,
      "vocab_size": 151936
    }"#;

    fn parse(text: &str) -> Result<Qwen3Config> {
        Qwen3Config::from_json(text, Path::new("cfg/config.json"))
    }

    #[test]
    fn reads_qwen3_1_7b() {
        let c = parse(QWEN3_1_7B).unwrap();
        assert_eq!(c.vocab_size, 151936);
        assert_eq!(c.hidden_size, 2048);
        assert_eq!(c.intermediate_size, 6144);
        assert_eq!(c.num_hidden_layers, 28);
        assert_eq!(c.num_attention_heads, 16);
        assert_eq!(c.num_key_value_heads, 8);
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.rms_norm_eps, 1e-6);
        assert_eq!(c.rope_theta, 1e6);
        assert!(c.tie_word_embeddings);
        assert_eq!(c.max_position_embeddings, 40960);
        assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
        assert_eq!(c.raw["bos_token_id"], 151643);
    }

    #[test]
    fn defaults_follow_hf() {
        let c = parse(
            r#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
                "num_hidden_layers": 2, "num_attention_heads": 4}"#,
        )
        .unwrap();
        assert_eq!(c.num_key_value_heads, 4);
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.rms_norm_eps, 1e-6);
        assert_eq!(c.rope_theta, 10000.0);
        assert!(!c.tie_word_embeddings);
        assert_eq!(c.max_position_embeddings, 32768);
        assert_eq!(c.torch_dtype, None);
        // null means default
        let c = parse(
            r#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": null}"#,
        )
        .unwrap();
        assert_eq!(c.num_key_value_heads, 4);
    }

    #[test]
    fn transformers_v5_layout() {
        let c = parse(
            r#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
                "num_hidden_layers": 2, "num_attention_heads": 4, "dtype": "float32",
                "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}}"#,
        )
        .unwrap();
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.torch_dtype.as_deref(), Some("float32"));
        let mut c2 = c.clone();
        c2.rope_theta = 5e5;
        c2.torch_dtype = Some("bfloat16".into());
        let back = parse(&c2.to_json_string()).unwrap();
        assert_eq!(back.rope_theta, 5e5);
        assert_eq!(back.raw["rope_parameters"]["rope_theta"], 5e5);
        assert!(!back.raw.contains_key("rope_theta"));
        assert_eq!(back.raw["dtype"], "bfloat16");
        assert!(!back.raw.contains_key("torch_dtype"));
    }

    #[test]
    fn disagreeing_rope_theta_is_an_error() {
        let e = parse(
            r#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
                "num_hidden_layers": 2, "num_attention_heads": 4, "rope_theta": 10000,
                "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}}"#,
        )
        .unwrap_err();
        assert!(matches!(&e, ModelError::ConfigField { field, .. } if field == "rope_theta"), "{e}");
    }

    #[test]
    fn round_trip_keeps_unknown_fields_and_values() {
        let c = parse(QWEN3_1_7B).unwrap();
        let text = c.to_json_string();
        let back = parse(&text).unwrap();
        assert_eq!(back, c);
        // untouched typed values keep their spelling
        assert!(text.contains("\"rope_theta\": 1000000,"), "{text}");
        let mut c2 = c.clone();
        c2.hidden_size = 256;
        c2.tie_word_embeddings = false;
        let back = parse(&c2.to_json_string()).unwrap();
        assert_eq!(back.hidden_size, 256);
        assert!(!back.tie_word_embeddings);
        assert_eq!(back.raw["transformers_version"], "4.51.0");
    }

    #[test]
    fn integer_type_errors() {
        let base = |v: &str| {
            format!(
                r#"{{"vocab_size": {v}, "hidden_size": 8, "intermediate_size": 16,
                    "num_hidden_layers": 2, "num_attention_heads": 4}}"#
            )
        };
        for (v, want) in [
            ("\"256\"", "expected a positive integer, got string \"256\""),
            ("256.0", "expected a positive integer, got number 256.0"),
            ("0", "expected a positive integer, got number 0"),
            ("-3", "expected a positive integer, got number -3"),
            ("true", "expected a positive integer, got boolean true"),
            ("null", "expected a positive integer, got null"),
        ] {
            let e = parse(&base(v)).unwrap_err();
            assert!(matches!(&e, ModelError::ConfigField { field, .. } if field == "vocab_size"), "{e}");
            assert!(e.to_string().contains(want), "{e} / {want}");
            assert!(e.to_string().contains("cfg/config.json"), "{e}");
        }
    }

    #[test]
    fn kv_heads_must_divide_heads() {
        let e = parse(
            r#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 3}"#,
        )
        .unwrap_err();
        assert!(matches!(&e, ModelError::ConfigField { field, .. } if field == "num_key_value_heads"), "{e}");
    }

    #[test]
    fn unsupported_features() {
        let base = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
                "num_hidden_layers": 2, "num_attention_heads": 4"#;
        for (extra, field) in [
            (r#""rope_scaling": {"rope_type": "yarn", "factor": 4.0}"#, "rope_scaling"),
            (r#""rope_parameters": {"rope_type": "linear", "rope_theta": 1e6}"#, "rope_parameters"),
            (r#""hidden_act": "gelu""#, "hidden_act"),
            (r#""attention_bias": true"#, "attention_bias"),
            (r#""use_sliding_window": true"#, "use_sliding_window"),
            (r#""model_type": "llama""#, "model_type"),
        ] {
            let e = parse(&format!("{{{base}, {extra}}}")).unwrap_err();
            assert!(matches!(e, ModelError::Unsupported(_)), "{extra}: {e}");
            let s = e.to_string();
            assert!(s.contains(&format!("`{field}`")) && s.contains("cfg/config.json"), "{s}");
        }
        // default rope in rope_scaling is fine
        parse(&format!(r#"{{{base}, "rope_scaling": {{"rope_type": "default"}}}}"#)).unwrap();
    }

    #[test]
    fn bad_json() {
        for text in ["", "  \n", "{", "[1, 2]", "42", "{\"a\": }"] {
            let e = parse(text).unwrap_err();
            assert!(matches!(e, ModelError::ConfigJson { .. }), "{text:?}: {e}");
            assert!(e.to_string().contains("cfg/config.json"));
        }
    }
}
