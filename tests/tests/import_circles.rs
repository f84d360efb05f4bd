//! Import circles between the modules of one crate: module A names
//! something of module B (`crate::b::…`, `super::…`) and B, directly or
//! through others, something of A. Such modules can be neither read nor
//! moved apart, and a crate splits along its modules, so they point one way.
//!
//! Read from the sources: from each crate root (lib, main, bins) the check
//! follows the `mod` items (`#[path]` and inline modules too), collects the
//! `crate::` and `super::` paths of each module, and resolves each to the
//! longest module prefix that exists. It leaves out a module's own
//! ancestors and descendants (a parent declaring its children, a child using
//! its parent's items: the normal tree; so re-exports at the root are not
//! followed), test code (items under `#[cfg(test)]`, modules and files named
//! `tests*`, `testutil*`, `testkit*`), comments and strings.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path inside its crate; empty for the root.
type ModPath = Vec<String>;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A word: identifier, keyword or number.
    Word(String),
    Str(String),
    /// `::`
    Sep,
    Punct(char),
}

/// A file's tokens with their offsets (in chars), without comments:
/// enough to see attributes, `mod` items, braces and paths.
fn lex(src: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = src.chars().collect();
    let at = |k: usize| c.get(k).copied().unwrap_or('\0');
    let word = |k: usize| at(k).is_alphanumeric() || at(k) == '_';
    // A string from `k`, after its opening quote, to its closing quote
    // and `hashes` `#` (raw strings have no escapes): (text, next index).
    let string = |mut k: usize, hashes: Option<usize>| {
        let start = k;
        while k < c.len() {
            if c[k] == '\\' && hashes.is_none() {
                k += 1;
            } else if c[k] == '"' && (1..=hashes.unwrap_or(0)).all(|h| at(k + h) == '#') {
                return (c[start..k].iter().collect(), k + 1 + hashes.unwrap_or(0));
            }
            k += 1;
        }
        (String::new(), c.len())
    };
    let (mut i, mut out) = (0, Vec::new());
    while i < c.len() {
        let from = i;
        let tok = match c[i] {
            '/' if at(i + 1) == '/' => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
                None
            }
            '/' if at(i + 1) == '*' => {
                let mut depth = 0;
                while i < c.len() {
                    let pair = (c[i], at(i + 1));
                    depth += i32::from(pair == ('/', '*')) - i32::from(pair == ('*', '/'));
                    i += 1 + usize::from(matches!(pair, ('/', '*') | ('*', '/')));
                    if depth == 0 {
                        break;
                    }
                }
                None
            }
            '"' => {
                let (s, next) = string(i + 1, None);
                i = next;
                Some(Tok::Str(s))
            }
            // 'x', '\n' or '\''; otherwise a lifetime or a label.
            '\'' if at(i + 1) == '\\' || at(i + 2) == '\'' => {
                i += 2 + usize::from(at(i + 1) == '\\');
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                None
            }
            ':' if at(i + 1) == ':' => {
                i += 2;
                Some(Tok::Sep)
            }
            _ if word(i) => {
                while word(i) {
                    i += 1;
                }
                let w: String = c[from..i].iter().collect();
                let hashes = (i..).take_while(|&k| at(k) == '#').count();
                if matches!(w.as_str(), "r" | "br" | "cr") && at(i + hashes) == '"' {
                    let (s, next) = string(i + hashes + 1, Some(hashes));
                    i = next;
                    Some(Tok::Str(s))
                } else if matches!(w.as_str(), "b" | "c") && at(i) == '"' {
                    let (s, next) = string(i + 1, None);
                    i = next;
                    Some(Tok::Str(s))
                } else {
                    Some(Tok::Word(w))
                }
            }
            ch => {
                i += 1;
                (!ch.is_whitespace()).then_some(Tok::Punct(ch))
            }
        };
        out.extend(tok.map(|t| (t, from)));
    }
    out
}

fn is(t: &[(Tok, usize)], i: usize, tok: &Tok) -> bool {
    t.get(i).is_some_and(|x| &x.0 == tok)
}

fn word_at(t: &[(Tok, usize)], i: usize) -> Option<&str> {
    match t.get(i) {
        Some((Tok::Word(w), _)) => Some(w),
        _ => None,
    }
}

/// The index after the bracketed group at `i` (`group`), or after the
/// item at `i`: after its `;` or its closing `}`, or at a `}` that closes
/// the block around it.
fn skip(t: &[(Tok, usize)], mut i: usize, group: bool) -> usize {
    let mut depth = 0;
    while let Some((tok, _)) = t.get(i) {
        i += 1;
        match tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(close @ (')' | ']' | '}')) => {
                depth -= 1;
                if depth < 0 {
                    return i - 1;
                }
                if depth == 0 && (group || *close == '}') {
                    return i;
                }
            }
            Tok::Punct(';') if depth == 0 && !group => return i,
            _ => {}
        }
    }
    i
}

/// Whether an attribute (its tokens inside `#[…]`) keeps its item to
/// test builds: `cfg(test)` or `cfg(all(test, …))`.
fn test_only(attr: &[(Tok, usize)]) -> bool {
    let open = Tok::Punct('(');
    word_at(attr, 0) == Some("cfg")
        && is(attr, 1, &open)
        && (word_at(attr, 2) == Some("test") && is(attr, 3, &Tok::Punct(')'))
            || word_at(attr, 2) == Some("all")
                && is(attr, 3, &open)
                && word_at(attr, 4) == Some("test"))
}

fn test_name(name: &str) -> bool {
    ["tests", "testutil", "testkit"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Every path of the use tree at `i` (after `crate::` or `super::`), each
/// after `prefix`, into `out`; returns the index after the tree.
fn use_tree(
    t: &[(Tok, usize)],
    mut i: usize,
    mut prefix: ModPath,
    out: &mut Vec<ModPath>,
) -> usize {
    while let Some(w) = word_at(t, i).filter(|&w| w != "as") {
        prefix.push(w.to_owned());
        if !is(t, i + 1, &Tok::Sep) {
            out.push(prefix);
            return i + 1;
        }
        i += 2;
    }
    if !is(t, i, &Tok::Punct('{')) {
        out.push(prefix); // `*`, or a path followed by generics
        return i;
    }
    let end = skip(t, i, true);
    i += 1;
    while i < end - 1 {
        i = use_tree(t, i, prefix.clone(), out);
        // Past an `as` alias, to the comma.
        while i < end - 1 && !is(t, i, &Tok::Punct(',')) {
            i += 1;
        }
        i += 1;
    }
    end
}

/// One `crate::` or `super::` path of a module, in absolute segments.
#[derive(Debug)]
struct Use {
    from: ModPath,
    to: ModPath,
    file: PathBuf,
    /// Where in the file, in chars.
    at: usize,
}

/// The modules of one crate, the paths they name, and the `mod` items
/// whose file was not found.
#[derive(Debug, Default)]
struct Crate {
    modules: BTreeSet<ModPath>,
    uses: Vec<Use>,
    missing: Vec<String>,
}

impl Crate {
    /// Reads module `module` from `file`, and the file modules it declares,
    /// whose files are under `dir`.
    fn scan(&mut self, file: &Path, module: ModPath, dir: PathBuf) -> anyhow::Result<()> {
        let t = lex(&std::fs::read_to_string(file)?);
        self.modules.insert(module.clone());
        // The inline modules open here: (module, its children's directory,
        // the brace depth inside it).
        let mut scopes = vec![(module, dir, 0)];
        let (mut depth, mut i) = (0, 0);
        let mut attrs: Vec<&[(Tok, usize)]> = Vec::new();
        while i < t.len() {
            let (scope, scope_dir, _) = scopes.last().cloned().expect("the file's scope");
            let inner = is(&t, i + 1, &Tok::Punct('!'));
            let open = i + 1 + usize::from(inner);
            if is(&t, i, &Tok::Punct('#')) && is(&t, open, &Tok::Punct('[')) {
                let end = skip(&t, open, true);
                let attr = &t[open + 1..end - 1];
                if inner && test_only(attr) && scopes.len() == 1 && depth == 0 {
                    return Ok(()); // a file of test code
                }
                if !inner {
                    attrs.push(attr);
                }
                i = end;
                continue;
            }
            if attrs.iter().any(|a| test_only(a)) {
                (attrs, i) = (Vec::new(), skip(&t, i, false));
                continue;
            }
            let w = word_at(&t, i);
            if let (Some("mod"), Some(name)) = (w, word_at(&t, i + 1)) {
                let child = [scope.clone(), vec![name.to_owned()]].concat();
                let path_attr = attrs.iter().find_map(|a| match a {
                    [(Tok::Word(p), _), (Tok::Punct('='), _), (Tok::Str(s), _)] if p == "path" => {
                        Some(s)
                    }
                    _ => None,
                });
                if test_name(name) {
                    (attrs, i) = (Vec::new(), skip(&t, i, false));
                    continue;
                }
                if is(&t, i + 2, &Tok::Punct('{')) {
                    self.modules.insert(child.clone());
                    depth += 1;
                    scopes.push((child, scope_dir.join(name), depth));
                    (attrs, i) = (Vec::new(), i + 3);
                    continue;
                }
                // A `#[path]` file's children sit beside it, as a mod.rs's do.
                let candidates = match path_attr {
                    Some(p) => {
                        let f = file.parent().expect("a file's directory").join(p);
                        vec![(f.clone(), f.parent().expect("a directory").to_path_buf())]
                    }
                    None => vec![
                        (scope_dir.join(format!("{name}.rs")), scope_dir.join(name)),
                        (scope_dir.join(name).join("mod.rs"), scope_dir.join(name)),
                    ],
                };
                match candidates.into_iter().find(|(f, _)| f.is_file()) {
                    Some((f, _))
                        if test_name(&f.file_stem().unwrap_or_default().to_string_lossy()) => {}
                    Some((f, d)) => self.scan(&f, child, d)?,
                    None => self.missing.push(format!("{}: mod {name}", file.display())),
                }
                (attrs, i) = (Vec::new(), skip(&t, i, false));
                continue;
            }
            if matches!(w, Some("crate" | "super"))
                && is(&t, i + 1, &Tok::Sep)
                && !(i > 0 && is(&t, i - 1, &Tok::Punct('$')))
            {
                let (mut base, mut k, mut ok) = (scope.clone(), i, true);
                if w == Some("crate") {
                    (base, k) = (Vec::new(), i + 2);
                }
                while word_at(&t, k) == Some("super") && is(&t, k + 1, &Tok::Sep) {
                    ok &= base.pop().is_some();
                    k += 2;
                }
                let mut paths = Vec::new();
                let end = use_tree(&t, k, Vec::new(), &mut paths);
                for p in paths.into_iter().filter(|_| ok) {
                    let (from, to) = (scope.clone(), [base.clone(), p].concat());
                    let (file, at) = (file.to_path_buf(), t[i].1);
                    self.uses.push(Use { from, to, file, at });
                }
                i = end.max(i + 1);
                continue;
            }
            match t[i].0 {
                Tok::Punct('{') => depth += 1,
                Tok::Punct('}') => {
                    if scopes.len() > 1 && scopes.last().is_some_and(|s| s.2 == depth) {
                        scopes.pop();
                    }
                    depth -= 1;
                }
                _ => {}
            }
            if matches!(t[i].0, Tok::Punct(';' | '{' | '}')) {
                attrs.clear();
            }
            i += 1;
        }
        Ok(())
    }
}

fn toml_at(dir: &Path) -> anyhow::Result<toml::Table> {
    Ok(std::fs::read_to_string(dir.join("Cargo.toml"))?.parse()?)
}

/// The roots of the crates of the package in `dir`: its lib, its main,
/// its bins. (label, root file)
fn crate_roots(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let manifest = toml_at(dir)?;
    let name = manifest["package"]["name"].as_str().unwrap_or("?");
    let path_of = |t: &toml::Value| t.get("path")?.as_str().map(|p| dir.join(p));
    let mut roots = vec![dir.join("src/lib.rs"), dir.join("src/main.rs")];
    roots.extend(manifest.get("lib").and_then(path_of));
    let bins = manifest.get("bin").and_then(|b| b.as_array().cloned());
    roots.extend(bins.unwrap_or_default().iter().filter_map(path_of));
    for bin in std::fs::read_dir(dir.join("src/bin")).into_iter().flatten() {
        let p = bin?.path();
        roots.push(if p.is_dir() { p.join("main.rs") } else { p });
    }
    let mut seen = BTreeSet::new();
    roots.retain(|r| r.is_file() && r.extension().is_some_and(|x| x == "rs"));
    roots.retain(|r| seen.insert(r.clone()));
    let label = |r: &Path| format!("{name} ({})", r.strip_prefix(dir).unwrap_or(r).display());
    Ok(roots.into_iter().map(|r| (label(&r), r)).collect())
}

/// The package directories of the workspace at `root`, from its
/// `members` (`dir/*`: every package in dir).
fn members(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let manifest = toml_at(root)?;
    let listed = manifest
        .get("workspace")
        .and_then(|w| w.get("members")?.as_array());
    let mut dirs = Vec::new();
    for m in listed.into_iter().flatten().filter_map(|m| m.as_str()) {
        let Some(parent) = m.strip_suffix("/*") else {
            dirs.push(root.join(m));
            continue;
        };
        let mut found: Vec<PathBuf> = std::fs::read_dir(root.join(parent))?
            .map(|e| Ok(e?.path()))
            .collect::<std::io::Result<_>>()?;
        found.retain(|p| p.join("Cargo.toml").is_file());
        found.sort();
        dirs.extend(found);
    }
    anyhow::ensure!(!dirs.is_empty(), "no workspace members in {root:?}");
    Ok(dirs)
}

/// Every import circle of the workspace at `root`, one paragraph each:
/// the crate, its modules, and an example line of each edge between them.
fn import_circles(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut report = Vec::new();
    for dir in members(root)? {
        for (label, lib) in crate_roots(&dir)? {
            let (mut k, src) = (Crate::default(), lib.parent().expect("a directory"));
            k.scan(&lib, Vec::new(), src.to_path_buf())?;
            anyhow::ensure!(k.missing.is_empty(), "{label}: no file for {:?}", k.missing);
            // Each module edge with the first use that makes it.
            let mut edges: BTreeMap<(&ModPath, ModPath), &Use> = BTreeMap::new();
            for u in &k.uses {
                let mut prefixes = (0..=u.to.len()).rev().map(|n| u.to[..n].to_vec());
                let to = prefixes.find(|p| k.modules.contains(p)).unwrap_or_default();
                if !u.from.starts_with(&to) && !to.starts_with(&u.from) {
                    edges.entry((&u.from, to)).or_insert(u);
                }
            }
            let mut next: BTreeMap<&ModPath, Vec<&ModPath>> = BTreeMap::new();
            for (a, b) in edges.keys() {
                next.entry(*a).or_default().push(b);
            }
            let reach: BTreeMap<&ModPath, BTreeSet<&ModPath>> = next
                .keys()
                .map(|&from| {
                    let (mut seen, mut todo) = (BTreeSet::from([from]), vec![from]);
                    while let Some(m) = todo.pop() {
                        for &n in next.get(m).into_iter().flatten() {
                            if seen.insert(n) {
                                todo.push(n);
                            }
                        }
                    }
                    (from, seen)
                })
                .collect();
            let mut done = BTreeSet::new();
            for (&a, reached) in &reach {
                let scc: BTreeSet<&ModPath> = reached
                    .iter()
                    .filter(|b| reach.get(*b).is_some_and(|r| r.contains(a)))
                    .copied()
                    .collect();
                if scc.len() < 2 || !done.insert(scc.clone()) {
                    continue;
                }
                // (Never the root: it is everyone's ancestor.)
                let names: Vec<String> = scc.iter().map(|m| m.join("::")).collect();
                let mut text = format!("{label}: {}", names.join(", "));
                for ((a, b), u) in &edges {
                    if scc.contains(a) && scc.contains(b) {
                        let src = std::fs::read_to_string(&u.file)?;
                        let n = src.chars().take(u.at).filter(|&c| c == '\n').count();
                        let line = src.lines().nth(n).unwrap_or("").trim();
                        let file = u.file.strip_prefix(root).unwrap_or(&u.file).display();
                        let (a, b, n) = (a.join("::"), b.join("::"), n + 1);
                        text += &format!("\n    {a} -> {b}   {file}:{n}: {line}");
                    }
                }
                report.push(text);
            }
        }
    }
    Ok(report)
}

/// No module of a workspace crate takes part in an import circle.
#[test]
fn no_import_circles_between_modules() -> anyhow::Result<()> {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let circles = import_circles(root)?;
    assert!(
        circles.is_empty(),
        "import circles between modules (move what both use to a module of its own, \
         or to the one that owns it):\n{}",
        circles.join("\n")
    );
    Ok(())
}

/// The check finds a circle through `use` groups, `super::` and an inline
/// module, and none between parents and children, in test code, comments
/// or strings.
#[test]
fn the_circle_check_finds_circles_and_only_circles() -> anyhow::Result<()> {
    const FILES: &str = r#"
=== Cargo.toml
[workspace]
members = ["a"]
=== a/Cargo.toml
[package]
name = "a"
=== a/src/lib.rs
mod x; mod y; pub mod p; #[cfg(test)] mod tests;
mod inner {
    pub(crate) use super::y::Y;
}
pub struct Root;
=== a/src/x.rs
use crate::{p::P, y::{self as why, Y}};
/// Not [`crate::x::X`] nor [`crate::p::c::C`].
const S: &str = "crate::p::c::C"; const Q: char = '\'';
=== a/src/y.rs
fn f() { let _ = super::inner::Y; }
=== a/src/p.rs
pub mod c; pub struct P(crate::Root); #[cfg(test)] fn t(x: crate::x::X) {}
=== a/src/p/c.rs
use super::P; use super::super::Root;
=== a/src/tests.rs
use crate::p::c::C; use crate::x::X;
"#;
    let dir = tempfile::tempdir()?;
    for file in FILES.split("\n=== ").skip(1) {
        let (path, text) = file.split_once('\n').expect("a file's name, then its text");
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().expect("a directory"))?;
        std::fs::write(path, text)?;
    }
    let circles = import_circles(dir.path())?;
    let lines: Vec<&str> = circles.iter().flat_map(|c| c.lines()).collect();
    assert_eq!(circles.len(), 1, "{lines:#?}");
    assert_eq!(lines[0], "a (src/lib.rs): inner, y");
    assert!(lines[1].ends_with("inner -> y   a/src/lib.rs:3: pub(crate) use super::y::Y;"));
    assert!(lines[2].ends_with("y -> inner   a/src/y.rs:1: fn f() { let _ = super::inner::Y; }"));
    assert_eq!(lines.len(), 3, "{lines:#?}");
    Ok(())
}
