//! A router bias trained by aux-loss-free balancing exports to Dots1 and transformers reproduces
//! our logits with it (fixture `dots1bias_trained_a`, tools/gen_dots1_bias_fixture.py).
//!
//! The fixture holds a sigmoid-router MoE (bias 0), the training batches, the bias transformers'
//! routing trained from them (`b_i -= 2^-8 * sign(load_i - mean)` per layer and step) and the
//! logits transformers computed on the Dots1 export of the trained model. Here our forward routes
//! the same batches and `actors::bias_balance::update_router_bias` (the trainer's update) moves
//! the bias: it must end bit-identical (every bias is a multiple of 2^-8 and every choice has a
//! score gap of at least 1e-6), and the export must give transformers' logits (<= 1e-4, f32).

use actors::bias_balance::update_router_bias;
use kernels_cpu::check::max_errors;
use medmoe_tests::{fixture_dir, open_reference};
use model::export::export_dots1;
use model::qwen3::ForwardOptions;
use model::{Qwen3, TokenBatch};

const TOL: f64 = 1e-4;

#[test]
fn trained_router_bias_exports_to_dots1_and_matches_transformers() {
    let dir = fixture_dir("dots1bias_trained_a");
    let r = open_reference(&dir);
    let meta = r.metadata().unwrap().clone();
    let rate: f32 = meta["rate"].parse().unwrap();
    let mut moe = Qwen3::load(&dir).unwrap();
    assert!(moe.router_bias.iter().flatten().all(|&b| b == 0.0), "the fixture's MoE starts at bias 0");
    assert_eq!(moe.moe.as_ref().unwrap().weighting, autograd::ops::RouterWeighting::Sigmoid);

    // Train the bias on the fixture's batches with our routing and the trainer's update.
    let shape = r.info("train_ids").unwrap().shape.clone();
    let (steps, b, t) = (shape[0], shape[1], shape[2]);
    let train_ids: Vec<u32> = r.read_i64("train_ids").unwrap().iter().map(|&x| x as u32).collect();
    for k in 0..steps {
        let batch = TokenBatch::new(train_ids[k * b * t..(k + 1) * b * t].to_vec(), b, t).unwrap();
        let targets = vec![-100; b * t];
        let tape = autograd::Tape::inference();
        let out = moe.loss(&tape, &moe.bind(&tape), &batch, &targets, &ForwardOptions::eval()).unwrap();
        let counts: Vec<Vec<usize>> = out.router.iter().map(|s| s.counts.clone()).collect();
        update_router_bias(&mut moe.router_bias, &counts, rate);
    }
    let want = r.read_f32("router_bias").unwrap();
    let got: Vec<f32> = moe.router_bias.concat();
    assert_eq!(got, want, "trained bias (ours) vs transformers-routed training");
    let in_steps: Vec<i32> = got.iter().map(|&x| (x / rate) as i32).collect();
    println!("trained bias / rate per layer and expert: {in_steps:?}");
    assert!(got.iter().any(|&x| x != 0.0));

    // Export with the trained bias; our logits vs transformers on the export.
    let ids_shape = r.info("input_ids").unwrap().shape.clone();
    let ids = r.read_i64("input_ids").unwrap().iter().map(|&x| x as u32).collect();
    let batch = TokenBatch::new(ids, ids_shape[0], ids_shape[1]).unwrap();
    let reference = r.read_f32("logits").unwrap();
    let ours = moe.logits(&batch).unwrap();
    let (abs, rel) = max_errors(&ours, &reference);
    println!("trained-bias MoE logits vs transformers Dots1ForCausalLM: max abs {abs:.3e} (rel {rel:.3e})");
    assert!(abs <= TOL, "max abs diff {abs:.3e} > {TOL}");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dots1");
    export_dots1(&moe, &out).unwrap();
    let back = Qwen3::load(&out).unwrap();
    assert_eq!(back.router_bias, moe.router_bias, "the export carries the trained bias");
    let (abs, _) = max_errors(&back.logits(&batch).unwrap(), &reference);
    println!("export loaded back vs transformers: max abs {abs:.3e}");
    assert!(abs <= TOL, "{abs:.3e}");
}
