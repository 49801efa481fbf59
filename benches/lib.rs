//! criterion micro-benchmarks of the CPU kernels live in `benches/`; run `cargo bench -p medmoe-benches`.
//! End-to-end benchmarks against the references are `moe-cli bench` and tools/bench_*.sh (BENCHMARKS.md).
#![deny(missing_docs)]
