//! The `Store` trait: what the engine needs from a backend.

use crate::rows::{RowSet, StockLevelRow, StockMovementRow, TerminalRollupRow};
use tillstream_journal::{JournalRecords, encode_records};

/// Errors of a store. A store that failed to make data durable is
/// [`StoreError::Poisoned`] from then on: it refuses every further commit,
/// and the engine stops acknowledging. A failed fsync is never retried (the
/// kernel may have dropped the dirty pages it reported on).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An earlier write or sync failed; nothing more is accepted until the
    /// process restarts and recovers from what is on disk.
    #[error(
        "the store is poisoned after an earlier failed write or sync ({0}); restart to recover"
    )]
    Poisoned(String),
    /// The backend failed.
    #[error("{op} failed: {source}")]
    Backend {
        /// What was being done.
        op: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Stored bytes could not be decoded.
    #[error("corrupt {what} in the store: {reason}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The data directory could not be opened.
    #[error("cannot open the store at {path}: {reason}")]
    Open {
        /// The directory.
        path: String,
        /// Why.
        reason: String,
    },
}

/// What a commit did, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitInfo {
    /// Logical rows written.
    pub rows: usize,
    /// Physical records written (blocks and point keys).
    pub records: usize,
    /// Bytes written before compression.
    pub bytes: usize,
}

/// What a shard reads back to activate the SKUs of one store: their
/// current levels and the movements of their late window.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StoreSnapshot {
    /// Current level of every SKU of the store.
    pub levels: Vec<StockLevelRow>,
    /// The store's movements in the windows asked for that a late window
    /// keeps, in no particular order.
    pub recent_movements: Vec<WindowMovement>,
}

/// A stock movement as a SKU's late window keeps it: what activation reads
/// back of a `stock_movements` row, a third of its size. After a busy hour
/// a store's late window is millions of movements, and copying them whole
/// was a good part of a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WindowMovement {
    /// Product.
    pub sku: u64,
    /// Event time (UTC µs).
    pub ts_us: i64,
    /// Change in units.
    pub delta: i64,
}

impl WindowMovement {
    /// What a late window keeps of `row`: nothing of a movement a count
    /// saw first (not applied) or of a count's own correction row, whose
    /// change the count's level already holds.
    pub fn of(row: &StockMovementRow) -> Option<Self> {
        (row.applied && row.reason != crate::MovementReason::CountCorrection).then_some(Self {
            sku: row.sku,
            ts_us: row.ts_us,
            delta: row.delta,
        })
    }
}

/// A backend whole: what the engine writes through ([`Store`]) and what
/// tools and the HTTP API read through ([`Query`](crate::Query)). The
/// server holds one as `Arc<dyn Backend>`, whichever it is.
pub trait Backend: Store + crate::Query {}

impl<T: Store + crate::Query> Backend for T {}

/// What a backup copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BackupInfo {
    /// The checkpoint of the copied tables.
    pub checkpoint: u64,
    /// Journal records after it, copied to be replayed at open.
    pub journal_records: u64,
    /// Keys copied over all keyspaces.
    pub keys: u64,
    /// Bytes of keys and values copied.
    pub bytes: u64,
}

/// What [`Store::journal_replay`] calls for each record: `(lsn, payload)`.
pub type ReplayVisitor<'a> = dyn FnMut(u64, &[u8]) -> Result<(), StoreError> + 'a;

/// A storage backend. Methods block: the engine calls them from its
/// journal and materializer threads or from `spawn_blocking`, never on an
/// async worker.
///
/// The write path has two steps (ARCHITECTURE.md, "write path"):
/// - the **journal**: [`Store::journal_append`] makes encoded records
///   (validated device frames, opaque to the store) durable; an ack waits
///   for this and nothing else that touches the disk;
/// - the **tables**: [`Store::materialize`] writes the rows the engine
///   derived from the journal records up to an LSN, atomically with that
///   LSN (the checkpoint); [`Store::sync_materialized`] makes them durable
///   and lets the journal drop what the tables now hold. After a crash the
///   engine replays the journal after [`Store::materialized_lsn`].
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Writes every row of `rows` atomically and durably, and returns only
    /// once they are durable (fsynced, or acknowledged at the configured
    /// consistency). Either all rows of the call become visible after a
    /// crash or none do. Snapshot rows are upserts: stock levels keep the
    /// highest `version`, watermarks the highest `seq`. Leaves the
    /// checkpoint LSN as it is (tools and tests; the engine materializes).
    fn commit(&self, rows: &RowSet) -> Result<CommitInfo, StoreError>;

    /// Appends journal records (whole records, LSNs `journal_last_lsn()+1`
    /// up to `last_lsn`, encoded by `journal::encode_record`) and returns
    /// once they are durable. A failure poisons the store.
    fn journal_append(&self, records: &[u8], last_lsn: u64) -> Result<(), StoreError>;

    /// [`journal_append`](Store::journal_append) of records not yet
    /// encoded. A backend that writes the encoded bytes somewhere (the
    /// embedded store's segment files) encodes them once, where they are
    /// written; this default encodes them into a buffer first.
    fn journal_append_records(
        &self,
        records: &dyn JournalRecords,
        last_lsn: u64,
    ) -> Result<(), StoreError> {
        self.journal_append(&encode_records(records), last_lsn)
    }

    /// The LSN of the last durable journal record (or of the checkpoint,
    /// when the journal holds nothing after it).
    fn journal_last_lsn(&self) -> u64;

    /// Calls `f(lsn, payload)` for every journal record after `after`, in
    /// LSN order; returns how many it visited.
    fn journal_replay(&self, after: u64, f: &mut ReplayVisitor<'_>) -> Result<u64, StoreError>;

    /// Writes `parts`, the rows of every journal record after the current
    /// checkpoint up to `lsn` (in LSN order: the parts are one commit's
    /// rows as if concatenated, handed over without being copied into
    /// one), atomically with the new checkpoint `lsn`. Visible at once;
    /// durable after [`Store::sync_materialized`] (a crash before that
    /// rolls the tables back to an earlier checkpoint, whose later records
    /// the journal still holds).
    fn materialize(&self, parts: &[RowSet], lsn: u64) -> Result<CommitInfo, StoreError>;

    /// The checkpoint: every journal record up to it is in the tables.
    fn materialized_lsn(&self) -> Result<u64, StoreError>;

    /// Makes what was materialized durable, then drops the journal
    /// segments the durable checkpoint covers. Returns that checkpoint.
    fn sync_materialized(&self) -> Result<u64, StoreError>;

    /// The highest durable batch seq of a device (0 if none).
    fn watermark(&self, device: u64) -> Result<u64, StoreError>;

    /// Current level of every SKU of `store` (activation, step one).
    fn load_levels(&self, store: u32) -> Result<Vec<StockLevelRow>, StoreError>;

    /// The digest of batch `seq` of `device` in the batch ledger: `None`
    /// when the tables hold no such batch, `Some(0)` when its row predates
    /// digests ([`BatchRow::digest`](crate::BatchRow::digest)). A resend whose seq is not among the
    /// device's recent batches is checked against it: a seq below the
    /// watermark that was never stored, or stored with other bytes, is
    /// not a resend.
    fn ledger_digest(&self, device: u64, seq: u64) -> Result<Option<u64>, StoreError>;

    /// Stock movements of `store` stamped in any of `windows` (each
    /// `[from_us, to_us)`, sorted and disjoint) that a late window keeps
    /// ([`WindowMovement::of`]), in no particular order (activation, step
    /// two: the SKUs' late windows). Reading windows rather than everything
    /// since the oldest keeps one SKU with an ancient event from loading
    /// the store's whole history.
    fn load_movements(
        &self,
        store: u32,
        windows: &[(i64, i64)],
    ) -> Result<Vec<WindowMovement>, StoreError>;

    /// Terminal rollups of one store and day (activation of a terminal day).
    fn load_rollups(&self, store: u32, day: u32) -> Result<Vec<TerminalRollupRow>, StoreError>;

    /// Ok while the store accepts writes; the poison reason otherwise.
    fn check_writable(&self) -> Result<(), StoreError>;

    /// A short name of the backend (`embedded`, `scylla`).
    fn backend(&self) -> &'static str;

    /// How many activation reads (`load_*`) are worth running at once, as
    /// recovery does before a replay: the cores for a store on this
    /// machine, whose reads are CPU work; a networked store says more, as
    /// its reads mostly wait on round trips.
    fn read_parallelism(&self) -> usize {
        std::thread::available_parallelism().map_or(1, usize::from)
    }

    /// The backend's own counters (`tillstream_*` names, with units), for
    /// `/metrics` beside the engine's: the ScyllaDB driver's requests,
    /// errors, retries and latency. None by default.
    fn backend_metrics(&self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }

    /// Adds or replaces catalogue entries (products by SKU, stores by id),
    /// durably.
    fn put_catalog(&self, catalog: &crate::catalog::Catalog) -> Result<(), StoreError>;

    /// Copies the store, consistent as of one moment, into `dest` (a new
    /// or empty directory) while it keeps serving; the copy opens as a
    /// store of the same backend. Backends that cannot say so (a cluster
    /// has its own snapshots) refuse.
    fn backup_to(&self, dest: &std::path::Path) -> Result<BackupInfo, StoreError> {
        let _ = dest;
        Err(StoreError::Backend {
            op: "backup",
            source: format!(
                "the {} backend has no backup of its own: use the cluster's (nodetool snapshot)",
                self.backend()
            )
            .into(),
        })
    }
}
