//! Simulator parity tests: every kernel run through `ops` against kernels-cpu (or a naive
//! f64 reference where kernels-cpu has none), over sizes that are not multiples of the block or
//! tile sizes. Each test prints its max abs / rel error and asserts a stated tolerance.

#[path = "parity/attention.rs"]
mod attention;
#[path = "parity/distill.rs"]
mod distill;
#[path = "parity/elementwise.rs"]
mod elementwise;
#[path = "parity/embedding.rs"]
mod embedding;
#[path = "parity/fake_quant.rs"]
mod fake_quant;
#[path = "parity/gemm.rs"]
mod gemm;
#[path = "parity/moe.rs"]
mod moe;
#[path = "parity/rope.rs"]
mod rope;
#[path = "parity/rows.rs"]
mod rows;

use kernels_cpu::check::{assert_close, max_errors};

/// Prints max abs / rel error of `got` vs `want` and asserts `|got - want| <= atol + rtol * |want|`.
pub fn report(what: &str, got: &[f32], want: &[f32], atol: f64, rtol: f64) {
    let (abs, rel) = max_errors(got, want);
    eprintln!("{what}: max abs {abs:.3e}, max rel {rel:.3e} (tolerance atol {atol:.0e} + rtol {rtol:.0e})");
    assert_close(got, want, atol, rtol, what);
}
