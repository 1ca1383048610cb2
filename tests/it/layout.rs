//! The crate's shape: no two modules import each other, at the level of
//! files and of the top-level modules, so each can be read (and tested)
//! from what it depends on. Read from the sources in `src/`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// Every module file, by path (`realtime::socket`), with its text before
/// its test module.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(concat!(env!("CARGO_MANIFEST_DIR"), "/src")).unwrap();
                let name = rel.with_extension("").to_string_lossy().replace('/', "::");
                let name = name.strip_suffix("::mod").unwrap_or(&name).to_owned();
                if name != "lib" && name != "main" {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let code = text.split("#[cfg(test)]").next().unwrap().to_owned();
                    out.insert(name, code);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")), &mut out);
    out
}

/// The module a path names: its longest prefix that is a module.
fn resolve(modules: &BTreeMap<String, String>, path: &[&str]) -> Option<String> {
    (1..=path.len()).rev().map(|n| path[..n].join("::")).find(|candidate| modules.contains_key(candidate))
}

/// Expands `a::{b, c::{d}}` into `a::b`, `a::c::d`.
fn expand(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut depth = 0;
    let mut start = 0;
    let bytes = tree.as_bytes();
    let mut items = Vec::new();
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' => depth -= 1,
            b',' if depth == 0 => {
                items.push(&tree[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&tree[start..]);
    for item in items.into_iter().map(str::trim).filter(|i| !i.is_empty()) {
        match item.split_once("::{") {
            Some((head, rest)) => {
                let mut p = prefix.to_vec();
                p.extend(head.split("::").map(str::to_owned));
                expand(rest.strip_suffix('}').unwrap_or(rest), &p, out);
            }
            None => {
                let mut p = prefix.to_vec();
                p.extend(item.split(" as ").next().unwrap().split("::").map(|s| s.trim().to_owned()));
                out.push(p);
            }
        }
    }
}

/// The modules `name` imports (through `use` or a `crate::`/`super::` path).
fn imports(modules: &BTreeMap<String, String>, name: &str, code: &str) -> BTreeSet<String> {
    let me: Vec<String> = name.split("::").map(str::to_owned).collect();
    let code: String = code.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n");
    let mut paths = Vec::new();
    for statement in code.split(';') {
        if let Some(tree) = statement.trim().strip_prefix("use ").or_else(|| statement.trim().strip_prefix("pub use "))
        {
            expand(&tree.replace(char::is_whitespace, ""), &[], &mut paths);
        }
    }
    for word in code.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
        let path: Vec<String> = word.split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect();
        if matches!(path.first().map(String::as_str), Some("crate" | "super")) && path.len() > 1 {
            paths.push(path);
        }
    }
    let mut out = BTreeSet::new();
    for path in paths {
        let mut full: Vec<String> = match path.first().map(String::as_str) {
            Some("crate") => Vec::new(),
            Some("super") => me[..me.len() - 1].to_vec(),
            Some("self") => me.clone(),
            _ => continue,
        };
        let mut rest = &path[1..];
        while rest.first().map(String::as_str) == Some("super") {
            full.pop();
            rest = &rest[1..];
        }
        full.extend(rest.iter().cloned());
        let parts: Vec<&str> = full.iter().map(String::as_str).collect();
        if let Some(module) = resolve(modules, &parts).filter(|m| m != name) {
            out.insert(module);
        }
    }
    out
}

fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<(String, String)> {
    let reaches = |from: &str, to: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_owned()];
        while let Some(at) = stack.pop() {
            for next in graph.get(&at).into_iter().flatten() {
                if next == to {
                    return true;
                }
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        false
    };
    let mut found = Vec::new();
    for (a, deps) in graph {
        for b in deps {
            if a < b && reaches(b, a) {
                found.push((a.clone(), b.clone()));
            }
        }
    }
    found
}

#[test]
fn no_two_modules_import_each_other() {
    let modules = modules();
    assert!(modules.len() > 20 && modules.contains_key("realtime::socket"), "read the sources: {:?}", modules.keys());
    let files: BTreeMap<String, BTreeSet<String>> =
        modules.iter().map(|(name, code)| (name.clone(), imports(&modules, name, code))).collect();
    assert!(
        files["realtime::socket"].contains("realtime::deadline"),
        "imports are read: {:?}",
        files["realtime::socket"]
    );
    assert!(files["state"].contains("web"), "imports are read: {:?}", files["state"]);
    assert_eq!(cycles(&files), [], "modules importing each other, directly or around a loop");

    let top = |m: &str| m.split("::").next().unwrap().to_owned();
    let mut tops: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, deps) in &files {
        for to in deps.iter().filter(|to| top(to) != top(from)) {
            tops.entry(top(from)).or_default().insert(top(to));
        }
    }
    assert_eq!(cycles(&tops), [], "top-level modules importing each other: {tops:?}");
}
