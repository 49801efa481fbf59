//! MCQ by generation: the prompt lists the options by letter and ends with `Answer:`; the
//! greedy continuation is read back as an option ([`parse_answer`]). For chat models the
//! question is a user turn phrased as P3's verifiable prompts ([`chat_question`]) and the answer
//! is read after its think block ([`parse_chat_answer`]).

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

/// The user turn asking `item` in a chat (`{context}\n\n` when any, then
/// [`data::sft::mcq_user_turn`]: options as `A. text` lines, the instruction, `/think` or
/// `/no_think`).
pub fn chat_question(item: &McqItem, think: bool) -> String {
    let options: Vec<String> = item.options.values().map(|o| o.trim().to_string()).collect();
    let question = match item.context.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) => format!("{c}\n\n{}", item.question.trim()),
        None => item.question.trim().to_string(),
    };
    data::sft::mcq_user_turn(&question, &options, think)
}

/// The option a chat answer names after its think block (the rule of P3's reward): None when the
/// think block never closes or the text after it names no option or several.
pub fn parse_chat_answer(text: &str, item: &McqItem) -> Option<usize> {
    let options: Vec<String> = item.options.values().map(|o| o.trim().to_string()).collect();
    data::sft::option_named(data::sft::after_think(text)?, &options)
}
