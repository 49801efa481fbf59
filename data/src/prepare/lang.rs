//! Language filter through the `whatlang` crate (trigram profiles of 69 languages).
//!
//! The detector looks at the first `sample_chars` characters of a cleaned document. A document is
//! kept when its language is one of the configured ISO 639-3 codes; text whatlang cannot classify
//! is counted as `und` and dropped. An empty list keeps everything (no detection runs).
//!
//! When English is allowed, a sample whose words are at least [`ENGLISH_SHARE`] English function
//! words ([`ENGLISH_FUNCTION_WORDS`]: words that are not words of other Latin-script languages)
//! is kept without trigram detection. That is the common case of an English corpus, and it is
//! where the time went (whatlang scores all 69 profiles: 67% of a prepare run, perf, 2026-12-07);
//! it also keeps English text full of names trigrams misread (the synthetic world's invented
//! drug and disease names were read as French, Latin or Portuguese).

use whatlang::Lang;

/// The configured language filter.
#[derive(Clone, Debug)]
pub struct LangFilter {
    allow: Vec<Lang>,
    sample_chars: usize,
}

/// Code used for text whose language is not detected.
pub const UNDETERMINED: &str = "und";

/// English function words that are not (common) words of other Latin-script languages (no `a`,
/// `in`, `is`, `on`, `an`, `was`, `die`, ...). Running English has about 15-25% of them.
pub const ENGLISH_FUNCTION_WORDS: [&str; 24] = [
    "the", "of", "and", "to", "with", "that", "for", "by", "from", "are", "were", "this", "which", "it", "its", "has",
    "have", "had", "or", "not", "be", "been", "these", "their",
];
/// Share of [`ENGLISH_FUNCTION_WORDS`] among a sample's words that makes it English.
pub const ENGLISH_SHARE: f64 = 0.10;
/// Fewest words a sample needs for the function-word test (shorter ones go to whatlang).
pub const ENGLISH_MIN_WORDS: usize = 12;

/// True when `sample` is English by its function words ([`ENGLISH_SHARE`] of at least
/// [`ENGLISH_MIN_WORDS`] words; ASCII-case-insensitive).
pub fn english_by_function_words(sample: &str) -> bool {
    let (mut words, mut hits) = (0usize, 0usize);
    for w in sample.split(|c: char| !c.is_alphabetic()).filter(|w| !w.is_empty()) {
        words += 1;
        if w.len() <= 5 && ENGLISH_FUNCTION_WORDS.iter().any(|f| f.eq_ignore_ascii_case(w)) {
            hits += 1;
        }
    }
    words >= ENGLISH_MIN_WORDS && hits as f64 >= ENGLISH_SHARE * words as f64
}

impl LangFilter {
    /// A filter keeping `codes` (validated by the config); empty keeps everything.
    pub fn new(codes: &[String], sample_chars: usize) -> Self {
        LangFilter { allow: codes.iter().filter_map(Lang::from_code).collect(), sample_chars }
    }

    /// True when the filter keeps every document (no detection needed).
    pub fn keeps_all(&self) -> bool {
        self.allow.is_empty()
    }

    /// `None` when `text` is kept, else the detected code (`und` when unknown).
    pub fn reject(&self, text: &str) -> Option<&'static str> {
        if self.keeps_all() {
            return None;
        }
        let end = text.char_indices().nth(self.sample_chars).map_or(text.len(), |(i, _)| i);
        if self.allow.contains(&Lang::Eng) && english_by_function_words(&text[..end]) {
            return None;
        }
        match whatlang::detect(&text[..end]) {
            Some(info) if self.allow.contains(&info.lang()) => None,
            Some(info) => Some(info.lang().code()),
            None => Some(UNDETERMINED),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn english() -> LangFilter {
        LangFilter::new(&["eng".to_string()], 1000)
    }

    #[test]
    fn english_is_kept_and_other_languages_are_named() {
        let f = english();
        assert_eq!(
            f.reject("The patient presented with chest pain radiating to the left arm and was given aspirin."),
            None
        );
        assert_eq!(
            f.reject(
                "Der Patient klagte über Brustschmerzen, die in den linken Arm ausstrahlten, und erhielt Aspirin."
            ),
            Some("deu")
        );
        assert_eq!(
            f.reject("El paciente presentó dolor torácico que se irradiaba al brazo izquierdo y recibió aspirina."),
            Some("spa")
        );
        assert_eq!(f.reject("12345 67890 !!! ..."), Some(UNDETERMINED));
    }

    #[test]
    fn medical_jargon_stays_english() {
        // False-positive guard: Latin-heavy clinical English must not be dropped.
        let f = english();
        assert_eq!(
            f.reject(
                "Hepatosplenomegaly and lymphadenopathy were noted; differential diagnosis includes \
                 lymphoma, sarcoidosis and tuberculosis. Biopsy was recommended."
            ),
            None
        );
    }

    #[test]
    fn english_with_invented_names_is_kept_by_its_function_words() {
        let text = "Zorvaxine is given for Quelmirosis of the liver and the dose of Tavrelin depends on \
                    the weight; Vantorexa has been used with it by the clinics of Oskarven.";
        assert!(english_by_function_words(text));
        assert_eq!(english().reject(text), None);
        // Other languages have (almost) none of the words; short samples go to whatlang.
        for other in [
            "Der Patient klagte über Brustschmerzen, die in den linken Arm ausstrahlten, und erhielt Aspirin am Abend.",
            "El paciente presentó dolor torácico que se irradiaba al brazo izquierdo y recibió aspirina en la noche.",
            "De patiënt klaagde over pijn op de borst die uitstraalde naar de linkerarm en kreeg aspirine in het ziekenhuis.",
            "Le patient a présenté une douleur thoracique irradiant vers le bras gauche et a reçu de l'aspirine.",
        ] {
            assert!(!english_by_function_words(other), "{other}");
        }
        assert!(!english_by_function_words("the of and to with that"), "too short for the shortcut");
        let nl = english().reject(
            "De patiënt klaagde over pijn op de borst die uitstraalde naar de linkerarm en kreeg aspirine in het ziekenhuis.",
        );
        assert_eq!(nl, Some("nld"));
    }

    #[test]
    fn an_empty_list_keeps_everything() {
        let f = LangFilter::new(&[], 1000);
        assert!(f.keeps_all());
        assert_eq!(f.reject("Der Patient klagte über Brustschmerzen."), None);
    }
}
