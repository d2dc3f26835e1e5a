//! The shape of the source tree: the modules of `agent/src` import each other in one
//! direction only (no module imports one that imports it back, at any depth), and no source
//! file grows past what can be read in one sitting.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Most lines a source file may have.
const MAX_LINES: usize = 600;

/// The module path of a source file of `agent/src` (`collectors/probes/ports.rs` →
/// `collectors::probes::ports`; `mod.rs` names its folder; `lib.rs` and `main.rs` the root).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments, string literals and its `#[cfg(test)]` modules
/// (tests may reach anywhere).
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if t == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod "))
        {
            let decl = lines.next().unwrap();
            if decl.trim_end().ends_with('{') {
                // Skip to the closing brace at the same indentation.
                let indent = decl.len() - decl.trim_start().len();
                for l in lines.by_ref() {
                    if l.len() - l.trim_start().len() == indent && l.trim() == "}" {
                        break;
                    }
                }
            }
            continue;
        }
        let code = line.split("//").next().unwrap_or("");
        // String literals may hold `crate::` in messages; drop their contents.
        let mut in_str = false;
        let mut prev = ' ';
        for c in code.chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
                out.push('"');
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// Expands a `use` tree (`crate::{a::b, c::{d, e}}`) into its paths.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = format!("{prefix}{}", &tree[..open]);
        let inner = &tree[open + 1..tree.rfind('}').unwrap()];
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], &head, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], &head, out);
    } else if !tree.is_empty() {
        let path = tree.split(" as ").next().unwrap().trim();
        out.push(format!("{prefix}{path}"));
    }
}

/// Every path a file names from the crate: its `use` items, and paths written inline.
fn paths_in(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().next_back();
        let after = &rest[i + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            rest = after;
            continue;
        }
        let end = after.find(';').unwrap_or(after.len());
        let mut tree: String = after[..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        for (from, to) in [
            (" ::", "::"),
            (":: ", "::"),
            ("{ ", "{"),
            (" }", "}"),
            (" ,", ","),
            (", ", ","),
        ] {
            tree = tree.replace(from, to);
        }
        expand(&tree, "", &mut out);
        rest = &after[end..];
    }
    let inline = code
        .match_indices("crate::")
        .chain(code.match_indices("super::"));
    for (i, _) in inline {
        if code[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == ':')
        {
            continue;
        }
        let path: String = code[i..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        // `crate::x::{...}` and `super::*` open a `use` tree, read above.
        if !path.ends_with("::") {
            out.push(path);
        }
    }
    out
}

/// The module a path points into: the longest prefix of it that is a module.
fn target(
    path: &str,
    here: &[String],
    is_dir_module: bool,
    modules: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut base: Vec<String> = match segs.first().copied() {
        Some("crate") => Vec::new(),
        Some("self") => here.to_vec(),
        Some("super") => {
            let mut b = here.to_vec();
            // In `foo.rs` or `foo/mod.rs`, `super` is the folder's parent module.
            let _ = is_dir_module;
            b.pop();
            b
        }
        _ => {
            // A child module named directly (`use gofmt::x` inside `rules`).
            let mut b = here.to_vec();
            b.push(segs.first()?.to_string());
            if !modules.contains(&b) {
                return None;
            }
            here.to_vec()
        }
    };
    if matches!(segs.first().copied(), Some("crate" | "self" | "super")) {
        segs.remove(0);
    }
    while segs.first() == Some(&"super") {
        base.pop();
        segs.remove(0);
    }
    let mut best = None;
    let mut cur = base.clone();
    if modules.contains(&cur) {
        best = Some(cur.clone());
    }
    for s in segs {
        cur.push(s.to_string());
        if modules.contains(&cur) {
            best = Some(cur.clone());
        }
    }
    best
}

fn name(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on: BTreeSet<&'a Vec<String>>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a Vec<String>) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                comp.push(name(w));
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// The import graph of `agent/src`: module → the modules it uses.
fn graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = Path::new(ROOT).join("agent/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // `main.rs` is the binary, a crate of its own over the library.
    files.retain(|f| !f.ends_with("main.rs"));
    // Files that are `#[cfg(test)] mod tests;` of their parent.
    files.retain(|f| f.file_name().is_none_or(|n| n != "tests.rs"));
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut graph = BTreeMap::new();
    for f in &files {
        let here = module_of(&src, f);
        let dir_module = f.ends_with("mod.rs") || f.ends_with("lib.rs");
        let text = std::fs::read_to_string(f).unwrap();
        let mut edges = BTreeSet::new();
        for p in paths_in(&code_of(&text)) {
            // Inside `foo/mod.rs`, `self::x` and plain `x` are children of `foo`; inside
            // `foo.rs` they are children of `foo` too, so both resolve the same way.
            if let Some(t) = target(&p, &here, dir_module, &modules)
                && t != here
            {
                edges.insert(t);
            }
        }
        graph.insert(here, edges);
    }
    graph
}

#[test]
fn the_module_graph_has_no_cycle() {
    let g = graph();
    assert!(g.len() > 40, "read too few modules: {}", g.len());
    // The graph is read right: a few edges that must be there.
    let has = |a: &str, b: &str| {
        let a: Vec<String> = a.split("::").map(String::from).collect();
        let b: Vec<String> = b.split("::").map(String::from).collect();
        g.get(&a).is_some_and(|e| e.contains(&b))
    };
    assert!(has("rules::live", "store"), "rules::live reads the store");
    assert!(has("config", "yaml"), "config parses with yaml");
    assert!(has("agent", "collectors"), "agent starts the collectors");
    let found = cycles(&g);
    assert!(
        found.is_empty(),
        "modules that import each other (each line one cycle):\n{}",
        found
            .iter()
            .map(|c| c.join(" <-> "))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn no_source_file_is_over_600_lines() {
    let mut long = Vec::new();
    for dir in ["agent/src", "agent-ebpf", "xtask/src"] {
        let mut files = Vec::new();
        rust_files(&Path::new(ROOT).join(dir), &mut files);
        files.retain(|f| !f.components().any(|c| c.as_os_str() == "target"));
        for f in files {
            let n = std::fs::read_to_string(&f).unwrap().lines().count();
            if n > MAX_LINES {
                long.push(format!("{} ({n} lines)", f.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_checker_sees_a_cycle() {
    let m = |s: &str| -> Vec<String> { s.split("::").map(String::from).collect() };
    let mut g = BTreeMap::new();
    g.insert(m("a"), BTreeSet::from([m("b")]));
    g.insert(m("b"), BTreeSet::from([m("c")]));
    g.insert(m("c"), BTreeSet::from([m("a")]));
    g.insert(m("d"), BTreeSet::from([m("a")]));
    assert_eq!(cycles(&g), vec![vec!["a", "b", "c"]]);
    let mut out = Vec::new();
    expand("crate::{a::b, c::{d, e as f}}", "", &mut out);
    assert_eq!(out, ["crate::a::b", "crate::c::d", "crate::c::e"]);
}
