//! The rows of phase p2 from a data stage: deterministic, assistant-only targets, and clear
//! errors for a chat template that does not parse and for conversations longer than a row.

use actors::batches::{BatchStream, LoaderCursor};
use actors::phase::{LongRows, PhaseConfig, SftPhaseConfig};
use actors::sft_data::build_sft_rows;
use data::tokenizer::{Tokenizer, TrainConfig};
use data::world::{generate, WorldConfig};
use std::path::Path;

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
        long: None,
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
    let stream = BatchStream::sft(a.rows.clone(), 3, 11).unwrap();
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

#[test]
fn long_rows_take_the_longest_conversations_and_their_share_of_tokens_and_micro_batches() {
    let tmp = tempfile::tempdir().unwrap();
    data_dir(tmp.path());
    let plain = build_sft_rows(tmp.path(), &cfg(120), 256, 7).unwrap();
    let long = LongRows { seq_len: 1024, fraction: 0.25 };
    let c = SftPhaseConfig { long: Some(long.clone()), ..cfg(120) };
    let a = build_sft_rows(tmp.path(), &c, 256, 7).unwrap();
    assert_eq!(a.rows, build_sft_rows(tmp.path(), &c, 256, 7).unwrap().rows, "deterministic");
    assert!(a.rows.iter().all(|r| r.ids.len() == 256) && a.long_rows.iter().all(|r| r.ids.len() == 1024));
    // Every conversation is in exactly one row, short or long; the ones too long for 256 are in
    // long rows now (the plain packing left them out).
    let mut all: Vec<usize> = a.rows.iter().chain(&a.long_rows).flat_map(|r| r.docs.clone()).collect();
    all.sort_unstable();
    assert_eq!(all, (0..120).collect::<Vec<_>>(), "{:?}", a.stats);
    assert!(plain.stats["sft_too_long"] > 0.0, "the test needs conversations longer than 256: {:?}", plain.stats);
    assert_eq!(a.stats["sft_too_long"], 0.0);
    // The long rows hold about a quarter of the conversations' tokens (padding not counted).
    let used = |rows: &[data::sft::SftRow]| -> usize {
        rows.iter().map(|r| r.seg.iter().filter(|&&s| (s as usize) < r.docs.len()).count()).sum()
    };
    let (short_used, long_used) = (used(&a.rows), used(&a.long_rows));
    let share = long_used as f64 / (short_used + long_used) as f64;
    assert!((share - 0.25).abs() < 0.05, "long rows hold {share} of the tokens");
    assert_eq!(a.stats["sft_long_rows"], a.long_rows.len() as f64);
    let trained: usize =
        a.rows.iter().chain(&a.long_rows).map(|r| r.targets.iter().filter(|&&t| t != -100).count()).sum();
    assert_eq!(trained as f64, a.stats["sft_trained_tokens"]);

    // The stream: micro-batches of 8 x 256 positions, exactly one in four made of 2 long rows,
    // spread evenly; a pure function of the cursor; each kind visits all its rows per epoch.
    let stream = BatchStream::sft_with_long(a.rows.clone(), Some((a.long_rows.clone(), long.clone())), 8, 3).unwrap();
    let mut cursor = LoaderCursor::default();
    let (mut long_seen, mut short_seen) = (Vec::new(), Vec::new());
    let n = 400;
    for k in 0..n {
        let (batch, next) = stream.next(&cursor).unwrap();
        assert_eq!(stream.next(&cursor).unwrap().0, batch, "same cursor, same batch");
        assert_eq!(batch.b * batch.t, 2048, "micro-batch {k}: {} x {}", batch.b, batch.t);
        if batch.t == 1024 {
            assert_eq!(batch.b, 2);
            assert!(batch.seg[..1024].iter().all(|s| !batch.seg[1024..].contains(s)), "rows share a segment id");
            long_seen.push(k);
            for r in 0..2 {
                let row = &batch.ids[r * 1024..(r + 1) * 1024];
                let at = a.long_rows.iter().position(|x| x.ids == row).expect("a long row");
                assert_eq!(batch.sequences[r], (a.rows.len() + at) as u64);
            }
        } else {
            for r in 0..8 {
                let row = &batch.ids[r * 256..(r + 1) * 256];
                short_seen.push(a.rows.iter().position(|x| x.ids == row).expect("a packed row"));
            }
        }
        cursor = next;
    }
    assert_eq!(long_seen.len(), n as usize / 4, "a quarter of the micro-batches are long");
    assert!(long_seen.windows(2).all(|w| w[1] - w[0] == 4), "long micro-batches are spread evenly: {long_seen:?}");
    let mut first: Vec<usize> = short_seen[..a.rows.len()].to_vec();
    first.sort_unstable();
    assert_eq!(first, (0..a.rows.len()).collect::<Vec<_>>(), "the first epoch holds every short row once");
    // Without `long`, the same rows give the plain stream.
    let plain_stream = BatchStream::sft(a.rows.clone(), 8, 3).unwrap();
    assert!(plain_stream.next(&LoaderCursor::default()).unwrap().0.t == 256);
    // Long rows that cannot fill a micro-batch are refused.
    let odd = LongRows { seq_len: 768, fraction: 0.25 };
    let e = BatchStream::sft_with_long(a.rows.clone(), Some((a.long_rows.clone(), odd)), 8, 3).err().unwrap();
    assert!(e.to_string().contains("sft.long"), "{e}");
}

#[test]
fn long_rows_in_phase_configs_are_checked_by_field() {
    // The tiny preset has none (RESULTS.md: its conversations all fit a row); the seed plan's
    // 8192 at a quarter of the micro-batches fills one row of 8192 per micro-batch of 4 x 2048.
    assert_eq!(PhaseConfig::embedded("p2", "tiny").unwrap().sft.unwrap().long, None);
    let seed = PhaseConfig::embedded("p2", "none").unwrap();
    let l = seed.sft.as_ref().unwrap().long.clone().unwrap();
    assert_eq!(
        (seed.seq_len, l.seq_len, l.fraction, l.rows_per_micro(seed.micro_batch, seed.seq_len)),
        (2048, 8192, 0.25, 1)
    );
    let text = include_str!("../../configs/phases/p2.json");
    let with = |seq: usize, fraction: f64| {
        let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
        v["presets"]["tiny"]["sft"] = serde_json::json!({ "long": { "seq_len": seq, "fraction": fraction } });
        PhaseConfig::parse(&v.to_string(), "p2.json", "tiny").map(|_| ()).map_err(|e| e.to_string())
    };
    assert_eq!(with(512, 0.5), Ok(()));
    for (seq, fraction, field) in
        [(768, 0.25, "sft.long.seq_len"), (256, 0.25, "sft.long.seq_len"), (1024, 1.0, "sft.long.fraction")]
    {
        let e = with(seq, fraction).unwrap_err();
        assert!(e.contains(field) && e.contains("p2.json"), "{seq} {fraction}: {e}");
    }
}
