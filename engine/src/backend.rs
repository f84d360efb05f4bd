//! Opening the backend a server or a tool reads and writes through.

use std::path::Path;
use std::sync::Arc;

use tillstream_embedded::EmbeddedStore;
use tillstream_scylla::ScyllaStore;
use tillstream_storage::{Backend, StoreError};

use crate::config::StoreChoice;

/// Opens `choice`: the embedded store under `data_dir/store`, its journal
/// placed in `journal_dir` if given (`serve --journal-dir`), or a
/// connection to the cluster. Blocks (call it from a blocking thread).
/// `fail_sync_after` is the embedded store's fault injection (the
/// full-disk and fsync-failure tests).
pub fn open_backend(
    choice: &StoreChoice,
    data_dir: &Path,
    journal_dir: Option<&Path>,
    fail_sync_after: Option<u64>,
) -> Result<Arc<dyn Backend>, StoreError> {
    Ok(match choice {
        StoreChoice::Embedded => {
            let dir = data_dir.join("store");
            Arc::new(match fail_sync_after {
                Some(n) => EmbeddedStore::open_with_failing_sync(&dir, n, journal_dir)?,
                None => EmbeddedStore::open_placed(&dir, journal_dir)?,
            })
        }
        StoreChoice::Scylla(cfg) => Arc::new(ScyllaStore::connect(cfg.clone())?),
    })
}
