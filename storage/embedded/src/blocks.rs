//! Blocks: a commit's rows of one table packed into one block per
//! (partition, hour) (`packed`), in a single pass over the rows.

use std::hash::Hash;

use super::packed::Packer;
use crate::archive::StoredRow;
use tillstream_storage::rows::*;

/// A row of a time-series table (`Packed::TABLE`), stored in blocks
/// grouped by (partition, hour).
pub(crate) trait BlockRow: StoredRow + Clone + super::packed::Packed {
    /// The block partition: store, device or 0 (see `keys::part_width`).
    fn part(&self) -> u64;
    /// Event (or receipt) time, UTC µs.
    fn ts_us(&self) -> i64;
}

macro_rules! block_row {
    ($ty:ty, |$r:ident| $part:expr) => {
        impl BlockRow for $ty {
            fn part(&self) -> u64 {
                let $r = self;
                $part
            }
            fn ts_us(&self) -> i64 {
                self.ts_us
            }
        }
    };
}

block_row!(SaleRow, |r| u64::from(r.store));
block_row!(SaleLineRow, |r| u64::from(r.store));
block_row!(StockMovementRow, |r| u64::from(r.store));
block_row!(DeviceHealthRow, |r| r.key.device);
block_row!(RejectedEventRow, |r| r.key.device);
block_row!(DeadLetterRow, |_r| 0);

/// Blocks are cut by (partition, hour): see `BlockRow`.
pub(crate) type BlockKey = (u64, u32);

/// The block a row goes to: its (partition, hour).
#[inline(always)]
pub(crate) fn block_key_of<T: BlockRow>(r: &T) -> BlockKey {
    (r.part(), tillstream_storage::time::hour(r.ts_us()))
}

/// How many rows ahead packing asks the cache for: about ten lines of
/// 64-to-100-byte rows, as far as a load's latency reaches at a few ns a
/// row.
pub(crate) const ROWS_AHEAD: usize = 8;

/// Packers kept for the next commit: more blocks than this in one table of
/// a commit (thousands of devices' health rows) get new packers, dropped
/// after it.
const KEPT_PACKERS: usize = 1024;

/// Packs one table's rows of a commit into one block per (partition,
/// hour), in a single pass over the rows.
///
/// Why one pass: a commit's rows are tens of MB that the shards wrote a
/// flush interval ago, out of cache. Grouping them first and packing each
/// group after read every row twice from memory, and the first read (for
/// its partition and time alone) was most of the block writer's time
/// outside packing. Rows of one batch share their partition and mostly
/// their hour, so a row is nearly always packed by the same packer as
/// the row before, found without a lookup.
///
/// The packers and their buffers are kept from commit to commit: fresh
/// ones each commit had been page faults on every commit.
#[derive(Default)]
pub(crate) struct BlockSet {
    packers: Vec<(BlockKey, Packer)>,
    used: usize,
    index: super::FastMap<BlockKey, usize>,
    /// The block the last row went to: the next row nearly always goes
    /// there too, found without a lookup.
    last: Option<(BlockKey, usize)>,
}

impl BlockSet {
    /// Packs `rows`, in order, into blocks by (partition, hour); the
    /// blocks of an earlier call are forgotten.
    pub(crate) fn pack<'a, T: BlockRow + 'a>(&mut self, rows: impl Iterator<Item = &'a T>) {
        self.begin();
        for r in rows {
            self.push_row(r);
        }
        self.end();
    }

    /// Forgets the blocks of the last pack, to pack anew.
    pub(crate) fn begin(&mut self) {
        self.used = 0;
        self.index.clear();
        self.last = None;
    }

    /// Packs `r` into the block of its (partition, hour).
    #[inline]
    pub(crate) fn push_row<T: BlockRow>(&mut self, r: &T) {
        self.push_with(T::TABLE, block_key_of(r), |w| r.pack(w));
    }

    /// Packs a row of `table`, whose fields `fields` writes, into block `key`.
    #[inline]
    pub(crate) fn push_with(
        &mut self,
        table: Table,
        key: BlockKey,
        fields: impl FnOnce(&mut super::packed::RowWriter<'_>),
    ) {
        let at = match self.last {
            Some((k, at)) if k == key => at,
            _ => self.packer_for(table, key),
        };
        self.last = Some((key, at));
        if let Some((_, p)) = self.packers.get_mut(at) {
            p.push_fields(fields);
        }
    }

    /// Ends a pack: the blocks in key order.
    pub(crate) fn end(&mut self) {
        self.packers[..self.used].sort_unstable_by_key(|(k, _)| *k);
        self.last = None;
    }

    /// Packs one table's rows of `parts`, read in place, in order (see
    /// [`BlockSet::pack`]).
    pub(crate) fn pack_parts<T: BlockRow>(
        &mut self,
        parts: &[RowSet],
        table: impl Fn(&RowSet) -> &Vec<T>,
    ) {
        self.pack(parts.iter().flat_map(|p| {
            let rows = table(p);
            // The rows were written by the shards a flush interval ago and
            // have left the cache: ask for those a few ahead while this one
            // is packed, so the loads overlap.
            rows.iter().enumerate().map(move |(i, r)| {
                if let Some(ahead) = rows.get(i + ROWS_AHEAD) {
                    tillstream_storage::hint::prefetch(ahead);
                }
                r
            })
        }));
    }

    /// The index of the packer of block `key`, started if new.
    fn packer_for(&mut self, table: Table, key: BlockKey) -> usize {
        if let Some(&at) = self.index.get(&key) {
            return at;
        }
        let at = self.used;
        match self.packers.get_mut(at) {
            Some((k, p)) => {
                *k = key;
                p.restart(table);
            }
            None => self.packers.push((key, Packer::new(table))),
        }
        self.used += 1;
        self.index.insert(key, at);
        at
    }

    /// The blocks of the last [`BlockSet::pack`], sorted by key: each
    /// (partition, hour) and the block's bytes.
    pub(crate) fn blocks(&mut self) -> impl Iterator<Item = (BlockKey, &[u8])> {
        self.packers[..self.used]
            .iter_mut()
            .map(|(k, p)| (*k, p.finish().as_slice()))
    }

    /// Forgets the blocks of the last [`BlockSet::pack`] and drops what
    /// the next commit is unlikely to need: packers past
    /// [`KEPT_PACKERS`], and buffer room far past what each packer packed
    /// this time (`Packer::release_spare`; a packer this commit did not
    /// use packed nothing).
    pub(crate) fn trim(&mut self) {
        self.packers.truncate(KEPT_PACKERS);
        for (at, (_, p)) in self.packers.iter_mut().enumerate() {
            let used = if at < self.used { p.packed_bytes() } else { 0 };
            p.release_spare(used);
        }
        self.used = 0;
    }

    /// Bytes the packers' buffers hold room for.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.packers.iter().map(|(_, p)| p.capacity()).sum()
    }
}

/// One [`BlockSet`] per table. Each set's buffers are then sized to its
/// own table's blocks: packers shared by every table kept room for the
/// biggest table's blocks, and `BlockSet::trim` would have let go of it
/// after each commit's smallest table only to grow it again the next.
#[derive(Default)]
pub(crate) struct TableBlockSets {
    sets: [BlockSet; Table::ALL.len()],
    /// The stock blocks' lines (`packed::stock`).
    stock_lines: BlockSet,
}

impl TableBlockSets {
    /// The packers of `table`'s blocks.
    pub(crate) fn of(&mut self, table: Table) -> &mut BlockSet {
        &mut self.sets[Self::at(table)]
    }

    fn at(table: Table) -> usize {
        Table::ALL.iter().position(|t| *t == table).unwrap_or(0)
    }

    /// The packers of the stock blocks' lines and of the other movements
    /// (`packed::stock`).
    pub(crate) fn stock(&mut self) -> (&mut BlockSet, &mut BlockSet) {
        let others = &mut self.sets[Self::at(Table::StockMovements)];
        (&mut self.stock_lines, others)
    }
}

/// Keeps, for every key, the one row `keep_new(old, new)` prefers; later
/// rows win ties when `keep_new` says so. Returns them in key order.
///
/// Why key order: the rows become point keys of one fjall batch, which
/// inserts them into its memtable's skip list one after the other. In
/// arrival order (devices interleaved) each insert walked a new path
/// through a memtable of hundreds of thousands of keys, a cache miss a
/// level; in key order each walk mostly retraces the one before.
pub(crate) fn dedupe<T: Clone, K: Hash + Eq + Ord>(
    rows: &[T],
    key: impl Fn(&T) -> K,
    keep_new: impl Fn(&T, &T) -> bool,
) -> Vec<T> {
    // A map first, then a sort of what it kept: at the peak a commit's
    // rollup rows are many parts' copies of a few minutes, and sorting
    // them all cost more than the map.
    let mut at: super::FastMap<K, usize> =
        super::FastMap::with_capacity_and_hasher(rows.len(), Default::default());
    let mut out: Vec<T> = Vec::with_capacity(rows.len());
    for r in rows {
        match at.get(&key(r)) {
            Some(&i) => {
                if let Some(slot) = out.get_mut(i).filter(|slot| keep_new(slot, r)) {
                    *slot = r.clone();
                }
            }
            None => {
                at.insert(key(r), out.len());
                out.push(r.clone());
            }
        }
    }
    out.sort_unstable_by_key(|r| key(r));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_keeps_the_preferred_row() {
        let rows = [(1, 5), (2, 1), (1, 3), (1, 9)];
        let kept = dedupe(&rows, |r| r.0, |old, new| new.1 >= old.1);
        assert_eq!(kept, vec![(1, 9), (2, 1)]);
        let rows = [(7, 1), (3, 2), (5, 3), (3, 1)];
        let kept = dedupe(&rows, |r| r.0, |_, _| true);
        assert_eq!(
            kept,
            vec![(3, 1), (5, 3), (7, 1)],
            "key order, the last row of a key"
        );
    }
}
