//! The ScyllaDB conformance tests run only against a live cluster: they
//! are compiled as ignored unless `TILLSTREAM_SCYLLA_NODES` is set when
//! the crate is built (docs/operating/scylladb.md).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(scylla_cluster)");
    println!("cargo::rerun-if-env-changed=TILLSTREAM_SCYLLA_NODES");
    if std::env::var_os("TILLSTREAM_SCYLLA_NODES").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=scylla_cluster");
    }
}
