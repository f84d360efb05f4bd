//! The errors the embedded store makes of what fjall and the file system
//! say, with the store's directory and what to do.

use std::fmt;
use std::path::Path;

use tillstream_storage::store::StoreError;

pub(crate) fn open_err(dir: &Path, e: impl fmt::Display) -> StoreError {
    StoreError::Open {
        path: dir.display().to_string(),
        reason: e.to_string(),
    }
}

/// Why a user without write access cannot read the store, and what to
/// do: the embedded engine (fjall) has no read-only mode (it takes a lock
/// file and recovers its own journal on open), and a reader first brings
/// the tables up to tillstream's journal, so every reader writes.
pub(crate) fn no_write_access(dir: &Path, io: &std::io::Error) -> String {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(dir).map_or_else(
        |_| "its owner".to_owned(),
        |m| format!("its owner (uid {})", m.uid()),
    );
    format!(
        "{io}: opening the embedded store writes to it (a lock file, and the journal replayed into the tables), so reading it needs write access to {} and everything in it; run as {owner}, or ask the running server over HTTP (--server-http)",
        dir.display()
    )
}

pub(crate) fn backend_err(op: &'static str, e: fjall::Error) -> StoreError {
    StoreError::Backend {
        op,
        source: Box::new(e),
    }
}
