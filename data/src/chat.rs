//! Chat rendering: HF `chat_template` (Jinja) through minijinja, a built-in Qwen-style template,
//! and rationale stripping for `/no_think`.
//!
//! Thinking turns follow Qwen3: an assistant answer with reasoning is
//! `<think>\n{rationale}\n</think>\n\n{answer}`; without reasoning the block is present but empty,
//! `<think>\n\n</think>\n\n{answer}`. A user turn ending in `/think` or `/no_think` asks for one or
//! the other.

use crate::error::{DataError, Result};
use serde::{Deserialize, Serialize};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text (assistant turns may start with a `<think>` block).
    pub content: String,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message { role: role.to_string(), content: content.into() }
    }
}

/// The built-in template (ChatML with Qwen3's empty think block when thinking is disabled).
pub const BUILTIN_TEMPLATE: &str = "{%- for message in messages -%}\
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}\
{%- endfor -%}\
{%- if add_generation_prompt -%}\
{{- '<|im_start|>assistant\\n' -}}\
{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}\
{%- endif -%}";

/// A compiled chat template.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    source_name: Option<String>,
}

/// Options of one rendering.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    /// Append the assistant header so the model continues with an answer.
    pub add_generation_prompt: bool,
    /// `Some(false)` = thinking disabled (Qwen3's `enable_thinking=False`); `None` = not passed.
    pub enable_thinking: Option<bool>,
    /// Values for `bos_token` / `eos_token` that templates may reference.
    pub bos_token: Option<String>,
    /// See `bos_token`.
    pub eos_token: Option<String>,
}

impl ChatTemplate {
    /// The built-in Qwen-style template.
    pub fn builtin() -> Self {
        Self::compile(BUILTIN_TEMPLATE.to_string(), None).expect("the built-in template compiles")
    }

    /// Compiles a Jinja template (e.g. `chat_template` of a tokenizer_config.json). `source_name`
    /// (a file path) is used in error messages.
    pub fn compile(template: String, source_name: Option<String>) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        // transformers renders chat templates with trim_blocks and lstrip_blocks on.
        let mut syntax = minijinja::syntax::SyntaxConfig::builder();
        syntax.trim_blocks(true).lstrip_blocks(true);
        env.set_syntax(syntax.build().expect("default delimiters are valid"));
        // HF templates call Python string methods (.strip(), .split(), .startswith(), ...).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", template)
            .map_err(|e| DataError::Template { source_name: source_name.clone(), message: describe(&e) })?;
        Ok(ChatTemplate { env, source_name })
    }

    /// Renders `messages` to text.
    pub fn render(&self, messages: &[Message], opts: &RenderOptions) -> Result<String> {
        let tmpl = self.env.get_template("chat").expect("added in compile");
        use minijinja::Value;
        let mut ctx: std::collections::BTreeMap<String, Value> = std::collections::BTreeMap::new();
        ctx.insert("messages".into(), Value::from(minijinja::value::Serde(messages)));
        ctx.insert("add_generation_prompt".into(), Value::from(opts.add_generation_prompt));
        if let Some(t) = opts.enable_thinking {
            ctx.insert("enable_thinking".into(), Value::from(t));
        }
        if let Some(b) = &opts.bos_token {
            ctx.insert("bos_token".into(), Value::from(b.as_str()));
        }
        if let Some(e) = &opts.eos_token {
            ctx.insert("eos_token".into(), Value::from(e.as_str()));
        }
        tmpl.render(Value::from(ctx))
            .map_err(|e| DataError::Template { source_name: self.source_name.clone(), message: describe(&e) })
    }
}

fn raise_exception(msg: String) -> std::result::Result<minijinja::Value, minijinja::Error> {
    Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
}

fn describe(e: &minijinja::Error) -> String {
    match e.line() {
        Some(line) => format!("line {line}: {e}"),
        None => e.to_string(),
    }
}

/// An assistant answer with a visible rationale: `<think>\n{rationale}\n</think>\n\n{answer}`.
pub fn with_rationale(rationale: &str, answer: &str) -> String {
    format!("<think>\n{rationale}\n</think>\n\n{answer}")
}

/// The `/no_think` form of an assistant answer: any `<think>...</think>` block is emptied, giving
/// `<think>\n\n</think>\n\n{answer}`. Text without a think block gets the empty block prepended.
pub fn strip_rationale(content: &str) -> String {
    let answer = match (content.find("<think>"), content.find("</think>")) {
        (Some(s), Some(e)) if s <= e => {
            let mut rest = String::with_capacity(content.len());
            rest.push_str(&content[..s]);
            rest.push_str(&content[e + "</think>".len()..]);
            rest.trim_start().to_string()
        }
        _ => content.trim_start().to_string(),
    };
    format!("<think>\n\n</think>\n\n{answer}")
}

/// The rationale inside a `<think>` block, if any (empty blocks give `None`).
pub fn rationale_of(content: &str) -> Option<&str> {
    let s = content.find("<think>")? + "<think>".len();
    let e = content[s..].find("</think>")? + s;
    let r = content[s..e].trim();
    (!r.is_empty()).then_some(r)
}
