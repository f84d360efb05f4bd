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
}
