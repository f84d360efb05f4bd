//! Docs that cannot rot, checked offline: every relative link of the
//! repository's markdown (the book in `docs/`, `README.md`,
//! `ARCHITECTURE.md`, `protocol/FORMAT.md`, every other `*.md` outside
//! `target/`) names a file or directory that exists, and every `#anchor` a
//! heading of its page (the anchors GitHub and mdBook give headings); every
//! page of the book is in its `SUMMARY.md`; every code block names its
//! language (rustdoc compiles an untagged block as Rust: `build.rs` hands
//! these pages to the doc tests); and the book's command-line reference is
//! what the code generates. External (`http`, `https`, `mailto`) links are
//! not fetched.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::process::SERVER_BIN;

mod markdown;
use markdown::{Page, broken_links, is_external, normalized, percent_decoded, relative};

/// The repository's root (this package is `tests/` in it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Every markdown file of the repository, outside build output (`target/`),
/// dependencies (`node_modules/`) and hidden directories (`.git/`).
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if name != "target" && name != "node_modules" {
                    walk(&path, out);
                }
            } else if name.ends_with(".md") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root(), &mut files);
    files.sort();
    files
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let files = markdown_files();
    for must in [
        "README.md",
        "ARCHITECTURE.md",
        "docs/SUMMARY.md",
        "protocol/FORMAT.md",
    ] {
        assert!(
            files.contains(&root().join(must)),
            "{must} is not among the pages checked"
        );
    }
    let pages: Vec<Page> = files.iter().map(|f| Page::read(f)).collect();
    let broken = broken_links(&pages);
    assert!(
        broken.is_empty(),
        "{} broken link(s) in the markdown of the repository:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn every_page_of_the_book_is_in_its_summary() {
    let docs = root().join("docs");
    let summary = Page::read(&docs.join("SUMMARY.md"));
    let linked: BTreeSet<PathBuf> = summary
        .links()
        .into_iter()
        .filter(|(_, d)| !d.is_empty() && !is_external(d))
        .filter_map(|(_, d)| {
            let path = d.split('#').next().unwrap_or("").to_owned();
            normalized(&docs.join(percent_decoded(&path)))
        })
        .collect();
    let missing: Vec<String> = markdown_files()
        .into_iter()
        .filter(|f| f.starts_with(&docs) && !f.ends_with("docs/SUMMARY.md"))
        .filter(|f| !linked.contains(f))
        .map(|f| relative(&f))
        .collect();
    assert!(
        missing.is_empty(),
        "{} page(s) of the book not linked from docs/SUMMARY.md (mdBook leaves them out of the book):\n{}",
        missing.len(),
        missing.join("\n")
    );
}

#[test]
fn every_code_block_names_its_language() {
    let mut untagged = Vec::new();
    for file in markdown_files() {
        let page = Page::read(&file);
        for line in &page.lines {
            if line.fence_info.as_deref() == Some("") {
                untagged.push(format!("{}:{}", page.name(), line.number));
            }
        }
    }
    assert!(
        untagged.is_empty(),
        "{} code block(s) without a language: tag each (rust, sh, console, text, toml, cql, json...); \
         rustdoc compiles an untagged block as Rust:\n{}",
        untagged.len(),
        untagged.join("\n")
    );
}

/// `build.rs` lists the pages whose Rust blocks run as doc tests, and
/// reruns only when a page it listed changes: a page that has just gained
/// its first Rust block must make it run again.
#[test]
fn every_page_with_rust_blocks_is_a_doc_test() {
    let listed = include_str!(concat!(env!("OUT_DIR"), "/doc_examples.rs"));
    let missing: Vec<String> = markdown_files()
        .into_iter()
        .filter(|f| {
            Page::read(f).lines.iter().any(|l| {
                l.fence_info
                    .as_deref()
                    .is_some_and(|i| i.starts_with("rust"))
            })
        })
        .filter(|f| !listed.contains(&format!("{:?}", f.display().to_string())))
        .map(|f| relative(&f))
        .collect();
    assert!(
        missing.is_empty(),
        "pages with ```rust blocks that the doc tests do not compile yet (a build from \
         before they had one): run `touch tests/build.rs` and test again:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_cli_reference_is_what_the_code_generates() {
    let output = std::process::Command::new(SERVER_BIN)
        .arg("cli-reference")
        .output()
        .expect("running tillstream cli-reference");
    assert!(
        output.status.success(),
        "tillstream cli-reference failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let generated = String::from_utf8(output.stdout).expect("the reference is UTF-8");
    let path = root().join("docs/reference/cli.md");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "docs/reference/cli.md is not what the code generates (first difference at line {}: {:?} in the file, {:?} generated); \
             regenerate it: cargo run -p tillstream-ops -- cli-reference > docs/reference/cli.md",
            first + 1,
            committed.lines().nth(first).unwrap_or("<end of file>"),
            generated.lines().nth(first).unwrap_or("<end of output>"),
        );
    }
}
