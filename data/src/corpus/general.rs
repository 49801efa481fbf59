//! The general (non-medical) stream: stories, worked arithmetic, definitions, sequences, letters
//! and general chats. It keeps the model's general ability in view while it learns medicine.

use super::chat_forms::conversation;
use super::form::{Ctx, Form, Rendered};
use super::general_vocab::*;
use super::text::{cap, pick};
use crate::error::Result;
use rand::Rng;

/// The general forms (the subject number only varies the content).
pub const FORMS: &[Form] = &[
    Form { name: "story", run: story },
    Form { name: "arithmetic_worked", run: arithmetic },
    Form { name: "definitions", run: definitions },
    Form { name: "sequences", run: sequences },
    Form { name: "letter", run: letter },
    Form { name: "general_chat", run: general_chat },
];

fn general(text: String, topic: &str) -> Result<Rendered> {
    Ok(Rendered { text, topic: topic.to_string(), messages: None })
}

fn story(ctx: &mut Ctx, _n: usize) -> Result<Rendered> {
    let r = &mut ctx.rng;
    let (a, b) = (pick(r, NAMES), pick(r, NAMES));
    let b = if a == b { "their friend" } else { b };
    let (place, obj, feel) = (pick(r, PLACES), pick(r, OBJECTS), pick(r, FEELINGS));
    let day = pick(r, DAYS);
    let hours = r.gen_range(2..7);
    let text = format!(
        "On {day} morning, {a} walked to {place} and found {obj}. {a} felt {feel}. \
         \"Look at this,\" {a} said to {b}. Together they spent {hours} hours trying to find out where it came from. \
         In the end they left {obj} at {place} with a note, and walked home as the sun went down."
    );
    general(text, "story")
}

fn arithmetic(ctx: &mut Ctx, _n: usize) -> Result<Rendered> {
    let r = &mut ctx.rng;
    let mut lines = vec!["Worked examples".to_string()];
    for _ in 0..r.gen_range(3..6) {
        let (x, y) = (r.gen_range(2..100u32), r.gen_range(2..100u32));
        let line = match r.gen_range(0..4) {
            0 => format!("{x} + {y} = {}", x + y),
            1 => format!("{} - {y} = {x}", x + y),
            2 => {
                let (x, y) = (x % 13 + 2, y % 13 + 2);
                format!("{x} x {y} = {}", x * y)
            }
            _ => {
                let name = pick(r, NAMES);
                let (x, y) = (x % 20 + 1, y % 20 + 1);
                format!("{name} has {x} apples and buys {y} more, so {name} now has {} apples.", x + y)
            }
        };
        lines.push(line);
    }
    general(lines.join("\n"), "arithmetic")
}

fn definitions(ctx: &mut Ctx, n: usize) -> Result<Rendered> {
    let r = &mut ctx.rng;
    let k = r.gen_range(3..6);
    let mut lines = vec![pick(r, &["Word list", "Vocabulary", "Dictionary page"]).to_string()];
    for j in 0..k {
        let (word, def) = GLOSSARY[(n * 5 + j * 7 + r.gen_range(0..3)) % GLOSSARY.len()];
        let line = match r.gen_range(0..3) {
            0 => format!("{}: {def}.", cap(word)),
            1 => format!("A {word} is {def}."),
            _ => format!("The word \"{word}\" means {def}."),
        };
        lines.push(line);
    }
    general(lines.join("\n"), "definitions")
}

fn sequences(ctx: &mut Ctx, _n: usize) -> Result<Rendered> {
    let r = &mut ctx.rng;
    let text = match r.gen_range(0..3) {
        0 => {
            let s = r.gen_range(0..7);
            let days: Vec<&str> = (0..7).map(|k| DAYS[(s + k) % 7]).collect();
            format!("The days of the week starting from {}: {}.", days[0], days.join(", "))
        }
        1 => {
            let s = r.gen_range(0..12);
            let months: Vec<&str> = (0..6).map(|k| MONTHS[(s + k) % 12]).collect();
            format!("Six months in order: {}. After {} comes {}.", months.join(", "), months[5], MONTHS[(s + 6) % 12])
        }
        _ => {
            let (start, step) = (r.gen_range(1..50), r.gen_range(2..10));
            let seq: Vec<String> = (0..6).map(|k| (start + k * step).to_string()).collect();
            format!("Counting by {step} from {start}: {}, and next {}.", seq.join(", "), start + 6 * step)
        }
    };
    general(text, "sequences")
}

fn letter(ctx: &mut Ctx, _n: usize) -> Result<Rendered> {
    let r = &mut ctx.rng;
    let (a, b) = (pick(r, NAMES), pick(r, NAMES));
    let place = pick(r, PLACES);
    let month = pick(r, MONTHS);
    let text = format!(
        "Dear {b},\n\nI hope you are well. In {month} we will visit {place}, and I would be glad if you came along. \
         Please bring {}.\n\nBest wishes,\n{a}",
        pick(r, OBJECTS)
    );
    general(text, "letter")
}

fn general_chat(ctx: &mut Ctx, _n: usize) -> Result<Rendered> {
    let think = ctx.rng.gen_bool(0.5);
    let (x, y) = (ctx.rng.gen_range(10..100u32), ctx.rng.gen_range(10..100u32));
    let name = pick(&mut ctx.rng, NAMES);
    let q = format!("{name} reads {x} pages on Monday and {y} pages on Tuesday. How many pages is that?");
    let rationale = format!("{x} + {y} = {}.", x + y);
    let answer = format!("{name} read {} pages.", x + y);
    conversation(ctx, &[(q, rationale, answer)], think, "general_chat")
}
