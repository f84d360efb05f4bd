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
//!
//! And it shrinks: [`RowSetPool::trim`], called by each passivation
//! sweep, drops the sets no one needed since the sweep before (the fewest
//! that waited here at any moment since then). Under load that is the
//! surplus over what the shards use; once devices stop, the whole pool,
//! which heaptrack found holding 74 MB of a 337 MB heap after a run.

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
    free: Mutex<Free>,
    max: usize,
}

#[derive(Debug)]
struct Free {
    sets: Vec<RowSet>,
    /// The fewest sets that waited here since the last trim: that many
    /// were not needed all that time.
    low: usize,
    /// The room of the last set handed back within the bounds: what a
    /// new one starts with.
    shape: Shape,
    /// Sets taken and not yet handed back. New sets get the shape's room
    /// only while fewer than `max` are out, so that sets with room are
    /// bounded as the pool is: a fleet of thousands of small batches has
    /// as many parts in flight, each of a few rows. (A set dropped
    /// elsewhere, never handed back, counts as out for good, which only
    /// gives later new sets less room.)
    out: usize,
}

/// Rows each of a set's vectors of fixed-size rows held room for.
///
/// Why a new set starts with the room of the last one handed back: a set
/// from `RowSet::default` grew each vector by doubling, a reallocation,
/// a copy of the rows so far and fresh pages each step: 1.6% of the
/// server's CPU at the peak rate in a profile, 0.7% with this. New sets
/// are made when the pool is empty: while the shards' budget fills, and
/// after each trim under memory pressure, which drops the sets unused
/// for a second.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Shape {
    sales: usize,
    sale_lines: usize,
    stock_movements: usize,
    stock_levels: usize,
    terminal_rollups: usize,
    device_health: usize,
}

impl Shape {
    fn of(set: &RowSet) -> Self {
        Shape {
            sales: set.sales.capacity(),
            sale_lines: set.sale_lines.capacity(),
            stock_movements: set.stock_movements.capacity(),
            stock_levels: set.stock_levels.capacity(),
            terminal_rollups: set.terminal_rollups.capacity(),
            device_health: set.device_health.capacity(),
        }
    }

    fn new_set(self) -> RowSet {
        RowSet {
            sales: Vec::with_capacity(self.sales),
            sale_lines: Vec::with_capacity(self.sale_lines),
            stock_movements: Vec::with_capacity(self.stock_movements),
            stock_levels: Vec::with_capacity(self.stock_levels),
            terminal_rollups: Vec::with_capacity(self.terminal_rollups),
            device_health: Vec::with_capacity(self.device_health),
            ..RowSet::default()
        }
    }
}

impl RowSetPool {
    /// A pool keeping at most `max` sets.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            free: Mutex::new(Free {
                sets: Vec::with_capacity(max),
                low: 0,
                shape: Shape::default(),
                out: 0,
            }),
            max,
        }
    }

    /// An empty set: one handed back, or a new one with the room of the
    /// last one handed back ([`Shape`]).
    pub(crate) fn take(&self) -> RowSet {
        let (set, shape) = {
            let mut free = self.free.lock();
            let set = free.sets.pop();
            free.low = free.low.min(free.sets.len());
            free.out += 1;
            let shape = (free.out <= self.max).then_some(free.shape);
            (set, shape)
        };
        // Allocated outside the lock the flusher hands sets back under.
        set.unwrap_or_else(|| shape.map(Shape::new_set).unwrap_or_default())
    }

    /// Drops the sets that went unused since the last trim; returns how
    /// many. Freed here, on the caller's thread, not under a shard's feet.
    pub(crate) fn trim(&self) -> usize {
        let unused = {
            let mut free = self.free.lock();
            let n = free.low.min(free.sets.len());
            let keep = free.sets.len() - n;
            let unused = free.sets.split_off(keep);
            free.low = free.sets.len();
            unused
        };
        unused.len()
    }

    /// Hands back a set whose rows are no longer needed; it is emptied,
    /// and kept if there is room and it is not too big.
    pub(crate) fn give(&self, mut set: RowSet) {
        let keep = (MIN_SET_BYTES..=MAX_SET_BYTES).contains(&capacity_bytes(&set));
        if keep {
            set.clear();
        }
        let mut free = self.free.lock();
        free.out = free.out.saturating_sub(1);
        if !keep {
            return;
        }
        free.shape = Shape::of(&set);
        if free.sets.len() < self.max {
            free.sets.push(set);
        }
    }

    /// Sets waiting (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.free.lock().sets.len()
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

    /// A pool of at most `max` sets that was given `sets` sets.
    fn given(max: usize, sets: usize) -> RowSetPool {
        let pool = RowSetPool::new(max);
        for _ in 0..sets {
            pool.give(with_lines(100));
        }
        pool
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
        let new = pool.take();
        assert!(new.is_empty(), "then new ones");
        assert_eq!(new.sale_lines.capacity(), cap, "with the same room");
    }

    #[test]
    fn a_new_set_starts_with_the_room_of_the_last_one_handed_back() {
        let pool = RowSetPool::new(4);
        let first = pool.take();
        assert_eq!(first.sale_lines.capacity(), 0, "nothing to go by");
        pool.give(first);
        pool.give(with_lines(300));
        assert_eq!(
            pool.take().sale_lines.capacity(),
            300,
            "the one handed back"
        );
        let new = pool.take();
        assert!(new.is_empty());
        assert!(new.sale_lines.capacity() >= 300, "sized like it");
        // Too small to keep, so not what new sets go by either.
        pool.give(RowSet::default());
        assert!(pool.take().sale_lines.capacity() >= 300);
    }

    #[test]
    fn new_sets_get_room_only_while_few_are_out() {
        let pool = RowSetPool::new(2);
        pool.give(with_lines(100));
        let out: Vec<_> = (0..3).map(|_| pool.take()).collect();
        let room: Vec<_> = out.iter().map(|s| s.sale_lines.capacity()).collect();
        assert_eq!(room, [100, 100, 0], "the third is past the pool's bound");
        for set in out {
            pool.give(set);
        }
        assert!(
            pool.take().sale_lines.capacity() >= 100,
            "all back: room again"
        );
    }

    #[test]
    fn the_pool_is_bounded_in_sets_and_bytes() {
        let pool = given(2, 5);
        assert_eq!(pool.len(), 2);
        let big = MAX_SET_BYTES / size_of::<SaleLineRow>() + 1;
        let pool = RowSetPool::new(2);
        pool.give(with_lines(big));
        assert_eq!(pool.len(), 0, "a set past the byte bound is dropped");
    }

    #[test]
    fn a_trim_drops_what_went_unused_since_the_last_one() {
        let pool = given(16, 10);
        // The first trim has nothing to go by: since the pool was made,
        // it has held no set at some moment.
        assert_eq!(pool.trim(), 0);
        assert_eq!(pool.len(), 10);
        // Load that needs four sets at most: six were idle all along.
        for _ in 0..3 {
            let held: Vec<_> = (0..4).map(|_| pool.take()).collect();
            for set in held {
                pool.give(set);
            }
        }
        assert_eq!(pool.trim(), 6);
        assert_eq!(pool.len(), 4);
        // No load at all: the rest goes at the next trim.
        assert_eq!(pool.trim(), 4);
        assert_eq!(pool.len(), 0);
        assert_eq!(pool.trim(), 0);
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
