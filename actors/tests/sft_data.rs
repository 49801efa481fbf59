//! The rows of phase p2 from a data stage: deterministic, assistant-only targets, and clear
//! errors for a chat template that does not parse and for conversations longer than a row.

use actors::batches::{BatchStream, LoaderCursor};
use actors::phase::SftPhaseConfig;
use actors::sft_data::build_sft_rows;
use data::tokenizer::{Tokenizer, TrainConfig};
use data::world::{generate, WorldConfig};
use std::path::Path;
use std::sync::Arc;

/// A data-stage layout with just what p2 reads: world/world.json and tokenizer/.
fn data_dir(dir: &Path) {
    let world = generate(4, &WorldConfig::default()).unwrap();
    std::fs::create_dir_all(dir.join("world")).unwrap();
    std::fs::write(dir.join("world/world.json"), serde_json::to_string(&world).unwrap()).unwrap();
    let texts: Vec<String> = world.diseases.iter().map(|d| format!("{} {:?}", d.name, d)).collect();
    let tok =
        Tokenizer::train(texts.iter().map(String::as_str), &TrainConfig { vocab_size: 600, min_frequency: 2 }).unwrap();
    tok.save(&dir.join("tokenizer")).unwrap();
}

fn cfg(examples: usize) -> SftPhaseConfig {
    SftPhaseConfig {
        examples,
        hard_fraction: 0.15,
        mcq_fraction: 0.25,
        mcq_think_fraction: 0.15,
        untie_embeddings: true,
        freeze_embeddings_frac: 0.2,
        q8_fraction: 0.0,
    }
}

#[test]
fn rows_are_deterministic_and_train_only_assistant_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    data_dir(tmp.path());
    let a = build_sft_rows(tmp.path(), &cfg(40), 256, 7).unwrap();
    let b = build_sft_rows(tmp.path(), &cfg(40), 256, 7).unwrap();
    assert_eq!(a.rows, b.rows);
    assert_eq!(a.stats["sft_examples"], 40.0);
    // 6 two-hop cases (15%), 10 multiple-choice questions (25%), 2 of them (15%, rounded) under /think.
    assert_eq!(a.stats["sft_mcq_examples"], 10.0);
    assert_eq!(a.stats["sft_think_examples"], 8.0);
    let trained: usize = a.rows.iter().map(|r| r.targets.iter().filter(|&&t| t != -100).count()).sum();
    assert_eq!(trained as f64, a.stats["sft_trained_tokens"]);
    let tok = Tokenizer::load(&tmp.path().join("tokenizer")).unwrap();
    let im_end = tok.token_id("<|im_end|>").unwrap() as i32;
    for r in &a.rows {
        assert_eq!(r.ids.len(), 256);
        // Every conversation's assistant turns end with a trained <|im_end|>.
        assert!(r.targets.contains(&im_end));
    }
    // The batch stream over them: a pure function of the cursor, every row once per epoch,
    // segments of different rows apart.
    let n = a.rows.len();
    let stream = BatchStream::sft(Arc::new(a.rows.clone()), 3, 11).unwrap();
    let mut cursor = LoaderCursor::default();
    let mut seen = Vec::new();
    for _ in 0..n.div_ceil(3) * 2 {
        let (batch, next) = stream.next(&cursor).unwrap();
        assert_eq!(stream.next(&cursor).unwrap().0, batch, "same cursor, same batch");
        assert_eq!((batch.b, batch.t), (3, 256));
        let segs: std::collections::BTreeSet<u32> = batch.seg[..256].iter().copied().collect();
        assert!(batch.seg[256..].iter().all(|s| !segs.contains(s)), "rows share a segment id");
        for r in 0..3 {
            let row = &batch.ids[r * 256..(r + 1) * 256];
            seen.push(a.rows.iter().position(|x| x.ids == row).expect("a packed row"));
        }
        cursor = next;
    }
    let mut first: Vec<usize> = seen[..n].to_vec();
    first.sort_unstable();
    assert_eq!(first, (0..n).collect::<Vec<_>>(), "the first epoch holds every row once");
    assert_ne!(seen[..n], seen[n..2 * n], "epochs are reshuffled");
}

#[test]
fn a_chat_template_that_does_not_parse_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    data_dir(tmp.path());
    let cfg_path = tmp.path().join("tokenizer/tokenizer_config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    v["chat_template"] = "{% for m in messages %}{{ m.content".into();
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    let e = build_sft_rows(tmp.path(), &cfg(10), 256, 0).err().unwrap().to_string();
    assert!(e.contains("tokenizer_config.json") && e.contains("chat_template"), "{e}");
}

#[test]
fn conversations_longer_than_a_row_are_counted_and_none_fitting_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    data_dir(tmp.path());
    let e = build_sft_rows(tmp.path(), &cfg(40), 8, 0).err().unwrap().to_string();
    assert!(e.contains("none of the 40 conversations fits") && e.contains("seq_len 8"), "{e}");
    // The error names the shortest conversation: at exactly its length some fit, the rest are counted.
    let shortest: usize = e.rsplit("has ").next().unwrap().trim_end_matches(')').parse().unwrap();
    let some = build_sft_rows(tmp.path(), &cfg(40), shortest, 0).unwrap();
    assert!(!some.rows.is_empty() && some.stats["sft_too_long"] > 0.0, "{:?}", some.stats);
    assert_eq!(some.stats["sft_too_long"] as usize + some.rows.iter().map(|r| r.docs.len()).sum::<usize>(), 40);
}
