//! `stock_levels` in the embedded store: bucket blocks plus deltas.
//!
//! A store's levels live under its prefix in two kinds of values:
//! - **bucket blocks** (`store | bucket`): the store's SKUs of one of
//!   256 buckets (`keys::level_bucket`), sorted by SKU;
//! - **deltas** (`store | FF FF | commit`): the levels one commit changed in
//!   that store, sorted by SKU.
//!
//! A level is the row with the highest `version` among all of them (ties
//! keep the one written first), so a delta never needs to read what is
//! stored, and an older version landing late changes nothing.
//!
//! Why deltas: rewriting every touched bucket made a commit's cost grow
//! with the SKUs a store holds, not with what it changed. Once a commit
//! of 10,000 events touched nearly all 2,560 buckets of 10 stores, each
//! commit rewrote every resident level: 45 MB a commit at 700 k SKUs, and
//! the engine fell from ~220 k to ~130 k events/s. A delta costs what
//! changed. When a store holds [`MAX_LEVEL_DELTAS`] of them, the next
//! commit folds them and its own rows into the bucket blocks instead
//! (compaction, in the same atomic batch), so a read merges few deltas
//! and the rewrite is paid once every that many commits.
//!
//! One store compacts per commit: the one with the most deltas, and
//! beside it only a store at [`HARD_MAX_LEVEL_DELTAS`]. A fleet touches
//! every store in every commit, so their counts rose in step and every
//! 25th commit had compacted all of them at once: at 700 k SKUs over 10
//! stores, that commit decoded and re-encoded every level, some 80 MB of
//! the server's 440 MB heap peak (heaptrack). Held back a commit or more,
//! the stores fall out of step and stay so.

use rkyv::util::AlignedVec;

use super::commit::Writer;
use super::packed::{self, Packer, RecentPeak};
use super::{EmbeddedStore, backend_err, keys};
use tillstream_storage::rows::{RowSet, StockLevelRow, Table};
use tillstream_storage::store::StoreError;

/// Deltas a store keeps before a commit compacts them.
#[cfg(not(test))]
pub(super) const MAX_LEVEL_DELTAS: u32 = 24;
#[cfg(test)]
pub(super) const MAX_LEVEL_DELTAS: u32 = 3;

/// Deltas at which a store compacts even in a commit that compacts
/// another: what a read may have to merge, at most.
pub(super) const HARD_MAX_LEVEL_DELTAS: u32 = 2 * MAX_LEVEL_DELTAS;

/// Stores whose delta count is kept in memory; past it the counts are
/// dropped and read again (a prefix scan of keys) on the next touch.
#[cfg(not(test))]
pub(super) const MAX_COUNTED_STORES: usize = 1 << 16;
#[cfg(test)]
pub(super) const MAX_COUNTED_STORES: usize = 4;

/// Keeps, per (store, SKU), the row with the highest version; of equal
/// versions, the first in `rows`. Leaves `rows` sorted by (store, SKU).
pub(super) fn newest_levels(rows: &mut Vec<StockLevelRow>) {
    newest_levels_by(rows, |r| r.store);
}

/// [`newest_levels`], the rows left sorted by (`group`, SKU). `group` must
/// be the same for every row of one (store, SKU), and (`group`, SKU)
/// name one (store, SKU): the store itself, or, for rows of one store,
/// the SKU's bucket.
fn newest_levels_by(rows: &mut Vec<StockLevelRow>, group: impl Fn(&StockLevelRow) -> u32) {
    let mut order: Vec<u128> = rows
        .iter()
        .zip(0u32..)
        .map(|(r, i)| sort_key(group(r), r.sku, i))
        .collect();
    order.sort_unstable();
    // Sized to the levels, not the rows: a compaction's rows are 24
    // commits of one store, each level in several of them, and this
    // vector lives beside them (the server's heap peak at 1 M SKUs, in
    // heaptrack, was a compaction here).
    let mut newest = Vec::with_capacity(order.chunk_by(same_level).count());
    pick_newest(&order, |i| rows.get(i as usize), &mut newest);
    *rows = newest;
}

/// Of sort keys `(group, SKU, index)` in order, appends to `out` the row
/// each run of one (group, SKU) prefers: the first of its highest
/// version. `row` finds the row an index names.
///
/// Why keys and not the rows: moving the rows themselves in a stable sort
/// was 2.6% of the server's CPU, and a u128 compares as two words where a
/// (store, SKU, !version, index) tuple took four comparisons. Within a run
/// the indexes are in order, so the first of the highest version is the
/// first found.
fn pick_newest<'r>(
    order: &[u128],
    row: impl Fn(u32) -> Option<&'r StockLevelRow>,
    out: &mut Vec<StockLevelRow>,
) {
    for run in order.chunk_by(same_level) {
        let mut best: Option<&StockLevelRow> = None;
        for &k in run {
            if let Some(r) = row(k as u32).filter(|r| best.is_none_or(|b| r.version > b.version)) {
                best = Some(r);
            }
        }
        out.extend(best.copied());
    }
}

/// Whether two sort keys name the same (group, SKU).
fn same_level(a: &u128, b: &u128) -> bool {
    a >> 32 == b >> 32
}

/// Rows of room the level scratch may keep, whatever the last commit used.
const SCRATCH_KEPT_ROWS: usize = 4096;

/// What [`EmbeddedStore::put_levels`] works in, kept from commit to commit
/// (taken under `commit_lock`).
///
/// Why kept: a commit's level rows were first copied into one vector, then
/// sorted into a second, and packed by a new packer, each fresh from the
/// allocator; at the peak rate their page faults and the copy were about
/// 4% of the server's CPU. Now the rows are read in place in the parts,
/// and these buffers keep their room, within a few times what recent
/// commits used (as `Packer::release_spare` does for the blocks).
pub(super) struct LevelScratch {
    /// Where each of the commit's level rows is: (part, row).
    at: Vec<(u32, u32)>,
    /// Sort keys (store, SKU, index into `at`).
    order: Vec<u128>,
    /// The newest level of each (store, SKU) the commit changed, sorted.
    newest: Vec<StockLevelRow>,
    packer: Packer,
    /// Level rows of recent commits, at most.
    recent_peak: RecentPeak,
}

impl Default for LevelScratch {
    fn default() -> Self {
        Self {
            at: Vec::new(),
            order: Vec::new(),
            newest: Vec::new(),
            packer: Packer::new(Table::StockLevels),
            recent_peak: RecentPeak::default(),
        }
    }
}

impl LevelScratch {
    /// Fills `newest` with the newest level of each (store, SKU) of
    /// `parts` (of equal versions, the first in the parts' order), sorted
    /// by (store, SKU), reading the rows where they are.
    fn gather_newest(&mut self, parts: &[RowSet]) -> Result<(), StoreError> {
        self.at.clear();
        self.order.clear();
        self.newest.clear();
        for (p, part) in (0u32..).zip(parts) {
            for (r, row) in (0u32..).zip(&part.stock_levels) {
                let i = u32::try_from(self.at.len()).map_err(|_| StoreError::Backend {
                    op: "sorting a commit's stock levels",
                    source: "over 2^32 level rows in one commit".into(),
                })?;
                self.at.push((p, r));
                self.order.push(sort_key(row.store, row.sku, i));
            }
        }
        self.order.sort_unstable();
        let at = &self.at;
        let row = |i: u32| {
            let &(p, r) = at.get(i as usize)?;
            parts.get(p as usize)?.stock_levels.get(r as usize)
        };
        pick_newest(&self.order, row, &mut self.newest);
        Ok(())
    }

    /// Lets go of room far past what recent commits used; `biggest_block`:
    /// the most the packer held this commit.
    fn trim(&mut self, biggest_block: usize) {
        if let Some(keep) =
            self.recent_peak
                .note(self.at.len(), self.at.capacity(), SCRATCH_KEPT_ROWS)
        {
            self.at = Vec::with_capacity(keep);
            self.order = Vec::with_capacity(keep);
            self.newest = Vec::with_capacity(keep);
        }
        self.packer.release_spare(biggest_block);
    }
}

/// `hi` (32 bits), `mid` (64) and `lo` (32), in that order of weight: a
/// key that sorts as the triple does.
fn sort_key(hi: u32, mid: u64, lo: u32) -> u128 {
    (u128::from(hi) << 96) | (u128::from(mid) << 32) | u128::from(lo)
}

/// How one value under a store's prefix holds levels, told by its key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LevelValue {
    /// The first layout: one level per key, in rkyv.
    Legacy,
    /// A bucket block.
    Bucket(Encoding),
    /// A delta.
    Delta(Encoding),
}

/// How a block of levels is encoded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// An rkyv `Vec<StockLevelRow>`, as data format 1 wrote them.
    Rkyv,
    /// The packed format (`packed`), what this build writes.
    Packed,
}

fn kind_of(key: &[u8]) -> Result<LevelValue, StoreError> {
    let packed = keys::is_packed_level_key(key);
    Ok(match key.len() {
        keys::LEGACY_LEVEL_KEY_LEN => LevelValue::Legacy,
        keys::RKYV_LEVEL_BUCKET_KEY_LEN => LevelValue::Bucket(Encoding::Rkyv),
        keys::RKYV_LEVEL_DELTA_KEY_LEN => LevelValue::Delta(Encoding::Rkyv),
        keys::LEVEL_BUCKET_KEY_LEN if packed => LevelValue::Bucket(Encoding::Packed),
        keys::LEVEL_DELTA_KEY_LEN if packed => LevelValue::Delta(Encoding::Packed),
        len => {
            return Err(StoreError::Corrupt {
                what: "stock_levels key",
                reason: format!("{len} bytes, not a key of any level layout"),
            });
        }
    })
}

/// Appends the levels of one stored value to `out`.
fn decode_into(
    key: &[u8],
    value: &[u8],
    buf: &mut AlignedVec,
    out: &mut Vec<StockLevelRow>,
) -> Result<(), StoreError> {
    match kind_of(key)? {
        LevelValue::Legacy => out.push(crate::archive::decode_one::<StockLevelRow>(value, buf)?),
        LevelValue::Bucket(Encoding::Rkyv) | LevelValue::Delta(Encoding::Rkyv) => {
            out.extend(crate::archive::decode_block::<StockLevelRow>(value, buf)?);
        }
        LevelValue::Bucket(Encoding::Packed) | LevelValue::Delta(Encoding::Packed) => {
            packed::decode_each(value, |row| out.push(row))?;
        }
    }
    Ok(())
}

/// Packs `rows` as one block of levels, in `packer`'s buffer.
///
/// Why packed: in rkyv a level took 88 bytes, and a commit of a busy
/// fleet changes tens of thousands of them. Those deltas were most of
/// what fjall wrote, twice (its journal, then its tables), and fjall's
/// writes were what delayed the journal's fdatasync, which every
/// acknowledgement waits for: with fjall's files on tmpfs, ack p99 at
/// half the peak rate fell from ~33 to ~17-29 ms.
fn encode_levels<'p>(packer: &'p mut Packer, rows: &[StockLevelRow]) -> &'p [u8] {
    packer.restart(Table::StockLevels);
    for r in rows {
        packer.push(r);
    }
    packer.finish().as_slice()
}

fn store_of(key: &[u8]) -> Result<u32, StoreError> {
    key.get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt {
            what: "stock_levels key",
            reason: format!("{} bytes, under 4", key.len()),
        })
}

/// The bucket a bucket block's key names (`store | bucket`).
fn bucket_of(key: &[u8]) -> Result<u16, StoreError> {
    key.get(4..6)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt {
            what: "stock_levels key",
            reason: format!("{} bytes, not a bucket key", key.len()),
        })
}

/// Of a commit's stores, given their delta counts in order, the one that
/// compacts: the first with the most deltas, if that is at least
/// [`MAX_LEVEL_DELTAS`] (module docs).
fn compaction_pick(deltas: impl Iterator<Item = u32>) -> Option<usize> {
    deltas
        .enumerate()
        .filter(|&(_, n)| n >= MAX_LEVEL_DELTAS)
        .min_by_key(|&(i, n)| (std::cmp::Reverse(n), i))
        .map(|(i, _)| i)
}

/// Reads the levels stored under `prefix` (all stores, or one) and hands
/// each current level to `f`, one store at a time: the store's values
/// are gathered and, when it has deltas or first-layout keys, merged.
pub(super) fn each_level(
    iter: impl Iterator<Item = fjall::Guard>,
    f: &mut dyn FnMut(StockLevelRow),
) -> Result<(), StoreError> {
    let mut buf = AlignedVec::new();
    let mut rows: Vec<StockLevelRow> = Vec::new();
    let mut store = None;
    let mut merge = false;
    let mut emit = |rows: &mut Vec<StockLevelRow>, merge: bool| {
        if merge {
            newest_levels(rows);
        }
        rows.drain(..).for_each(&mut *f);
    };
    for guard in iter {
        let (key, value) = guard
            .into_inner()
            .map_err(|e| backend_err("reading levels", e))?;
        let at = store_of(&key)?;
        if store != Some(at) {
            emit(&mut rows, merge);
            (store, merge) = (Some(at), false);
        }
        merge |= !matches!(kind_of(&key)?, LevelValue::Bucket(_));
        decode_into(&key, &value, &mut buf, &mut rows)?;
    }
    emit(&mut rows, merge);
    Ok(())
}

impl EmbeddedStore {
    /// Stock levels: one delta block per store this commit changed, or,
    /// for one store at [`MAX_LEVEL_DELTAS`] (and any at
    /// [`HARD_MAX_LEVEL_DELTAS`]), its levels compacted into its bucket
    /// blocks (module docs). `counts` gets each store's new delta count,
    /// to keep once the commit is written.
    pub(super) fn put_levels(
        &self,
        w: &mut Writer,
        parts: &[RowSet],
        id: u64,
        counts: &mut Vec<(u32, u32)>,
    ) -> Result<(), StoreError> {
        let mut scratch = self.level_scratch.lock();
        scratch.gather_newest(parts)?;
        let LevelScratch { newest, packer, .. } = &mut *scratch;
        let mut runs = Vec::new();
        for run in newest.chunk_by(|a, b| a.store == b.store) {
            let store = run[0].store;
            let known = self.level_deltas.lock().get(&store).copied();
            let deltas = match known {
                Some(n) => n,
                None => self.count_level_deltas(store)?,
            };
            runs.push((store, run, deltas));
        }
        let first = compaction_pick(runs.iter().map(|&(_, _, deltas)| deltas));
        let mut biggest_block = 0;
        for (i, (store, run, deltas)) in runs.into_iter().enumerate() {
            if Some(i) == first || deltas >= HARD_MAX_LEVEL_DELTAS {
                self.compact_levels(w, store, run, packer)?;
                counts.push((store, 0));
            } else {
                let value = encode_levels(packer, run);
                w.put(&self.levels, &keys::level_delta_key(store, id), value);
                counts.push((store, deltas + 1));
            }
            biggest_block = biggest_block.max(packer.packed_bytes());
        }
        scratch.trim(biggest_block);
        Ok(())
    }

    /// Keeps the delta counts of a written commit.
    pub(super) fn counted_level_deltas(&self, counts: Vec<(u32, u32)>) {
        if counts.is_empty() {
            return;
        }
        let mut known = self.level_deltas.lock();
        if known.len() >= MAX_COUNTED_STORES {
            known.clear();
        }
        known.extend(counts);
    }

    /// Deltas stored for `store` (keys only). Called under the commit
    /// lock, so it is what the tables hold.
    fn count_level_deltas(&self, store: u32) -> Result<u32, StoreError> {
        let mut n = 0u32;
        for guard in self.levels.prefix(keys::level_delta_prefix(store)) {
            guard
                .key()
                .map_err(|e| backend_err("counting level deltas", e))?;
            n = n.saturating_add(1);
        }
        Ok(n)
    }

    /// Folds `store`'s deltas, and `run` (this commit's newest levels of
    /// it), into its bucket blocks; removes the deltas.
    ///
    /// One bucket at a time: what changed (the deltas and `run`) is
    /// decoded first, then the bucket blocks are read in key order, and
    /// each one that changed is merged and written. Decoding the whole
    /// store at once had held every level of it twice over (100 k rows a
    /// store at 1 M SKUs over 10 stores, 50 MB of the server's heap peak),
    /// and a bucket nothing changed is now left as it is. A changed
    /// bucket is written packed, and its rkyv block from data format 1,
    /// if any, removed; first-layout keys are left: reads merge them with
    /// the buckets by version.
    fn compact_levels(
        &self,
        w: &mut Writer,
        store: u32,
        run: &[StockLevelRow],
        packer: &mut Packer,
    ) -> Result<(), StoreError> {
        let span = tracing::debug_span!("compact_levels", store, rows = tracing::field::Empty);
        let _entered = span.enter();
        let mut buf = AlignedVec::new();
        // The deltas' values first, for their row counts: `changed` is
        // allocated once, at its size, where growing it by doubling had
        // held twice the rows at the heap's peak.
        let mut deltas = Vec::new();
        let mut rows_in_deltas = 0;
        for guard in self.levels.prefix(keys::level_delta_prefix(store)) {
            let (key, value) = guard
                .into_inner()
                .map_err(|e| backend_err("reading level deltas", e))?;
            rows_in_deltas += packed::row_count(&value).unwrap_or(0);
            deltas.push((key, value));
        }
        let mut changed = Vec::with_capacity(rows_in_deltas + run.len());
        for (key, value) in &deltas {
            decode_into(key, value, &mut buf, &mut changed)?;
        }
        let deltas: Vec<_> = deltas.into_iter().map(|(key, _)| key).collect();
        changed.extend_from_slice(run);
        // In bucket order, by (bucket, SKU): all of one store, so that
        // names the level.
        newest_levels_by(&mut changed, |r| u32::from(keys::level_bucket(r.sku)));
        span.record("rows", changed.len());

        let buckets = keys::level_bucket_prefix(store, 0)..keys::level_delta_prefix(store);
        let mut stored = self
            .levels
            .range(buckets)
            .filter_map(|guard| match guard.into_inner() {
                Err(e) => Some(Err(backend_err("reading levels", e))),
                Ok((key, value)) => match kind_of(&key) {
                    Err(e) => Some(Err(e)),
                    Ok(LevelValue::Bucket(enc)) => {
                        Some(bucket_of(&key).map(|b| (b, enc, key, value)))
                    }
                    Ok(LevelValue::Legacy | LevelValue::Delta(_)) => None,
                },
            });
        let mut next_stored = stored.next().transpose()?;
        let mut changed = changed.as_slice();
        let mut rows = Vec::new();
        // Buckets in order, each with a changed SKU; the stored blocks of
        // the others are passed over, and those after the last change are
        // not read at all.
        while let Some(first) = changed.first() {
            let bucket = keys::level_bucket(first.sku);
            let split = changed.partition_point(|r| keys::level_bucket(r.sku) == bucket);
            let (here, rest) = changed.split_at(split);
            changed = rest;
            // Stored rows first: of equal versions, what is stored stays.
            rows.clear();
            while let Some((b, enc, key, value)) = next_stored.take() {
                if b > bucket {
                    next_stored = Some((b, enc, key, value));
                    break;
                }
                next_stored = stored.next().transpose()?;
                if b == bucket {
                    decode_into(&key, &value, &mut buf, &mut rows)?;
                    if enc == Encoding::Rkyv {
                        w.remove(&self.levels, key);
                    }
                }
            }
            rows.extend_from_slice(here);
            newest_levels(&mut rows);
            let value = encode_levels(packer, &rows);
            w.put(&self.levels, &keys::level_bucket_key(store, bucket), value);
        }
        for key in deltas {
            w.remove(&self.levels, key);
        }
        Ok(())
    }

    /// The stored deltas of `store` (for tests of the bound).
    #[cfg(test)]
    pub(super) fn level_delta_keys(&self, store: u32) -> Result<u32, StoreError> {
        self.count_level_deltas(store)
    }
}

#[cfg(test)]
#[path = "tests_levels.rs"]
mod tests;
