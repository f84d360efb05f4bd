//! The embedded backend: the logical tables (storage/schema/) on one fjall
//! database, for single-machine deployments without a ScyllaDB cluster.
//!
//! # Physical layout
//!
//! Every integer in a key is big-endian, so byte order is numeric order.
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `blocks` | `table u8 \| part \| hour u32 \| commit u64` | a 20-byte pointer into the block log (`blocks/`, [`blocklog`]) to the block of all rows of that group one commit wrote, in the packed format (`packed`; an rkyv `Vec<Row>` in stores written before it, which the pointer's magic tells); or, in a backup or a store written before the log, that block inline as an rkyv `Vec<Row>` |
//! | `stock_levels` | `store u32 \| bucket u16 \| 01` | a packed block (`packed`) of the store's SKUs in that bucket (`keys::level_bucket`), sorted by SKU; without the `01`, the same block in rkyv, as data format 1 wrote it |
//! | `stock_levels` | `store u32 \| FF FF \| commit u64 \| 01` | a delta: a packed block of the store's levels that commit changed, sorted by SKU (without the `01`: rkyv, format 1); per SKU the highest `version` of all a store's values wins (`levels`) |
//! | `terminal_rollups` | `store u32 \| day u32 \| terminal u32 \| minute u16` | rkyv `TerminalRollupRow` (last write wins) |
//! | `device_watermarks` | `device u64` | rkyv `WatermarkRow` (highest `seq` wins) |
//! | `device_batches` | `device u64 \| seq u64` | rkyv `BatchRow` |
//! | `meta` | `last_commit` | the id of the last commit, u64 BE |
//! | `meta` | `blocklog_end` | where the block log ended with that commit (segment u32, offset u64, BE) |
//!
//! Beside fjall's files: `blocks/` (the block log), `wal/` (the journal)
//! and `FORMAT`, the directory's format version, checked before anything
//! else is opened ([`data_format`]).
//!
//! The `part` of a block key is the store (u32) for `sales`, `sale_lines`
//! and `stock_movements`, the device (u64) for `device_health` and
//! `rejected_events`, and absent for `dead_letters`; `hour` is
//! [`time::hour`](tillstream_storage::time::hour) of the rows' `ts_us`.
//!
//! Raw rows are packed (one key per row would cap the engine): a commit writes one
//! block per (table, part, hour) holding every row of that group, so a
//! flush of 256 sales with 3 lines writes a handful of values instead of
//! 1,792 keys. A prefix scan of `table | part` returns a partition's blocks
//! in hour order, and within an hour in commit order. Rows inside a block
//! keep the order the engine gave them (not sorted): readers that promise
//! an order sort what they return.
//!
//! The logical partitions stay those of the CQL schema: sales (store, day),
//! sale_lines (store, sku, day), stock_movements (store, sku, month). The
//! embedded store groups coarser, by (store, hour), so that blocks hold
//! many rows. The accepted trade-off: a query about one SKU
//! ([`Query::stock_history`](tillstream_storage::Query::stock_history)) reads every
//! movement block of its store in the time range and filters; activation
//! ([`Store::load_movements`]) wants the whole store anyway.
//!
//! `device_batches` are point keys rather than blocks: there is one per
//! device batch, not per event, so they cost little (measured on the
//! 2-core box: 16 ledger keys of a 256-sale commit take ≈35 µs, about 1%
//! of the commit), and a point key makes a rewritten ledger entry an
//! idempotent upsert.
//!
//! Stock levels were first one point key per SKU (≈1.5 µs each in fjall's
//! batch, most of a commit), then whole buckets rewritten when touched
//! (cost grew with the SKUs a store holds); they are now per-commit
//! deltas folded into the buckets every 24 commits (`levels`).
//!
//! # Invariants
//!
//! - Commits are serialized by `commit_lock`, which also holds the id of
//!   the next commit. Commit ids are strictly increasing; the id of each
//!   commit is written in the same atomic batch (`meta/last_commit`), and
//!   [`EmbeddedStore::open`] resumes at that id + 1.
//! - A commit first appends its raw-row blocks to the block log and
//!   fdatasyncs it, then writes the pointers in its batch: fjall never
//!   points at bytes a power cut can take, and at open the log is cut back
//!   to the `blocklog_end` the tables recorded ([`blocklog`]).
//! - A commit is one fjall `WriteBatch` (atomic across keyspaces); a
//!   [`Store::commit`] fsyncs it before returning, a
//!   [`Store::materialize`] does not (it carries the checkpoint LSN in the
//!   same batch, `meta/checkpoint`; [`Store::sync_materialized`] fsyncs
//!   later). A failed batch write or sync poisons the store for good: the
//!   sync is never retried, and every later write fails with
//!   [`StoreError::Poisoned`].
//! - The write-ahead journal (`wal/`, [`tillstream_journal`]) holds every
//!   record after the durable checkpoint: segments are deleted only once a
//!   sync made a checkpoint covering them durable. After a crash the tables
//!   may be back at an older checkpoint; the engine replays the journal
//!   from there.
//! - The caches (`level_deltas`, `mark_seqs`) hold what the
//!   tables hold (written or read under `commit_lock`), possibly not yet
//!   synced: the journal holds those records durably, so
//!   [`Store::watermark`] never reports a seq that a crash could lose.
//!   Other reads see the data of a write as soon as its batch is written.
//!   The caches hold a delta count per store and a seq per device, and are
//!   emptied when they reach 64 Ki stores or 1 Mi devices: a device naming
//!   random stores cannot grow them without bound.

mod archive;
mod backup;
mod blocklog;
mod blocks;
mod commit;
mod data_format;
mod durability;
mod errors;
mod journal_place;
mod keys;
mod levels;
mod packed;
mod query;
mod restore;
mod stock_blocks;

pub(crate) use errors::backend_err;
use errors::{no_write_access, open_err};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_conformance;
#[cfg(test)]
mod tests_large;
#[cfg(test)]
mod tests_props;
#[cfg(test)]
mod tests_query;
#[cfg(test)]
mod tests_stock;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use fjall::config::CompressionPolicy;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode};
use parking_lot::{Mutex, RwLock};

use durability::{Durability, FailAfter, Fsync};
use tillstream_journal::{Journal, JournalOptions, JournalRecords, ReplayError, SyncFault};
use tillstream_storage::rows::*;
use tillstream_storage::store::*;

pub use commit::{PackersForBench, pack_for_bench};
pub use data_format::DATA_FORMAT;
pub use journal_place::place_journal;
pub use restore::{CREDENTIALS_DIR, restore_files};

/// fjall's block cache, shared by the keyspaces: their index and filter
/// blocks and the point tables' hot data (why not fjall's 32 MiB: at the
/// builder in `open_with`).
const BLOCK_CACHE_BYTES: u64 = 8 << 20;

/// The store's maps, keyed by what devices name (stores, SKUs, devices):
/// foldhash, seeded at random per map (a device cannot aim keys at one
/// bucket), instead of SipHash, which was a visible share of a write.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The embedded store on fjall. `Send + Sync`; share it through an `Arc`.
/// See the [module docs](self) for the layout and the invariants.
pub struct EmbeddedStore {
    db: Database,
    blocks: Keyspace,
    /// Where the `blocks` keyspace's pointers lead (`blocklog`).
    block_log: blocklog::BlockLog,
    /// Packs the raw rows into blocks, a set of packers per table; kept
    /// for the next commit (taken under `commit_lock`).
    packers: Mutex<blocks::TableBlockSets>,
    levels: Keyspace,
    rollups: Keyspace,
    marks: Keyspace,
    batches: Keyspace,
    meta: Keyspace,
    /// Serializes commits; the id of the next commit.
    commit_lock: Mutex<u64>,
    /// How many level deltas each store written or read so far holds
    /// (see `levels`).
    level_deltas: Mutex<FastMap<u32, u32>>,
    /// The buffers a commit's stock levels are sorted and packed in, kept
    /// for the next commit (taken under `commit_lock`).
    level_scratch: Mutex<levels::LevelScratch>,
    /// Durable watermark of devices written or read so far.
    mark_seqs: RwLock<FastMap<u64, u64>>,
    poisoned: AtomicBool,
    poison_reason: Mutex<Option<String>>,
    durability: Box<dyn Durability>,
    /// The write-ahead journal of device frames (`wal/` in the data dir).
    journal: Mutex<Journal>,
    /// Held while expired journal segments are deleted, outside `journal`
    /// (see [`Journal::expire_through`]): deletions stay in order.
    journal_expiry: Mutex<()>,
    /// The checkpoint: journal records up to it are in the tables.
    materialized: AtomicU64,
    /// The last checkpoint known durable (synced).
    synced_checkpoint: AtomicU64,
    path: PathBuf,
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .field("poisoned", &self.poisoned.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`, recovering what the journal
    /// holds, and resumes commit ids after the last durable commit.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_placed(dir, None)
    }

    /// [`open`](Self::open), its journal placed in `journal` if given
    /// ([`place_journal`], `serve --journal-dir`), under the store's lock.
    pub fn open_placed(dir: &Path, journal: Option<&Path>) -> Result<Self, StoreError> {
        Self::open_with(dir, Box::new(Fsync), None, journal)
    }

    /// [`open_placed`](Self::open_placed) for fault tests: after
    /// `good_syncs` commits, a sync fails (a full disk) and poisons it.
    pub fn open_with_failing_sync(
        dir: &Path,
        good_syncs: u64,
        journal: Option<&Path>,
    ) -> Result<Self, StoreError> {
        let fault = FailAfter {
            ok_left: Arc::new(AtomicU64::new(good_syncs)),
        };
        Self::open_with(dir, Box::new(fault.clone()), Some(Box::new(fault)), journal)
    }

    fn open_with(
        dir: &Path,
        durability: Box<dyn Durability>,
        journal_fault: Option<Box<dyn SyncFault>>,
        journal_at: Option<&Path>,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| open_err(dir, e))?;
        let found = data_format::claim(dir)?; // before anything reads the directory
        if found.is_some_and(|n| n < DATA_FORMAT) {
            tracing::info!(from = found, to = DATA_FORMAT, dir = %dir.display(), "data format upgraded");
        }
        let db = Database::builder(dir)
            .manual_journal_persist(true)
            // Values are rkyv rows that lz4 squeezed for 8% of the server's
            // CPU; our own journal already holds the source, uncompressed.
            .journal_compression(fjall::CompressionType::None)
            // fjall keeps a journal file until every keyspace with writes
            // in it has flushed them, and the `meta` keyspace (three keys a
            // commit) flushes only when the journals pass this size: at its
            // default of 512 MiB, a server killed under load left 4 full
            // 64 MiB files that the next open replayed key by key, with a
            // tree lookup of the keyspace of each (0.38 s of a 1.6 s
            // restart). At the least fjall allows, a rotation flushes the
            // keyspaces that hold the oldest file back.
            .max_journaling_size(64 << 20)
            // fjall's default block cache of 32 MiB filled with level
            // buckets, which a compaction reads once per store every
            // `MAX_LEVEL_DELTAS` commits and which had left the cache
            // long before the next one (80 MB of them at 1 M SKUs): 32
            // MiB of the server's heap that hit nothing. Raw rows are
            // read from the block log, not through it.
            .cache_size(BLOCK_CACHE_BYTES)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => open_err(
                    dir,
                    "another process has it open (a running server: stop it, or ask it over HTTP with --server-http)",
                ),
                fjall::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => {
                    open_err(dir, no_write_access(dir, &io))
                }
                e => open_err(dir, e),
            })?;
        // Under fjall's lock, so no server is in the middle of it: the
        // journal placed, then checked to be where its mark says, and this
        // store's, before it is written or replayed.
        if let Some(journal) = journal_at {
            place_journal(dir, journal)?;
        }
        journal_place::check_placed(dir, found.is_some())?;
        // fjall's 64 MiB per memtable, times six keyspaces and their sealed
        // memtables, was most of the server's resident memory: raw-row
        // blocks get 32 MiB, the small point tables 8. Blocks are not
        // compressed: lz4 cost 8% of the server's CPU (a 1M-event run) for
        // data written once and read rarely; the disk has bandwidth to
        // spare, the CPU has not.
        let ks = |name: &str| {
            // The values are block log pointers (20 bytes, kept inline);
            // blocks stored inline, by a store from before the log or a
            // backup, are large and stay apart from the keys (blob files),
            // so compaction moves only the keys.
            let opts = if name == keys::BLOCKS {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(32 << 20)
                    .data_block_compression_policy(CompressionPolicy::disabled())
                    .with_kv_separation(Some(
                        KvSeparationOptions::default()
                            .compression(fjall::CompressionType::None)
                            .separation_threshold(512),
                    ))
            } else if name == keys::LEVELS {
                // Level buckets are rewritten whole at every write.
                KeyspaceCreateOptions::default()
                    .max_memtable_size(8 << 20)
                    .data_block_compression_policy(CompressionPolicy::disabled())
            } else {
                KeyspaceCreateOptions::default().max_memtable_size(8 << 20)
            };
            db.keyspace(name, || opts).map_err(|e| open_err(dir, e))
        };
        let (blocks, levels, rollups) = (ks(keys::BLOCKS)?, ks(keys::LEVELS)?, ks(keys::ROLLUPS)?);
        let (marks, batches, meta) = (ks(keys::WATERMARKS)?, ks(keys::BATCHES)?, ks(keys::META)?);
        let last = match meta.get(keys::LAST_COMMIT).map_err(|e| open_err(dir, e))? {
            None => 0,
            Some(v) => {
                u64::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    what: "last commit id",
                    reason: format!("{} bytes instead of 8", v.len()),
                })?)
            }
        };
        let checkpoint = match meta.get(keys::CHECKPOINT).map_err(|e| open_err(dir, e))? {
            None => 0,
            Some(v) => {
                u64::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    what: "checkpoint lsn",
                    reason: format!("{} bytes instead of 8", v.len()),
                })?)
            }
        };
        let block_log_end = meta
            .get(keys::BLOCKLOG_END)
            .map_err(|e| open_err(dir, e))?
            .map(|v| blocklog::decode_end(&v))
            .transpose()?;
        let block_log = blocklog::BlockLog::open(&dir.join(blocklog::DIR), block_log_end)?;
        let wal = dir.join(keys::JOURNAL_DIR);
        let journal = match journal_fault {
            Some(f) => Journal::open_with_fault(&wal, JournalOptions::default(), f),
            None => Journal::open(&wal, JournalOptions::default()),
        }
        .map_err(|e| open_err(&wal, e))?;
        let mut journal = journal;
        // The journal must hold every record after the checkpoint. It
        // starts later only when segments were deleted past a checkpoint
        // that never became durable: fjall can swallow a failed
        // background sync (`durability.rs`). Replaying from there would
        // skip records an ack covered, so say so instead.
        if let Some(first) = journal
            .first_lsn()
            .filter(|&f| f > checkpoint.saturating_add(1))
        {
            return Err(StoreError::Corrupt {
                what: "journal",
                reason: format!(
                    "the tables are checkpointed to LSN {checkpoint} but the journal in {} starts at LSN {first}: records {} to {} are gone, so some acknowledged batches may be missing. Restore from a backup, or move the journal aside to start from the tables alone",
                    wal.display(),
                    checkpoint + 1,
                    first - 1
                ),
            });
        }
        // Every segment may have been truncated away after a checkpoint:
        // the journal then continues after it.
        journal.set_base(checkpoint);
        Ok(EmbeddedStore {
            db,
            blocks,
            block_log,
            packers: Mutex::default(),
            levels,
            rollups,
            marks,
            batches,
            meta,
            commit_lock: Mutex::new(last.saturating_add(1)),
            level_deltas: Mutex::new(FastMap::default()),
            level_scratch: Mutex::default(),
            mark_seqs: RwLock::new(FastMap::default()),
            poisoned: AtomicBool::new(false),
            poison_reason: Mutex::new(None),
            durability,
            journal: Mutex::new(journal),
            journal_expiry: Mutex::new(()),
            materialized: AtomicU64::new(checkpoint),
            synced_checkpoint: AtomicU64::new(checkpoint),
            path: dir.to_path_buf(),
        })
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True once a write or sync failed (see [`StoreError::Poisoned`]).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Poisons the store as a failed sync would, for fault tests: every
    /// later commit fails with [`StoreError::Poisoned`].
    pub fn poison_for_test(&self, reason: &str) {
        self.poison(reason.to_owned());
    }

    /// The id the next commit will get (commit ids are persisted with each
    /// commit and resumed at open).
    pub fn next_commit_id(&self) -> u64 {
        *self.commit_lock.lock()
    }

    /// Records the first poison reason and raises the flag.
    fn poison(&self, reason: String) {
        let mut slot = self.poison_reason.lock();
        if slot.is_none() {
            tracing::error!(path = %self.path.display(), %reason, "store poisoned, refusing further commits");
            *slot = Some(reason);
        }
        self.poisoned.store(true, Ordering::Release);
    }

    /// Poisons the store after a failed write of any kind, unless it
    /// already is.
    fn poison_on(&self, e: &StoreError) {
        if !self.is_poisoned() {
            self.poison(format!("a write failed: {e}"));
        }
    }

    fn poisoned_err(&self) -> StoreError {
        let reason = self.poison_reason.lock().clone();
        StoreError::Poisoned(reason.unwrap_or_else(|| "unknown reason".to_owned()))
    }
}

impl Store for EmbeddedStore {
    fn commit(&self, rows: &RowSet) -> Result<CommitInfo, StoreError> {
        // Any failed commit poisons the store, not only a failed write or
        // sync: the engine stops acknowledging on the first failure, and
        // /readyz and Hello must say so too.
        self.commit_rows(std::slice::from_ref(rows), None, true)
            .inspect_err(|e| self.poison_on(e))
    }

    fn journal_append(&self, records: &[u8], last_lsn: u64) -> Result<(), StoreError> {
        self.append_to_journal(|j| j.append(records, last_lsn))
    }

    fn journal_append_records(
        &self,
        records: &dyn JournalRecords,
        last_lsn: u64,
    ) -> Result<(), StoreError> {
        self.append_to_journal(|j| j.append_records(records, last_lsn))
    }

    fn journal_last_lsn(&self) -> u64 {
        self.journal.lock().last_lsn()
    }

    fn journal_replay(&self, after: u64, f: &mut ReplayVisitor<'_>) -> Result<u64, StoreError> {
        let journal = self.journal.lock();
        journal.replay(after, f).map_err(|e| match e {
            ReplayError::Callback(e) => e,
            ReplayError::Journal(e) => StoreError::Corrupt {
                what: "journal",
                reason: e.to_string(),
            },
        })
    }

    fn materialize(&self, parts: &[RowSet], lsn: u64) -> Result<CommitInfo, StoreError> {
        self.commit_rows(parts, Some(lsn), false)
            .inspect_err(|e| self.poison_on(e))
    }

    fn materialized_lsn(&self) -> Result<u64, StoreError> {
        Ok(self.materialized.load(Ordering::Acquire))
    }

    fn sync_materialized(&self) -> Result<u64, StoreError> {
        // The checkpoint read before the sync is covered by it.
        let checkpoint = {
            let _commit = self.commit_lock.lock();
            self.materialized.load(Ordering::Acquire)
        };
        self.check_writable()?;
        if let Err(e) = self.durability.sync(&self.db) {
            self.poison(format!("syncing the tables failed: {e}"));
            return Err(self.poisoned_err());
        }
        self.synced_checkpoint.store(checkpoint, Ordering::Release);
        let truncation_err = |e| StoreError::Backend {
            op: "journal truncation",
            source: Box::new(e),
        };
        // The files go outside the journal's lock: appends, which every
        // acknowledgement waits for, go on meanwhile.
        let _in_order = self.journal_expiry.lock();
        let expired = self
            .journal
            .lock()
            .expire_through(checkpoint)
            .map_err(truncation_err)?;
        let dropped = expired
            .retire()
            .map_err(|e| truncation_err(self.journal.lock().poison_with(e)))?;
        if dropped > 0 {
            tracing::debug!(checkpoint, segments = dropped, "journal truncated");
        }
        Ok(checkpoint)
    }

    fn watermark(&self, device: u64) -> Result<u64, StoreError> {
        if let Some(seq) = self.mark_seqs.read().get(&device) {
            return Ok(*seq);
        }
        // A miss reads the disk under the commit lock: no commit is then
        // between its write and its sync, so what we read is durable.
        let _commit = self.commit_lock.lock();
        self.durable_watermark(device)
    }

    fn load_levels(&self, store: u32) -> Result<Vec<StockLevelRow>, StoreError> {
        self.levels_of(Some(store))
    }

    fn load_movements(
        &self,
        store: u32,
        windows: &[(i64, i64)],
    ) -> Result<Vec<WindowMovement>, StoreError> {
        self.movements_in(store, windows)
    }

    fn ledger_digest(&self, device: u64, seq: u64) -> Result<Option<u64>, StoreError> {
        let Some(value) = self
            .batches
            .get(keys::batch_key(device, seq))
            .map_err(|e| backend_err("reading the batch ledger", e))?
        else {
            return Ok(None);
        };
        let row: BatchRow = archive::decode_one(&value, &mut rkyv::util::AlignedVec::new())?;
        Ok(Some(row.digest))
    }

    fn load_rollups(&self, store: u32, day: u32) -> Result<Vec<TerminalRollupRow>, StoreError> {
        self.rollups_of(store, day)
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        if self.is_poisoned() {
            return Err(self.poisoned_err());
        }
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn backup_to(&self, dest: &Path) -> Result<BackupInfo, StoreError> {
        EmbeddedStore::backup_to(self, dest)
    }

    fn put_catalog(
        &self,
        catalog: &tillstream_storage::catalog::Catalog,
    ) -> Result<(), StoreError> {
        self.check_writable()?;
        let mut batch = self.db.batch();
        for p in &catalog.products {
            let value =
                tillstream_storage::catalog::encode_fields(&[&p.code, &p.name, &p.category]);
            batch.insert(&self.meta, keys::catalog_product(p.sku), value);
        }
        for s in &catalog.stores {
            let value = tillstream_storage::catalog::encode_fields(&[&s.name, &s.country]);
            batch.insert(&self.meta, keys::catalog_store(s.store), value);
        }
        batch
            .commit()
            .map_err(|e| backend_err("writing the catalogue", e))?;
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(|e| backend_err("syncing the catalogue", e))
    }
}
