//! The house's shape: no two modules import each other, at the level of
//! files and of the top-level modules, so each can be read (and tested)
//! from what it depends on. Read from the sources of the server (`src/`)
//! and of palaver-cli (`cli/src/`), crate root included. And no file of the
//! server is longer than [`MAX_LINES`].

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// The name the crate root's file goes by in the graph.
const ROOT: &str = "crate";

/// The most lines a file under `src/` may have: past it, a file holds more
/// than one concern and is split by them (as `backend/redis/` is).
const MAX_LINES: usize = 900;

/// One crate's sources: every module file by path (`realtime::socket`,
/// the root file as [`ROOT`]), with its text before its test module.
struct Sources {
    modules: BTreeMap<String, String>,
    /// What the root re-exports (`pub use config::Config` gives `Config` ->
    /// `config::Config`): a path through the root to one of these imports
    /// the module it comes from. The root's face is not a dependency of the
    /// root's own code.
    reexports: BTreeMap<String, Vec<String>>,
}

impl Sources {
    /// The crate whose files are under `dir` (relative to the workspace)
    /// and whose root is `dir/root`. Another crate root beside it (the
    /// server's `main.rs`, a binary of its own) is not read.
    fn read(dir: &str, root: &str) -> Sources {
        fn walk(base: &Path, dir: &Path, root: &str, out: &mut BTreeMap<String, String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(base, &path, root, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let rel = path.strip_prefix(base).unwrap();
                    let name = rel.with_extension("").to_string_lossy().replace('/', "::");
                    let name = name.strip_suffix("::mod").unwrap_or(&name).to_owned();
                    let name = match name.as_str() {
                        n if n == root => ROOT.to_owned(),
                        "lib" | "main" => continue,
                        _ => name,
                    };
                    let text = std::fs::read_to_string(&path).unwrap();
                    let code = text.split("#[cfg(test)]").next().unwrap().to_owned();
                    out.insert(name, code);
                }
            }
        }
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut modules = BTreeMap::new();
        walk(&base, &base, root.strip_suffix(".rs").unwrap(), &mut modules);
        let mut reexports = BTreeMap::new();
        for (public, path) in use_trees(&modules[ROOT]) {
            if public {
                let name = path.last().unwrap().clone();
                reexports.insert(name, path);
            }
        }
        Sources { modules, reexports }
    }

    /// The module a path from the root names: its longest prefix that is a
    /// module, else the root (through a re-export when it is one).
    fn resolve(&self, path: &[String]) -> String {
        let longest = |path: &[String]| {
            (1..=path.len()).rev().map(|n| path[..n].join("::")).find(|m| self.modules.contains_key(m))
        };
        if let Some(module) = longest(path) {
            return module;
        }
        let through = path.first().and_then(|item| self.reexports.get(item));
        through.and_then(|to| longest(&[to.as_slice(), &path[1..]].concat())).unwrap_or_else(|| ROOT.to_owned())
    }

    /// The modules `name` imports: through `use`, or a path in its code
    /// that starts with `crate::`, `super::`, `self::` or one of its own
    /// submodules.
    fn imports(&self, name: &str) -> BTreeSet<String> {
        let me: Vec<String> = if name == ROOT { Vec::new() } else { name.split("::").map(str::to_owned).collect() };
        let code = without_comments(&self.modules[name]);
        let mut paths: Vec<Vec<String>> = use_trees(&code)
            .into_iter()
            .filter(|(public, _)| !(name == ROOT && *public))
            .map(|(_, path)| path)
            .collect();
        let rest: Vec<&str> = code.split(';').filter(|s| use_statement(s).is_none()).collect();
        for word in rest.concat().split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
            let path: Vec<String> = word.split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect();
            if path.len() > 1 {
                paths.push(path);
            }
        }
        let mut out = BTreeSet::new();
        for path in paths {
            let (mut full, rest) = match path.first().map(String::as_str) {
                Some("crate") => (Vec::new(), &path[1..]),
                Some("super") => (me[..me.len().saturating_sub(1)].to_vec(), &path[1..]),
                Some("self") => (me.clone(), &path[1..]),
                // A submodule of this one (`use frames::Seen` in `session`);
                // anything else is another crate.
                Some(first) if self.modules.contains_key(&[me.as_slice(), &[first.to_owned()]].concat().join("::")) => {
                    (me.clone(), &path[..])
                }
                _ => continue,
            };
            let mut rest = rest;
            while rest.first().map(String::as_str) == Some("super") {
                full.pop();
                rest = &rest[1..];
            }
            full.extend(rest.iter().cloned());
            let module = self.resolve(&full);
            if module != name {
                out.insert(module);
            }
        }
        out
    }

    /// Every module with the modules it imports.
    fn graph(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.modules.keys().map(|name| (name.clone(), self.imports(name))).collect()
    }
}

fn without_comments(code: &str) -> String {
    code.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n")
}

/// The tree of a `use` statement, and whether it is a re-export.
fn use_statement(statement: &str) -> Option<(bool, &str)> {
    let statement = statement.trim();
    if let Some(tree) = statement.strip_prefix("use ") {
        return Some((false, tree));
    }
    let (vis, tree) = statement.strip_prefix("pub")?.split_once("use ")?;
    (vis.trim().is_empty() || vis.trim().starts_with('(')).then_some((true, tree))
}

/// The paths of every `use` in `code` (comments left out), each with
/// whether it is a re-export (`pub use`, `pub(crate) use`).
fn use_trees(code: &str) -> Vec<(bool, Vec<String>)> {
    let code = without_comments(code);
    let mut out = Vec::new();
    for statement in code.split(';') {
        let Some((public, tree)) = use_statement(statement) else { continue };
        // `a as b` keeps its path (`a`); then no whitespace is left to matter.
        let tree = tree.split_whitespace().collect::<Vec<_>>().join(" ").replace(" as ", "@").replace(' ', "");
        let mut paths = Vec::new();
        expand(&tree, &[], &mut paths);
        out.extend(paths.into_iter().map(|p| (public, p)));
    }
    out
}

/// Expands `a::{b, c::{d}}` into `a::b`, `a::c::d` (`a@b`, `a` imported as
/// `b`, into `a`).
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
                p.extend(item.split('@').next().unwrap().split("::").map(|s| s.trim().to_owned()));
                out.push(p);
            }
        }
    }
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

/// Neither the files nor the top-level modules of `files` import each other.
fn assert_no_circle(files: &BTreeMap<String, BTreeSet<String>>) {
    assert_eq!(cycles(files), [], "modules importing each other, directly or around a loop: {files:?}");
    let top = |m: &str| m.split("::").next().unwrap().to_owned();
    let mut tops: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, deps) in files {
        for to in deps.iter().filter(|to| top(to) != top(from)) {
            tops.entry(top(from)).or_default().insert(top(to));
        }
    }
    assert_eq!(cycles(&tops), [], "top-level modules importing each other: {tops:?}");
}

#[test]
fn no_two_modules_import_each_other() {
    let server = Sources::read("src", "lib.rs");
    assert!(
        server.modules.len() > 20 && server.modules.contains_key("realtime::socket"),
        "read the sources: {:?}",
        server.modules.keys()
    );
    let files = server.graph();
    assert!(
        files["realtime::socket"].contains("realtime::deadline"),
        "imports are read: {:?}",
        files["realtime::socket"]
    );
    assert!(files["state"].contains("web"), "imports are read: {:?}", files["state"]);
    assert_no_circle(&files);
}

#[test]
fn no_two_modules_of_palaver_cli_import_each_other() {
    let cli = Sources::read("cli/src", "main.rs");
    assert!(cli.modules.contains_key("session::frames"), "read the sources: {:?}", cli.modules.keys());
    let files = cli.graph();
    assert!(files[ROOT].contains("session"), "the root's imports are read: {:?}", files[ROOT]);
    assert!(files["session"].contains("session::outbox"), "relative imports are read: {:?}", files["session"]);
    assert!(files["args"].contains("api"), "imports are read: {:?}", files["args"]);
    assert_no_circle(&files);
}

#[test]
fn no_file_of_the_server_is_over_the_line_limit() {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, usize)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let lines = std::fs::read_to_string(&path).unwrap().lines().count();
                out.push((path.strip_prefix(base).unwrap().display().to_string(), lines));
            }
        }
    }
    let base = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    walk(base, &base.join("src"), &mut files);
    assert!(files.len() > 20, "read the sources: {files:?}");
    let over: Vec<&(String, usize)> = files.iter().filter(|(_, lines)| *lines > MAX_LINES).collect();
    assert!(over.is_empty(), "files over {MAX_LINES} lines (split them by concern): {over:?}");
}
