//! MeSH-like domain tags by keyword rules.
//!
//! Each rule is a tag (named after a MeSH tree branch, e.g. `C14 Cardiovascular Diseases`) and
//! lowercase keywords: whole words or phrases, or word beginnings with a trailing `*`
//! (`cardi*` matches `cardiac`, `cardiology`). One Aho-Corasick pass (ASCII case-insensitive,
//! leftmost-longest) counts the hits of every rule; a document gets each tag with at least
//! `min_hits` hits, most hits first. The built-in table is [`BUILTIN_TAGS`]; `tags.extra` in the
//! config adds rules.

use super::config::{TagRule, TagsConfig};
use crate::error::{DataError, Result};
use aho_corasick::{AhoCorasick, MatchKind};

/// `(tag, keywords)` of the built-in rules.
pub const BUILTIN_TAGS: &[(&str, &[&str])] = &[
    (
        "C01 Infections",
        &[
            "infection*",
            "infectious",
            "bacteri*",
            "viral",
            "virus*",
            "sepsis",
            "septic",
            "pathogen*",
            "antibiotic*",
            "antimicrobial*",
            "fungal",
            "parasit*",
            "tuberculosis",
            "pneumonia",
            "hiv",
        ],
    ),
    (
        "C04 Neoplasms",
        &[
            "cancer*",
            "tumor*",
            "tumour*",
            "carcinoma*",
            "neoplas*",
            "lymphoma*",
            "leukemia*",
            "leukaemia*",
            "metasta*",
            "malignan*",
            "oncolog*",
            "chemotherapy",
            "sarcoma*",
            "melanoma*",
        ],
    ),
    (
        "C05 Musculoskeletal Diseases",
        &[
            "arthritis",
            "osteo*",
            "fracture*",
            "bone",
            "bones",
            "joint",
            "joints",
            "muscle*",
            "tendon*",
            "skeletal",
            "musculoskeletal",
        ],
    ),
    (
        "C06 Digestive System Diseases",
        &[
            "gastro*",
            "hepat*",
            "liver",
            "intestin*",
            "bowel",
            "colon",
            "colitis",
            "pancrea*",
            "stomach",
            "esophag*",
            "oesophag*",
            "digestive",
            "cirrhosis",
        ],
    ),
    (
        "C08 Respiratory Tract Diseases",
        &[
            "lung",
            "lungs",
            "pulmonary",
            "respirat*",
            "asthma",
            "bronch*",
            "copd",
            "airway*",
            "dyspnea",
            "dyspnoea",
            "pneumothorax",
        ],
    ),
    (
        "C10 Nervous System Diseases",
        &[
            "neuro*",
            "brain",
            "seizure*",
            "epilep*",
            "stroke",
            "dementia",
            "alzheimer*",
            "parkinson*",
            "nerve*",
            "spinal",
            "cerebral",
            "migraine",
        ],
    ),
    (
        "C11 Eye Diseases",
        &["eye", "eyes", "ocular", "retina*", "glaucoma", "cataract*", "vision", "cornea*", "ophthalm*"],
    ),
    (
        "C12 Urogenital Diseases",
        &["kidney*", "renal", "urinary", "bladder", "prostat*", "nephr*", "dialysis", "urolog*"],
    ),
    (
        "C13 Female Urogenital Diseases and Pregnancy Complications",
        &[
            "pregnan*",
            "obstetric*",
            "gestation*",
            "uterus",
            "uterine",
            "ovari*",
            "menstrua*",
            "preeclampsia",
            "postpartum",
        ],
    ),
    (
        "C14 Cardiovascular Diseases",
        &[
            "heart",
            "cardi*",
            "coronary",
            "hypertension",
            "arrhythmi*",
            "myocardial",
            "vascular",
            "artery",
            "arteries",
            "atrial",
            "ventricular",
            "blood pressure",
            "thrombo*",
            "infarction",
        ],
    ),
    (
        "C15 Hemic and Lymphatic Diseases",
        &[
            "anemia",
            "anaemia",
            "hemoglobin",
            "haemoglobin",
            "platelet*",
            "coagul*",
            "bleeding",
            "hematolog*",
            "haematolog*",
            "lymph node*",
        ],
    ),
    ("C16 Congenital and Neonatal Diseases", &["neonat*", "newborn*", "congenital", "infant*"]),
    (
        "C17 Skin and Connective Tissue Diseases",
        &["skin", "derma*", "rash", "rashes", "eczema", "psoriasis", "lupus", "cutaneous"],
    ),
    (
        "C18 Nutritional and Metabolic Diseases",
        &["diabet*", "glucose", "obesity", "metabolic", "cholesterol", "lipid*", "vitamin*", "malnutrition"],
    ),
    (
        "C19 Endocrine System Diseases",
        &["endocrin*", "thyroid*", "hormone*", "adrenal", "pituitary", "cortisol", "insulin"],
    ),
    ("C20 Immune System Diseases", &["immun*", "allerg*", "autoimmun*", "antibod*", "vaccin*"]),
    (
        "C23 Signs and Symptoms",
        &["symptom*", "pain", "fever", "nausea", "vomiting", "fatigue", "cough", "headache", "dizziness"],
    ),
    (
        "D27 Drugs and Dosage",
        &["drug*", "dose", "doses", "dosage", "dosing", "mg", "medication*", "pharmaco*", "tablet*", "prescri*"],
    ),
    (
        "E01 Diagnosis",
        &["diagnos*", "laborator*", "biopsy", "imaging", "radiograph*", "mri", "ultrasound", "assay*", "screening"],
    ),
    (
        "F03 Mental Disorders",
        &["depress*", "anxiety", "schizophren*", "bipolar", "psychiatr*", "psychos*", "psychotic", "mental", "suicid*"],
    ),
];

/// One keyword of the automaton.
#[derive(Clone, Debug)]
struct Keyword {
    tag: usize,
    prefix: bool,
}

/// The compiled tag rules.
#[derive(Debug)]
pub struct Tagger {
    tags: Vec<String>,
    keywords: Vec<Keyword>,
    automaton: Option<AhoCorasick>,
    min_hits: usize,
}

impl Tagger {
    /// Compiles the built-in rules (when on) and `config.extra`; empty keywords are an error.
    pub fn new(config: &TagsConfig) -> Result<Self> {
        let builtin = BUILTIN_TAGS
            .iter()
            .filter(|_| config.builtin)
            .map(|(t, k)| TagRule { tag: t.to_string(), keywords: k.iter().map(|s| s.to_string()).collect() });
        let mut tags = Vec::new();
        let mut keywords = Vec::new();
        let mut patterns = Vec::new();
        for rule in builtin.chain(config.extra.iter().cloned()) {
            if rule.tag.trim().is_empty() || rule.keywords.is_empty() {
                return Err(DataError::config("tags", format!("rule `{}` needs a tag and keywords", rule.tag)));
            }
            let tag = match tags.iter().position(|t| t == &rule.tag) {
                Some(i) => i,
                None => {
                    tags.push(rule.tag.clone());
                    tags.len() - 1
                }
            };
            for k in &rule.keywords {
                let prefix = k.ends_with('*');
                let word = k.trim_end_matches('*').to_lowercase();
                if word.trim().is_empty() {
                    return Err(DataError::config("tags", format!("rule `{}` has an empty keyword", rule.tag)));
                }
                keywords.push(Keyword { tag, prefix });
                patterns.push(word);
            }
        }
        if config.min_hits == 0 {
            return Err(DataError::config("tags.min_hits", "must be at least 1"));
        }
        let automaton = if patterns.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&patterns)
                    .map_err(|e| DataError::config("tags", e.to_string()))?,
            )
        };
        Ok(Tagger { tags, keywords, automaton, min_hits: config.min_hits })
    }

    /// The tags of `text`, most hits first (ties by rule order).
    pub fn tag(&self, text: &str) -> Vec<String> {
        let Some(ac) = &self.automaton else { return Vec::new() };
        let mut hits = vec![0usize; self.tags.len()];
        let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric());
        for m in ac.find_iter(text) {
            let kw = &self.keywords[m.pattern().as_usize()];
            let before = text[..m.start()].chars().next_back();
            let after = text[m.end()..].chars().next();
            if is_word(before) || (!kw.prefix && is_word(after)) {
                continue;
            }
            hits[kw.tag] += 1;
        }
        let mut chosen: Vec<(usize, usize)> =
            hits.iter().enumerate().filter(|&(_, &h)| h >= self.min_hits).map(|(t, &h)| (t, h)).collect();
        chosen.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        chosen.into_iter().map(|(t, _)| self.tags[t].clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagger() -> Tagger {
        Tagger::new(&TagsConfig::default()).unwrap()
    }

    #[test]
    fn keywords_give_tags_most_hits_first() {
        let t = tagger();
        let tags = t.tag(
            "Coronary artery disease and heart failure: cardiologists adjust the dose of the drug. \
             Myocardial infarction is a cardiac emergency.",
        );
        assert_eq!(tags[0], "C14 Cardiovascular Diseases");
        assert!(tags.contains(&"D27 Drugs and Dosage".to_string()), "{tags:?}");
        assert_eq!(
            t.tag("Asthma and COPD are chronic airway diseases of the LUNGS."),
            vec!["C08 Respiratory Tract Diseases"]
        );
    }

    #[test]
    fn words_inside_other_words_do_not_count() {
        let t = tagger();
        // `heart` in `hearth`, `eye` in `eyelet`/`honeyeye`, `mg` inside `mgmt`: no hits.
        assert!(t.tag("The hearth was warm; an eyelet and mgmt notes, hearthstone, honeyeye.").is_empty());
        // Prefix keywords match word beginnings only: `cardi*` not inside `pericardium`.
        assert!(t.tag("pericardium and epicardial fat").is_empty());
        // One hit is not enough (min_hits 2).
        assert!(t.tag("A heart-shaped box of chocolates.").is_empty());
    }

    #[test]
    fn extra_rules_extend_the_table() {
        let config = TagsConfig {
            builtin: false,
            min_hits: 1,
            extra: vec![TagRule { tag: "Z99 Tropical".into(), keywords: vec!["malaria".into(), "dengue*".into()] }],
        };
        let t = Tagger::new(&config).unwrap();
        assert_eq!(t.tag("Dengue fever"), vec!["Z99 Tropical"]);
        assert!(t.tag("heart heart heart").is_empty(), "built-in rules off");
        let bad = TagsConfig {
            extra: vec![TagRule { tag: "X".into(), keywords: vec!["*".into()] }],
            ..TagsConfig::default()
        };
        assert!(Tagger::new(&bad).unwrap_err().to_string().contains("empty keyword"));
    }
}
