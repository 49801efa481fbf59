//! When a sequence stops: stop tokens, stop strings in the generated text, the token budget,
//! the model's context.

use serde::Serialize;

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// It produced one of the stop tokens (kept as its last token).
    StopToken,
    /// Its text contains one of the stop strings (the token that completed it is its last).
    StopString,
    /// It produced `max_new_tokens` tokens.
    MaxNewTokens,
    /// It filled the model's context (`max_position_embeddings`).
    Context,
}

/// The earliest occurrence of any of `stops` in `text`: `(byte offset, stop index)`.
pub fn find_stop(text: &str, stops: &[String]) -> Option<(usize, usize)> {
    stops
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.is_empty())
        .filter_map(|(i, s)| text.find(s.as_str()).map(|at| (at, i)))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_stop_wins() {
        let stops = vec!["\n\n".to_string(), "Answer".to_string(), String::new()];
        assert_eq!(find_stop("x Answer: B\n\nmore", &stops), Some((2, 1)));
        assert_eq!(find_stop("a\n\nAnswer", &stops), Some((1, 0)));
        assert_eq!(find_stop("nothing here", &stops), None);
    }
}
