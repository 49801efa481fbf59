//! Checks that need no kernel run: the kernel sources stay `core`-only (so they compile for
//! nvptx64), and the README's roofline table is the one computed here from the seed shapes.

use std::fmt::Write as _;
use std::path::Path;

const CORE_ONLY: &[(&str, &str)] = &[
    ("simt.rs", include_str!("../src/simt.rs")),
    ("kernels/mod.rs", include_str!("../src/kernels/mod.rs")),
    ("kernels/adamw.rs", include_str!("../src/kernels/adamw.rs")),
    ("kernels/attention.rs", include_str!("../src/kernels/attention.rs")),
    ("kernels/cross_entropy.rs", include_str!("../src/kernels/cross_entropy.rs")),
    ("kernels/distill.rs", include_str!("../src/kernels/distill.rs")),
    ("kernels/elementwise.rs", include_str!("../src/kernels/elementwise.rs")),
    ("kernels/embedding.rs", include_str!("../src/kernels/embedding.rs")),
    ("kernels/fake_quant.rs", include_str!("../src/kernels/fake_quant.rs")),
    ("kernels/gemm.rs", include_str!("../src/kernels/gemm.rs")),
    ("kernels/gemm_fma.rs", include_str!("../src/kernels/gemm_fma.rs")),
    ("kernels/gemm_mma.rs", include_str!("../src/kernels/gemm_mma.rs")),
    ("kernels/permute.rs", include_str!("../src/kernels/permute.rs")),
    ("kernels/reduce.rs", include_str!("../src/kernels/reduce.rs")),
    ("kernels/rmsnorm.rs", include_str!("../src/kernels/rmsnorm.rs")),
    ("kernels/rope.rs", include_str!("../src/kernels/rope.rs")),
    ("kernels/router.rs", include_str!("../src/kernels/router.rs")),
    ("kernels/selftest.rs", include_str!("../src/kernels/selftest.rs")),
    ("kernels/swiglu.rs", include_str!("../src/kernels/swiglu.rs")),
];

#[test]
fn kernel_sources_use_core_only_and_trait_math() {
    // std / alloc items, and float methods that need libm (they must go through the Simt trait).
    let forbidden = [
        "std::",
        "alloc::",
        "Vec<",
        "vec!",
        "Box<",
        "String",
        "format!",
        "println!",
        ".exp()",
        ".ln()",
        ".sqrt()",
        ".mul_add(",
        ".powi(",
        ".powf(",
        ".round(",
        ".floor(",
        ".ceil(",
        ".tanh(",
        "f32::consts",
    ];
    let listed = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kernels")).unwrap().count();
    assert_eq!(listed + 1, CORE_ONLY.len(), "every file of src/kernels/ must be listed in CORE_ONLY");
    for (name, src) in CORE_ONLY {
        for (i, line) in src.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for f in forbidden {
                assert!(!code.contains(f), "{name}:{}: `{f}` in a core-only kernel source: {line}", i + 1);
            }
        }
    }
}

#[test]
fn kernel_sources_compile_as_no_std() {
    // Compiles simt.rs + kernels/ as a #![no_std] library with the toolchain's rustc.
    let dir = std::env::temp_dir().join(format!("kernels-gpu-no-std-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let lib = format!(
        "#![no_std]\n#![deny(missing_docs)]\n//! no_std check.\n#[path = \"{root}/src/simt.rs\"]\npub mod simt;\n\
         #[path = \"{root}/src/kernels/mod.rs\"]\npub mod kernels;\n"
    );
    std::fs::write(dir.join("lib.rs"), lib).unwrap();
    let out = std::process::Command::new("rustc")
        .args(["--crate-type", "lib", "--edition", "2021", "--emit", "metadata", "-o"])
        .arg(dir.join("libcheck.rmeta"))
        .arg(dir.join("lib.rs"))
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    match out {
        Err(e) => eprintln!("skipped: rustc could not be started ({e})"),
        Ok(o) => assert!(o.status.success(), "no_std build failed:\n{}", String::from_utf8_lossy(&o.stderr)),
    }
}

// ---- roofline -------------------------------------------------------------------------------

/// Seed shapes: tokens per step, hidden, routed experts, expert width, shared width, vocab.
const N: f64 = 16384.0;
const D: f64 = 2048.0;
const E: f64 = 16.0;
const W: f64 = 512.0;
const S: f64 = 1216.0;
const V: f64 = 151936.0;
/// H100 SXM: bf16 dense peak and HBM3 bandwidth, and the fraction we expect to reach.
const PEAK_FLOPS: f64 = 989e12;
const PEAK_BW: f64 = 3.35e12;
const EFF: f64 = 0.7;

/// Parameters of the seed MoE model (Qwen3-1.7B attention, 28 layers, tied embeddings,
/// shared 1216 + 16 routed experts of 512, router) and of the dense Qwen3-1.7B.
fn param_counts() -> (f64, f64) {
    let (layers, heads, kv, dh, dense_ffn) = (28.0, 16.0, 8.0, 128.0, 6144.0);
    let attn = D * heads * dh * 2.0 + D * kv * dh * 2.0 + 2.0 * dh; // q, o, k, v, q_norm, k_norm
    let norms = 2.0 * D;
    let moe_layer = attn + norms + E * D + 3.0 * D * S + E * 3.0 * W * D;
    let dense_layer = attn + norms + 3.0 * D * dense_ffn;
    let shared = V * D + D; // tied embedding + final norm
    (layers * moe_layer + shared, layers * dense_layer + shared)
}

/// One row: (kernel, FLOPs, bytes moved).
type Row = (&'static str, f64, f64);

/// A GEMM `C[m, n] (+)= A[m, k] · B[k, n]` with `a`, `b` bf16 elements read, `c` f32 elements
/// written (read too when accumulating): `(flops, bytes)`.
fn gemm(flops: f64, a: f64, b: f64, c: f64, acc: bool) -> (f64, f64) {
    (flops, 2.0 * (a + b) + 4.0 * c * if acc { 2.0 } else { 1.0 })
}

fn sum(parts: &[(f64, f64)]) -> (f64, f64) {
    parts.iter().fold((0.0, 0.0), |(f, b), p| (f + p.0, b + p.1))
}

/// SwiGLU experts' GEMMs for `tokens` tokens over `groups` experts of width `w` (gate / up fused):
/// forward `hgu = x·guᵀ`, `y = a·downᵀ`; backward `da`, `ddown`, `dgu`, `dx`.
fn expert_gemms(tokens: f64, groups: f64, w: f64) -> ((f64, f64), (f64, f64)) {
    let fwd = sum(&[
        gemm(2.0 * tokens * 2.0 * w * D, tokens * D, groups * 2.0 * w * D, tokens * 2.0 * w, false),
        gemm(2.0 * tokens * D * w, tokens * w, groups * D * w, tokens * D, false),
    ]);
    let bwd = sum(&[
        gemm(2.0 * tokens * w * D, tokens * D, groups * D * w, tokens * w, false),
        gemm(2.0 * D * w * tokens, tokens * D, tokens * w, groups * D * w, true),
        gemm(2.0 * 2.0 * w * D * tokens, tokens * 2.0 * w, tokens * D, groups * 2.0 * w * D, true),
        gemm(2.0 * tokens * D * 2.0 * w, tokens * 2.0 * w, groups * 2.0 * w * D, tokens * D, true),
    ]);
    (fwd, bwd)
}

fn rows() -> Vec<Row> {
    let (p_moe, _) = param_counts();
    let (ef, eb) = expert_gemms(N, E, W);
    let (sf, sb) = expert_gemms(N, 1.0, S);
    let router_gemm = gemm(2.0 * N * D * E, N * D, E * D, N * E, false);
    let f = N * (W + S); // SwiGLU elements per layer (routed + shared)
    vec![
        ("router logits GEMM (x·routerᵀ)", router_gemm.0, router_gemm.1),
        // read logits, write probs (f32) + choice / lse / entropy; ~10 flops per logit
        ("router softmax + top-1 + stats", 10.0 * N * E, 8.0 * N * E + 12.0 * N),
        // sort: expert ids read twice, order + inv written; gather: read + write rows (f32)
        ("permute (sort + gather x)", 0.0, 4.0 * N * 4.0 + 2.0 * 4.0 * N * D),
        ("unpermute (combine y)", N * D, 2.0 * 4.0 * N * D + 8.0 * N),
        ("routed expert GEMMs forward", ef.0, ef.1),
        ("routed expert GEMMs backward", eb.0, eb.1),
        ("shared expert GEMMs forward", sf.0, sf.1),
        ("shared expert GEMMs backward", sb.0, sb.1),
        // per element: forward reads gate + up, writes out (f32), ~6 flops (exp counted as 1)
        ("SwiGLU forward (routed + shared)", 6.0 * f, 12.0 * f),
        // reads gate, up, dout, read-modify-writes dgate, dup; ~12 flops
        ("SwiGLU backward (routed + shared)", 12.0 * f, 28.0 * f),
        // one RMSNorm over [N, D]: read x, write out; ~4 flops per element
        ("RMSNorm forward [N, D]", 4.0 * N * D, 8.0 * N * D),
        // dx pass reads dout, x, rmw dx; dw pass reads dout, x again; ~10 flops per element
        ("RMSNorm backward [N, D]", 10.0 * N * D, 24.0 * N * D),
        // two passes over the f32 logits (online max/sum, then gradient) + dlogits written
        ("softmax CE over V = 151936 (from logits)", 8.0 * N * V, 12.0 * N * V),
        // read p, g, m, v; write p, m, v (f32); ~15 flops per parameter
        ("AdamW over all parameters", 15.0 * p_moe, 28.0 * p_moe),
    ]
}

fn table() -> String {
    let (p_moe, p_dense) = param_counts();
    let mut s = String::new();
    writeln!(
        s,
        "Parameters: seed MoE {p_moe:.0} ({:.2} B), dense Qwen3-1.7B {p_dense:.0} ({:.2} B).",
        p_moe / 1e9,
        p_dense / 1e9
    )
    .unwrap();
    writeln!(s, "Ridge point: {:.0} FLOP/byte.", PEAK_FLOPS / PEAK_BW).unwrap();
    writeln!(s).unwrap();
    writeln!(s, "| kernel (one layer unless noted) | GFLOP | MB moved | FLOP/byte | bound | H100 µs at 70% |").unwrap();
    writeln!(s, "|---|---:|---:|---:|---|---:|").unwrap();
    for (name, flops, bytes) in rows() {
        let (tc, tm) = (flops / (EFF * PEAK_FLOPS), bytes / (EFF * PEAK_BW));
        let bound = if tc >= tm { "compute" } else { "memory" };
        writeln!(
            s,
            "| {name} | {:.3} | {:.1} | {:.1} | {bound} | {:.1} |",
            flops / 1e9,
            bytes / 1e6,
            flops / bytes,
            tc.max(tm) * 1e6
        )
        .unwrap();
    }
    s
}

#[test]
fn readme_roofline_table_is_the_computed_one() {
    let t = table();
    eprintln!("{t}");
    let readme = include_str!("../README.md");
    for line in t.lines().filter(|l| !l.is_empty()) {
        assert!(readme.contains(line), "README.md is missing the computed line:\n{line}\n(full table:\n{t})");
    }
}
