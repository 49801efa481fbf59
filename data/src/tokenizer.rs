//! Tokenizers: train a byte-level BPE on a corpus, or load any HF `tokenizer.json` (Qwen3's for real
//! runs), behind one interface; `tokenizer_config.json` supplies the chat template and special
//! tokens when present.
//!
//! The trained tokenizer follows Qwen2/3: NFC normalisation, Qwen's pre-tokenisation regex, byte-level
//! BPE, byte-level decoding, and the special tokens `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`,
//! `<think>`, `</think>` (ids 0 to 4).

use crate::chat::{ChatTemplate, BUILTIN_TEMPLATE};
use crate::error::{DataError, Result};
use crate::fsutil::sha256_hex;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, TokenizerBuilder};

/// Qwen2/3 pre-tokenisation pattern.
pub const QWEN_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Document separator / end of text.
pub const ENDOFTEXT: &str = "<|endoftext|>";
/// Special tokens of trained tokenizers, in id order.
pub const SPECIAL_TOKENS: [&str; 5] = [ENDOFTEXT, "<|im_start|>", "<|im_end|>", "<think>", "</think>"];

/// Settings of BPE training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Vocabulary size including the 256 byte symbols and the special tokens.
    pub vocab_size: usize,
    /// Minimum pair frequency for a merge.
    pub min_frequency: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig { vocab_size: 4096, min_frequency: 2 }
    }
}

/// The fields of an HF `tokenizer_config.json` that we use (others are kept when we write ours).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenizerConfig {
    /// Jinja chat template (older configs hold a list of named templates: `default` is used).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "template_field")]
    pub chat_template: Option<String>,
    /// End-of-sequence token (a string, or an object with `content`).
    #[serde(default, deserialize_with = "token_field")]
    pub eos_token: Option<String>,
    /// Padding token.
    #[serde(default, deserialize_with = "token_field")]
    pub pad_token: Option<String>,
    /// Beginning-of-sequence token.
    #[serde(default, deserialize_with = "token_field")]
    pub bos_token: Option<String>,
}

fn template_field<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Named {
        name: String,
        template: String,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Field {
        Text(String),
        List(Vec<Named>),
    }
    Ok(match Option::<Field>::deserialize(d)? {
        None => None,
        Some(Field::Text(s)) => Some(s),
        Some(Field::List(list)) => {
            let pos = list.iter().position(|n| n.name == "default").unwrap_or(0);
            list.into_iter().nth(pos).map(|n| n.template)
        }
    })
}

fn token_field<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Field {
        Text(String),
        Object { content: String },
    }
    Ok(Option::<Field>::deserialize(d)?.map(|f| match f {
        Field::Text(s) | Field::Object { content: s } => s,
    }))
}

/// A tokenizer plus its chat configuration.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    config: TokenizerConfig,
    json_sha256: String,
    path: Option<PathBuf>,
}

fn tok_err(path: Option<&Path>, e: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer { path: path.map(Path::to_path_buf), message: e.to_string() }
}

impl Tokenizer {
    /// Trains a byte-level BPE on `texts` (at least one must hold more than white space).
    pub fn train<'a>(texts: impl Iterator<Item = &'a str> + Send, config: &TrainConfig) -> Result<Self> {
        if config.vocab_size < 256 + SPECIAL_TOKENS.len() + 1 {
            return Err(DataError::config("vocab_size", "must exceed 256 byte symbols + 5 special tokens"));
        }
        if config.vocab_size as u64 > u32::MAX as u64 + 1 {
            return Err(DataError::config("vocab_size", format!("{} ids do not fit u32 token ids", config.vocab_size)));
        }
        let with_text = std::sync::atomic::AtomicBool::new(false);
        let texts = texts.inspect(|t| {
            if !t.trim().is_empty() {
                with_text.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let special: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)).collect();
        let split = Split::new(SplitPattern::Regex(QWEN_PATTERN.into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| tok_err(None, e))?;
        let pre = Sequence::new(vec![split.into(), ByteLevel::new(false, false, false).into()]);
        let mut tk =
            TokenizerBuilder::<BPE, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>::new(
            )
            .with_model(BPE::default())
            .with_normalizer(Some(NFC.into()))
            .with_pre_tokenizer(Some(pre.into()))
            .with_post_processor(None)
            .with_decoder(Some(ByteLevel::new(false, false, false).into()))
            .build()
            .map_err(|e| tok_err(None, e))?;
        // Registered before training so that chat markup in the corpus is not split into merges.
        tk.add_special_tokens(special.clone()).map_err(|e| tok_err(None, e))?;
        let mut trainer = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(config.vocab_size)
            .min_frequency(config.min_frequency)
            .special_tokens(special)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        tk.train(&mut trainer, texts).map_err(|e| tok_err(None, e))?;
        if !with_text.into_inner() {
            return Err(DataError::config("corpus", "no text to train a tokenizer on"));
        }
        let json = tk.to_string(false).map_err(|e| tok_err(None, e))?;
        let inner: tokenizers::Tokenizer = json.parse().map_err(|e| tok_err(None, e))?;
        let config = TokenizerConfig {
            chat_template: Some(BUILTIN_TEMPLATE.to_string()),
            eos_token: Some("<|im_end|>".into()),
            pad_token: Some(ENDOFTEXT.into()),
            bos_token: None,
        };
        Ok(Tokenizer { inner, config, json_sha256: sha256_hex(json.as_bytes()), path: None })
    }

    /// Loads `tokenizer.json` (a file, or a directory holding it) and the `tokenizer_config.json`
    /// beside it if there is one.
    pub fn load(path: &Path) -> Result<Self> {
        let (file, dir) = if path.is_dir() {
            (path.join("tokenizer.json"), path.to_path_buf())
        } else {
            (path.to_path_buf(), path.parent().map(Path::to_path_buf).unwrap_or_default())
        };
        let bytes = std::fs::read(&file).map_err(|e| DataError::io(&file, e))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| tok_err(Some(&file), format!("not UTF-8: {e}")))?;
        // Parse as JSON first for an error with line and column, then as a tokenizer.
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            tok_err(Some(&file), format!("not valid JSON at line {} column {}: {e}", e.line(), e.column()))
        })?;
        let inner: tokenizers::Tokenizer =
            serde_json::from_value(value).map_err(|e| tok_err(Some(&file), format!("not a tokenizer.json: {e}")))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let config = if cfg_path.is_file() { crate::fsutil::read_json(&cfg_path)? } else { TokenizerConfig::default() };
        Ok(Tokenizer { inner, config, json_sha256: sha256_hex(&bytes), path: Some(file) })
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir` (created if needed).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let json = self.inner.to_string(true).map_err(|e| tok_err(None, e))?;
        atomicio::write_file(&dir.join("tokenizer.json"), json.as_bytes())?;
        let mut decoder = serde_json::Map::new();
        for t in SPECIAL_TOKENS {
            if let Some(id) = self.token_id(t) {
                decoder.insert(
                    id.to_string(),
                    serde_json::json!({"content": t, "lstrip": false, "normalized": false, "rstrip": false,
                                       "single_word": false, "special": true}),
                );
            }
        }
        let cfg = serde_json::json!({
            "added_tokens_decoder": decoder,
            "bos_token": self.config.bos_token,
            "chat_template": self.config.chat_template,
            "clean_up_tokenization_spaces": false,
            "eos_token": self.config.eos_token,
            "errors": "replace",
            "model_max_length": 32768,
            "pad_token": self.config.pad_token,
            "split_special_tokens": false,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": null,
        });
        crate::fsutil::write_json_atomic(&dir.join("tokenizer_config.json"), &cfg)
    }

    /// Token ids of `text` (no BOS/EOS added; special tokens written in the text are recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(|e| tok_err(self.path.as_deref(), e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// [`Tokenizer::encode`] of many texts, in parallel (rayon), in order.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        texts.par_iter().map(|t| self.encode(t)).collect()
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| tok_err(self.path.as_deref(), e))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of a token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The document separator: `<|endoftext|>` if present, else the config's `eos_token`.
    pub fn separator_id(&self) -> Result<u32> {
        self.token_id(ENDOFTEXT).or_else(|| self.config.eos_token.as_deref().and_then(|t| self.token_id(t))).ok_or_else(
            || tok_err(self.path.as_deref(), "has neither <|endoftext|> nor an eos_token in its vocabulary"),
        )
    }

    /// The chat template of `tokenizer_config.json`, or the built-in one.
    pub fn chat_template(&self) -> Result<ChatTemplate> {
        match &self.config.chat_template {
            Some(t) => ChatTemplate::compile(t.clone(), self.path.as_ref().map(|p| p.display().to_string())),
            None => Ok(ChatTemplate::builtin()),
        }
    }

    /// The parsed `tokenizer_config.json` fields.
    pub fn config(&self) -> &TokenizerConfig {
        &self.config
    }

    /// SHA-256 of the tokenizer.json it was loaded from (or of its compact JSON when trained).
    pub fn sha256(&self) -> &str {
        &self.json_sha256
    }

    /// The tokenizer.json it was loaded from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}
