//! `tillstream backup` and `tillstream restore`: a consistent copy of the
//! embedded store, taken while the server runs, and a data directory made
//! from one.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tillstream_embedded::{EmbeddedStore, restore_files};
use tillstream_engine::{CredentialSources, CredentialsRestore, plan_restore, write_backup};
use tillstream_storage::Store;
use tillstream_storage::verify::verify;

/// Copy the store into DIR, consistent as of one moment: the tables and
/// the journal records after their checkpoint; and, in DIR/credentials
/// (files mode 0600), what a restore needs to be the same server to its
/// devices: the token signing key, the TLS pair, the device CA and the
/// revocation list. A running server writes the copy itself
/// (`--server-http`, an admin token; DIR is then a path on its machine);
/// a stopped one's data directory is copied directly. Prints what was
/// copied as JSON.
#[derive(Debug, clap::Args)]
pub(crate) struct BackupArgs {
    /// Where to write the copy: a new or empty directory.
    dir: PathBuf,
    /// The stopped server to copy, or the running one that writes the copy.
    #[command(flatten)]
    target: crate::api::AdminTarget,
    /// Leave the credentials out (the signing key, TLS pair, device CA and
    /// revocation list, of which the keys are secret): a server restored
    /// from the backup then makes a new signing key and TLS certificate,
    /// and the tokens and certificates devices hold stop working. For when
    /// they are kept elsewhere.
    #[arg(long)]
    no_credentials: bool,
    /// The TLS certificate of a stopped server that `serve --tls-cert`
    /// named outside its data directory (a running server backs up the
    /// pair it uses) [default: DATA_DIR/tls/cert.pem].
    #[arg(long, requires = "tls_key", env = "TILLSTREAM_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Its private key, as `serve --tls-key` named it.
    #[arg(long, requires = "tls_cert", env = "TILLSTREAM_TLS_KEY")]
    tls_key: Option<PathBuf>,
}

/// Make a data directory from a backup: copy its store in, replay its
/// journal into the tables, and verify the result; put its credentials
/// where `serve` reads them (DATA_DIR/auth, DATA_DIR/tls; mode 0600),
/// never over different ones already there. The data directory must hold
/// no store yet. Prints what was restored and the verify report as JSON;
/// exits 1 if it does not hold.
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
    // A running server writes the copy where this command names it, with
    // the credentials it uses (it knows their paths).
    let dir = std::path::absolute(&args.dir).unwrap_or(args.dir.clone());
    let body = serde_json::json!({ "dir": dir, "credentials": !args.no_credentials });
    if args.target.server_http.is_some() && args.tls_cert.is_some() {
        crate::logging::say(
            "--tls-cert/--tls-key (or TILLSTREAM_TLS_*) name a stopped server's pair: the running server backs up the pair it uses",
        );
    }
    let info = match args.target.post("/v1/backup", &body)? {
        Some(answer) => answer,
        None => {
            let store = super::open_embedded(&args.target.data_dir)?;
            let sources = CredentialSources {
                data_dir: args.target.data_dir.clone(),
                tls: args.tls_cert.zip(args.tls_key),
            };
            let report = write_backup(
                &store,
                &args.dir,
                (!args.no_credentials).then_some(&sources),
            )
            .with_context(|| format!("backing up into {}", args.dir.display()))?;
            serde_json::to_value(report)?
        }
    };
    let credentials = &info["credentials"];
    match credentials["included"].as_bool() {
        Some(true) => {
            let copied = credentials["files"].as_array().map_or(0, Vec::len);
            crate::logging::say(format!(
                "{copied} credential files copied into {}: the private keys in it sign device tokens; keep the backup as private as the data directory",
                credentials["dir"].as_str().unwrap_or("credentials/")
            ));
        }
        Some(false) => crate::logging::say(format!(
            "credentials {}",
            credentials["note"].as_str().unwrap_or("left out")
        )),
        // A server older than credentials in backups answered.
        None => crate::logging::say(
            "the server did not back up its credentials (it predates them): copy its data directory's auth/ and tls/ beside the backup",
        ),
    }
    crate::outln!("{}", serde_json::to_string_pretty(&info)?)?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn run_restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let target = args.data_dir.join("store");
    // Checked before the store is made: a credential in the way refuses
    // the restore while nothing is written yet.
    let credentials = plan_restore(&args.dir, &args.data_dir).with_context(|| {
        format!(
            "restoring the credentials of {} into {}",
            args.dir.display(),
            args.data_dir.display()
        )
    })?;
    let placed = restore_files(&args.dir, &target, args.journal_dir.as_deref())
        .with_context(|| format!("restoring {} into {}", args.dir.display(), target.display()))?;
    let credentials = credentials.apply().with_context(|| {
        format!(
            "the store is restored in {}, but not the credentials",
            target.display()
        )
    })?;
    say_restored(&credentials);
    let store = EmbeddedStore::open(&target)
        .with_context(|| format!("opening the restored store {}", target.display()))?;
    let replayed = tillstream_engine::recover(&store).context("replaying the backup's journal")?;
    let report = verify(&store, None).context("verifying the restored store")?;
    let out = serde_json::json!({
        "store": target,
        "journal": placed.unwrap_or_else(|| target.join("wal")),
        "checkpoint": store.materialized_lsn()?,
        "replayed_records": replayed.records,
        "credentials": credentials,
        "verify": report,
    });
    crate::outln!("{}", serde_json::to_string_pretty(&out)?)?;
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Says on stderr what the restore did with the credentials.
fn say_restored(credentials: &CredentialsRestore) {
    for c in &credentials.restored {
        let how = if c.already_there {
            "already there"
        } else {
            "restored"
        };
        crate::logging::say(format!("{} {how}: {}", c.name, c.file.display()));
        if let Some(note) = &c.note {
            crate::logging::say(format!("  {note}"));
        }
    }
    crate::logging::say(&credentials.note);
}
