//! Row sets handed back by the flusher once their rows are in the tables,
//! for the shard actors to fill again.
//!
//! Why: each batch part's rows went into a fresh `RowSet` whose vectors
//! grew by doubling, each step a new allocation, a copy of the rows so
//! far and fresh pages to fault in (about 3% of the server's CPU in
//! memmove, malloc and page faults at peak). The store reads a part's rows
//! in place, and the part comes back here emptied, with its capacity;
//! reused, a part fills vectors already the size such parts take.
//!
//! Bounded: at most `max` sets wait here, and a set that grew past
//! [`MAX_SET_BYTES`] (a huge batch, a part full of rejected events) is
//! dropped rather than kept; so is one too small to be worth a place
//! ([`MIN_SET_BYTES`]: the ledger's few rows of a batch). A part of 128 events is some 40 KiB, so a
//! full pool of 1,024 is about 40 MiB, the rows of two flushes at peak.

use parking_lot::Mutex;
use tillstream_storage::RowSet;

/// A set whose fixed-size vectors hold more than this is not kept.
pub(crate) const MAX_SET_BYTES: usize = 256 << 10;

/// Nor is one whose vectors hold less: the assembler's sets of a batch's
/// ledger rows, a part of a few health pings. A shard handed one grows
/// its vectors from nothing again, and the ledger's sets, a third of
/// those handed back, took places in the pool that sets with room need.
pub(crate) const MIN_SET_BYTES: usize = 4 << 10;

/// Empty row sets with capacity, shared by the shards and the flusher.
#[derive(Debug)]
pub(crate) struct RowSetPool {
    free: Mutex<Vec<RowSet>>,
    max: usize,
}

impl RowSetPool {
    /// A pool keeping at most `max` sets.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            free: Mutex::new(Vec::with_capacity(max)),
            max,
        }
    }

    /// An empty set: one handed back, or a new one.
    pub(crate) fn take(&self) -> RowSet {
        self.free.lock().pop().unwrap_or_default()
    }

    /// Hands back a set whose rows are no longer needed; it is emptied,
    /// and kept if there is room and it is not too big.
    pub(crate) fn give(&self, mut set: RowSet) {
        if !(MIN_SET_BYTES..=MAX_SET_BYTES).contains(&capacity_bytes(&set)) {
            return;
        }
        set.clear();
        let mut free = self.free.lock();
        if free.len() < self.max {
            free.push(set);
        }
    }

    /// Sets waiting (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.free.lock().len()
    }
}

/// Bytes the vectors of `set` hold room for (not counting what rejected
/// events and dead letters point to, which `clear` frees).
fn capacity_bytes(set: &RowSet) -> usize {
    fn of<T>(v: &Vec<T>) -> usize {
        v.capacity() * size_of::<T>()
    }
    of(&set.sales)
        + of(&set.sale_lines)
        + of(&set.stock_movements)
        + of(&set.stock_levels)
        + of(&set.terminal_rollups)
        + of(&set.device_health)
        + of(&set.watermarks)
        + of(&set.batches)
        + of(&set.rejected)
        + of(&set.dead_letters)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tillstream_storage::SaleLineRow;

    fn with_lines(n: usize) -> RowSet {
        let mut set = RowSet::default();
        set.sale_lines.reserve_exact(n);
        set
    }

    #[test]
    fn a_set_comes_back_empty_with_its_capacity() {
        let pool = RowSetPool::new(2);
        let mut set = with_lines(100);
        let cap = set.sale_lines.capacity();
        set.watermarks.push(tillstream_storage::WatermarkRow {
            device: 1,
            seq: 2,
            updated_at_us: 3,
        });
        pool.give(set);
        let again = pool.take();
        assert!(again.is_empty());
        assert_eq!(again.sale_lines.capacity(), cap);
        assert!(pool.take().sale_lines.capacity() == 0, "then new ones");
    }

    #[test]
    fn the_pool_is_bounded_in_sets_and_bytes() {
        let pool = RowSetPool::new(2);
        for _ in 0..5 {
            pool.give(with_lines(100));
        }
        assert_eq!(pool.len(), 2);
        let big = MAX_SET_BYTES / size_of::<SaleLineRow>() + 1;
        let pool = RowSetPool::new(2);
        pool.give(with_lines(big));
        assert_eq!(pool.len(), 0, "a set past the byte bound is dropped");
    }

    #[test]
    fn a_set_with_no_room_for_a_part_is_not_kept() {
        let pool = RowSetPool::new(2);
        // What the assembler hands back: a batch's ledger rows.
        let mut ledger = RowSet::default();
        ledger.watermarks.push(tillstream_storage::WatermarkRow {
            device: 1,
            seq: 2,
            updated_at_us: 3,
        });
        pool.give(ledger);
        pool.give(with_lines(MIN_SET_BYTES / size_of::<SaleLineRow>() - 1));
        assert_eq!(pool.len(), 0);
        pool.give(with_lines(MIN_SET_BYTES / size_of::<SaleLineRow>() + 1));
        assert_eq!(pool.len(), 1);
    }
}
