//! The host's module layering, checked on every test run (ARCHITECTURE.md, "Layers"): each
//! module of `host/src` uses only modules of lower layers (or its own module's files), so the
//! module graph has no cycle; and no file outside its tests grows past [`MAX_LINES`].
//!
//! Read as text, like `shared/tools/modgraph.py`: an edge A → B when A names `crate::x::y`
//! (or a `super::` / `self::` path) and B is the deepest file that path reaches. Lines inside
//! `#[cfg(test)]` modules and comments are left out; so are edges between a `mod.rs` and its
//! own direct children. A cycle found here is one moved type; found late, a refactor.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Most lines a file may have outside its tests (not counting blank and comment lines).
const MAX_LINES: usize = 600;

/// The layers, lowest first: a module may use modules of lower layers only (and its own).
/// Keys are module paths as files name them (`http`, `plugin/loader`, `io`).
const LAYERS: &[&[&str]] = &[
    &["escape", "http", "ids", "control", "tls"],
    &["settings", "access_log"],
    &["plugin/loader", "plugin/registry", "plugin", "admission", "listeners"],
    &["routing", "static_files", "metrics"],
    &["exchange"],
    &["plugin/call"],
    &["worker", "admin", "reload", "check", "install", "scaffold"],
    &["io"],
    &["server", "master"],
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading host/src") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text without `#[cfg(test)] mod x { … }` blocks (brace-matched) and `//` comments.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        let after = &rest[at + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let is_mod =
            trimmed.starts_with("mod ") || trimmed.starts_with("pub mod ") || trimmed.starts_with("pub(crate) mod ");
        let Some(open) = after.find('{').filter(|_| is_mod) else {
            out.push_str(&rest[..at + "#[cfg(test)]".len()]);
            rest = after;
            continue;
        };
        out.push_str(&rest[..at]);
        let mut depth = 0;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out.lines().map(|l| l.find("//").map_or(l, |i| &l[..i])).collect::<Vec<_>>().join("\n")
}

/// The module path of a file: `http/request.rs` → `["http", "request"]`, `io/mod.rs` → `["io"]`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).expect("under src").with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// The deepest file a module path reaches.
fn resolve(parts: &[String]) -> Option<PathBuf> {
    (1..=parts.len()).rev().find_map(|k| {
        let p = parts[..k].iter().fold(src(), |p, s| p.join(s));
        let file = p.with_extension("rs");
        if file.is_file() {
            Some(file)
        } else if p.join("mod.rs").is_file() {
            Some(p.join("mod.rs"))
        } else {
            None
        }
    })
}

fn ident(s: &str) -> String {
    s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

/// Every `crate::`/`super::`/`self::` path in `text`, as (root, segments); `use crate::{a::b, c}`
/// groups expanded one level.
fn paths(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for root in ["crate", "super", "self"] {
        let needle = format!("{root}::");
        let mut from = 0;
        while let Some(i) = text[from..].find(&needle) {
            let at = from + i;
            from = at + needle.len();
            let before = text[..at].chars().last();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &text[from..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find("};").unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let segs: Vec<String> = item.trim().split("::").map(ident).filter(|s| !s.is_empty()).collect();
                    if !segs.is_empty() {
                        out.push((root.to_owned(), segs));
                    }
                }
                continue;
            }
            let mut segs = Vec::new();
            let mut r = rest;
            loop {
                let id = ident(r);
                if id.is_empty() {
                    break;
                }
                r = &r[id.len()..];
                segs.push(id);
                match r.strip_prefix("::") {
                    Some(next) if !next.starts_with('{') => r = next,
                    _ => break,
                }
            }
            if !segs.is_empty() {
                out.push((root.to_owned(), segs));
            }
        }
    }
    out
}

fn graph() -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut edges = BTreeMap::new();
    for f in files.iter().filter(|f| !f.ends_with("main.rs")) {
        let text = code(&std::fs::read_to_string(f).expect("reading a source file"));
        let here = module_of(f);
        // `self::` is the file's own module; `super::` its parent (for a `mod.rs` too: its
        // module is its directory).
        let (self_path, super_path) = if f.ends_with("lib.rs") {
            (Vec::new(), Vec::new())
        } else {
            (here.clone(), here[..here.len() - 1].to_vec())
        };
        let mut out = BTreeSet::new();
        for (root, segs) in paths(&text) {
            let base = match root.as_str() {
                "crate" => Vec::new(),
                "self" => self_path.clone(),
                _ => super_path.clone(),
            };
            let Some(target) = resolve(&[base, segs].concat()) else { continue };
            if &target == f || target.ends_with("lib.rs") {
                continue;
            }
            let parent_child = (target.ends_with("mod.rs") && f.parent() == target.parent())
                || (f.ends_with("mod.rs") && target.parent() == f.parent());
            if !parent_child {
                out.insert(target);
            }
        }
        edges.insert(f.clone(), out);
    }
    edges
}

/// The layer of a file: the longest key of [`LAYERS`] its module path starts with.
fn layer(file: &Path) -> Option<(usize, &'static str)> {
    let module = module_of(file).join("/");
    LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, keys)| keys.iter().map(move |k| (i, *k)))
        .filter(|(_, k)| module == *k || module.starts_with(&format!("{k}/")))
        .max_by_key(|(_, k)| k.len())
}

fn rel(p: &Path) -> String {
    p.strip_prefix(src()).unwrap_or(p).display().to_string()
}

/// Every edge that goes up a layer, or sideways into another part of the same layer.
fn layer_breaks(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<String> {
    let mut wrong = Vec::new();
    for (from, targets) in edges {
        if from.ends_with("lib.rs") {
            continue;
        }
        let Some((lf, kf)) = layer(from) else {
            wrong.push(format!("{} is in no layer: add it to LAYERS and ARCHITECTURE.md", rel(from)));
            continue;
        };
        for to in targets {
            let Some((lt, kt)) = layer(to) else { continue };
            let own = kf.split('/').next() == kt.split('/').next();
            if lt > lf || (lt == lf && !own) {
                wrong.push(format!("{} (layer {lf}, {kf}) uses {} (layer {lt}, {kt})", rel(from), rel(to)));
            }
        }
    }
    wrong
}

/// A cycle in `edges`, as its path, if there is one (depth-first search: a back edge).
fn find_cycle(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Option<Vec<PathBuf>> {
    fn visit(
        v: &PathBuf,
        edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        state: &mut BTreeMap<PathBuf, u8>,
        stack: &mut Vec<PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        state.insert(v.clone(), 1);
        stack.push(v.clone());
        for w in edges.get(v).into_iter().flatten() {
            match state.get(w) {
                Some(1) => {
                    let start = stack.iter().position(|x| x == w).unwrap_or(0);
                    return Some(stack[start..].to_vec());
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(w, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(v.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    edges.keys().find_map(|v| if state.contains_key(v) { None } else { visit(v, edges, &mut state, &mut Vec::new()) })
}

#[test]
fn every_module_uses_only_lower_layers() {
    let wrong = layer_breaks(&graph());
    assert!(wrong.is_empty(), "module layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_module_graph_has_no_cycle() {
    if let Some(cycle) = find_cycle(&graph()) {
        let names: Vec<String> = cycle.iter().map(|p| rel(p)).collect();
        panic!("import cycle: {} → {}", names.join(" → "), names[0]);
    }
}

#[test]
fn no_file_grows_past_the_limit() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut big = Vec::new();
    for f in files {
        let text = code(&std::fs::read_to_string(&f).expect("reading a source file"));
        let n = text.lines().filter(|l| !l.trim().is_empty()).count();
        if n > MAX_LINES {
            big.push(format!("{} has {n} lines outside its tests", rel(&f)));
        }
    }
    assert!(big.is_empty(), "split by concern (one responsibility per module):\n{}", big.join("\n"));
}

#[test]
fn the_checker_sees_a_cycle_and_a_layer_break() {
    // The parsing itself: paths, groups, test modules and comments.
    let text = "use crate::{http::request, io};\nuse super::x::Y; // crate::nope\n\
                #[cfg(test)]\nmod tests { use crate::server; }\nfn f() { crate::routing::route(); }\n";
    let got: Vec<String> = paths(&code(text)).into_iter().map(|(r, s)| format!("{r}::{}", s.join("::"))).collect();
    assert_eq!(got, ["crate::http::request", "crate::io", "crate::routing::route", "super::x::Y"]);
    let f = src().join("io").join("conn.rs");
    assert_eq!(layer(&f), Some((7, "io")));
    assert_eq!(layer(&src().join("plugin").join("call.rs")), Some((5, "plugin/call")));
    // The checks themselves, on graphs made up here.
    let (request, conn, call) = (src().join("http/request.rs"), f.clone(), src().join("plugin/call.rs"));
    let graph = |edges: &[(&PathBuf, &PathBuf)]| {
        let mut g: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
        for (from, to) in edges {
            g.entry((*from).clone()).or_default().insert((*to).clone());
            g.entry((*to).clone()).or_default();
        }
        g
    };
    let down = graph(&[(&conn, &call), (&call, &request)]);
    assert!(layer_breaks(&down).is_empty() && find_cycle(&down).is_none(), "downward edges are fine");
    let up = layer_breaks(&graph(&[(&request, &conn)]));
    assert!(up.len() == 1 && up[0].starts_with("http/request.rs (layer"), "an upward edge is reported: {up:?}");
    let cycle = find_cycle(&graph(&[(&conn, &call), (&call, &request), (&request, &conn)]));
    assert_eq!(cycle.map(|c| c.len()), Some(3), "a three-module cycle is found");
}
