//! The node crate's files depend on each other one way: no file reaches itself through
//! the `crate::` paths it names. A cycle here means a layer was skipped or a type lives
//! in the wrong folder (docs/architecture.md has the map).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Module path (`routing::router`) of every source file but test-only ones.
fn files(dir: &Path, prefix: &str, out: &mut BTreeMap<String, PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("name")
            .to_string();
        if path.is_dir() {
            files(&path, &format!("{prefix}{name}::"), out);
        } else if name != "tests" {
            let module = match name.as_str() {
                "lib" => "crate".to_string(),
                _ => format!("{prefix}{name}"),
            };
            out.insert(module, path);
        }
    }
}

/// The text of a file without its `#[cfg(test)]` module (tests may reach anywhere).
fn non_test_text(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read");
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// The files a file's text names through `crate::a::b::...` paths, `use crate::{...}`
/// groups included: each path resolves to the longest module prefix that is a file.
fn deps(text: &str, modules: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut paths: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        let tail = &rest[i + "crate::".len()..];
        if let Some(group) = tail.strip_prefix('{') {
            // `use crate::{a::X, b::{Y, Z}}`: each top-level item.
            let end = group.find("};").unwrap_or(group.len());
            for item in group[..end].split(',') {
                let item: String = item.chars().filter(|c| !c.is_whitespace()).collect();
                paths.push(item);
            }
        } else {
            let path: String = tail
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            paths.push(path);
        }
        rest = tail;
    }
    for p in paths {
        let segs: Vec<&str> = p.split("::").filter(|s| !s.is_empty()).collect();
        for n in (1..=segs.len()).rev() {
            let m = segs[..n].join("::");
            if modules.contains_key(&m) {
                found.insert(m);
                break;
            }
        }
    }
    found
}

#[test]
fn no_file_of_the_node_crate_depends_on_itself() {
    let mut modules = BTreeMap::new();
    files(&src(), "", &mut modules);
    assert!(modules.len() > 20, "{modules:?}");
    let graph: BTreeMap<String, BTreeSet<String>> = modules
        .iter()
        .map(|(m, path)| {
            let mut d = deps(&non_test_text(path), &modules);
            d.remove(m);
            (m.clone(), d)
        })
        .collect();
    // `lib.rs` only declares and re-exports: nothing may name it.
    for (m, d) in &graph {
        assert!(!d.contains("crate"), "{m} names an item of lib.rs");
    }
    // Depth-first search for a back edge.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(at) = stack.iter().position(|s| *s == m) {
            panic!("import cycle: {} -> {m}", stack[at..].join(" -> "));
        }
        stack.push(m);
        for d in &graph[m] {
            visit(d, graph, stack, done);
        }
        stack.pop();
        done.insert(m);
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}
