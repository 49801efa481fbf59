//! Tokenizer training / loading / saving and chat rendering.

mod common;

use data::chat::{strip_rationale, with_rationale, ChatTemplate, Message, RenderOptions};
use data::tokenizer::{Tokenizer, TrainConfig, SPECIAL_TOKENS};

fn trained() -> (Vec<data::corpus::Document>, Tokenizer) {
    let w = common::small_world(1);
    let docs = common::small_corpus(&w, 1, 30_000);
    let tok =
        Tokenizer::train(docs.iter().map(|d| d.text.as_str()), &TrainConfig { vocab_size: 600, min_frequency: 2 })
            .unwrap();
    (docs, tok)
}

#[test]
fn trained_bpe_round_trips_and_keeps_special_tokens_whole() {
    let (docs, tok) = trained();
    assert_eq!(tok.vocab_size(), 600);
    for (i, t) in SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tok.token_id(t), Some(i as u32), "{t}");
    }
    for d in docs.iter().step_by(7) {
        let ids = tok.encode(&d.text).unwrap();
        assert!(ids.len() < d.text.len(), "BPE must compress");
        assert_eq!(tok.decode(&ids, false).unwrap(), d.text);
        if d.messages.is_some() {
            let im_start = tok.token_id("<|im_start|>").unwrap();
            assert_eq!(ids[0], im_start);
            assert_eq!(ids.iter().filter(|&&i| i == im_start).count(), d.text.matches("<|im_start|>").count());
        }
    }
    // Bytes never seen in training still encode (byte-level alphabet) and round-trip.
    let odd = "Ünïcødé ✓ 日本 \u{1F600}\t\r\n";
    assert_eq!(tok.decode(&tok.encode(odd).unwrap(), false).unwrap(), odd);
}

#[test]
fn saved_tokenizer_loads_back_with_the_same_ids_and_chat_template() {
    let (docs, tok) = trained();
    let tmp = tempfile::tempdir().unwrap();
    tok.save(tmp.path()).unwrap();
    let back = Tokenizer::load(tmp.path()).unwrap();
    let file_only = Tokenizer::load(&tmp.path().join("tokenizer.json")).unwrap();
    for d in docs.iter().take(50) {
        assert_eq!(back.encode(&d.text).unwrap(), tok.encode(&d.text).unwrap());
    }
    assert_eq!(back.sha256(), file_only.sha256());
    assert_eq!(back.config().eos_token.as_deref(), Some("<|im_end|>"));
    assert_eq!(back.separator_id().unwrap(), 0);
    let msgs = vec![Message::new("user", "hi")];
    let a = back.chat_template().unwrap().render(&msgs, &Default::default()).unwrap();
    let b = ChatTemplate::builtin().render(&msgs, &Default::default()).unwrap();
    assert_eq!(a, b);
}

#[test]
fn broken_tokenizer_files_are_clear_errors() {
    let (_, tok) = trained();
    let tmp = tempfile::tempdir().unwrap();
    tok.save(tmp.path()).unwrap();
    let path = tmp.path().join("tokenizer.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.len() / 2]).unwrap();
    let err = Tokenizer::load(tmp.path()).err().unwrap().to_string();
    assert!(err.contains("tokenizer.json") && err.contains("line"), "{err}");
    std::fs::write(&path, r#"{"model": {"type": "BPE"}}"#).unwrap();
    let err = Tokenizer::load(tmp.path()).err().unwrap().to_string();
    assert!(err.contains("tokenizer.json") && err.contains("not a tokenizer.json"), "{err}");
    let err = Tokenizer::load(&tmp.path().join("missing")).err().unwrap().to_string();
    assert!(err.contains("missing"), "{err}");
}

/// ChatML as Qwen documents it, written out by hand.
fn chatml(msgs: &[(&str, &str)], generation_prompt: bool, no_think: bool) -> String {
    let mut s = String::new();
    for (role, content) in msgs {
        s += &format!("<|im_start|>{role}\n{content}<|im_end|>\n");
    }
    if generation_prompt {
        s += "<|im_start|>assistant\n";
        if no_think {
            s += "<think>\n\n</think>\n\n";
        }
    }
    s
}

#[test]
fn builtin_template_renders_chatml_with_qwen3_thinking_switch() {
    let pairs = [
        ("system", "Be brief."),
        ("user", "Dose? /think"),
        ("assistant", "<think>\nr\n</think>\n\n5 mg"),
        ("user", "And?"),
    ];
    let msgs: Vec<Message> = pairs.iter().map(|(r, c)| Message::new(r, *c)).collect();
    let t = ChatTemplate::builtin();
    assert_eq!(t.render(&msgs, &Default::default()).unwrap(), chatml(&pairs, false, false));
    let gen = RenderOptions { add_generation_prompt: true, ..Default::default() };
    assert_eq!(t.render(&msgs, &gen).unwrap(), chatml(&pairs, true, false));
    let no_think = RenderOptions { add_generation_prompt: true, enable_thinking: Some(false), ..Default::default() };
    assert_eq!(t.render(&msgs, &no_think).unwrap(), chatml(&pairs, true, true));
    let think = RenderOptions { add_generation_prompt: true, enable_thinking: Some(true), ..Default::default() };
    assert_eq!(t.render(&msgs, &think).unwrap(), chatml(&pairs, true, false));
}

#[test]
fn hf_style_templates_with_python_methods_and_errors_render() {
    // Written in the style of HF chat templates: Python string methods, namespace, raise_exception.
    let tmpl = r#"{%- if messages[0].role == 'system' %}{{ '[SYS] ' + messages[0].content.strip() + '\n' }}{%- endif %}
{%- set ns = namespace(n=0) %}
{%- for m in messages %}
    {%- if m.role == 'user' %}{% set ns.n = ns.n + 1 %}{{ 'U' ~ ns.n ~ ': ' + m.content.upper() + '\n' }}
    {%- elif m.role == 'assistant' %}{{ 'A: ' + m.content.split('</think>')[-1].lstrip() + eos_token + '\n' }}
    {%- elif m.role != 'system' %}{{ raise_exception('bad role ' + m.role) }}
    {%- endif %}
{%- endfor %}"#;
    let t = ChatTemplate::compile(tmpl.to_string(), Some("tokenizer_config.json".into())).unwrap();
    let msgs = vec![
        Message::new("system", "  sys  "),
        Message::new("user", "hello"),
        Message::new("assistant", "<think>\nx\n</think>\n\nok"),
        Message::new("user", "bye"),
    ];
    let opts = RenderOptions { eos_token: Some("</s>".into()), ..Default::default() };
    assert_eq!(t.render(&msgs, &opts).unwrap(), "[SYS] sys\nU1: HELLO\nA: ok</s>\nU2: BYE\n");
    let err = t.render(&[Message::new("tool", "x")], &opts).unwrap_err().to_string();
    assert!(err.contains("bad role tool") && err.contains("tokenizer_config.json"), "{err}");
    let err = ChatTemplate::compile("{% for m in messages %}\n{{ m.content }".into(), None).err().unwrap().to_string();
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn rationale_stripping_leaves_qwen3_empty_think_block() {
    let full = with_rationale("because X", "Answer.");
    assert_eq!(full, "<think>\nbecause X\n</think>\n\nAnswer.");
    assert_eq!(strip_rationale(&full), "<think>\n\n</think>\n\nAnswer.");
    assert_eq!(strip_rationale("Answer."), "<think>\n\n</think>\n\nAnswer.");
    assert_eq!(strip_rationale(&strip_rationale(&full)), strip_rationale(&full), "idempotent");
}

#[test]
fn hf_tokenizer_config_token_fields_accept_strings_and_objects() {
    let (_, tok) = trained();
    let tmp = tempfile::tempdir().unwrap();
    tok.save(tmp.path()).unwrap();
    std::fs::write(
        tmp.path().join("tokenizer_config.json"),
        r#"{"eos_token": {"content": "<|endoftext|>", "lstrip": false}, "pad_token": null, "chat_template": "{{ messages[0].content }}"}"#,
    )
    .unwrap();
    let t = Tokenizer::load(tmp.path()).unwrap();
    assert_eq!(t.config().eos_token.as_deref(), Some("<|endoftext|>"));
    assert_eq!(t.chat_template().unwrap().render(&[Message::new("user", "q")], &Default::default()).unwrap(), "q");
}

#[test]
fn named_template_lists_use_the_default_entry() {
    let cfg: data::tokenizer::TokenizerConfig = serde_json::from_str(
        r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
    )
    .unwrap();
    assert_eq!(cfg.chat_template.as_deref(), Some("D"));
}
