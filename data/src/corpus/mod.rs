//! The training corpus: documents rendered from the world in many text forms, each with a domain
//! tag, mixed to target shares until a token budget is reached.
//!
//! Every entity is visited once per round, each time in a different form (forms rotate with the
//! round), so each fact is seen in several phrasings; rounds repeat until the budget is spent.

mod chat_forms;
mod drugs;
mod form;
mod general;
mod general_vocab;
mod management;
mod presentation;
mod schedule;
pub(crate) mod text;

use crate::chat::Message;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use general_vocab::GLOSSARY;
pub use schedule::{estimate_tokens, generate_corpus};

/// Domain tag of world-knowledge prose.
pub const DOMAIN_MEDICAL: &str = "medical";
/// Domain tag of medical conversations in the chat template.
pub const DOMAIN_MEDICAL_CHAT: &str = "medical_chat";
/// Domain tag of the general (non-medical) stream.
pub const DOMAIN_GENERAL: &str = "general";
/// The `source` of every generated document.
pub const SOURCE: &str = "medmoe-synthetic-world";
/// The license of generated text (it is ours, dedicated to the public domain).
pub const LICENSE: &str = "CC0-1.0";

/// One corpus document (a line of a corpus JSONL file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// Unique id.
    pub id: String,
    /// Domain tag (`medical`, `medical_chat`, `general`, or anything for external corpora).
    pub domain: String,
    /// Finer topic (organ system, `laboratory`, `story`, ...).
    #[serde(default)]
    pub topic: String,
    /// The text form it was rendered in.
    #[serde(default)]
    pub form: String,
    /// Where it comes from.
    pub source: String,
    /// Its license (SPDX id).
    pub license: String,
    /// The text (chats are rendered with the chat template).
    pub text: String,
    /// The conversation behind a chat document, for re-rendering with another template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<Message>>,
}

/// Size and mixture of the corpus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorpusConfig {
    /// Token budget (estimated with [`estimate_tokens`]).
    pub tokens: u64,
    /// Target share of tokens per domain (normalised; unknown domains are rejected).
    pub shares: BTreeMap<String, f64>,
}

impl Default for CorpusConfig {
    fn default() -> Self {
        let shares = [(DOMAIN_MEDICAL, 0.6), (DOMAIN_MEDICAL_CHAT, 0.15), (DOMAIN_GENERAL, 0.25)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        CorpusConfig { tokens: 2_000_000, shares }
    }
}

/// Names of all forms, by domain (for docs and tests).
pub fn form_names() -> BTreeMap<&'static str, Vec<&'static str>> {
    let mut m = BTreeMap::new();
    let medical: Vec<&str> = presentation::FORMS
        .iter()
        .chain(management::FORMS)
        .chain(drugs::DRUG_FORMS)
        .chain([&drugs::CLASS_FORM, &drugs::LAB_FORM, &drugs::PATHOGEN_FORM])
        .map(|f| f.name)
        .collect();
    m.insert(DOMAIN_MEDICAL, medical);
    m.insert(
        DOMAIN_MEDICAL_CHAT,
        chat_forms::DISEASE_FORMS.iter().chain(chat_forms::DRUG_FORMS).map(|f| f.name).collect(),
    );
    m.insert(DOMAIN_GENERAL, general::FORMS.iter().map(|f| f.name).collect());
    m
}
