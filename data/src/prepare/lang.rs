//! Language filter through the `whatlang` crate (trigram profiles of 69 languages).
//!
//! The detector looks at the first `sample_chars` characters of a cleaned document. A document is
//! kept when its language is one of the configured ISO 639-3 codes; text whatlang cannot classify
//! is counted as `und` and dropped. An empty list keeps everything (no detection runs).

use whatlang::Lang;

/// The configured language filter.
#[derive(Clone, Debug)]
pub struct LangFilter {
    allow: Vec<Lang>,
    sample_chars: usize,
}

/// Code used for text whose language is not detected.
pub const UNDETERMINED: &str = "und";

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
    fn an_empty_list_keeps_everything() {
        let f = LangFilter::new(&[], 1000);
        assert!(f.keeps_all());
        assert_eq!(f.reject("Der Patient klagte über Brustschmerzen."), None);
    }
}
