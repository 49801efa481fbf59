//! Small text helpers shared by the forms.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// One of `options`, uniformly.
pub fn pick<'a>(rng: &mut ChaCha8Rng, options: &[&'a str]) -> &'a str {
    options[rng.gen_range(0..options.len())]
}

/// `a, b and c` (or `a and b`, or `a`).
pub fn list_and(items: &[String]) -> String {
    list_with(items, "and")
}

fn list_with(items: &[String], word: &str) -> String {
    match items {
        [] => String::new(),
        [a] => a.clone(),
        [rest @ .., last] => format!("{} {word} {last}", rest.join(", ")),
    }
}

/// `a`/`an` for `word`.
pub fn article(word: &str) -> &'static str {
    match word.chars().next().map(|c| c.to_ascii_lowercase()) {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

/// First letter upper-cased.
pub fn cap(s: &str) -> String {
    crate::world::names::capitalize(s)
}

/// A number formatted for a lab report: integers from 10 up, one decimal below.
pub fn lab_number(x: f32) -> String {
    if x >= 10.0 {
        format!("{}", x.round() as i64)
    } else {
        format!("{x:.1}")
    }
}

/// A value outside a reference range in the given direction.
pub fn abnormal_value(rng: &mut ChaCha8Rng, low: f32, high: f32, elevated: bool) -> f32 {
    if elevated {
        high * rng.gen_range(1.3..3.0)
    } else {
        low * rng.gen_range(0.2..0.7)
    }
}

/// A shuffled copy.
pub fn shuffled<T: Clone>(rng: &mut ChaCha8Rng, items: &[T]) -> Vec<T> {
    use rand::seq::SliceRandom;
    let mut v = items.to_vec();
    v.shuffle(rng);
    v
}
