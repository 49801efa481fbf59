//! Structure invariants read from the sources (ARCHITECTURE.md):
//! - no import circles between the files of a crate (two modules that `use` each other, directly or
//!   through others): each file's top-level private `use` items are edges to the files that define
//!   the imported paths; re-exports (`pub use`) are the module tree's surface, not dependencies;
//! - autograd's ops never branch on the device (dispatch lives in `autograd/src/backend/`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: &[&str] = &["kernels-cpu", "kernels-gpu", "autograd", "model", "data", "actors", "cli", "atomicio"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Module path of a source file relative to `src/` (`a/mod.rs` and `a.rs` are both `a`; the crate
/// root is the empty path).
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// The top-level (unindented) private `use` items of a file, each as one string up to its `;`.
fn private_uses(src: &str) -> Vec<String> {
    let mut uses = Vec::new();
    let mut cur: Option<String> = None;
    for line in src.lines() {
        if let Some(c) = cur.as_mut() {
            c.push_str(line.trim());
        } else if let Some(rest) = line.strip_prefix("use ") {
            cur = Some(rest.to_string());
        }
        if cur.as_ref().is_some_and(|c| c.trim_end().ends_with(';')) {
            uses.push(cur.take().unwrap().trim_end().trim_end_matches(';').to_string());
        }
    }
    uses
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e` (split on top-level commas).
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.replace(' ', "");
    let Some(open) = tree.find('{') else { return vec![tree] };
    let (prefix, inner) = (&tree[..open], &tree[open + 1..tree.len() - 1]);
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, ch) in inner.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).flat_map(|p| expand(&format!("{prefix}{p}"))).collect()
}

/// Import edges between the files of one crate: file -> files it imports from.
fn import_graph(krate: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = workspace().join(krate).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeMap<Vec<String>, String> = files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(&src).expect("under src");
            (module_of(rel), rel.to_string_lossy().into_owned())
        })
        .collect();
    let mut graph = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let here = module_of(rel);
        let name = rel.to_string_lossy().into_owned();
        let text = std::fs::read_to_string(f).expect("readable source");
        let mut edges = BTreeSet::new();
        for u in private_uses(&text) {
            for path in expand(&u) {
                let segs: Vec<&str> = path.split("::").collect();
                let mut base: Vec<String> = match segs.first() {
                    Some(&"crate") => Vec::new(),
                    Some(&"super") | Some(&"self") => here.clone(),
                    _ => continue, // another crate
                };
                let mut rest = &segs[1..];
                if segs[0] == "super" {
                    base.pop();
                    while rest.first() == Some(&"super") {
                        base.pop();
                        rest = &rest[1..];
                    }
                }
                let mut full = base;
                full.extend(rest.iter().map(|s| s.to_string()));
                // The longest prefix that is a file; the crate root does not count (re-exports).
                let target = (1..=full.len()).rev().find_map(|k| modules.get(&full[..k]));
                if let Some(t) = target.filter(|t| **t != name) {
                    edges.insert(t.clone());
                }
            }
        }
        graph.insert(name, edges);
    }
    graph
}

/// Strongly connected components with more than one file (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on.insert(v);
        for w in s.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn the_cycle_finder_finds_a_planted_circle() {
    let mut g = BTreeMap::new();
    g.insert("a.rs".to_string(), BTreeSet::from(["b.rs".to_string()]));
    g.insert("b.rs".to_string(), BTreeSet::from(["c.rs".to_string()]));
    g.insert("c.rs".to_string(), BTreeSet::from(["a.rs".to_string()]));
    g.insert("d.rs".to_string(), BTreeSet::from(["a.rs".to_string()]));
    assert_eq!(cycles(&g), vec![vec!["a.rs".to_string(), "b.rs".into(), "c.rs".into()]]);
    assert_eq!(
        expand("crate::{a::X, b::{c, d}}"),
        vec!["crate::a::X".to_string(), "crate::b::c".into(), "crate::b::d".into()]
    );
    assert_eq!(private_uses("use a::b;\n    use c::d;\npub use e::f;\nuse g::{\n    h,\n};\n"), ["a::b", "g::{h,}"]);
}

#[test]
fn no_import_circles_between_files() {
    let mut found = Vec::new();
    for krate in CRATES {
        let g = import_graph(krate);
        let edges: usize = g.values().map(BTreeSet::len).sum();
        println!("{krate}: {} files, {edges} import edges", g.len());
        for c in cycles(&g) {
            found.push(format!("{krate}: {}", c.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "files that import each other:\n{}", found.join("\n"));
}

#[test]
fn autograd_ops_do_not_branch_on_the_device() {
    let mut files = Vec::new();
    rust_files(&workspace().join("autograd/src/ops"), &mut files);
    assert!(files.len() >= 10, "autograd/src/ops not found");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            assert!(
                !code.contains("Device::") && !code.contains(".device()"),
                "{}:{}: an op looks at the device: {line}",
                f.display(),
                i + 1
            );
        }
    }
}
