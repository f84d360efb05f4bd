//! The durability step of a commit (fjall's `fdatasync`), and the fault
//! that makes it fail for the full-disk and fsync-failure tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fjall::{Database, PersistMode};

use tillstream_journal::SyncFault;

/// The durability step of a commit, behind a trait so fault tests can make
/// it fail.
pub(super) trait Durability: Send + Sync {
    /// Makes every written batch durable.
    fn sync(&self, db: &Database) -> Result<(), String>;
}

/// `fdatasync` of fjall's journal.
pub(super) struct Fsync;

impl Durability for Fsync {
    fn sync(&self, db: &Database) -> Result<(), String> {
        db.persist(PersistMode::SyncData)
            .map_err(|e| e.to_string())?;
        // fjall poisons itself when one of its background journal syncs
        // fails, but only after releasing the journal lock; a sync of ours
        // in between can succeed on a file whose earlier writeback failed.
        // Asking again (a no-op flush that first checks the poison flag)
        // narrows that window; closing it needs a fix in fjall.
        db.persist(PersistMode::Buffer).map_err(|e| e.to_string())
    }
}

/// Fault injection: the next `ok_left` syncs are real, every later one
/// fails without syncing. Shared by the tables and the journal: a sync of
/// either spends one.
#[derive(Debug, Clone)]
pub(super) struct FailAfter {
    pub(super) ok_left: Arc<AtomicU64>,
}

impl FailAfter {
    fn take(&self) -> Result<(), String> {
        self.ok_left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .map(|_| ())
            .map_err(|_| "injected sync failure".to_owned())
    }
}

impl Durability for FailAfter {
    fn sync(&self, db: &Database) -> Result<(), String> {
        self.take()?;
        Fsync.sync(db)
    }
}

impl SyncFault for FailAfter {
    fn before_sync(&self) -> std::io::Result<()> {
        self.take().map_err(std::io::Error::other)
    }
}
