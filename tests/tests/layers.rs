//! The dependency rule of ARCHITECTURE.md, checked mechanically: the crates that
//! hold the decisions and the wire contract pull in no runtime, socket or
//! disk crate, and no internal crate they must not know.

use std::process::Command;

/// Normal (non-dev) dependencies of a workspace crate, by name.
fn deps(krate: &str) -> anyhow::Result<Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree", "-p", krate, "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

fn assert_free_of(krate: &str, banned: &[&str]) -> anyhow::Result<()> {
    let found = deps(krate)?;
    let bad: Vec<&String> = found
        .iter()
        .filter(|d| banned.contains(&d.as_str()))
        .collect();
    assert!(bad.is_empty(), "{krate} must not depend on {bad:?}");
    Ok(())
}

#[test]
fn engine_core_does_no_io() -> anyhow::Result<()> {
    assert_free_of(
        "tillstream-engine-core",
        &[
            "tokio",
            "quinn",
            "ractor",
            "fjall",
            "scylla",
            "tillstream-engine",
            "socket2",
            "mio",
        ],
    )
}

#[test]
fn protocol_depends_on_nothing_internal_and_no_runtime() -> anyhow::Result<()> {
    assert_free_of(
        "tillstream-protocol",
        &[
            "tokio",
            "quinn",
            "ractor",
            "fjall",
            "tillstream-storage",
            "tillstream-engine-core",
            "tillstream-engine",
        ],
    )
}

#[test]
fn storage_depends_on_nothing_internal() -> anyhow::Result<()> {
    assert_free_of(
        "tillstream-storage",
        &[
            "tokio",
            "quinn",
            "ractor",
            "fjall",
            "scylla",
            "tillstream-protocol",
            "tillstream-engine-core",
            "tillstream-engine",
        ],
    )
}

/// The layers of ARCHITECTURE.md's code map, as the internal crates each
/// crate may reach (directly or through another): everything else of
/// ours is refused. A backend reaches the contract and the journal, never
/// the other backend or the engine; the contract reaches the journal
/// alone; the engine's core reaches the wire and the row types.
#[test]
fn each_crate_reaches_only_the_crates_below_it() -> anyhow::Result<()> {
    let rules: &[(&str, &[&str])] = &[
        ("tillstream-protocol", &[]),
        ("tillstream-socket", &[]),
        ("tillstream-journal", &[]),
        ("tillstream-auth", &[]),
        ("tillstream-storage", &["tillstream-journal"]),
        (
            "tillstream-embedded",
            &["tillstream-storage", "tillstream-journal"],
        ),
        (
            "tillstream-scylla",
            &["tillstream-storage", "tillstream-journal"],
        ),
        (
            "tillstream-engine-core",
            &[
                "tillstream-protocol",
                "tillstream-storage",
                "tillstream-journal",
            ],
        ),
        (
            "tillstream-client",
            &["tillstream-protocol", "tillstream-socket"],
        ),
    ];
    let mut broken = Vec::new();
    for (krate, allowed) in rules {
        for d in deps(krate)? {
            if d.starts_with("tillstream-") && d != *krate && !allowed.contains(&d.as_str()) {
                broken.push(format!("{krate} reaches {d}"));
            }
        }
    }
    assert!(broken.is_empty(), "crates across their layer: {broken:#?}");
    Ok(())
}

/// The server shares the devices' socket code, not the device client:
/// both depend on `tillstream-socket`, which knows no frame, message or
/// identity of tillstream's.
#[test]
fn the_engine_does_not_depend_on_the_device_client() -> anyhow::Result<()> {
    assert_free_of("tillstream-engine", &["tillstream-client"])?;
    assert_free_of(
        "tillstream-socket",
        &[
            "tillstream-protocol",
            "tillstream-client",
            "tillstream-engine",
            "tillstream-storage",
            "tillstream-auth",
        ],
    )?;
    assert!(
        deps("tillstream-engine")?
            .iter()
            .any(|d| d == "tillstream-socket"),
        "the engine reaches its socket code through tillstream-socket"
    );
    Ok(())
}
