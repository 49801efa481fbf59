//! PII scrubbing by a table of regular-expression rules (anyone can add one: a row in
//! [`BUILTIN_RULES`], or `pii.extra_rules` in the config).
//!
//! Each rule has a kind (counted per document and in the manifest), a pattern and a replacement
//! (`$label` keeps a named group, so `DOB: 01/02/1980` becomes `DOB: <DATE_OF_BIRTH>`). Rules run
//! in table order, built-in first; URLs with credentials run before e-mail addresses, which they
//! contain. One `RegexSet` pass finds which rules match at all, so a clean document costs a
//! single scan. Word boundaries are ASCII (`(?-u:\b)`) and digits `[0-9]`: the lazy DFA handles
//! them on any text, where Unicode `\b` would fall back to a slower engine on non-ASCII input.

use super::config::{PiiConfig, PiiRule};
use crate::error::{DataError, Result};
use regex::{Captures, Regex, RegexSet};
use std::collections::BTreeMap;

/// The built-in kinds.
pub const KINDS: [&str; 6] = ["url_credentials", "email", "phone", "date_of_birth", "postal_address", "record_id"];

const MONTH: &str = "(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\\.?";

/// `(kind, pattern, replacement)`; `{B}` stands for an ASCII word boundary, `{MONTH}` for a month name.
pub const BUILTIN_RULES: &[(&str, &str, &str)] = &[
    // scheme://user:password@host -> scheme://<CREDENTIALS>@host
    ("url_credentials", r"(?i)(?P<scheme>{B}[a-z][a-z0-9+.-]*://)[^\s/?#@:]+:[^\s/?#@]+@", "${scheme}<CREDENTIALS>@"),
    (
        "email",
        r"(?i){B}[a-z0-9_][a-z0-9_.%+-]*@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\.[a-z]{2,24}{B}",
        "<EMAIL>",
    ),
    // North American forms with consistent separators, (555) 123-4567, and +country numbers.
    ("phone", r"{B}[0-9]{3}-[0-9]{3}-[0-9]{4}{B}", "<PHONE>"),
    ("phone", r"{B}[0-9]{3}\.[0-9]{3}\.[0-9]{4}{B}", "<PHONE>"),
    ("phone", r"\([0-9]{3}\) ?[0-9]{3}[-. ][0-9]{4}{B}", "<PHONE>"),
    ("phone", r"\+[0-9]{1,3}(?:[ .-]?\(?[0-9]{1,4}\)?){1,2}(?:[ .-]?[0-9]{2,4}){2,3}{B}", "<PHONE>"),
    (
        "phone",
        r"(?i)(?P<label>{B}(?:tel|phone|telephone|fax|mobile|cell){B}\.?:?\s*)\+?[0-9][0-9 ().-]{5,}[0-9]",
        "${label}<PHONE>",
    ),
    (
        "date_of_birth",
        r"(?i)(?P<label>{B}(?:date of birth|birth ?date|d\.o\.b\.?|dob|born(?: on)?)\s*[:-]?\s*)(?:[0-9]{1,2}[/.-][0-9]{1,2}[/.-][0-9]{2,4}|[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}|{MONTH} [0-9]{1,2}(?:st|nd|rd|th)?,? [0-9]{4}|[0-9]{1,2}(?:st|nd|rd|th)? {MONTH},? [0-9]{4}){B}",
        "${label}<DATE_OF_BIRTH>",
    ),
    (
        "postal_address",
        r"{B}[0-9]{1,6}(?: [A-Z][a-z]+| [A-Z]\.){1,4} (?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Parkway|Pkwy|Highway|Hwy|Square|Sq){B}\.?(?:,? (?:Apt|Apartment|Suite|Ste|Unit)\.? ?[A-Za-z0-9-]+)?(?:, [A-Z][a-z]+(?: [A-Z][a-z]+)*)?(?:, [A-Z]{2})?(?: [0-9]{5}(?:-[0-9]{4})?)?",
        "<ADDRESS>",
    ),
    ("postal_address", r"(?i){B}p\.? ?o\.? box [0-9]+{B}", "<ADDRESS>"),
    (
        "record_id",
        r"(?i)(?P<label>{B}(?:mrn|medical record (?:number|no\.?|#)|patient (?:id|number|no\.?)|record (?:number|no\.?|#)|account (?:number|no\.?|#)|insurance (?:id|number|no\.?)|member id|nhs (?:number|no\.?)|ssn|social security (?:number|no\.?))\s*[:#]?\s*)(?:[a-z]{1,4}-?)?[0-9][0-9-]{3,}[0-9]{B}",
        "${label}<ID>",
    ),
    ("record_id", r"{B}[0-9]{3}-[0-9]{2}-[0-9]{4}{B}", "<ID>"),
];

/// A compiled rule.
#[derive(Debug)]
struct Rule {
    kind: String,
    regex: Regex,
    replacement: String,
}

/// The compiled rule table.
#[derive(Debug)]
pub struct PiiScrubber {
    rules: Vec<Rule>,
    set: RegexSet,
    enabled: bool,
}

/// Counts of replaced matches per kind.
pub type PiiCounts = BTreeMap<String, u64>;

fn expand(pattern: &str) -> String {
    pattern.replace("{B}", r"(?-u:\b)").replace("{MONTH}", MONTH)
}

impl PiiScrubber {
    /// Compiles the built-in rules (less `config.disable`) and the config's extra rules; a bad
    /// pattern is an error naming the rule.
    pub fn new(config: &PiiConfig) -> Result<Self> {
        for k in &config.disable {
            if !KINDS.contains(&k.as_str()) {
                return Err(DataError::config(
                    "pii.disable",
                    format!("`{k}` is not a built-in kind ({})", KINDS.join(", ")),
                ));
            }
        }
        let builtin = BUILTIN_RULES
            .iter()
            .filter(|(k, ..)| !config.disable.iter().any(|d| d == k))
            .map(|&(k, p, r)| PiiRule { kind: k.into(), pattern: expand(p), replacement: r.into() });
        let mut rules = Vec::new();
        for (i, r) in builtin.chain(config.extra_rules.iter().cloned()).enumerate() {
            if r.kind.is_empty() {
                return Err(DataError::config(format!("pii rule {i}"), "empty kind"));
            }
            let regex = Regex::new(&r.pattern)
                .map_err(|e| DataError::config(format!("pii rule `{}` (#{i})", r.kind), e.to_string()))?;
            rules.push(Rule { kind: r.kind, regex, replacement: r.replacement });
        }
        let set = RegexSet::new(rules.iter().map(|r| r.regex.as_str()))
            .map_err(|e| DataError::config("pii rules", e.to_string()))?;
        Ok(PiiScrubber { rules, set, enabled: config.enabled })
    }

    /// The kinds in rule order (each once).
    pub fn kinds(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.rules {
            if !out.contains(&r.kind) {
                out.push(r.kind.clone());
            }
        }
        out
    }

    /// Scrubs `text` in place, adding the replaced matches per kind to `counts`.
    pub fn scrub(&self, text: &mut String, counts: &mut PiiCounts) {
        if !self.enabled || self.rules.is_empty() {
            return;
        }
        let hits = self.set.matches(text);
        if !hits.matched_any() {
            return;
        }
        for i in hits.iter() {
            let rule = &self.rules[i];
            let mut n = 0u64;
            let replaced = rule.regex.replace_all(text, |caps: &Captures| {
                n += 1;
                let mut s = String::new();
                caps.expand(&rule.replacement, &mut s);
                s
            });
            if n > 0 {
                *text = replaced.into_owned();
                *counts.entry(rule.kind.clone()).or_default() += n;
            }
        }
    }
}

#[cfg(test)]
mod tests;
