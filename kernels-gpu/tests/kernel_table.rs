//! Every kernel of `src/kernels/` has a row in the kernel table `src/ptx/table.rs` (and so a PTX
//! `.entry` and a launcher), and every row under `crate::kernels` names a kernel. No GPU needed.
//!
//! A kernel is a `pub fn` of `src/kernels/*.rs` generic over a type parameter bounded by `Simt`,
//! whose first parameter is a reference to that type (the context), and which returns nothing
//! (an entry point cannot return a value). Device helpers such as `reduce::warp_sum` return a
//! value and are not kernels. The sources are parsed as plain text.

use std::collections::BTreeSet;
use std::path::Path;

/// `module::function` of every kernel in the source `src` of module `module`.
fn kernels_in(module: &str, src: &str) -> Vec<String> {
    // Drop comments (docs may quote signatures).
    let code: String = src.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let mut found = Vec::new();
    let mut rest = code.as_str();
    let next = |s: &str| ["pub fn ", "pub unsafe fn "].iter().filter_map(|p| s.find(p)).min();
    while let Some(at) = next(rest) {
        let after = &rest[at..];
        let after = &after[after.find("fn ").unwrap() + 3..];
        rest = after;
        let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let tail = after[name.len()..].trim_start();
        // Generic parameters: `<C: Simt>` (possibly with others).
        let Some(generics) = tail.strip_prefix('<') else { continue };
        let Some((gen, params)) = split_balanced(generics, '<', '>') else { continue };
        let simt_params: Vec<&str> = gen
            .split(',')
            .filter_map(|p| p.split_once(':'))
            .filter(|(_, bound)| bound.split('+').any(|b| b.trim() == "Simt" || b.trim().ends_with("::Simt")))
            .map(|(p, _)| p.trim())
            .collect();
        let Some(params) = params.trim_start().strip_prefix('(') else { continue };
        let Some((args, after_args)) = split_balanced(params, '(', ')') else { continue };
        let first = args.split(',').next().unwrap_or("").trim();
        let ctx_type = first.split_once(':').map(|(_, ty)| ty.trim().trim_start_matches('&').trim());
        let takes_ctx = ctx_type.is_some_and(|ty| simt_params.contains(&ty));
        let returns = after_args.trim_start().starts_with("->");
        if takes_ctx && !returns {
            found.push(format!("{module}::{name}"));
        }
    }
    found
}

/// Splits `s` (just after an opening `open`) at its matching `close`: (inside, after).
fn split_balanced(s: &str, open: char, close: char) -> Option<(&str, &str)> {
    let mut depth = 1;
    for (i, c) in s.char_indices() {
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return Some((&s[..i], &s[i + 1..]));
            }
        }
    }
    None
}

/// `module::function` of every table row whose kernel path is `crate::kernels::module::function`.
fn table_rows(table: &str) -> BTreeSet<String> {
    table
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let (_, rhs) = l.split_once(" = ")?;
            let (path, _) = rhs.split_once(" =>")?;
            path.trim().strip_prefix("crate::kernels::").map(str::to_string)
        })
        .collect()
}

/// Kernels without a row (first) and rows under `crate::kernels` naming no kernel (second).
fn mismatches(kernels: &BTreeSet<String>, rows: &BTreeSet<String>) -> (Vec<String>, Vec<String>) {
    (kernels.difference(rows).cloned().collect(), rows.difference(kernels).cloned().collect())
}

fn all_kernels() -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kernels");
    let mut kernels = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let module = path.file_stem().unwrap().to_str().unwrap().to_string();
            let src = std::fs::read_to_string(&path).unwrap();
            kernels.extend(kernels_in(&module, &src));
        }
    }
    kernels
}

fn table() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ptx/table.rs")).unwrap()
}

#[test]
fn every_kernel_has_a_row_in_the_kernel_table() {
    let kernels = all_kernels();
    eprintln!("{} kernels in src/kernels: {kernels:?}", kernels.len());
    // The parser must see the kernels we know of (guards against a parser that finds nothing).
    for k in ["rmsnorm::rmsnorm_forward", "gemm_fma::grouped_gemm_fma", "attention::attention_backward_dkv"] {
        assert!(kernels.contains(k), "parser missed {k}");
    }
    assert!(!kernels.contains("reduce::warp_sum") && !kernels.contains("mod::grid_stride"), "helpers are not kernels");
    let rows = table_rows(&table());
    let (missing, stale) = mismatches(&kernels, &rows);
    assert!(
        missing.is_empty(),
        "kernels without a row in src/ptx/table.rs (add one, then run tools/build_ptx.sh): {missing:?}"
    );
    assert!(stale.is_empty(), "rows of src/ptx/table.rs naming no kernel of src/kernels: {stale:?}");
}

#[test]
fn the_check_fails_when_a_row_is_missing() {
    let kernels = all_kernels();
    let table = table();
    let row = table.lines().find(|l| l.contains("crate::kernels::attention::attention_forward =>")).unwrap();
    let (missing, _) = mismatches(&kernels, &table_rows(&table.replace(row, "")));
    assert_eq!(missing, vec!["attention::attention_forward".to_string()]);
}

#[test]
fn parser_finds_kernels_and_skips_helpers() {
    let src = "\
/// `pub fn doc<C: Simt>(ctx: &C)` in a comment\n\
pub fn k1<C: Simt>(ctx: &C, x: Gmem<f32>) {}\n\
pub fn k2<C: crate::simt::Simt>(\n    c: &C,\n    p: GroupedGemm<f32>,\n) {\n}\n\
pub fn helper<C: Simt>(ctx: &C, v: f32) -> f32 { v }\n\
pub fn math<C: Simt>(g: f32) {}\n\
pub fn plain(x: usize) {}\n\
fn private<C: Simt>(ctx: &C) {}\n\
pub unsafe fn k3<T: Copy, S: Simt + Sync>(ctx: &S, t: T) {}\n\
pub fn k4<C: Simt>(ctx: &C) {}\n";
    assert_eq!(kernels_in("m", src), vec!["m::k1", "m::k2", "m::k3", "m::k4"]);
}
