//! `tillstream backup` and `tillstream restore`: a consistent copy of the
//! embedded store, taken while the server runs, and a data directory made
//! from one.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tillstream_storage::Store;
use tillstream_storage::embedded::{EmbeddedStore, restore_files};
use tillstream_storage::verify::verify;

/// Copy the store into DIR, consistent as of one moment: the tables and
/// the journal records after their checkpoint. A running server writes
/// the copy itself (`--server-http`, an admin token; DIR is then a path on
/// its machine); a stopped one's data directory is copied directly.
/// Prints what was copied as JSON.
#[derive(Debug, clap::Args)]
pub(crate) struct BackupArgs {
    /// Where to write the copy: a new or empty directory.
    dir: PathBuf,
    /// The stopped server to copy, or the running one that writes the copy.
    #[command(flatten)]
    target: crate::api::AdminTarget,
}

/// Make a data directory's store from a backup: copy it in, replay its
/// journal into the tables, and verify the result. The data directory
/// must hold no store yet. Prints the verify report as JSON; exits 1 if it
/// does not hold.
#[derive(Debug, clap::Args)]
pub(crate) struct RestoreArgs {
    /// A directory `tillstream backup` wrote.
    dir: PathBuf,
    /// Data directory to restore into (its `store/` is created).
    #[arg(long, default_value = "./data", env = "TILLSTREAM_DATA_DIR")]
    data_dir: PathBuf,
    /// Put the restored store's journal in DIR (new or empty), on the
    /// journal's own disk, as `serve --journal-dir DIR` does: start the
    /// server with the same flag. Without it the journal is in
    /// `store/wal`, and moving it later means stopping the server
    #[arg(long, value_name = "DIR")]
    journal_dir: Option<PathBuf>,
}

pub(crate) fn run_backup(args: BackupArgs) -> anyhow::Result<ExitCode> {
    // A running server writes the copy where this command names it.
    let dir = std::path::absolute(&args.dir).unwrap_or(args.dir.clone());
    let info = match args
        .target
        .post("/v1/backup", &serde_json::json!({ "dir": dir }))?
    {
        Some(answer) => answer,
        None => {
            let store = super::open_embedded(&args.target.data_dir)?;
            let info = store
                .backup_to(&args.dir)
                .with_context(|| format!("backing up into {}", args.dir.display()))?;
            serde_json::to_value(info)?
        }
    };
    println!("{}", serde_json::to_string_pretty(&info)?);
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn run_restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let target = args.data_dir.join("store");
    let placed = restore_files(&args.dir, &target, args.journal_dir.as_deref())
        .with_context(|| format!("restoring {} into {}", args.dir.display(), target.display()))?;
    let store = EmbeddedStore::open(&target)
        .with_context(|| format!("opening the restored store {}", target.display()))?;
    let replayed = tillstream_engine::recover(&store).context("replaying the backup's journal")?;
    let report = verify(&store, None).context("verifying the restored store")?;
    let out = serde_json::json!({
        "store": target,
        "journal": placed.unwrap_or_else(|| target.join("wal")),
        "checkpoint": store.materialized_lsn()?,
        "replayed_records": replayed.records,
        "verify": report,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
