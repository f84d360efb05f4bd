//! Some tests need a program beside the server: the metrics-format and
//! deploy tests run `promtool` (Debian package `prometheus`), the `top`
//! test a real terminal (`tmux`), one deploy test `kubectl kustomize`
//! (not in Debian's packages). Each is compiled as ignored unless its
//! program is on PATH when this crate is built; `.ci/run` installs
//! promtool and tmux first.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_promtool)");
    println!("cargo::rustc-check-cfg=cfg(has_tmux)");
    println!("cargo::rustc-check-cfg=cfg(has_kubectl)");
    println!("cargo::rerun-if-env-changed=PATH");
    // Installing a program changes its directory's mtime: without these,
    // a crate built before `apt-get install prometheus` keeps its tests
    // compiled as ignored until something else rebuilds it.
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths).filter(|d| d.is_dir()) {
            println!("cargo::rerun-if-changed={}", dir.display());
        }
    }
    let on_path = |program: &str| {
        std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join(program).is_file())
        })
    };
    if on_path("promtool") {
        println!("cargo::rustc-cfg=has_promtool");
    }
    if on_path("tmux") {
        println!("cargo::rustc-cfg=has_tmux");
    }
    if on_path("kubectl") {
        println!("cargo::rustc-cfg=has_kubectl");
    }
}
