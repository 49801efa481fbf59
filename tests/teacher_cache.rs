//! P0 from a teacher logit cache through the product training step: with every token of the
//! vocabulary cached (k = V, no tail) the cached step is the live-teacher step; with top-5 plus
//! the tail bucket it trains without any teacher, and a cache missing a sequence is an error.

use actors::batches::LoaderCursor;
use actors::phase::{DistillConfig, PhaseKind, RouterSchedule, TeacherCacheConfig};
use actors::trainer::Trainer;
use autograd::ops::RouterWeighting;
use autograd::DType;
use model::logit_cache::{teacher_topk, write_cache, CacheMeta, CachedRows, LogitCache, FORMAT};
use model::moe_spec::MoeSpec;
use model::{Qwen3, Qwen3Config, TokenBatch};
use std::sync::Arc;

const V: usize = 41;
const T: usize = 9;

fn config() -> Qwen3Config {
    let json = format!(
        r#"{{"model_type": "qwen3", "vocab_size": {V}, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
            "max_position_embeddings": 64}}"#
    );
    Qwen3Config::from_json(&json, std::path::Path::new("tiny.json")).unwrap()
}

/// Packed sequence `g` of the fake pack: ids from its number.
fn row(g: u64) -> Vec<u32> {
    (0..T).map(|i| ((g as usize * 13 + i * 7 + 3) % V) as u32).collect()
}

/// A micro-batch of packed sequences `seqs`.
fn micro(seqs: &[u64]) -> data::pack::PackedBatch {
    let ids: Vec<u32> = seqs.iter().flat_map(|&g| row(g)).collect();
    let targets: Vec<i32> =
        (0..seqs.len() * T).map(|j| if j % T == T - 1 { -100 } else { ids[j + 1] as i32 }).collect();
    let batch = TokenBatch::new(ids, seqs.len(), T).unwrap();
    let mut p = medmoe_tests::packed(&batch, &targets);
    p.sequences = seqs.to_vec();
    p
}

fn trainer(student: &Qwen3, teacher: Option<Arc<Qwen3>>, cache: Option<usize>) -> Trainer {
    let mut phase = medmoe_tests::plain_phase(2, T, 3, 3e-3, [0.9, 0.95], 0.0);
    phase.kind = PhaseKind::Distill;
    phase.distill = Some(DistillConfig {
        tau: 1.0,
        kl_coef: 1.0,
        ce_coef: 0.0,
        hidden_l2: 0.0,
        teacher_cache: cache.map(|k| TeacherCacheConfig { k, dir: None }),
    });
    phase.router = Some(RouterSchedule {
        lb: [0.01; 2],
        temperature: [1.0; 2],
        z: 1e-4,
        capacity: 2.0,
        expert_dropout: 0.0,
        noise: 0.0,
        bias_update_rate: 0.0,
        named_experts: None,
    });
    Trainer::new(phase, student.clone(), teacher).unwrap()
}

/// The cache of sequences `seqs` (ascending) with the teacher's top-`k`.
fn cache(dir: &std::path::Path, teacher: &Qwen3, seqs: &[u64], k: usize) -> Arc<LogitCache> {
    let meta = CacheMeta {
        format: FORMAT.into(),
        teacher: "t".into(),
        pack: "p".into(),
        tokenizer_sha256: "tok".into(),
        vocab: V,
        k,
        tau: 1.0,
        seq_len: T,
        sequences: seqs.len(),
    };
    write_cache(dir, &meta, seqs, 2, |chunk| {
        let ids: Vec<u32> = chunk.iter().flat_map(|&g| row(g)).collect();
        teacher_topk(teacher, &TokenBatch::new(ids, chunk.len(), T).unwrap(), k, 1.0)
    })
    .unwrap();
    Arc::new(LogitCache::open(dir).unwrap())
}

#[test]
fn cached_distillation_steps_match_the_live_teacher_and_need_no_teacher() {
    let spec = MoeSpec { num_experts: 4, expert_width: 6, shared_width: 8, weighting: RouterWeighting::Ste };
    let student = Qwen3::from_init(config(), Some(spec), DType::F32, model::init::qwen3_init(1, 0.3));
    let teacher = Arc::new(Qwen3::from_init(config(), None, DType::F32, model::init::qwen3_init(2, 0.3)));
    let steps: Vec<Vec<u64>> = vec![vec![4, 0], vec![7, 2], vec![0, 9]];
    let tmp = tempfile::tempdir().unwrap();
    let seqs = [0u64, 2, 4, 7, 9];

    let mut live = trainer(&student, Some(teacher.clone()), None);
    let mut full = trainer(&student, None, Some(V));
    full.teacher_cache = Some(cache(&tmp.path().join("full"), &teacher, &seqs, V));
    let mut top5 = trainer(&student, None, Some(5));
    top5.teacher_cache = Some(cache(&tmp.path().join("top5"), &teacher, &seqs, 5));
    for s in &steps {
        let (a, _) = live.step(&[micro(s)], LoaderCursor::default()).unwrap();
        let (b, _) = full.step(&[micro(s)], LoaderCursor::default()).unwrap();
        let (c, _) = top5.step(&[micro(s)], LoaderCursor::default()).unwrap();
        println!("step {}: live kl {:.6}, cached k=V {:.6}, top-5 + tail {:.6}", a.step, a.kl, b.kl, c.kl);
        // Steps 2 and 3 start from the weights the earlier steps made: the runs stay together.
        assert!((a.kl - b.kl).abs() <= 1e-5 * a.kl.abs().max(1.0), "k = V: {} vs live {}", b.kl, a.kl);
        assert!(c.kl > 0.0 && c.kl <= a.kl + 1e-5, "top-5 + tail KL {} is a lower bound of {}", c.kl, a.kl);
    }
    // A sequence the cache does not hold is an error naming it, not a silent skip.
    let e = top5.step(&[micro(&[1, 2])], LoaderCursor::default()).unwrap_err().to_string();
    assert!(e.contains("sequence 1") && e.contains("teacher cache"), "{e}");
    let rows: CachedRows = top5.teacher_cache.as_ref().unwrap().rows(&[2]).unwrap();
    assert_eq!((rows.ids.len(), rows.lse.len()), (5 * T, T));
}
