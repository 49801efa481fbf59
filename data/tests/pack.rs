//! Packing and reading: every document recoverable from the index, determinism, the shard
//! metadata, clean errors on inconsistent packs, and the sampler's shuffling, resumption,
//! weighting and batch layout.

mod common;

use data::corpus::Document;
use data::pack::format::{FLAG_CONTINUED, FLAG_CONTINUES};
use data::pack::{batch_of, pack_documents, Mix, PackConfig, PackedDataset, Sampler, SamplerConfig, SamplerState};
use data::tokenizer::{Tokenizer, TrainConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn setup(seq_len: usize, shard_tokens: usize) -> (tempfile::TempDir, Vec<Document>, Tokenizer, PackedDataset) {
    let w = common::small_world(2);
    let docs = common::small_corpus(&w, 2, 40_000);
    let tok =
        Tokenizer::train(docs.iter().map(|d| d.text.as_str()), &TrainConfig { vocab_size: 500, min_frequency: 2 })
            .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = PackConfig { seq_len, shard_tokens, batch_docs: 100 };
    pack_documents(&docs, &tok, &cfg, &tmp.path().join("pack"), &mut |_| {}).unwrap();
    let ds = PackedDataset::open(&tmp.path().join("pack")).unwrap();
    (tmp, docs, tok, ds)
}

#[test]
fn every_document_is_recovered_exactly_from_the_index() {
    let (_tmp, docs, tok, ds) = setup(61, 61 * 40);
    let sep = tok.separator_id().unwrap();
    let mut rebuilt: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for g in 0..ds.len() {
        let s = ds.sequence(g);
        for seg in s.segments {
            let piece = &s.tokens[seg.start as usize..seg.end() as usize];
            let doc = rebuilt.entry(seg.doc).or_default();
            assert_eq!(doc.len(), seg.doc_offset as usize, "pieces arrive in order");
            assert_eq!(seg.flags & FLAG_CONTINUED != 0, seg.doc_offset > 0);
            doc.extend_from_slice(piece);
            assert_eq!(s.domain, docs[seg.doc as usize].domain);
        }
    }
    assert_eq!(rebuilt.len(), docs.len(), "no document lost");
    for (i, d) in docs.iter().enumerate() {
        let mut expected = tok.encode(&d.text).unwrap();
        expected.push(sep);
        assert_eq!(rebuilt[&(i as u64)], expected, "document {i}");
    }
    let total: u64 = ds.manifest.domains.values().map(|t| t.tokens).sum();
    assert_eq!(total, rebuilt.values().map(|v| v.len() as u64).sum::<u64>());
    assert!(ds.shards.len() > 3, "small shards: several per domain");
    ds.verify().unwrap();
}

#[test]
fn shards_have_one_domain_and_metadata_that_matches_the_files() {
    let (tmp, docs, _tok, ds) = setup(128, 1 << 20);
    let domains: BTreeSet<&str> = docs.iter().map(|d| d.domain.as_str()).collect();
    assert_eq!(ds.shards.len(), domains.len());
    for shard in &ds.shards {
        let m = &shard.meta;
        assert_eq!((m.source.as_str(), m.license.as_str()), ("medmoe-synthetic-world", "CC0-1.0"));
        let bin = std::fs::read(tmp.path().join("pack").join(&m.tokens_file)).unwrap();
        assert_eq!(data::fsutil::sha256_hex(&bin), m.tokens_sha256);
        assert_eq!(m.documents as usize, docs.iter().filter(|d| d.domain == m.domain).count());
        // Only the last sequence of a shard has padding.
        for i in 0..shard.len() - 1 {
            assert_eq!(shard.segments(i).last().unwrap().end(), 128);
        }
        let last = shard.segments(shard.len() - 1).last().unwrap();
        assert_eq!(last.flags & FLAG_CONTINUES, 0);
        assert_eq!(m.padding, 128 - last.end() as u64);
    }
}

#[test]
fn packing_is_deterministic() {
    let (a, ..) = setup(100, 100 * 30);
    let (b, ..) = setup(100, 100 * 30);
    let list = |p: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(p).unwrap().map(|e| e.unwrap().path()).collect();
        v.sort();
        v
    };
    let (fa, fb) = (list(&a.path().join("pack")), list(&b.path().join("pack")));
    assert_eq!(fa.len(), fb.len());
    for (x, y) in fa.iter().zip(&fb) {
        assert_eq!(std::fs::read(x).unwrap(), std::fs::read(y).unwrap(), "{}", x.display());
    }
}

fn copy_pack(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

#[test]
fn a_pack_whose_files_disagree_is_a_clear_error() {
    let (tmp, ..) = setup(64, 64 * 50);
    let good = tmp.path().join("pack");
    let case = |name: &str, edit: &dyn Fn(&Path)| -> String {
        let dir = tmp.path().join(name);
        copy_pack(&good, &dir);
        edit(&dir);
        match PackedDataset::open(&dir) {
            Err(e) => e.to_string(),
            Ok(ds) => ds.verify().unwrap_err().to_string(),
        }
    };
    // Tokens file shorter than its index says.
    let err = case("short", &|d| {
        let p = d.join("shard-00001.bin");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() - 64 * 4]).unwrap();
    });
    assert!(err.contains("shard-00001.bin") && err.contains("index says"), "{err}");
    // Index truncated.
    let err = case("idx", &|d| {
        let p = d.join("shard-00000.idx");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() - 24]).unwrap();
    });
    assert!(err.contains("shard-00000.idx"), "{err}");
    // A segment moved: no longer tiles its sequence.
    let err = case("seg", &|d| {
        let p = d.join("shard-00000.idx");
        let mut b = std::fs::read(&p).unwrap();
        let n_seq = u64::from_le_bytes(b[16..24].try_into().unwrap()) as usize;
        let first_seg = 32 + (n_seq + 1) * 8;
        b[first_seg] = 3;
        std::fs::write(&p, &b).unwrap();
    });
    assert!(err.contains("shard-00000.idx") && err.contains("sequence 0"), "{err}");
    // Metadata claiming another sequence count.
    let err = case("meta", &|d| {
        let p = d.join("shard-00000.json");
        let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        m["sequences"] = serde_json::json!(m["sequences"].as_u64().unwrap() + 1);
        std::fs::write(&p, serde_json::to_vec(&m).unwrap()).unwrap();
    });
    assert!(err.contains("shard-00000") && err.contains("sequences"), "{err}");
    // One flipped token: found by verify (SHA-256).
    let err = case("flip", &|d| {
        let p = d.join("shard-00000.bin");
        let mut b = std::fs::read(&p).unwrap();
        b[100] ^= 1;
        std::fs::write(&p, &b).unwrap();
    });
    assert!(err.contains("shard-00000.bin") && err.contains("SHA-256"), "{err}");
}

#[test]
fn failed_pack_leaves_no_output() {
    let w = common::small_world(2);
    let docs = common::small_corpus(&w, 2, 5_000);
    let tok =
        Tokenizer::train(docs.iter().map(|d| d.text.as_str()), &TrainConfig { vocab_size: 300, min_frequency: 2 })
            .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pack");
    let bad = PackConfig { seq_len: 1, ..Default::default() };
    assert!(pack_documents(&docs, &tok, &bad, &out, &mut |_| {}).is_err());
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "no temp dir left behind");
}

fn cfg(seed: u64, batch: usize, mix: Mix) -> SamplerConfig {
    SamplerConfig { seed, batch_size: batch, mix, rank: 0, world_size: 1 }
}

#[test]
fn natural_epochs_visit_every_sequence_once_in_a_seeded_order() {
    let (_tmp, _docs, _tok, ds) = setup(64, 64 * 50);
    let n = ds.len() as usize;
    let mut s = Sampler::new(&ds, cfg(1, 1, Mix::Natural)).unwrap();
    let epoch0: Vec<u64> = (0..n).flat_map(|_| s.next_sequences()).collect();
    let epoch1: Vec<u64> = (0..n).flat_map(|_| s.next_sequences()).collect();
    assert_eq!(epoch0.iter().copied().collect::<BTreeSet<_>>().len(), n);
    assert_eq!(epoch1.iter().copied().collect::<BTreeSet<_>>().len(), n);
    assert_ne!(epoch0, epoch1, "each epoch has its own permutation");
    assert_ne!(epoch0, (0..n as u64).collect::<Vec<_>>(), "shuffled");
    let mut again = Sampler::new(&ds, cfg(1, 1, Mix::Natural)).unwrap();
    assert_eq!((0..n).flat_map(|_| again.next_sequences()).collect::<Vec<_>>(), epoch0);
    let mut other = Sampler::new(&ds, cfg(2, 1, Mix::Natural)).unwrap();
    assert_ne!((0..n).flat_map(|_| other.next_sequences()).collect::<Vec<_>>(), epoch0);
}

#[test]
fn resuming_from_a_saved_state_continues_identically() {
    let (_tmp, _docs, _tok, ds) = setup(64, 64 * 50);
    let weights: BTreeMap<String, f64> = [("medical".to_string(), 2.0), ("general".to_string(), 1.0)].into();
    for mix in [Mix::Natural, Mix::Weighted(weights)] {
        let mut a = Sampler::new(&ds, cfg(5, 3, mix.clone())).unwrap();
        for _ in 0..37 {
            a.next_batch();
        }
        let saved = serde_json::to_string(a.state()).unwrap();
        let expected: Vec<_> = (0..50).map(|_| a.next_batch()).collect();
        let state: SamplerState = serde_json::from_str(&saved).unwrap();
        let mut b = Sampler::resume(&ds, cfg(5, 3, mix.clone()), state.clone()).unwrap();
        let got: Vec<_> = (0..50).map(|_| b.next_batch()).collect();
        assert_eq!(got, expected);
        assert!(Sampler::resume(&ds, cfg(6, 3, mix), state).is_err(), "state of another seed is refused");
    }
}

#[test]
fn domain_weights_set_the_mixture() {
    let (_tmp, _docs, _tok, ds) = setup(64, 64 * 50);
    let weights: BTreeMap<String, f64> =
        [("medical".to_string(), 0.7), ("general".to_string(), 0.3), ("medical_chat".to_string(), 0.0)].into();
    let mut s = Sampler::new(&ds, cfg(3, 10, Mix::Weighted(weights))).unwrap();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..400 {
        for d in s.next_batch().domains {
            *count.entry(d).or_default() += 1;
        }
    }
    let med = count["medical"] as f64 / 4000.0;
    assert!((med - 0.7).abs() < 0.03, "{count:?}");
    assert!(!count.contains_key("medical_chat"));
    assert!(s.epoch("general").unwrap() > 1, "small pools cycle through epochs");
    let missing: BTreeMap<String, f64> = [("legal".to_string(), 1.0)].into();
    let err = Sampler::new(&ds, cfg(3, 1, Mix::Weighted(missing))).err().unwrap().to_string();
    assert!(err.contains("legal"), "{err}");
}

#[test]
fn ranks_split_the_draws_without_overlap() {
    let (_tmp, _docs, _tok, ds) = setup(64, 64 * 50);
    let n = ds.len() as usize;
    let per_rank = n / 4;
    let mut all = BTreeSet::new();
    for rank in 0..2 {
        let mut s =
            Sampler::new(&ds, SamplerConfig { seed: 9, batch_size: per_rank, mix: Mix::Natural, rank, world_size: 2 })
                .unwrap();
        for g in s.next_sequences() {
            assert!(all.insert(g), "sequence {g} given to two ranks");
        }
    }
    let mut single = Sampler::new(&ds, cfg(9, 2 * per_rank, Mix::Natural)).unwrap();
    assert_eq!(single.next_sequences().into_iter().collect::<BTreeSet<_>>(), all);
}

#[test]
fn batches_restart_positions_per_document_and_mask_targets_at_boundaries() {
    let (_tmp, _docs, _tok, ds) = setup(64, 64 * 50);
    let seqs: Vec<u64> = (0..ds.len()).step_by(3).collect();
    let b = batch_of(&ds, &seqs);
    assert_eq!(
        (b.b, b.t, b.ids.len(), b.pos.len(), b.seg.len(), b.targets.len()),
        (seqs.len(), 64, seqs.len() * 64, seqs.len() * 64, seqs.len() * 64, seqs.len() * 64)
    );
    let mut seen_segs = BTreeSet::new();
    for (row, &g) in seqs.iter().enumerate() {
        let s = ds.sequence(g);
        assert_eq!(&b.ids[row * 64..(row + 1) * 64], s.tokens);
        for seg in s.segments {
            let (a, z) = (row * 64 + seg.start as usize, row * 64 + seg.end() as usize);
            assert!(seen_segs.insert(b.seg[a]), "segment ids are unique in the batch");
            for j in a..z {
                assert_eq!(b.seg[j], b.seg[a]);
                assert_eq!(b.pos[j] as usize, j - a);
                let want = if j + 1 < z { b.ids[j + 1] as i32 } else { -100 };
                assert_eq!(b.targets[j], want);
            }
        }
        let end = s.segments.last().map_or(0, |x| x.end() as usize);
        for j in row * 64 + end..(row + 1) * 64 {
            assert_eq!(b.targets[j], -100, "padding is never a target");
            assert!(!seen_segs.contains(&b.seg[j]) || end == 64);
        }
    }
}
