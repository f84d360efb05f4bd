//! The SKU entity: one product's stock level in one store, under the stock
//! rule of ARCHITECTURE.md ("Stock converges").
//!
//! Events are ordered by their own time. The level is the latest count
//! (latest by `(ts, key)`) plus the deltas of the movements stamped
//! strictly after it; with no count, the sum of all deltas.
//!
//! Invariants of [`SkuState`]:
//! - `level` equals the sum of the `delta`s of every applied row
//!   (a count's delta is the change it made), and `version` their number;
//! - `window` holds, sorted by time, the applied movements stamped after
//!   the current count and no earlier than the SKU's floor: exactly the
//!   ones a count that can still be ordered needs to recompute the level.
//!   The floor is `updated_ts - late_window`, raised for a hot SKU whose
//!   window would pass [`MAX_WINDOW`] movements (memory stays bounded; its
//!   late window is just shorter). A count older than the floor is refused;
//! - `updated_ts` is the newest event time seen (movement or count), and
//!   never goes back.

use thin_vec::ThinVec;
use tillstream_storage::{EventKey, StockLevelRow};

/// Most movements one SKU keeps for late counts, 16 bytes each: 16 KiB
/// for a SKU that moves more than about once every 3.5 s of its late
/// window; its late window is that much shorter.
pub(super) const MAX_WINDOW: usize = 1024;

/// Dropped window entries (below `head`) stay in the vector until it is
/// full and a quarter of it is dropped, and are then moved out at once:
/// each drop is amortised O(1), the vector never outgrows 4/3 of the
/// window's peak, and the entity has no ring buffer's extra words.
const COMPACT_SHARE: usize = 4;

/// What a shelf count did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CountOutcome {
    /// Older than the late window: refuse it (`CountTooLate`).
    TooLate,
    /// Older than the current count: recorded, changes nothing.
    Stale,
    /// The newest count: the level was recomputed.
    Applied {
        /// New level − old level.
        delta: i64,
    },
}

/// One SKU's state (module docs), the value of the shard's map keyed by
/// (store, SKU).
///
/// Laid out for the shard's hot path: each movement of a random SKU costs
/// a cache miss or two, so the entity is 64 bytes and sits in the map's
/// bucket beside its key (80 bytes with it: one probe, where an index
/// probe and then a 120-byte slot cost two misses). What only counts need
/// lives behind pointers: the count's event key is boxed, and the
/// window's length sits in its own allocation.
#[derive(Debug, Clone)]
pub(super) struct SkuState {
    pub(super) level: i64,
    pub(super) version: u64,
    pub(super) updated_ts: i64,
    /// The time of the current count (meaningful when `count_key` is set).
    count_ts: i64,
    /// The event key of the current count; `None`: never counted.
    count_key: Option<Box<EventKey>>,
    /// The time of the newest movement dropped to keep the window under
    /// [`MAX_WINDOW`]: counts before it can no longer be ordered.
    cut_ts: i64,
    /// (ts, delta) of applied movements after the count, in the window,
    /// sorted by time, from index `head` on (those before are dropped).
    window: ThinVec<(i64, i64)>,
    head: u32,
    /// Changed in the current `apply` call (its level row is queued);
    /// set and cleared by the shard, not here.
    pub(super) dirty: bool,
}

impl SkuState {
    /// A SKU the store has never seen.
    pub(super) fn empty() -> Self {
        Self {
            level: 0,
            version: 0,
            updated_ts: i64::MIN,
            count_ts: i64::MIN,
            count_key: None,
            cut_ts: i64::MIN,
            window: ThinVec::new(),
            head: 0,
            dirty: false,
        }
    }

    /// A SKU as its stored level row describes it (window still empty:
    /// feed it with [`SkuState::load_movement`]).
    pub(super) fn from_row(row: &StockLevelRow) -> Self {
        let count = row.count_ts_us.zip(row.count_key);
        Self {
            level: row.level,
            version: row.version,
            updated_ts: row.updated_ts_us,
            count_ts: count.map_or(i64::MIN, |c| c.0),
            count_key: count.map(|c| Box::new(c.1)),
            ..Self::empty()
        }
    }

    /// The level row of the current state of SKU `sku` of `store`.
    pub(super) fn row(&self, store: u32, sku: u64) -> StockLevelRow {
        let count = self.current_count();
        StockLevelRow {
            store,
            sku,
            level: self.level,
            count_ts_us: count.map(|c| c.0),
            count_key: count.map(|c| c.1),
            updated_ts_us: self.updated_ts,
            version: self.version,
        }
    }

    /// The current count's time and event key.
    fn current_count(&self) -> Option<(i64, EventKey)> {
        self.count_key.as_deref().map(|k| (self.count_ts, *k))
    }

    /// The movements in the window, oldest first.
    fn live(&self) -> &[(i64, i64)] {
        self.window.get(self.head as usize..).unwrap_or_default()
    }

    /// Movements in the window (for stats and tests).
    pub(super) fn window_len(&self) -> usize {
        self.live().len()
    }

    /// The oldest time a count may have and still be ordered.
    fn floor(&self, late_window: i64) -> i64 {
        self.updated_ts.saturating_sub(late_window).max(self.cut_ts)
    }

    /// Adds a stored, applied movement to the window on activation, if the
    /// rule still needs it. Rows may come in any order: the window keeps
    /// itself sorted and, once full, drops its oldest, so it ends up
    /// holding the newest `MAX_WINDOW` whatever the order (sorting a
    /// store's whole late window first cost 40% of a restart).
    pub(super) fn load_movement(&mut self, ts: i64, delta: i64, late_window: i64) {
        let after_count = self.count_key.is_none() || ts > self.count_ts;
        if after_count && ts >= self.floor(late_window) {
            self.insert(ts, delta);
        }
    }

    /// Applies a movement of `delta` stamped `ts`. Returns whether it was
    /// applied (false: stamped at or before the latest count, which saw
    /// it) and the level after it.
    pub(super) fn movement(&mut self, ts: i64, delta: i64, late_window: i64) -> (bool, i64) {
        if self.count_key.is_some() && ts <= self.count_ts {
            return (false, self.level);
        }
        self.level = self.level.saturating_add(delta);
        self.version += 1;
        self.updated_ts = self.updated_ts.max(ts);
        let floor = self.floor(late_window);
        if ts >= floor {
            self.insert(ts, delta);
        }
        self.drop_front_while(|t| t < floor);
        (true, self.level)
    }

    /// Applies a count of `counted` units stamped `ts` with event `key`.
    pub(super) fn count(
        &mut self,
        ts: i64,
        key: EventKey,
        counted: i64,
        late_window: i64,
    ) -> CountOutcome {
        if self.updated_ts != i64::MIN && ts < self.floor(late_window) {
            // Movements after it may be gone from the window.
            return CountOutcome::TooLate;
        }
        if self.current_count().is_some_and(|c| (ts, key) <= c) {
            return CountOutcome::Stale;
        }
        let after: i64 = self
            .live()
            .iter()
            .filter(|(t, _)| *t > ts)
            .fold(0i64, |acc, (_, d)| acc.saturating_add(*d));
        let before = self.level;
        self.level = counted.saturating_add(after);
        self.count_ts = ts;
        match &mut self.count_key {
            Some(k) => **k = key,
            None => self.count_key = Some(Box::new(key)),
        }
        self.version += 1;
        self.updated_ts = self.updated_ts.max(ts);
        // Movements at or before the count are behind it for good.
        self.drop_front_while(|t| t <= ts);
        let floor = self.floor(late_window);
        self.drop_front_while(|t| t < floor);
        CountOutcome::Applied {
            delta: self.level.saturating_sub(before),
        }
    }

    fn insert(&mut self, ts: i64, delta: i64) {
        let head = self.head as usize;
        if head > 0
            && self.window.len() == self.window.capacity()
            && head * COMPACT_SHARE >= self.window.len()
        {
            self.window.drain(..head);
            self.head = 0;
        }
        if self.window.capacity() == 0 {
            // Most SKUs of a chain move a few times within their late
            // window: one slot (32 bytes with the header), not thin-vec's
            // first four (80), then doubling.
            self.window.reserve_exact(1);
        }
        if self.window.last().is_none_or(|(t, _)| *t <= ts) {
            self.window.push((ts, delta));
        } else {
            let at = self.live().partition_point(|(t, _)| *t <= ts);
            self.window.insert(self.head as usize + at, (ts, delta));
        }
        if self.window_len() > MAX_WINDOW {
            // A count at or after the dropped movement's time does not
            // need it (it sums movements strictly after the count).
            if let Some(&(t, _)) = self.live().first() {
                self.cut_ts = self.cut_ts.max(t);
                self.head += 1;
                self.clear_if_dropped();
            }
        }
    }

    /// Drops the window's oldest movements while `old` holds for their time.
    fn drop_front_while(&mut self, old: impl Fn(i64) -> bool) {
        let n = self.live().iter().take_while(|(t, _)| old(*t)).count();
        if n > 0 {
            self.head += u32::try_from(n).unwrap_or(u32::MAX);
            self.clear_if_dropped();
        }
    }

    /// An emptied window is cleared, keeping its allocation for the next
    /// movement.
    fn clear_if_dropped(&mut self) {
        if self.head as usize >= self.window.len() {
            self.window.clear();
            self.head = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LW: i64 = 1_000;

    fn key(idx: u32) -> EventKey {
        EventKey {
            device: 1,
            seq: 1,
            idx,
        }
    }

    #[test]
    fn activation_does_not_depend_on_the_order_of_stored_movements() {
        let row = StockLevelRow {
            store: 1,
            sku: 2,
            level: 10,
            count_ts_us: None,
            count_key: None,
            updated_ts_us: 1_000_000,
            version: 3,
        };
        // More than a full window, in a scrambled order with equal times.
        let ts: Vec<i64> = (0..3 * MAX_WINDOW as i64)
            .map(|i| 1_000_000 - (i * 7_919) % 5_000)
            .collect();
        let mut sorted = ts.clone();
        sorted.sort_unstable();
        let (mut a, mut b) = (SkuState::from_row(&row), SkuState::from_row(&row));
        for &t in &sorted {
            a.load_movement(t, t % 3, 10_000);
        }
        for &t in &ts {
            b.load_movement(t, t % 3, 10_000);
        }
        assert_eq!(a.window_len(), MAX_WINDOW);
        assert_eq!(a.live(), b.live());
        assert_eq!(a.cut_ts, b.cut_ts);
    }
    #[test]
    fn movements_without_a_count_sum_up() {
        let mut s = SkuState::empty();
        assert_eq!(s.movement(100, 5, LW), (true, 5));
        assert_eq!(
            s.movement(50, -2, LW),
            (true, 3),
            "late but no count: applies"
        );
        assert_eq!((s.version, s.updated_ts, s.window_len()), (2, 100, 2));
    }

    #[test]
    fn a_count_sets_the_level_and_sees_what_came_before() {
        let mut s = SkuState::empty();
        s.movement(100, 5, LW);
        s.movement(300, 7, LW);
        // Counted at 200: the movement at 100 is in the count, the one at
        // 300 applies on top.
        assert_eq!(
            s.count(200, key(1), 40, LW),
            CountOutcome::Applied { delta: 35 }
        );
        assert_eq!(s.level, 47);
        assert_eq!(s.window_len(), 1, "movements before the count are dropped");
        // A movement stamped at or before the count arrives late.
        assert_eq!(s.movement(200, -3, LW), (false, 47));
        assert_eq!(s.movement(150, -3, LW), (false, 47));
        assert_eq!(s.version, 3);
        // An older count changes nothing; a newer one recomputes.
        assert_eq!(s.count(190, key(2), 1, LW), CountOutcome::Stale);
        assert_eq!(
            s.count(200, key(0), 1, LW),
            CountOutcome::Stale,
            "ties break on the key"
        );
        assert_eq!(
            s.count(200, key(3), 10, LW),
            CountOutcome::Applied { delta: -30 }
        );
        assert_eq!(s.level, 17);
        assert_eq!(
            s.count(400, key(4), 10, LW),
            CountOutcome::Applied { delta: -7 }
        );
        assert_eq!((s.level, s.window_len(), s.version), (10, 0, 5));
    }

    #[test]
    fn counts_older_than_the_window_are_refused() {
        let mut s = SkuState::empty();
        assert_eq!(
            s.count(5_000, key(1), 3, LW),
            CountOutcome::Applied { delta: 3 }
        );
        s.movement(10_000, 1, LW);
        assert_eq!(s.count(8_999, key(2), 3, LW), CountOutcome::TooLate);
        // Counted 3 at 9000, plus the movement at 10000 on top.
        assert_eq!(
            s.count(9_000, key(2), 3, LW),
            CountOutcome::Applied { delta: 0 }
        );
        assert_eq!(s.level, 4);
    }

    #[test]
    fn the_window_is_pruned_as_time_advances() {
        let mut s = SkuState::empty();
        for t in 0..10 {
            s.movement(t * 400, 1, LW);
        }
        // Newest 3600: the window keeps ts >= 2600.
        assert_eq!(s.window_len(), 3);
        s.movement(3000, 1, LW);
        assert_eq!(s.window_len(), 4, "out-of-order insert stays sorted");
        assert_eq!(
            s.count(2700, key(1), 0, LW),
            CountOutcome::Applied { delta: -7 }
        );
        assert_eq!(s.level, 4);
    }

    #[test]
    fn a_hot_sku_keeps_a_bounded_window() {
        let mut s = SkuState::empty();
        let n = MAX_WINDOW as i64 + 10;
        for t in 0..n {
            s.movement(t, 1, i64::MAX / 4);
        }
        assert_eq!(s.window_len(), MAX_WINDOW);
        assert_eq!(s.count(8, key(1), 0, i64::MAX / 4), CountOutcome::TooLate);
        // At the cut: every movement after it is still there.
        assert_eq!(
            s.count(9, key(1), 0, i64::MAX / 4),
            CountOutcome::Applied { delta: -10 }
        );
        assert_eq!(s.level, n - 10);
    }

    #[test]
    fn the_entity_is_one_cache_line() {
        // The shard's hot path is a cache miss per entity touched: a
        // field added here is paid on every movement.
        assert_eq!(size_of::<SkuState>(), 64);
    }

    #[test]
    fn a_long_lived_window_drops_without_growing() {
        // Time advances by 100 per movement and the window spans 1000: it
        // keeps the newest 11 while the vector's dropped head is moved
        // out now and then, so the vector stays within 4/3 of that.
        let mut s = SkuState::empty();
        for t in 0..100_000i64 {
            s.movement(t * 100, 1, LW);
            assert_eq!(s.window_len(), (t as usize + 1).min(11));
            assert!(s.window.capacity() <= 16, "{}", s.window.capacity());
        }
        assert_eq!(s.level, 100_000);
        // A count at the window's oldest time sees the 10 movements after it.
        let oldest = s.live()[0].0;
        assert_eq!(
            s.count(oldest, key(1), 0, LW),
            CountOutcome::Applied {
                delta: 10 - 100_000
            }
        );
        assert_eq!((s.level, s.window_len()), (10, 10));
    }

    #[test]
    fn a_row_round_trips() {
        let mut s = SkuState::empty();
        s.count(10, key(1), 8, LW);
        s.movement(20, -1, LW);
        let r = s.row(3, 4);
        let mut t = SkuState::from_row(&r);
        t.load_movement(5, 100, LW); // before the count: ignored
        t.load_movement(20, -1, LW);
        assert_eq!(t.row(3, 4), r);
        assert_eq!(t.count(15, key(2), 8, LW), s.count(15, key(2), 8, LW));
        assert_eq!(t.row(3, 4), s.row(3, 4));
    }
}
