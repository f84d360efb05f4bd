//! The ScyllaDB backend (feature `scylla`): the same [`Store`] and
//! [`Query`](tillstream_storage::Query) as the embedded store, on the `scylla` driver.
//!
//! **Sync over async.** The driver is async; the store traits are
//! synchronous because the engine calls them from its journal thread, its
//! materializer and `spawn_blocking`, never from an async worker. The store
//! owns a small runtime of its own for the driver's connections: one call
//! blocks its (blocking) caller once, and fans out into many concurrent
//! requests on that runtime, at most `max_in_flight` at a time. No runtime
//! thread is blocked per request.
//!
//! **Exactly once without transactions** (docs/internals/design.md, "ScyllaDB"):
//! - the journal is a table: an ack waits until the batch's record is
//!   written at the configured consistency, so a node's own disk holds
//!   nothing correctness needs;
//! - `materialize` writes every row under the key that identifies it
//!   (event keys, bucket columns computed from the row), snapshot rows with
//!   their version as the write timestamp (stock levels: `version`;
//!   watermarks: `seq`; rollups: the LSN they were derived at), and the
//!   checkpoint last, itself stamped with its LSN;
//! - so a crash between rows and checkpoint leaves rows the replay writes
//!   again to the same keys with the same values, and a stale write can
//!   never overtake a newer one.

mod cluster;
mod cols;
mod config;
mod connection;
mod fence;
mod journal;
mod mapping;
mod materialize;
mod metrics;
mod query;
mod quorum;
mod retry;
mod snapshots;
mod statements;
mod writes;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::Row;

pub use cluster::{ClusterTables, MemberRow, NodeJournal, OwnerRecord};
#[cfg(test)]
pub(crate) use config::drop_keyspace;
pub use config::{ParseConsistency, ScyllaConfig, apply_schema};
pub use connection::Connection;
/// Consistency levels, as the driver names them.
pub use scylla::statement::Consistency;

use fence::Fence;
use mapping::{ByStoreHour, CqlRow, writer_hash};
use tillstream_storage::buckets::{LEVEL_BUCKETS, batch_seq_bucket};
use tillstream_storage::rows::*;
use tillstream_storage::store::{CommitInfo, ReplayVisitor, Store, StoreError, WindowMovement};
use writes::Prepared;

/// The ScyllaDB store. See the module documentation.
pub struct ScyllaStore {
    /// `None` only while dropping (the runtime is shut down in the
    /// background, which is allowed from any context).
    rt: Option<tokio::runtime::Runtime>,
    session: Arc<Session>,
    st: Arc<Prepared>,
    /// This writer's hold on its node id (`fence.rs`).
    fence: Arc<Fence>,
    cfg: ScyllaConfig,
    journal_last: AtomicU64,
    checkpoint: AtomicU64,
    pruned_below: AtomicU64,
    /// This start's number (docs/internals/design.md, "ScyllaDB"); set once by
    /// `recover`.
    generation: AtomicU64,
    /// Materializations whose staged snapshot rows are in their tables
    /// and can be dropped: (LSN, chunks).
    staged: Mutex<Vec<(u64, usize)>>,
    /// Why writes stopped, when they did; shared with the lease's
    /// heartbeat, which may find the node fenced.
    poisoned: Arc<Mutex<Option<String>>>,
    /// Why the cluster does not take writes now, while one is retried.
    unavailable: Mutex<Option<String>>,
    /// Writes retried so far.
    write_retries: AtomicU64,
}

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("nodes", &self.cfg.nodes)
            .field("keyspace", &self.cfg.keyspace)
            .field("node_id", &self.cfg.node_id)
            .field("checkpoint", &self.checkpoint.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for ScyllaStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            if !self.cfg.read_only {
                // Give the node id back, so the next start need not wait
                // out the lease; from a thread of its own, since a drop
                // may run on another runtime's worker, where blocking on
                // this one would panic.
                let fence = self.fence.clone();
                let handle = rt.handle().clone();
                let released = std::thread::spawn(move || {
                    handle.block_on(async {
                        tokio::time::timeout(std::time::Duration::from_secs(2), fence.release())
                            .await
                            .ok()
                    })
                });
                let _ = released.join();
            }
            rt.shutdown_background();
        }
    }
}

pub(crate) fn backend_err<E>(op: &'static str) -> impl FnOnce(E) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| StoreError::Backend {
        op,
        source: Box::new(e),
    }
}

impl ScyllaStore {
    /// Connects, prepares every statement, and reads this node's
    /// checkpoint and journal end: a fresh process (or a fresh machine)
    /// with the same `node_id` resumes where the last one stopped.
    pub fn connect(cfg: ScyllaConfig) -> Result<ScyllaStore, StoreError> {
        let rt = Self::runtime(&cfg, 2)?;
        let conn = rt.block_on(Connection::connect(&cfg))?;
        Self::open(rt, conn, cfg)
    }

    /// [`connect`](Self::connect) for `cfg.node_id` over `conn`, a session
    /// made earlier on another runtime, which must outlive this store:
    /// what a node adopting a gone node's journal does, without the
    /// seconds of connecting and preparing. Blocking.
    pub fn open_on(conn: &Connection, cfg: ScyllaConfig) -> Result<ScyllaStore, StoreError> {
        let rt = Self::runtime(&cfg, 1)?;
        Self::open(rt, conn.clone(), cfg)
    }

    fn runtime(cfg: &ScyllaConfig, threads: usize) -> Result<tokio::runtime::Runtime, StoreError> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("scylla-driver")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Open {
                path: cfg.nodes.join(","),
                reason: format!("starting the driver's runtime: {e}"),
            })
    }

    fn open(
        rt: tokio::runtime::Runtime,
        conn: Connection,
        cfg: ScyllaConfig,
    ) -> Result<ScyllaStore, StoreError> {
        let Connection { session, st, lease } = conn;
        let poisoned = Arc::new(Mutex::new(None));
        let fence = Arc::new(Fence::new(
            session.clone(),
            lease,
            cfg.node_id.clone(),
            poisoned.clone(),
        ));
        let store = ScyllaStore {
            rt: Some(rt),
            session,
            st,
            fence,
            cfg,
            journal_last: AtomicU64::new(0),
            checkpoint: AtomicU64::new(0),
            pruned_below: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            staged: Mutex::new(Vec::new()),
            poisoned,
            unavailable: Mutex::new(None),
            write_retries: AtomicU64::new(0),
        };
        store.open_state()?;
        Ok(store)
    }

    /// The configuration in force.
    pub fn config(&self) -> &ScyllaConfig {
        &self.cfg
    }

    /// Runs `f` on the driver's runtime and waits for it. Callers are
    /// blocking threads (see the module documentation).
    fn block<F: Future>(&self, f: F) -> F::Output {
        match &self.rt {
            Some(rt) => rt.block_on(f),
            None => unreachable!("the runtime is taken only by drop"),
        }
    }

    /// A writer first takes its node id (`fence.rs`): nothing is written,
    /// and nothing read that a stale holder could still move, before.
    /// Then it reads this node's checkpoint, finishes the snapshot rows
    /// of the last one if a crash interrupted them, and finds the
    /// journal's end, which must reach every acknowledged record.
    fn open_state(&self) -> Result<(), StoreError> {
        let high = if self.cfg.read_only {
            let lease = self.block(self.fence.read())?.unwrap_or_default();
            self.generation.store(lease.generation, Ordering::Release);
            lease.journal_high
        } else {
            let before = self.block(self.read_checkpoint())?;
            let lease = self.block(self.fence.take(before.generation, self.cfg.adopting))?;
            self.block(self.fence_checkpoints(before.generation, lease.generation))?;
            self.generation.store(lease.generation, Ordering::Release);
            lease.journal_high
        };
        let state = self.block(self.read_checkpoint())?;
        self.checkpoint.store(state.lsn, Ordering::Release);
        self.pruned_below
            .store(state.pruned_below, Ordering::Release);
        self.finish_snapshots(state.lsn, state.snapshots_at)?;
        self.open_journal(state.lsn, high)?;
        if !self.cfg.read_only {
            let fence = self.fence.clone();
            if let Some(rt) = &self.rt {
                rt.spawn(fence.heartbeat());
            }
        }
        Ok(())
    }

    /// Moves the checkpoint row to this start's generation, so that a
    /// fenced holder's checkpoint (written `IF generation = <its own>`)
    /// can no longer land. `seen` is the generation read before.
    async fn fence_checkpoints(&self, seen: u64, generation: u64) -> Result<(), StoreError> {
        let seen = (seen > 0).then_some(seen as i64);
        let result = self
            .session
            .execute_unpaged(
                &self.st.generation_write,
                (generation as i64, &self.cfg.node_id, seen),
            )
            .await
            .map_err(backend_err("fencing the checkpoint"))?;
        if fence::applied_result(result)? {
            Ok(())
        } else {
            Err(StoreError::Open {
                path: format!("node id {:?}", self.cfg.node_id),
                reason: "another tillstream moved this node's checkpoint generation while this one started; two servers must never share a node id".into(),
            })
        }
    }

    async fn read_checkpoint(&self) -> Result<CheckpointRow, StoreError> {
        let rows = self
            .all_rows(&self.st.checkpoint_read, (&self.cfg.node_id,))
            .await?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(CheckpointRow::default());
        };
        let col = |i: usize| match row.columns.get(i) {
            Some(Some(scylla::value::CqlValue::BigInt(v))) => *v as u64,
            _ => 0,
        };
        Ok(CheckpointRow {
            lsn: col(0),
            pruned_below: col(1),
            generation: col(2),
            snapshots_at: col(3),
        })
    }

    /// Every row of a (paged) read.
    async fn all_rows(
        &self,
        st: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Vec<Row>, StoreError> {
        self.session
            .execute_iter(st.clone(), values)
            .await
            .map_err(backend_err("reading"))?
            .rows_stream::<Row>()
            .map_err(backend_err("reading"))?
            .try_collect()
            .await
            .map_err(backend_err("reading"))
    }

    /// Rows of a read, each mapped by `T`.
    async fn read<T: CqlRow>(
        &self,
        st: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<Vec<T>, StoreError> {
        self.all_rows(st, values)
            .await?
            .into_iter()
            .map(T::from_row)
            .collect()
    }
}

impl Store for ScyllaStore {
    fn commit(&self, rows: &RowSet) -> Result<CommitInfo, StoreError> {
        self.commit_rows(rows)
    }

    fn journal_append(&self, records: &[u8], last_lsn: u64) -> Result<(), StoreError> {
        self.append_journal(records, last_lsn)
    }

    fn journal_last_lsn(&self) -> u64 {
        self.journal_last.load(Ordering::Acquire)
    }

    fn journal_replay(&self, after: u64, f: &mut ReplayVisitor<'_>) -> Result<u64, StoreError> {
        let last = self.journal_last.load(Ordering::Acquire);
        let mut visited = 0;
        let mut reached = after;
        self.walk_journal(after, |lsn, record| {
            if lsn > last {
                return Ok(false);
            }
            f(lsn, record)?;
            visited += 1;
            reached = lsn;
            Ok(true)
        })?;
        // The walk at open found the journal's end; a replay that stops
        // short of it would let the next checkpoint pass records never
        // applied. Say so instead of skipping them.
        if reached < last {
            return Err(StoreError::Corrupt {
                what: "journal",
                reason: format!(
                    "the replay after LSN {after} ended at {reached}, below the journal's end {last} found at open: record {} could not be read",
                    reached + 1
                ),
            });
        }
        Ok(visited)
    }

    fn materialize(&self, parts: &[RowSet], lsn: u64) -> Result<CommitInfo, StoreError> {
        // The cluster's writes are statements per row: one copy of the
        // rows into one set is nothing beside them.
        self.materialize_rows(&RowSet::gathered(parts), lsn)
    }

    fn materialized_lsn(&self) -> Result<u64, StoreError> {
        Ok(self.checkpoint.load(Ordering::Acquire))
    }

    /// Rows are durable once written (at the configured consistency); what
    /// is left is dropping what the checkpoint made useless: the journal
    /// segments it covers and the staged copies of snapshot rows.
    fn sync_materialized(&self) -> Result<u64, StoreError> {
        self.writable()?;
        let checkpoint = self.checkpoint.load(Ordering::Acquire);
        self.prune_journal(checkpoint);
        self.drop_staged();
        Ok(checkpoint)
    }

    fn watermark(&self, device: u64) -> Result<u64, StoreError> {
        let rows = self.block(self.all_rows(&self.st.watermark_read, (device as i64,)))?;
        Ok(rows
            .first()
            .and_then(|r| r.columns.first())
            .and_then(|c| match c {
                Some(scylla::value::CqlValue::BigInt(v)) => Some(*v as u64),
                _ => None,
            })
            .unwrap_or(0))
    }

    fn load_levels(&self, store: u32) -> Result<Vec<StockLevelRow>, StoreError> {
        self.until_read("a store's stock levels", || {
            self.block(self.levels_of_store(store))
        })
    }

    fn ledger_digest(&self, device: u64, seq: u64) -> Result<Option<u64>, StoreError> {
        let rows = self.block(self.all_rows(
            &self.st.batch_read,
            (device as i64, batch_seq_bucket(seq) as i64, seq as i64),
        ))?;
        Ok(rows.first().map(|r| match r.columns.first() {
            Some(Some(scylla::value::CqlValue::BigInt(d))) => *d as u64,
            // Null: a row from before the column.
            _ => 0,
        }))
    }

    fn load_movements(
        &self,
        store: u32,
        windows: &[(i64, i64)],
    ) -> Result<Vec<WindowMovement>, StoreError> {
        let reads: Vec<(i64, i64, i64)> = windows
            .iter()
            .map(|&(from, to)| (from.max(0), to))
            .filter(|&(from, to)| from < to)
            .flat_map(|(from, to)| {
                let (first, last) = hours_of(from, to);
                (first..=last).map(move |h| (h, from, to))
            })
            .collect();
        let store = i64::from(store);
        let parts: Vec<Vec<ByStoreHour>> = self.until_read("a store's late window", || {
            self.block(self.many(reads.iter().copied(), |(h, from, to)| {
                self.read::<ByStoreHour>(&self.st.store_movements_read, (store, h, from, to))
            }))
        })?;
        // Rows a materialization wrote past the checkpoint (a crash
        // before its commit point) are the replay's to apply again: read
        // now, they would count twice.
        // Only this node's: a store changes hands only once the tables
        // hold all of its last owner's records (its checkpoint covers
        // them), so another writer's rows are all in.
        let checkpoint = self.checkpoint.load(Ordering::Acquire);
        let me = writer_hash(&self.cfg.node_id);
        Ok(parts
            .into_iter()
            .flatten()
            .filter(|m| m.1 <= checkpoint || m.2.is_some_and(|w| w != me))
            .filter_map(|m| WindowMovement::of(&m.0))
            .collect())
    }

    fn load_rollups(&self, store: u32, day: u32) -> Result<Vec<TerminalRollupRow>, StoreError> {
        let store = i64::from(store);
        let first = i64::from(day) * 24;
        let parts = self.until_read("a till's rollup day", || {
            self.block(self.many(first..first + 24, |hour| {
                self.read::<TerminalRollupRow>(&self.st.rollups_read, (store, hour))
            }))
        })?;
        Ok(parts.into_iter().flatten().collect())
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        self.writable()?;
        match &*self.unavailable.lock() {
            Some(why) => Err(StoreError::Backend {
                op: "writing",
                source: why.clone().into(),
            }),
            None => Ok(()),
        }
    }

    fn backend(&self) -> &'static str {
        "scylla"
    }

    /// Eight activations at once: each is itself up to `max_in_flight`
    /// reads, and it waits on round trips, not on this machine's cores.
    /// With two (the cores here), replaying a gone node's journal spent
    /// 24 s of 27 reading its 9 stores two at a time.
    fn read_parallelism(&self) -> usize {
        8
    }

    fn backend_metrics(&self) -> Vec<(&'static str, f64)> {
        self.driver_metrics()
    }

    fn put_catalog(
        &self,
        catalog: &tillstream_storage::catalog::Catalog,
    ) -> Result<(), StoreError> {
        self.writable()?;
        let n = self.cfg.max_in_flight.max(1);
        self.block(async {
            futures_util::stream::iter(catalog.products.iter())
                .map(|p| {
                    let bucket = i32::from(tillstream_storage::buckets::level_bucket(p.sku));
                    let values = (bucket, p.sku as i64, &p.code, &p.name, &p.category);
                    self.session
                        .execute_unpaged(&self.st.product_insert, values)
                })
                .buffer_unordered(n)
                .try_for_each(|_| async { Ok(()) })
                .await?;
            futures_util::stream::iter(catalog.stores.iter())
                .map(|s| {
                    let values = (i64::from(s.store), &s.name, &s.country);
                    self.session.execute_unpaged(&self.st.store_insert, values)
                })
                .buffer_unordered(n)
                .try_for_each(|_| async { Ok(()) })
                .await
        })
        .map_err(backend_err("writing the catalogue"))
    }
}

impl ScyllaStore {
    /// Runs `read` for each of `keys`, at most `max_in_flight` at once,
    /// and gives the results in the order of `keys`.
    async fn many<K, T, Fut>(
        &self,
        keys: impl IntoIterator<Item = K>,
        read: impl Fn(K) -> Fut,
    ) -> Result<Vec<T>, StoreError>
    where
        Fut: Future<Output = Result<T, StoreError>>,
    {
        futures_util::stream::iter(keys)
            .map(read)
            .buffered(self.cfg.max_in_flight.max(1))
            .try_collect()
            .await
    }

    /// Every level of one store: its 256 bucket partitions.
    async fn levels_of_store(&self, store: u32) -> Result<Vec<StockLevelRow>, StoreError> {
        let store = i64::from(store);
        let parts = self
            .many(0..i32::from(LEVEL_BUCKETS), |bucket| {
                self.read::<StockLevelRow>(&self.st.levels_read, (store, bucket))
            })
            .await?;
        Ok(parts.into_iter().flatten().collect())
    }
}

/// The first and last hour (since the epoch) of `[from_us, to_us)`.
fn hours_of(from_us: i64, to_us: i64) -> (i64, i64) {
    let hour = |t: i64| t.div_euclid(3_600_000_000);
    (
        hour(from_us),
        hour(to_us.saturating_sub(1)).max(hour(from_us)),
    )
}

/// The row of `checkpoints` of this node.
#[derive(Debug, Default, Clone, Copy)]
struct CheckpointRow {
    lsn: u64,
    pruned_below: u64,
    generation: u64,
    snapshots_at: u64,
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests_cluster;
#[cfg(test)]
mod tests_conformance;

#[cfg(test)]
#[path = "tests_lib.rs"]
mod tests;
