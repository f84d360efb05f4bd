//! One module per subcommand.

pub(crate) mod credentials;
pub(crate) mod export;
pub(crate) mod query;
pub(crate) mod schema;
pub(crate) mod serve;
pub(crate) mod verify;

use std::path::Path;

use anyhow::Context;
use tillstream_storage::embedded::EmbeddedStore;

/// Opens the store of a data directory for reading. Fails with a hint when
/// a server holds it.
pub(crate) fn open_store(data_dir: &Path) -> anyhow::Result<EmbeddedStore> {
    let dir = data_dir.join("store");
    anyhow::ensure!(
        dir.exists(),
        "no store at {} (is --data-dir right? `tillstream serve` creates it)",
        dir.display()
    );
    let store = EmbeddedStore::open(&dir).with_context(|| {
        format!(
            "opening the store at {} (a running server holds it: stop it, or ask it over HTTP)",
            dir.display()
        )
    })?;
    // What was acknowledged but not yet in the tables when the server
    // stopped is in the journal: bring the tables up to it first.
    let replayed = tillstream_engine::recover(&store)
        .with_context(|| format!("replaying the journal of {}", dir.display()))?;
    if replayed.records > 0 {
        tracing::info!(
            records = replayed.records,
            events = replayed.events,
            "replayed the journal into the tables"
        );
    }
    Ok(store)
}
