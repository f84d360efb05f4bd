//! The write path: one commit's row sets (a tick's batch parts, in order,
//! never copied into one) become one atomic fjall batch, then one sync.
//! See the module docs of `embedded` for the invariants.

use fjall::{Keyspace, OwnedWriteBatch, Slice};
use rkyv::util::AlignedVec;

use super::blocklog::{BlockFormat, Ptr, encode_end};
use super::blocks::{self, BlockRow, TableBlockSets};
use super::{EmbeddedStore, backend_err, keys};
use tillstream_journal::{Journal, JournalError};
use tillstream_storage::rows::*;
use tillstream_storage::store::{CommitInfo, Store, StoreError};

/// The batch being built and what it counts.
pub(super) struct Writer {
    batch: OwnedWriteBatch,
    info: CommitInfo,
    blocks: usize,
}

impl Writer {
    /// A block staged in the block log: fjall gets its pointer.
    fn put_logged(&mut self, ks: &Keyspace, key: &[u8], ptr: Ptr, block_len: usize) {
        self.info.records += 1;
        self.info.bytes += key.len() + block_len;
        self.blocks += 1;
        self.batch
            .insert(ks, Slice::from(key), Slice::from(&ptr.encode()[..]));
    }
}

impl Writer {
    pub(super) fn put(&mut self, ks: &Keyspace, key: &[u8], value: &[u8]) {
        self.info.records += 1;
        self.info.bytes += key.len() + value.len();
        self.batch.insert(ks, Slice::from(key), Slice::from(value));
    }

    pub(super) fn remove(&mut self, ks: &Keyspace, key: Slice) {
        self.info.records += 1;
        self.info.bytes += key.len();
        self.batch.remove(ks, key);
    }
}

/// A commit's blocks in the log: each block key and pointer, and where the
/// log ended once they were synced.
#[derive(Default)]
struct Logged {
    blocks: Vec<(Vec<u8>, Ptr)>,
    end: Option<super::blocklog::End>,
}

/// Cache updates to apply once the commit is durable.
#[derive(Default)]
struct Durable {
    marks: Vec<(u64, u64)>,
    /// Each store's level deltas after the commit (`levels`).
    level_deltas: Vec<(u32, u32)>,
}

impl EmbeddedStore {
    /// [`Store::commit`]: see the module docs.
    /// `checkpoint`: the journal LSN the rows bring the tables up to,
    /// written in the same atomic batch. `sync`: fsync before returning
    /// (the tables' own durability; the engine syncs less often, since the
    /// journal already holds what it acknowledged).
    pub(super) fn commit_rows(
        &self,
        parts: &[RowSet],
        checkpoint: Option<u64>,
        sync: bool,
    ) -> Result<CommitInfo, StoreError> {
        let mut next_id = self.commit_lock.lock();
        self.check_writable()?;
        let rows = rows_in(parts);
        if rows == 0 && checkpoint.is_none() {
            return Ok(CommitInfo::default());
        }
        let id = *next_id;
        let span = tracing::debug_span!("commit", id, rows, blocks = tracing::field::Empty);
        let _entered = span.enter();

        // Frames a failed commit staged must not ride with this one.
        self.block_log.discard_staged();
        let mut w = Writer {
            batch: self.db.batch(),
            info: CommitInfo {
                rows,
                ..CommitInfo::default()
            },
            blocks: 0,
        };
        // The raw rows go to the block log, then the point keys and level
        // buckets are built, on this one thread. Logging on a second
        // thread spawned per write (as the materializer once did) gained
        // nothing once the ack stopped waiting for this step, and each
        // short-lived thread left its allocator pages behind when it
        // exited: peak RSS at 1 M resident SKUs ran 15-20% higher.
        let mut durable = Durable::default();
        let written = self.log_blocks(parts, id).and_then(|logged| {
            self.put_keyed(&mut w, parts, id, &mut durable)
                .map(|()| logged)
        });
        let logged = match written {
            Ok(logged) => logged,
            Err(e) => {
                self.block_log.discard_staged();
                return Err(e);
            }
        };
        // A stock block's two keys point to one block: its bytes count once.
        let mut last: Option<Ptr> = None;
        for (key, ptr) in &logged.blocks {
            let len = if last == Some(*ptr) {
                0
            } else {
                ptr.len as usize
            };
            w.put_logged(&self.blocks, key, *ptr, len);
            last = Some(*ptr);
        }
        if let Some(end) = logged.end {
            w.put(&self.meta, keys::BLOCKLOG_END, &encode_end(end));
        }
        w.put(&self.meta, keys::LAST_COMMIT, &id.to_be_bytes());
        if let Some(lsn) = checkpoint {
            w.put(&self.meta, keys::CHECKPOINT, &lsn.to_be_bytes());
        }
        span.record("blocks", w.blocks);

        let Writer { batch, info, .. } = w;
        if let Err(e) = batch.commit() {
            self.poison(format!("writing commit {id} failed: {e}"));
            return Err(self.poisoned_err());
        }
        // The id is spent once written, whether or not the sync succeeds.
        *next_id = id.saturating_add(1);
        if sync && let Err(e) = self.durability.sync(&self.db) {
            self.poison(format!("syncing commit {id} failed: {e}"));
            return Err(self.poisoned_err());
        }
        if let Some(lsn) = checkpoint {
            self.materialized
                .store(lsn, std::sync::atomic::Ordering::Release);
        }
        self.counted_level_deltas(durable.level_deltas);
        if !durable.marks.is_empty() {
            let mut marks = self.mark_seqs.write();
            bound_cache(&mut marks, MAX_CACHED_MARKS);
            marks.extend(durable.marks);
        }
        Ok(info)
    }

    /// Stages every raw-row block of `parts` in the block log, then writes
    /// and syncs it: the blocks are durable before any pointer to them is
    /// written (blocklog module docs).
    fn log_blocks(&self, parts: &[RowSet], id: u64) -> Result<Logged, StoreError> {
        let mut out = Logged::default();
        // The big tables' frames go to the disk while the next is encoded.
        self.stage_blocks(parts, |p| &p.sales, id, &mut out)?;
        self.block_log.write_behind()?;
        self.stage_stock_blocks(parts, id, &mut out)?;
        self.block_log.write_behind()?;
        self.stage_blocks(parts, |p| &p.device_health, id, &mut out)?;
        self.stage_blocks(parts, |p| &p.rejected, id, &mut out)?;
        self.stage_blocks(parts, |p| &p.dead_letters, id, &mut out)?;
        if !out.blocks.is_empty() {
            out.end = Some(self.block_log.sync().map_err(|e| {
                self.poison(format!("writing the blocks of commit {id} failed: {e}"));
                self.poisoned_err()
            })?);
        }
        Ok(out)
    }

    /// The point keys and level buckets of `parts`, into the batch.
    fn put_keyed(
        &self,
        w: &mut Writer,
        parts: &[RowSet],
        id: u64,
        durable: &mut Durable,
    ) -> Result<(), StoreError> {
        self.put_levels(w, parts, id, &mut durable.level_deltas)?;
        self.put_marks(w, &concat(parts, |p| &p.watermarks), durable)?;
        self.put_rollups(w, &concat(parts, |p| &p.terminal_rollups))?;
        self.put_batches(w, &concat(parts, |p| &p.batches))
    }

    /// Stages the blocks of one table's rows of `parts`, read in place,
    /// one block per (partition, hour).
    fn stage_blocks<T: BlockRow>(
        &self,
        parts: &[RowSet],
        table: impl Fn(&RowSet) -> &Vec<T>,
        id: u64,
        out: &mut Logged,
    ) -> Result<(), StoreError> {
        let mut sets = self.packers.lock();
        let set = sets.of(T::TABLE);
        set.pack_parts(parts, table);
        for ((part, hour), bytes) in set.blocks() {
            let ptr = self.block_log.stage(bytes)?;
            out.blocks
                .push((keys::block_key(T::TABLE, part, hour, id), ptr));
        }
        set.trim();
        Ok(())
    }

    /// Stages the stock blocks of `parts` (sale lines with their
    /// movements, and the other movements: `packed::stock`), read in
    /// place. A stock block's pointer goes under the `sale_lines` key and
    /// the `stock_movements` key of its (partition, hour) both.
    fn stage_stock_blocks(
        &self,
        parts: &[RowSet],
        id: u64,
        out: &mut Logged,
    ) -> Result<(), StoreError> {
        let mut sets = self.packers.lock();
        let (lines, others) = sets.stock();
        crate::stock_blocks::pack(parts, lines, others);
        for block in crate::stock_blocks::blocks(lines, others)? {
            let ptr = self
                .block_log
                .stage_pieces(BlockFormat::Packed, &block.bytes())?;
            let (part, hour) = block.key;
            if block.stock {
                out.blocks
                    .push((keys::block_key(Table::SaleLines, part, hour, id), ptr));
            }
            out.blocks
                .push((keys::block_key(Table::StockMovements, part, hour, id), ptr));
        }
        lines.trim();
        others.trim();
        Ok(())
    }

    /// Watermarks: the highest seq wins (a watermark of 0 is none).
    fn put_marks(
        &self,
        w: &mut Writer,
        rows: &[WatermarkRow],
        durable: &mut Durable,
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        for r in blocks::dedupe(rows, |r| r.device, |old, new| new.seq >= old.seq) {
            if self.durable_watermark(r.device)? >= r.seq {
                continue;
            }
            w.put(
                &self.marks,
                &keys::watermark_key(r.device),
                &crate::archive::encode_one(&r)?,
            );
            durable.marks.push((r.device, r.seq));
        }
        Ok(())
    }

    /// Rollups: absolute values; of two for one minute, the one that
    /// counts more sales and refunds wins. Every event a shard adds to a
    /// minute raises that count by one, so it orders a minute's versions.
    /// One commit holds units in arrival order, which is not always the
    /// shard's apply order: "last in the commit wins" stored an older
    /// rollup when a slow commit gathered many units (found by the
    /// slow-storage test).
    fn put_rollups(&self, w: &mut Writer, rows: &[TerminalRollupRow]) -> Result<(), StoreError> {
        let counted = |r: &TerminalRollupRow| u64::from(r.sales) + u64::from(r.refunds);
        let rows = blocks::dedupe(
            rows,
            |r| (r.store, r.day, r.terminal, r.minute),
            |old, new| counted(new) >= counted(old),
        );
        for r in &rows {
            let key = keys::rollup_key(r.store, r.day, r.terminal, r.minute);
            w.put(&self.rollups, &key, &crate::archive::encode_one(r)?);
        }
        Ok(())
    }

    /// The batch ledger: one point key per device batch, the last write wins.
    fn put_batches(&self, w: &mut Writer, rows: &[BatchRow]) -> Result<(), StoreError> {
        let rows = blocks::dedupe(rows, |r| (r.device, r.seq), |_, _| true);
        for r in &rows {
            let key = keys::batch_key(r.device, r.seq);
            w.put(&self.batches, &key, &crate::archive::encode_one(r)?);
        }
        Ok(())
    }

    /// The durable watermark of `device`, from the cache or the disk (and
    /// then cached). Call it with the commit lock held, so that no commit
    /// is between its write and its sync.
    pub(super) fn durable_watermark(&self, device: u64) -> Result<u64, StoreError> {
        if let Some(seq) = self.mark_seqs.read().get(&device) {
            return Ok(*seq);
        }
        let seq = match self
            .marks
            .get(keys::watermark_key(device))
            .map_err(|e| backend_err("reading a watermark", e))?
        {
            Some(v) => crate::archive::decode_one::<WatermarkRow>(&v, &mut AlignedVec::new())?.seq,
            None => 0,
        };
        let mut marks = self.mark_seqs.write();
        bound_cache(&mut marks, MAX_CACHED_MARKS);
        marks.insert(device, seq);
        Ok(seq)
    }
}

impl EmbeddedStore {
    /// One journal append, under the journal's lock; a failure poisons
    /// the store.
    pub(super) fn append_to_journal(
        &self,
        append: impl FnOnce(&mut Journal) -> Result<(), JournalError>,
    ) -> Result<(), StoreError> {
        self.check_writable()?;
        append(&mut self.journal.lock()).map_err(|e| {
            let e = StoreError::Backend {
                op: "journal append",
                source: Box::new(e),
            };
            self.poison_on(&e);
            e
        })
    }
}

/// Device watermarks kept in memory (16 bytes each).
#[cfg(not(test))]
const MAX_CACHED_MARKS: usize = 1 << 20;

/// Packs the sales, and the sale lines and stock movements (stock blocks,
/// `packed::stock`), of `rows` into their blocks as a commit does,
/// writing nothing; returns the blocks' bytes.
/// `sets` keeps the packers from call to call, as the store does.
///
/// For the `store_commit` bench: packing is the CPU of the block log's
/// write, measured here apart from the disk's noise. Not an API.
#[doc(hidden)]
pub fn pack_for_bench(rows: &RowSet, sets: &mut PackersForBench) -> usize {
    fn table<T: BlockRow>(
        rows: &RowSet,
        of: impl Fn(&RowSet) -> &Vec<T>,
        sets: &mut TableBlockSets,
    ) -> usize {
        let set = sets.of(T::TABLE);
        set.pack_parts(std::slice::from_ref(rows), of);
        let bytes = set.blocks().map(|(_, b)| b.len()).sum();
        set.trim();
        bytes
    }
    let sets = &mut sets.0;
    let sales = table(rows, |p| &p.sales, sets);
    let (lines, others) = sets.stock();
    crate::stock_blocks::pack(std::slice::from_ref(rows), lines, others);
    let stock = crate::stock_blocks::blocks(lines, others)
        .map(|blocks| {
            blocks
                .iter()
                .flat_map(|b| b.bytes())
                .map(<[u8]>::len)
                .sum::<usize>()
        })
        .unwrap_or(0);
    lines.trim();
    others.trim();
    sales + stock
}

/// The packers [`pack_for_bench`] keeps.
#[doc(hidden)]
#[derive(Default)]
pub struct PackersForBench(TableBlockSets);

impl std::fmt::Debug for PackersForBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PackersForBench")
    }
}

#[cfg(test)]
const MAX_CACHED_MARKS: usize = 64;

/// Empties a cache that reached `max` entries: what it held is in the
/// tables, and the next miss reads it back (under the commit lock, so it
/// is what the tables hold). Crude next to an LRU, but bounded, and a
/// working set under the limit never pays for it.
fn bound_cache<K: Eq + std::hash::Hash, V>(cache: &mut super::FastMap<K, V>, max: usize) {
    if cache.len() >= max {
        cache.clear();
        cache.shrink_to(max / 4);
    }
}
