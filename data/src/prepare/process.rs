//! The per-document steps, a pure function of the document (run in parallel over a batch):
//! clean -> length filter -> language filter -> PII scrub -> contamination check -> hashes for
//! dedup -> tags -> split. Deduplication itself needs the run's index and happens after, in order.

use super::config::{PrepareConfig, Split, SplitConfig};
use super::contamination::{EvalIndex, HitKind};
use super::dedup::text_hash;
use super::lang::LangFilter;
use super::minhash::MinHasher;
use super::normalize::normalize_into;
use super::pii::{PiiCounts, PiiScrubber};
use super::sources::RawDoc;
use super::split::split_by_hash;
use super::tags::Tagger;
use super::words::{word_hashes, word_spans};
use crate::error::Result;

/// Every compiled step of a config.
#[derive(Debug)]
pub struct Pipeline {
    nfkc: bool,
    min_words: usize,
    lang: LangFilter,
    pii: PiiScrubber,
    minhash: Option<MinHasher>,
    /// The eval index (also read by the driver for names and counts).
    pub eval: EvalIndex,
    tagger: Tagger,
    split: SplitConfig,
}

/// What happens to a document.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Nothing left after cleaning.
    Empty,
    /// Fewer words than `min_words`.
    TooShort,
    /// Dropped by the language filter (detected code).
    Language(&'static str),
    /// Matches an eval item.
    Contaminated {
        /// Global item index.
        item: u32,
        /// How.
        kind: HitKind,
        /// The shared n-gram as written in the document, or the document's start.
        evidence: String,
    },
    /// Passes every per-document step; deduplication decides.
    Candidate(Keys),
}

/// The dedup keys and the rest of a candidate's attributes.
#[derive(Clone, Debug, PartialEq)]
pub struct Keys {
    /// First 128 bits of the SHA-256 of the cleaned text.
    pub hash: u128,
    /// MinHash-LSH band keys (empty when near-dup removal is off).
    pub bands: Vec<u64>,
    /// Words.
    pub words: u64,
    /// Tags.
    pub tags: Vec<String>,
    /// Split.
    pub split: Split,
}

/// A processed document.
#[derive(Clone, Debug, PartialEq)]
pub struct Processed {
    /// Its id.
    pub id: String,
    /// Its URL.
    pub url: Option<String>,
    /// The cleaned, scrubbed text.
    pub text: String,
    /// PII replacements per kind.
    pub pii: PiiCounts,
    /// Its fate.
    pub outcome: Outcome,
    /// Input bytes it came from.
    pub raw_bytes: u64,
}

/// Characters of evidence kept for a near-duplicate contamination hit.
const EVIDENCE_CHARS: usize = 200;

impl Pipeline {
    /// Compiles `config`'s steps around an eval index.
    pub fn new(config: &PrepareConfig, eval: EvalIndex) -> Result<Self> {
        Ok(Pipeline {
            nfkc: config.normalize.nfkc,
            min_words: config.filter.min_words,
            lang: LangFilter::new(&config.filter.languages, config.filter.lang_sample_chars),
            pii: PiiScrubber::new(&config.pii)?,
            minhash: config.dedup.near.then(|| MinHasher::new(&config.dedup.minhash)),
            eval,
            tagger: Tagger::new(&config.tags)?,
            split: config.split.clone(),
        })
    }

    /// The text hash, band keys and word count of a (final) text.
    pub fn dedup_keys(&self, text: &str, words: &mut Vec<u64>, scratch: &mut Vec<u64>) -> (u128, Vec<u64>) {
        word_hashes(text, words);
        let bands = match &self.minhash {
            Some(mh) => mh.band_keys(&mh.signature(words, scratch)),
            None => Vec::new(),
        };
        (text_hash(text), bands)
    }

    /// Runs the per-document steps; `fixed` is the source's own split.
    pub fn process(&self, raw: RawDoc, fixed: Option<Split>) -> Processed {
        let raw_bytes = raw.text.len() as u64;
        let mut text = String::new();
        normalize_into(&raw.text, self.nfkc, &mut text);
        drop(raw.text);
        let mut p =
            Processed { id: raw.id, url: raw.url, text, pii: PiiCounts::new(), outcome: Outcome::Empty, raw_bytes };
        if p.text.is_empty() {
            return p;
        }
        let (mut words, mut scratch) = (Vec::new(), Vec::new());
        word_hashes(&p.text, &mut words);
        if words.len() < self.min_words {
            p.outcome = Outcome::TooShort;
            return p;
        }
        if let Some(code) = self.lang.reject(&p.text) {
            p.outcome = Outcome::Language(code);
            return p;
        }
        self.pii.scrub(&mut p.text, &mut p.pii);
        if !p.pii.is_empty() {
            word_hashes(&p.text, &mut words);
        }
        if let Some(hit) = self.eval.check(&words, &mut scratch) {
            let evidence = match hit.kind {
                HitKind::Ngram => ngram_text(&p.text, hit.word, self.eval.ngram()),
                HitKind::NearDup => p.text.chars().take(EVIDENCE_CHARS).collect(),
            };
            p.outcome = Outcome::Contaminated { item: hit.item, kind: hit.kind, evidence };
            return p;
        }
        let (hash, bands) = self.dedup_keys(&p.text, &mut words, &mut scratch);
        let split = fixed.unwrap_or_else(|| split_by_hash(hash, &self.split));
        p.outcome =
            Outcome::Candidate(Keys { hash, bands, words: words.len() as u64, tags: self.tagger.tag(&p.text), split });
        p
    }
}

/// The text of words `first .. first + n` of `text`.
fn ngram_text(text: &str, first: usize, n: usize) -> String {
    let mut spans = Vec::new();
    word_spans(text, |r, _| spans.push(r));
    match (spans.get(first), spans.get(first + n - 1)) {
        (Some(a), Some(b)) => text[a.start..b.end].to_string(),
        _ => String::new(),
    }
}
