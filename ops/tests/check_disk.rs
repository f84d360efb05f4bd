//! `tillstream check-disk` as an operator runs it, on the test's disk.

mod common;

use common::run;

/// `check-disk` appends to a real scratch journal on the test's disk,
/// reports what it measured, and leaves the data directory as it found
/// it: removed again where it made it, without its scratch journal where
/// it existed. A data directory that is a file is a clear error.
#[test]
fn check_disk_measures_appends_and_leaves_nothing_behind() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let fresh = dir.path().join("fresh/data");
    let json = dir.path().join("disk.json");
    let args = ["check-disk", "--seconds", "1", "--interval-ms", "0"];
    let report = json.to_str().ok_or_else(|| anyhow::anyhow!("path"))?;
    let (code, out, err) = run(&[&args[..], &["--report", report]].concat(), &fresh)?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("append latency ms: p50"), "{out}");
    assert!(
        !dir.path().join("fresh").exists(),
        "the directories it made are removed"
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    let num = |k: &str| {
        r[k].as_f64()
            .ok_or_else(|| anyhow::anyhow!("no {k} in {r}"))
    };
    assert!(num("appends")? >= 1.0, "{r}");
    assert!(num("p50_ms")? > 0.0, "an fdatasync takes time: {r}");
    assert!(
        num("p50_ms")? <= num("p99_ms")? && num("p99_ms")? <= num("max_ms")?,
        "{r}"
    );
    assert!(num("stalls")? <= num("over_50ms")? && num("over_50ms")? <= num("over_10ms")?);

    let kept = dir.path().join("kept");
    std::fs::create_dir(&kept)?;
    std::fs::write(kept.join("mine"), b"x")?;
    let (code, out, err) = run(&args, &kept)?;
    assert_eq!(code, 0, "{out}{err}");
    let left: Vec<_> = std::fs::read_dir(&kept)?.collect::<Result<_, _>>()?;
    assert_eq!(left.len(), 1, "only the file that was there: {left:?}");

    // A data directory whose journal is on another disk: said.
    let journal = dir.path().join("fast");
    std::fs::create_dir_all(kept.join("store"))?;
    std::fs::create_dir(&journal)?;
    std::os::unix::fs::symlink(&journal, kept.join("store/wal"))?;
    let (code, out, err) = run(&args, &kept)?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("journal is in"), "{out}");
    assert!(out.contains("fast (serve --journal-dir)"), "{out}");

    let (code, _, err) = run(&args, &kept.join("mine"))?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("mine is not a directory"), "{err}");
    Ok(())
}
