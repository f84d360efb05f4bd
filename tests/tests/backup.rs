//! Backup and restore (the operations issue, item 7): a backup taken
//! through the CLI while devices stream restores into a data directory
//! that verifies, and holds every batch the tables held before it began.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use crate::crash::loadgen_args;
use crate::process::{SERVER_BIN, ServeOpts, ServerProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_and_verifies() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let opts = ServeOpts::new(&dir.path().join("data"), &dir.path().join("serve.log"), 2)?;
    let server = ServerProcess::start(&opts)?;
    let args = loadgen_args(&opts, &dir.path().join("acked.json"), 40_000, 8_000, 31)?;
    let load = tokio::spawn(tillstream_loadgen::run::run(args));

    // Mid-stream: what the tables hold now is the floor of the backup.
    // An ack waits for the journal, not the tables, which the flusher
    // writes a flush interval or more later (longer on a loaded CI box):
    // the floor is taken once they hold a watermark.
    let acked = tokio::task::block_in_place(|| server.wait_acked(100, Duration::from_secs(60)));
    anyhow::ensure!(acked.is_some(), "no batch acknowledged within 60 s");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let floor = loop {
        let (status, body) = server.get("/v1/watermarks")?;
        anyhow::ensure!(status == 200, "/v1/watermarks answered {status}: {body}");
        let floor = marks(&body)?;
        if !floor.is_empty() {
            break floor;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the tables held no watermark 30 s after 100 acknowledged batches"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let key = opts.data_dir.join(tillstream_auth::token::SIGNING_KEY);
    let admin = tillstream_tests::Tokens::from_key(&key)?.api(tillstream_auth::Role::Admin)?;
    let backup = dir.path().join("backup");
    let out = Command::new(SERVER_BIN)
        .arg("backup")
        .arg(&backup)
        .args(["--server-http", &opts.http_url(), "--api-token", &admin])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "backup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert!(info["keys"].as_u64().is_some_and(|k| k > 0), "{info}");

    let report = load.await??;
    assert!(report.ok, "{:?}", report.failures);
    let (status, _) = server.terminate(Duration::from_secs(30))?;
    assert!(status.success());

    // Restored into a fresh data directory, it verifies.
    let restored = dir.path().join("restored");
    let out = restore(&backup, &restored)?;
    let said: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| anyhow::anyhow!("restore: {e}: {}", String::from_utf8_lossy(&out.stderr)))?;
    assert!(out.status.success(), "{said}");
    assert_eq!(said["verify"]["ok"], true, "{said}");
    assert_eq!(said["verify"]["duplicates"], 0, "{said}");
    assert!(
        said["verify"]["events"].as_u64().is_some_and(|n| n > 0),
        "{said}"
    );

    // Every device's batches the tables held before the backup are there.
    let out = Command::new(SERVER_BIN)
        .args(["query", "--format", "json", "--data-dir"])
        .arg(&restored)
        .arg("watermarks")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copy = marks(&String::from_utf8_lossy(&out.stdout))?;
    for (device, seq) in &floor {
        let kept = copy.get(device).copied().unwrap_or(0);
        assert!(
            kept >= *seq,
            "device {device}: {kept} in the copy, {seq} before the backup"
        );
    }

    // A second restore into the same directory is refused, not merged.
    let out = restore(&backup, &restored)?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    // With its journal on another disk, as `serve --journal-dir` puts it:
    // the same events, and the journal where it was told.
    let journal = dir.path().join("journal-disk/wal");
    let out = Command::new(SERVER_BIN)
        .arg("restore")
        .arg(&backup)
        .arg("--data-dir")
        .arg(dir.path().join("restored-placed"))
        .arg("--journal-dir")
        .arg(&journal)
        .output()?;
    let placed: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| anyhow::anyhow!("restore: {e}: {}", String::from_utf8_lossy(&out.stderr)))?;
    assert!(out.status.success(), "{placed}");
    assert_eq!(
        placed["verify"]["events"], said["verify"]["events"],
        "{placed}"
    );
    assert_eq!(placed["verify"]["ok"], true, "{placed}");
    assert_eq!(
        placed["journal"].as_str().map(std::path::PathBuf::from),
        Some(std::fs::canonicalize(&journal)?)
    );
    Ok(())
}

/// `{device: seq}` from a JSON array of watermark rows.
fn marks(json: &str) -> anyhow::Result<HashMap<u64, u64>> {
    let rows: Vec<serde_json::Value> = serde_json::from_str(json)?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some((
                tillstream_storage::json::id_of(&r["device"])?,
                r["seq"].as_u64()?,
            ))
        })
        .collect())
}

/// `tillstream restore BACKUP --data-dir INTO`, its output.
fn restore(
    backup: &std::path::Path,
    into: &std::path::Path,
) -> anyhow::Result<std::process::Output> {
    Ok(Command::new(SERVER_BIN)
        .arg("restore")
        .arg(backup)
        .arg("--data-dir")
        .arg(into)
        .output()?)
}
