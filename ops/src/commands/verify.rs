//! `tillstream verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tillstream_storage::verify::{ExpectedBatch, verify};

/// Check the invariants of the store: every acknowledged event stored
/// exactly once, each SKU's level equal to its latest count plus the
/// movements after it, each terminal's rollups equal to its sales. Prints
/// one JSON object; exits 0 when ok, 1 when not, 2 on errors. The server
/// must be stopped (it holds the store); a running server answers the same
/// check on POST /v1/verify.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Data directory of the server.
    #[arg(long, default_value = "./data", env = "TILLSTREAM_DATA_DIR")]
    data_dir: PathBuf,
    #[command(flatten)]
    store: super::store_args::StoreArgs,
    /// A JSON file with the batches a client had acknowledged
    /// (`[{"device":"1","seq":1,"events":128}, ...]`; a number is read too); each must be stored whole.
    #[arg(long)]
    expected: Option<PathBuf>,
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let store = super::open_store(&args.data_dir, &args.store)?;
    let expected: Option<Vec<ExpectedBatch>> = match &args.expected {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("parsing {}", p.display()))?,
            )
        }
        None => None,
    };
    if expected.is_some() {
        // Acknowledged batches still only in a journal would be counted
        // missing: that is no verdict on what was stored.
        let trailing = store.trailing_journals()?;
        if let Some(t) = trailing.first() {
            anyhow::bail!(
                "the tables trail the journal of node id {:?} (they hold LSNs up to {}, acknowledgements covered up to {}){}: those batches are acknowledged and durable, but not in the tables yet. Start the server with that node id (it writes them before it serves), or let the running one catch up, then verify again",
                t.writer,
                t.tables_lsn,
                t.journal_lsn,
                match trailing.len() {
                    1 => String::new(),
                    n => format!(", and {} more node ids", n - 1),
                }
            );
        }
    }
    let report = verify(&*store, expected.as_deref()).context("verifying the store")?;
    // Not println!, which panics when the reader has gone (`| head`).
    crate::print_all(format!("{}\n", serde_json::to_string_pretty(&report)?).as_bytes())?;
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
