//! What every text form shares: its context (world, RNG stream, chat template), its output and
//! its table entry. Kept apart from `mod.rs` so the form files and the corpus module do not import
//! each other.

use crate::chat::{ChatTemplate, Message};
use crate::error::Result;
use crate::world::World;
use rand_chacha::ChaCha8Rng;

/// What a form needs: the world, the corpus RNG stream and the chat template.
pub(crate) struct Ctx<'a> {
    pub w: &'a World,
    pub rng: ChaCha8Rng,
    pub chat: &'a ChatTemplate,
}

/// A form's output.
pub(crate) struct Rendered {
    pub text: String,
    pub topic: String,
    pub messages: Option<Vec<Message>>,
}

impl Rendered {
    pub(super) fn medical(text: String, topic: &str) -> Self {
        Rendered { text, topic: topic.to_string(), messages: None }
    }
}

/// A named way of rendering one subject (an entity index or, for general forms, a counter).
pub(crate) struct Form {
    pub name: &'static str,
    pub run: fn(&mut Ctx, usize) -> Result<Rendered>,
}

/// `kolase inhibitors` -> `kolase inhibitor`.
pub(crate) fn singular(plural: &str) -> String {
    plural.strip_suffix('s').unwrap_or(plural).to_string()
}
