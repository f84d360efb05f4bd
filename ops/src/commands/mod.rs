//! One module per subcommand.

pub(crate) mod query;
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
    EmbeddedStore::open(&dir).with_context(|| {
        format!(
            "opening the store at {} (a running server holds it: stop it, or ask it over HTTP)",
            dir.display()
        )
    })
}
