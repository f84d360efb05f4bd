//! Some tests need a program beside the server: the metrics-format and
//! deploy tests run `promtool` (Debian package `prometheus`), the `top`
//! test a real terminal (`tmux`), one deploy test `kubectl kustomize`
//! (not in Debian's packages), the analytics test `cqlsh` (PyPI). Each is
//! compiled as ignored unless its program is on PATH when this crate is
//! built; `.ci/run` installs promtool, tmux and cqlsh first. The contract
//! test runs schemathesis (PyPI) from the path in `TILLSTREAM_SCHEMATHESIS`
//! (`.ci/run` installs it in a virtualenv of its own, off PATH: this
//! machine's CPython 3.11.7 fails inside it).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_promtool)");
    println!("cargo::rustc-check-cfg=cfg(has_tmux)");
    println!("cargo::rustc-check-cfg=cfg(has_kubectl)");
    println!("cargo::rustc-check-cfg=cfg(has_cqlsh)");
    println!("cargo::rustc-check-cfg=cfg(cassandra_cluster)");
    println!("cargo::rustc-check-cfg=cfg(has_schemathesis)");
    println!("cargo::rerun-if-env-changed=TILLSTREAM_SCHEMATHESIS");
    if std::env::var_os("TILLSTREAM_SCHEMATHESIS")
        .is_some_and(|st| std::path::Path::new(&st).is_file())
    {
        println!("cargo::rustc-cfg=has_schemathesis");
    }
    println!("cargo::rerun-if-env-changed=PATH");
    // The cluster tests (`tests/cluster.rs`) kill the nodes of a
    // deploy/cassandra/run.sh cluster: its contact points and directory.
    println!("cargo::rerun-if-env-changed=TILLSTREAM_SCYLLA_NODES");
    println!("cargo::rerun-if-env-changed=TILLSTREAM_CASSANDRA_DIR");
    let set = |v: &str| std::env::var_os(v).is_some_and(|v| !v.is_empty());
    if set("TILLSTREAM_SCYLLA_NODES") && set("TILLSTREAM_CASSANDRA_DIR") {
        println!("cargo::rustc-cfg=cassandra_cluster");
    }
    let dirs: Vec<_> = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .filter(|d| d.is_dir())
                .collect()
        })
        .unwrap_or_default();
    // Installing a program changes its directory's mtime: without these,
    // a crate built before `apt-get install prometheus` keeps its tests
    // compiled as ignored until something else rebuilds it.
    for dir in &dirs {
        println!("cargo::rerun-if-changed={}", dir.display());
    }
    for (program, cfg) in [
        ("promtool", "has_promtool"),
        ("tmux", "has_tmux"),
        ("kubectl", "has_kubectl"),
        ("cqlsh", "has_cqlsh"),
    ] {
        if dirs.iter().any(|dir| dir.join(program).is_file()) {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
    doc_examples();
}

/// The markdown pages holding ```rust blocks, which `src/lib.rs` includes
/// as doc comments under `cfg(doctest)`, so that `cargo test` compiles and
/// runs each block against the workspace's crates (this package depends
/// on them): the book (`docs/`), README.md, ARCHITECTURE.md and every
/// other `*.md` of the repository outside `target/` and hidden
/// directories. Written to `$OUT_DIR/doc_examples.rs`, one item a page.
///
/// This reruns when a page listed changes, not on every edit of the docs
/// (each rerun rebuilds this package and the e2e binary): a page that
/// gains its first Rust block is caught by `tests/docs.rs`, which asks for
/// a `touch tests/build.rs`. A clean build (CI) always lists them all.
fn doc_examples() {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if name.starts_with('.') || name == "target" || name == "node_modules" {
                continue;
            }
            if kind.is_dir() {
                walk(&path, out);
            } else if name.ends_with(".md") {
                out.push(path);
            }
        }
    }
    let manifest = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let root = manifest.parent().expect("tests/ is in the repository");
    let mut pages = Vec::new();
    walk(root, &mut pages);
    pages.sort();
    let mut items = String::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap_or_default();
        if !text.lines().any(|l| {
            let t = l.trim_start();
            t.starts_with("```rust") || t.starts_with("~~~rust")
        }) {
            continue;
        }
        println!("cargo::rerun-if-changed={}", page.display());
        let relative = page
            .strip_prefix(root)
            .unwrap_or(page)
            .display()
            .to_string();
        let name: String = relative
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        items.push_str(&format!(
            "// {relative}\n#[doc = include_str!({path:?})]\n#[allow(non_camel_case_types)]\npub struct {name};\n\n",
            path = page.display().to_string(),
        ));
    }
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("doc_examples.rs"), items).expect("writing doc_examples.rs");
}
