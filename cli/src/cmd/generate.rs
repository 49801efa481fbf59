//! `moe-cli generate`: text from a dense or MoE model with a key/value cache (prefill, then one
//! token per step), greedy or sampled; plain prompts or the chat template of the tokenizer's
//! tokenizer_config.json. Streams the text of a single prompt as it is generated, then prints
//! one JSON line per prompt (ids, finish reason, prefill and decode tokens/s).

use anyhow::{anyhow, bail, Context, Result};
use data::chat::{Message, RenderOptions};
use data::tokenizer::{Tokenizer, ENDOFTEXT};
use model::generate::{generate, Decoder, Finish, GenerateOptions, Generation, Sampling};
use model::Qwen3;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Arguments of `generate`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "prompts"])))]
pub struct Args {
    /// Model directory (Qwen3 dense, medmoe MoE or a Dots1 export).
    #[arg(long)]
    pub model: PathBuf,
    /// One prompt.
    #[arg(long)]
    pub prompt: Option<String>,
    /// A JSONL file of prompts, one object per line: `{"prompt": "..."}` or
    /// `{"messages": [{"role": "user", "content": "..."}]}` (chat), optionally with
    /// `"enable_thinking": false`. Generated together as one batch.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Wrap each prompt as a user message in the chat template (tokenizer_config.json's
    /// `chat_template`, else the built-in ChatML one) with the assistant header appended.
    /// `/think` or `/no_think` at the end of a prompt are Qwen3's soft switches.
    #[arg(long)]
    pub chat: bool,
    /// Render the chat template with `enable_thinking=false` (Qwen3's hard switch: an empty
    /// think block closes the prompt).
    #[arg(long)]
    pub no_think: bool,
    /// tokenizer.json (or a directory holding it); default: the model directory.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// New tokens per prompt at most.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample from the k most likely tokens only (0 = all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample from the most likely tokens up to this cumulative probability.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampling (prompt i draws from stream i of it).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the generated text contains this string (repeatable). The end-of-sequence
    /// tokens (`<|im_end|>`, `<|endoftext|>`, the config's eos_token) always stop.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Do not stop at the end-of-sequence tokens (always `--max-new-tokens` tokens, unless a
    /// `--stop` string appears): for decode speed measurements, like llama.cpp's `--ignore-eos`.
    #[arg(long)]
    pub ignore_eos: bool,
}

/// A prompt before tokenisation.
enum Prompt {
    Text(String),
    Chat { messages: Vec<Message>, enable_thinking: Option<bool> },
}

fn read_prompts(a: &Args) -> Result<Vec<Prompt>> {
    let hard = a.no_think.then_some(false);
    let wrap = |text: String, thinking: Option<bool>| {
        if a.chat {
            Prompt::Chat { messages: vec![Message::new("user", text)], enable_thinking: thinking.or(hard) }
        } else {
            Prompt::Text(text)
        }
    };
    if let Some(p) = &a.prompt {
        return Ok(vec![wrap(p.clone(), None)]);
    }
    let path = a.prompts.as_ref().expect("clap requires --prompt or --prompts");
    let mut out = Vec::new();
    data::jsonl::for_each_line(path, |line, text| {
        let bad = |message: String| data::DataError::Line { path: path.to_path_buf(), line, message };
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
        if let Some(k) = obj.keys().find(|k| !["prompt", "messages", "enable_thinking"].contains(&k.as_str())) {
            return Err(bad(format!("unknown field `{k}` (expected prompt, messages, enable_thinking)")));
        }
        let thinking = match obj.get("enable_thinking") {
            None => None,
            Some(t) => Some(t.as_bool().ok_or_else(|| bad("`enable_thinking` is not a boolean".into()))?),
        };
        out.push(match (obj.get("prompt"), obj.get("messages")) {
            (Some(serde_json::Value::String(t)), None) => wrap(t.clone(), thinking),
            (None, Some(m)) => {
                let messages: Vec<Message> = serde_json::from_value(m.clone())
                    .map_err(|e| bad(format!("`messages` is not a list of {{role, content}}: {e}")))?;
                if messages.is_empty() {
                    return Err(bad("`messages` is empty".into()));
                }
                Prompt::Chat { messages, enable_thinking: thinking.or(hard) }
            }
            _ => return Err(bad("needs exactly one of a string `prompt` or a `messages` list".into())),
        });
        Ok(())
    })?;
    if out.is_empty() {
        bail!("{}: no prompts", path.display());
    }
    Ok(out)
}

fn load_tokenizer(a: &Args) -> Result<Tokenizer> {
    let path = a.tokenizer.clone().unwrap_or_else(|| a.model.clone());
    if path.is_dir() && !path.join("tokenizer.json").is_file() {
        bail!("{}: no tokenizer.json in this directory; pass --tokenizer", path.display());
    }
    Ok(Tokenizer::load(&path)?)
}

/// Token ids of every prompt (chat prompts rendered through the template first).
fn encode_prompts(tok: &Tokenizer, prompts: &[Prompt], template_dir: &Path) -> Result<Vec<Vec<u32>>> {
    let needs_template = prompts.iter().any(|p| matches!(p, Prompt::Chat { .. }));
    let template = if needs_template {
        Some(tok.chat_template().with_context(|| {
            format!("reading the chat template of {}", template_dir.join("tokenizer_config.json").display())
        })?)
    } else {
        None
    };
    let cfg = tok.config();
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let text = match p {
                Prompt::Text(t) => t.clone(),
                Prompt::Chat { messages, enable_thinking } => {
                    let opts = RenderOptions {
                        add_generation_prompt: true,
                        enable_thinking: *enable_thinking,
                        bos_token: cfg.bos_token.clone(),
                        eos_token: cfg.eos_token.clone(),
                    };
                    let t = template.as_ref().expect("rendered only when a chat prompt exists");
                    t.render(messages, &opts).with_context(|| format!("rendering the chat template for prompt {i}"))?
                }
            };
            Ok(tok.encode(&text)?)
        })
        .collect()
}

/// The ids that end a sequence: `<|im_end|>`, `<|endoftext|>` and the config's eos_token.
fn stop_tokens(tok: &Tokenizer) -> Vec<u32> {
    let mut ids: Vec<u32> = ["<|im_end|>", ENDOFTEXT]
        .into_iter()
        .map(str::to_string)
        .chain(tok.config().eos_token.clone())
        .filter_map(|t| tok.token_id(&t))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The text a generation shows: special tokens kept (think blocks are visible), a final stop
/// token dropped, and the text cut before a stop string.
fn shown_text(tok: &Tokenizer, g: &Generation, stops: &[String]) -> Result<String> {
    let ids = match g.finish {
        Finish::StopToken => &g.tokens[..g.tokens.len() - 1],
        _ => &g.tokens[..],
    };
    let mut text = tok.decode(ids, false)?;
    if let Some((at, _)) = model::generate::stop::find_stop(&text, stops) {
        text.truncate(at);
    }
    Ok(text)
}

/// Loads, generates, prints.
pub fn run(a: Args) -> Result<()> {
    let prompts = read_prompts(&a)?;
    let tok = load_tokenizer(&a)?;
    let template_dir = a.tokenizer.clone().unwrap_or_else(|| a.model.clone());
    let ids = encode_prompts(&tok, &prompts, &template_dir)?;
    let model = Qwen3::load(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let vocab = model.config.vocab_size;
    if let Some((i, t)) =
        ids.iter().enumerate().find_map(|(i, p)| p.iter().find(|&&t| t as usize >= vocab).map(|t| (i, t)))
    {
        bail!("prompt {i}: token id {t} is outside the model's vocabulary of {vocab}: tokenizer and model disagree");
    }
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        sampling: Sampling { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p },
        seed: a.seed,
        stop_tokens: if a.ignore_eos { Vec::new() } else { stop_tokens(&tok) },
        stop_strings: a.stop.clone(),
    };
    let decoder = Decoder::new(&model);
    let text_of = |t: &[u32]| tok.decode(t, false).unwrap_or_default();
    let stream = ids.len() == 1;
    let mut so_far: Vec<u32> = Vec::new();
    let mut printed = 0usize;
    let mut stdout = std::io::stdout().lock();
    let mut on_token = |_: usize, t: u32| {
        if !stream || opts.stop_tokens.contains(&t) {
            return;
        }
        so_far.push(t);
        // Print whole characters only: a token may end inside a UTF-8 sequence.
        let text = text_of(&so_far);
        if text.len() > printed && !text.ends_with('\u{FFFD}') {
            let _ = write!(stdout, "{}", &text[printed..]);
            let _ = stdout.flush();
            printed = text.len();
        }
    };
    let out = generate(&decoder, &ids, &opts, Some(&text_of), &mut on_token).map_err(|e| anyhow!(e))?;
    if stream {
        writeln!(stdout)?;
    }
    for (i, g) in out.iter().enumerate() {
        let text = shown_text(&tok, g, &a.stop)?;
        if !stream {
            writeln!(stdout, "--- prompt {i} ---\n{text}")?;
        }
        let line = serde_json::json!({
            "index": i,
            "prompt_ids": g.prompt,
            "generated_ids": g.tokens,
            "text": text,
            "finish": g.finish,
            "prefill_tokens": g.prompt.len(),
            "prefill_tokens_per_s": g.prefill_tokens_per_s(),
            "decode_tokens": g.decode_steps,
            "decode_tokens_per_s": g.decode_tokens_per_s(),
        });
        writeln!(stdout, "{line}")?;
    }
    Ok(())
}
