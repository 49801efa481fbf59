//! MCQ by generation: the prompt lists the options by letter and ends with `Answer:`; the
//! greedy continuation is read back as an option ([`parse_answer`]).

use data::eval::McqItem;

/// `{context}\n\n` (when any), `Q: {question}\n`, one `{letter}) {option}\n` per option, `Answer:`.
pub fn generation_prompt(item: &McqItem) -> String {
    let mut s = String::new();
    if let Some(c) = item.context.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
        s.push_str(c);
        s.push_str("\n\n");
    }
    s.push_str(&format!("Q: {}\n", item.question.trim()));
    for (k, v) in &item.options {
        s.push_str(&format!("{k}) {}\n", v.trim()));
    }
    s.push_str("Answer:");
    s
}

/// The option a generated answer names, if it names one: an option letter as a word of its
/// own at the start (`B`, `B)`, `(B)`, `B.`), else the option whose text the answer starts with
/// (case-insensitive; the longest such option). None when neither.
pub fn parse_answer(text: &str, item: &McqItem) -> Option<usize> {
    let t = text.trim_start();
    let t = t.strip_prefix('(').unwrap_or(t);
    let mut chars = t.chars();
    if let Some(c) = chars.next() {
        let word_ends = chars.next().is_none_or(|n| !n.is_alphanumeric());
        if word_ends {
            if let Some(i) = item.options.keys().position(|k| k.chars().eq(std::iter::once(c))) {
                return Some(i);
            }
        }
    }
    let lower = t.to_lowercase();
    item.options
        .values()
        .enumerate()
        .filter(|(_, o)| {
            let o = o.trim().to_lowercase();
            !o.is_empty() && lower.starts_with(&o)
        })
        .max_by_key(|(_, o)| o.trim().len())
        .map(|(i, _)| i)
}
