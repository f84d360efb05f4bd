//! The hook around the journal's data syncs, for fault tests.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// A hook around the journal's data syncs, for fault tests. The journal
/// calls [`before_sync`](SyncFault::before_sync) after writing a group and
/// before its `sync_data`; an Err fails (and poisons) that append as a
/// failed fsync would. Only the data syncs of appends go through the hook,
/// not the directory syncs nor those of open.
pub trait SyncFault: Send + Sync + std::fmt::Debug {
    /// Called before each data sync of an append.
    fn before_sync(&self) -> io::Result<()>;
}

/// The real sync: never fails on its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealSync;

impl SyncFault for RealSync {
    fn before_sync(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Lets `n` syncs through, then fails every later one.
#[derive(Debug)]
pub struct FailSyncAfter {
    allowed: u64,
    done: AtomicU64,
}

impl FailSyncAfter {
    /// `n` real syncs, then every sync fails.
    pub fn new(n: u64) -> Self {
        FailSyncAfter {
            allowed: n,
            done: AtomicU64::new(0),
        }
    }
}

impl SyncFault for FailSyncAfter {
    fn before_sync(&self) -> io::Result<()> {
        if self.done.fetch_add(1, Ordering::Relaxed) < self.allowed {
            Ok(())
        } else {
            Err(io::Error::other(
                "injected fdatasync failure (FailSyncAfter)",
            ))
        }
    }
}
