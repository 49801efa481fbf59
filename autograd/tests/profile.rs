//! The opt-in op profile: ops are charged by name while it is on, and nothing is collected
//! once it is taken (its own test binary: the profile is process-wide).

use autograd::{ops, profile, Tape, Tensor};
use kernels_cpu::check::rand_vec;

/// One forward + backward of `linear -> rmsnorm -> linear` with a cross-entropy head.
fn step() {
    let tape = Tape::new();
    let x = tape.leaf(&Tensor::from_vec(rand_vec(8 * 16, 1), &[8, 16]));
    let w1 = tape.leaf(&Tensor::from_vec(rand_vec(12 * 16, 2), &[12, 16]));
    let g = tape.leaf(&Tensor::from_vec(rand_vec(12, 3), &[12]));
    let w2 = tape.leaf(&Tensor::from_vec(rand_vec(12 * 12, 4), &[12, 12]));
    let head = tape.leaf(&Tensor::from_vec(rand_vec(20 * 12, 5), &[20, 12]));
    let h = ops::linear(&tape, &x, &w1).unwrap();
    let h = ops::rmsnorm(&tape, &h, &g, 1e-6).unwrap();
    let h = ops::linear(&tape, &h, &w2).unwrap();
    let targets: Vec<i32> = (0..8).map(|i| (i * 3) % 20).collect();
    let ce = ops::lm_head_cross_entropy(&tape, &h, &head, &targets).unwrap();
    let grads = tape.backward(&ce.loss);
    assert!(grads.get(&w1).is_some());
}

#[test]
fn ops_are_charged_by_name_only_while_on() {
    step();
    profile::start();
    step();
    step();
    let stage = profile::stage("optimizer", || 7);
    assert_eq!(stage, 7);
    let ops = profile::take();
    let names: Vec<&str> = ops.iter().map(|o| o.op).collect();
    println!("{ops:?}");
    let get = |n: &str| ops.iter().find(|o| o.op == n).unwrap_or_else(|| panic!("{n} missing from {names:?}"));
    assert_eq!(get("linear").calls, 4, "two linears per step, two steps");
    assert_eq!(get("rmsnorm").calls, 2);
    assert_eq!(get("lm_head_cross_entropy").calls, 2);
    assert_eq!(get("optimizer").calls, 1);
    assert!(get("linear").forward_s > 0.0 && get("linear").backward_s > 0.0);
    assert!(get("rmsnorm").backward_s > 0.0);
    assert_eq!(names.len(), 4, "{names:?}");
    let totals: Vec<f64> = ops.iter().map(|o| o.forward_s + o.backward_s).collect();
    assert!(totals.windows(2).all(|w| w[0] >= w[1]), "most expensive first: {totals:?}");
    // Off again: nothing is collected.
    step();
    assert!(profile::take().is_empty());
}
