//! Fault injection, for the reliability tests and for operators who
//! rehearse incidents: a store whose fsync fails, durable writes made
//! slow, and a hook that wraps the store in anything a test needs (a power
//! cut, say). The faults sit on the journal append: the durable step every
//! acknowledgement waits for. None of it is on unless asked for.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tillstream_journal::JournalRecords;
use tillstream_storage::rows::{RowSet, StockLevelRow, TerminalRollupRow};
use tillstream_storage::{CommitInfo, ReplayVisitor, Store, StoreError, WindowMovement};

/// A function from the store to a store wrapping it.
pub type WrapStore = dyn Fn(Arc<dyn Store>) -> Arc<dyn Store> + Send + Sync;

/// Wraps the store the engine writes through.
#[derive(Clone)]
pub struct StoreLayer(pub Arc<WrapStore>);

impl std::fmt::Debug for StoreLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreLayer(..)")
    }
}

/// The faults to inject; the default injects none.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// The store's fsync fails after this many successful ones.
    pub fail_sync_after: Option<u64>,
    /// Every journal group commit first sleeps for a time drawn uniformly
    /// from this range: slow or overloaded storage.
    pub commit_delay: Option<(Duration, Duration)>,
    /// Wraps the store (outermost, around the commit delay).
    pub store_layer: Option<StoreLayer>,
}

impl Faults {
    /// The store the engine should write through.
    pub(crate) fn wrap(&self, store: Arc<dyn Store>) -> Arc<dyn Store> {
        let store = match self.commit_delay {
            Some((min, max)) => Arc::new(FaultyStore::new(store, CommitDelay::new(min, max))),
            None => store,
        };
        match &self.store_layer {
            Some(layer) => (layer.0)(store),
            None => store,
        }
    }
}

/// A fault on the durable path (the journal append an ack waits for), or
/// on an activation's read; [`FaultyStore`] delegates everything else to
/// the store it wraps.
pub trait CommitFault: Send + Sync + std::fmt::Debug + 'static {
    /// Appends `records` (the engine's journal records, not yet encoded)
    /// to the journal of `inner`, or not, the faulty way. By default as
    /// they are: a fault of the reads alone.
    fn journal_append(
        &self,
        inner: &Arc<dyn Store>,
        records: &dyn JournalRecords,
        last_lsn: u64,
    ) -> Result<(), StoreError> {
        inner.journal_append_records(records, last_lsn)
    }

    /// Refuses writes when the fault says so (before asking `inner`):
    /// commits and materializations too, not only journal appends.
    fn check_writable(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Fails the read of `store`'s levels (an activation) when the fault
    /// says so, as an unreadable table would.
    fn load_levels(&self, store: u32) -> Result<(), StoreError> {
        let _ = store;
        Ok(())
    }

    /// Fails a read of the batch ledger (the check of an old resend) when
    /// the fault says so.
    fn ledger_digest(&self, device: u64, seq: u64) -> Result<(), StoreError> {
        let _ = (device, seq);
        Ok(())
    }
}

/// A store with a [`CommitFault`] in front of its commits.
#[derive(Debug)]
pub struct FaultyStore<F> {
    inner: Arc<dyn Store>,
    fault: F,
}

impl<F: CommitFault> FaultyStore<F> {
    /// `inner` behind `fault`.
    pub fn new(inner: Arc<dyn Store>, fault: F) -> Self {
        Self { inner, fault }
    }
}

/// Commits that take longer: each sleeps before it writes.
#[derive(Debug)]
pub struct CommitDelay {
    min: Duration,
    max: Duration,
    rng: Mutex<SmallRng>,
}

impl CommitDelay {
    /// A delay uniform in `[min, max]`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            rng: Mutex::new(SmallRng::seed_from_u64(0x5EED)),
        }
    }
}

impl CommitFault for CommitDelay {
    fn journal_append(
        &self,
        inner: &Arc<dyn Store>,
        records: &dyn JournalRecords,
        last_lsn: u64,
    ) -> Result<(), StoreError> {
        let delay = self.rng.lock().random_range(self.min..=self.max);
        std::thread::sleep(delay);
        inner.journal_append_records(records, last_lsn)
    }
}

impl<F: CommitFault> Store for FaultyStore<F> {
    fn commit(&self, rows: &RowSet) -> Result<CommitInfo, StoreError> {
        self.fault.check_writable()?;
        self.inner.commit(rows)
    }

    /// An append of encoded records is not the engine's (the sequencer
    /// appends them unencoded): the fault only says whether to write.
    fn journal_append(&self, records: &[u8], last_lsn: u64) -> Result<(), StoreError> {
        self.fault.check_writable()?;
        self.inner.journal_append(records, last_lsn)
    }

    fn journal_append_records(
        &self,
        records: &dyn JournalRecords,
        last_lsn: u64,
    ) -> Result<(), StoreError> {
        self.fault.journal_append(&self.inner, records, last_lsn)
    }

    fn journal_last_lsn(&self) -> u64 {
        self.inner.journal_last_lsn()
    }

    fn journal_replay(&self, after: u64, f: &mut ReplayVisitor<'_>) -> Result<u64, StoreError> {
        self.inner.journal_replay(after, f)
    }

    fn materialize(&self, parts: &[RowSet], lsn: u64) -> Result<CommitInfo, StoreError> {
        self.fault.check_writable()?;
        self.inner.materialize(parts, lsn)
    }

    fn materialized_lsn(&self) -> Result<u64, StoreError> {
        self.inner.materialized_lsn()
    }

    fn sync_materialized(&self) -> Result<u64, StoreError> {
        self.fault.check_writable()?;
        self.inner.sync_materialized()
    }

    fn watermark(&self, device: u64) -> Result<u64, StoreError> {
        self.inner.watermark(device)
    }

    fn load_levels(&self, store: u32) -> Result<Vec<StockLevelRow>, StoreError> {
        self.fault.load_levels(store)?;
        self.inner.load_levels(store)
    }

    fn ledger_digest(&self, device: u64, seq: u64) -> Result<Option<u64>, StoreError> {
        self.fault.ledger_digest(device, seq)?;
        self.inner.ledger_digest(device, seq)
    }

    fn load_movements(
        &self,
        store: u32,
        windows: &[(i64, i64)],
    ) -> Result<Vec<WindowMovement>, StoreError> {
        self.inner.load_movements(store, windows)
    }

    fn load_rollups(&self, store: u32, day: u32) -> Result<Vec<TerminalRollupRow>, StoreError> {
        self.inner.load_rollups(store, day)
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        self.fault.check_writable()?;
        self.inner.check_writable()
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn read_parallelism(&self) -> usize {
        self.inner.read_parallelism()
    }

    fn put_catalog(
        &self,
        catalog: &tillstream_storage::catalog::Catalog,
    ) -> Result<(), StoreError> {
        self.inner.put_catalog(catalog)
    }
}
