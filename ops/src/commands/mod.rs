//! One module per subcommand.

pub(crate) mod backup;
pub(crate) mod catalog;
pub(crate) mod check_disk;
pub(crate) mod cluster;
pub(crate) mod config;
pub(crate) mod credentials;
pub(crate) mod export;
pub(crate) mod query;
pub(crate) mod schema;
pub(crate) mod serve;
pub(crate) mod store_args;
pub(crate) mod top;
pub(crate) mod tune;
pub(crate) mod verify;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use store_args::{StoreArgs, StoreKind};
use tillstream_embedded::EmbeddedStore;
use tillstream_storage::Backend;

/// Opens the store for reading: the embedded store of a data directory
/// (with a hint when a server holds it), brought up to its journal; or a
/// read-only connection to the cluster.
pub(crate) fn open_store(data_dir: &Path, args: &StoreArgs) -> anyhow::Result<Arc<dyn Backend>> {
    if args.kind() == StoreKind::Scylla {
        return open_cluster(data_dir, args);
    }
    Ok(Arc::new(open_embedded(data_dir)?))
}

/// The embedded store of a stopped server's data directory, brought up to
/// its journal.
pub(crate) fn open_embedded(data_dir: &Path) -> anyhow::Result<EmbeddedStore> {
    let dir = data_dir.join("store");
    anyhow::ensure!(
        dir.exists(),
        "no store at {} (is --data-dir right? `tillstream serve` creates it)",
        dir.display()
    );
    // The store's error says why it would not open: held by a server, no
    // write access, ...
    let store = EmbeddedStore::open(&dir)?;
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

/// A read-only connection to the cluster. It does not replay the journal:
/// a live server may be writing it. What the journals of every node id
/// hold past their checkpoints is said, since the tables do not hold it
/// yet.
fn open_cluster(data_dir: &Path, args: &StoreArgs) -> anyhow::Result<Arc<dyn Backend>> {
    let choice = args.reader()?;
    let store = tillstream_engine::open_backend(&choice, data_dir, None, None)
        .context("connecting to ScyllaDB")?;
    for t in store.trailing_journals()? {
        tracing::warn!(
            node_id = %t.writer,
            tables_lsn = t.tables_lsn,
            journal_lsn = t.journal_lsn,
            "the journal of node id {} holds acknowledged records the tables do not yet (LSNs {} to {}): a running server writes them within its flush interval, a stopped one when it starts",
            t.writer,
            t.tables_lsn + 1,
            t.journal_lsn
        );
    }
    Ok(store)
}
