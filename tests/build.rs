//! The metrics-format test runs `promtool` (Debian package `prometheus`):
//! compiled as ignored unless it is on PATH when this crate is built.
//! `.ci/run` installs it first.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_promtool)");
    println!("cargo::rerun-if-env-changed=PATH");
    let found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("promtool").is_file())
    });
    if found {
        println!("cargo::rustc-cfg=has_promtool");
    }
}
