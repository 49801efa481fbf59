//! Unicode normalisation and cleaning of one document.
//!
//! Rules, in order (each has its own test):
//! 1. Unicode NFKC (compatibility forms: ligatures, full-width letters, NBSP -> space, ...);
//!    ASCII text is already NFKC and skips it.
//! 2. Line breaks: `\r\n`, `\r`, U+0085, U+2028 and U+2029 become `\n`.
//! 3. Invisible characters are removed: control characters other than `\n` and `\t`, zero-width
//!    characters (U+200B..U+200D, U+2060, U+FEFF), the soft hyphen U+00AD, bidirectional marks
//!    (U+200E, U+200F, U+202A..U+202E, U+2066..U+2069) and the replacement character U+FFFD.
//! 4. Tabs and other spaces become one space; runs of spaces collapse to one; lines are trimmed.
//! 5. At most one blank line in a row; the document is trimmed.

use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};

/// Cleans `text` into `out` (cleared first). `nfkc` switches rule 1.
pub fn normalize_into(text: &str, nfkc: bool, out: &mut String) {
    out.clear();
    out.reserve(text.len());
    let needs_nfkc = nfkc && !text.is_ascii() && is_nfkc_quick(text.chars()) != IsNormalized::Yes;
    if needs_nfkc {
        clean(text.nfkc(), out);
    } else {
        clean(text.chars(), out);
    }
}

/// Cleans `text` (convenience form of [`normalize_into`] with NFKC).
pub fn normalize(text: &str) -> String {
    let mut out = String::new();
    normalize_into(text, true, &mut out);
    out
}

fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{200B}'..='\u{200F}' | '\u{2060}' | '\u{FEFF}' | '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}' | '\u{FFFD}')
        || (c.is_control() && c != '\n' && c != '\t')
}

/// Rules 2-5 over a character stream.
fn clean(chars: impl Iterator<Item = char>, out: &mut String) {
    // Pending separators, written only when a visible character follows (trims lines and the end).
    let mut pending_space = false;
    let mut pending_newlines = 0usize;
    let mut prev_cr = false;
    for c in chars {
        let c = match c {
            '\r' => {
                prev_cr = true;
                '\n'
            }
            '\n' if prev_cr => {
                prev_cr = false;
                continue;
            }
            '\u{0085}' | '\u{2028}' | '\u{2029}' => '\n',
            c => c,
        };
        if c != '\n' {
            prev_cr = false;
        }
        if c == '\n' {
            pending_space = false;
            pending_newlines += 1;
            continue;
        }
        if c == '\t' || (c.is_whitespace() && c != '\n') {
            pending_space = true;
            continue;
        }
        if is_invisible(c) {
            continue;
        }
        if !out.is_empty() {
            if pending_newlines > 0 {
                out.push_str(if pending_newlines >= 2 { "\n\n" } else { "\n" });
            } else if pending_space {
                out.push(' ');
            }
        }
        pending_space = false;
        pending_newlines = 0;
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn nfkc_folds_compatibility_forms() {
        assert_eq!(normalize("ﬁbrosis"), "fibrosis"); // ligature
        assert_eq!(normalize("ＡＢＣ１２３"), "ABC123"); // full width
        assert_eq!(normalize("10\u{00A0}mg"), "10 mg"); // NBSP
        assert_eq!(normalize("x²"), "x2");
        assert_eq!(normalize("e\u{0301}"), "é"); // combining accent composed
                                                 // Not touched: plain ASCII and already-normal text.
        assert_eq!(normalize("Plain text, 5 mg."), "Plain text, 5 mg.");
        assert_eq!(normalize("Ärzte über Übelkeit"), "Ärzte über Übelkeit");
        let mut out = String::new();
        super::normalize_into("ﬁ", false, &mut out);
        assert_eq!(out, "ﬁ", "NFKC off keeps the ligature");
    }

    #[test]
    fn line_breaks_become_newlines() {
        assert_eq!(normalize("a\r\nb\rc\u{2028}d\u{0085}e"), "a\nb\nc\nd\ne");
        assert_eq!(normalize("a\r\n\r\nb"), "a\n\nb");
    }

    #[test]
    fn invisible_characters_are_removed() {
        assert_eq!(normalize("ab\u{200B}c\u{00AD}d\u{FEFF}e"), "abcde");
        assert_eq!(normalize("x\u{0007}y\u{001B}z"), "xyz");
        assert_eq!(normalize("r\u{200F}l\u{202E}t\u{FFFD}"), "rlt");
        // False positives: visible non-ASCII letters and symbols stay.
        assert_eq!(normalize("β-blocker → 5 µg ± 1"), "β-blocker → 5 μg ± 1");
    }

    #[test]
    fn spaces_collapse_and_lines_are_trimmed() {
        assert_eq!(normalize("a \t  b"), "a b");
        assert_eq!(normalize("  line one   \n\t line two  "), "line one\nline two");
        assert_eq!(normalize("\u{3000}wide\u{2003}space"), "wide space");
    }

    #[test]
    fn blank_lines_are_limited_to_one() {
        assert_eq!(normalize("a\n\n\n\n b"), "a\n\nb");
        assert_eq!(normalize("a\n \n\t\n b"), "a\n\nb");
        assert_eq!(normalize("\n\n a \n\n"), "a");
        assert_eq!(normalize(" \u{200B}\n "), "");
    }
}
