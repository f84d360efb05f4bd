//! The SKU entity: one product's stock level in one store, under the stock
//! rule of docs/internals/design.md ("Stock converges").
//!
//! Events are ordered by their own time. The level is the latest count
//! (latest by `(ts, key)`) plus the deltas of the movements stamped
//! strictly after it; with no count, the sum of all deltas.
//!
//! Invariants of [`SkuState`]:
//! - `level` equals the sum of the `delta`s of every applied row
//!   (a count's delta is the change it made), and `version` their number;
//! - the window's held entries, in the order they came (not sorted: a
//!   movement is appended without reading the window), include every
//!   applied movement stamped after the current count and no earlier
//!   than the SKU's floor: exactly the ones a count that can still be
//!   ordered needs to recompute the level. The floor is
//!   `updated_ts - late_window`, raised for a hot SKU to the newest
//!   movement past its newest [`MAX_WINDOW`] (memory stays bounded; its
//!   late window is just shorter). A count older than the floor is
//!   refused. That raise is a function of the movements alone, not of
//!   the order they came in, so a SKU activated again from its stored
//!   movements refuses the same counts: the window applies it when a
//!   count asks (`settle`) or when it runs out of slots, and until then
//!   may hold movements below it, as below the floor.
//!   Entries that fell below the floor may still be held until the
//!   window needs their room: the floor only rises, a count is never
//!   older than it, and a count sums only the movements after itself, so
//!   they never count;
//! - every held entry is stamped at or before `updated_ts`, the newest
//!   event time seen (movement or count), which never goes back.

use tillstream_storage::hint::prefetch;
use tillstream_storage::{EventKey, StockLevelRow};

/// Most movements one SKU keeps for late counts (module docs): a SKU
/// that moves more than about once every 3.5 s of its late window has a
/// shorter one.
pub(super) const MAX_WINDOW: usize = 1024;

/// The most movements a window has slots for, so `len` fits in 16 bits.
/// A full window first drops what is below its floor, keeps its slots if
/// that freed a quarter of them, else grows them (`grown_slots`) up to
/// this bound: each entry is read a few times per fill, amortised O(1) a
/// movement. With the slot of the base, a window takes 16 bytes to 16
/// KiB.
const MAX_SLOTS: usize = 2 * MAX_WINDOW - 1;
const _: () = assert!(MAX_SLOTS <= u16::MAX as usize);

/// The longest late window the windows keep (µs, about 71.6 minutes): an
/// entry's time is 32 bits after its window's base. A longer late window
/// acts as this one (`SkuState::floor`).
pub(crate) const MAX_LATE_WINDOW_US: i64 = u32::MAX as i64;

/// A full window whose drop freed fewer than `1 / FREED_SHARE` of its
/// slots grows instead: each fill then makes room for at least that
/// share of new movements before the window is read again.
const FREED_SHARE: usize = 4;

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

/// One movement a window keeps, in 8 bytes: its time, as µs after the
/// window's base (the first slot of the window holds the base), and its
/// delta. The windows were the second part of the heap at 1 M SKUs
/// (heaptrack: 66 MB for 4.2 M movements in 12-byte entries, a whole
/// `i64` time each). Every held time is within the late window of the
/// SKU's newest, so 32 bits hold it once the base follows the floor
/// (`SkuState::rebase`). Deltas come from a sale line's quantity or a
/// stock movement, both `i32` on the wire (docs/internals/design.md, "Stock
/// converges"); a stored row's delta past that range, which no device
/// can send, is held at the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    after_base: u32,
    delta: i32,
}

const _: () = assert!(size_of::<Entry>() == 8);

impl Entry {
    const EMPTY: Entry = Entry {
        after_base: 0,
        delta: 0,
    };

    fn new(after_base: u32, delta: i64) -> Self {
        let delta = i32::try_from(delta).unwrap_or(if delta < 0 { i32::MIN } else { i32::MAX });
        Entry { after_base, delta }
    }

    /// The slot before a window's movements: its base, a time, split in
    /// two halves.
    fn base_slot(base: i64) -> Self {
        Entry {
            after_base: base as u32,
            delta: (base >> 32) as i32,
        }
    }

    /// The time a base slot holds.
    fn as_base(self) -> i64 {
        (i64::from(self.delta) << 32) | i64::from(self.after_base)
    }

    pub(super) fn delta(self) -> i64 {
        i64::from(self.delta)
    }
}

/// What few SKUs need, behind a pointer: the current count's time and
/// event key, and the cut of a hot SKU's window.
#[derive(Debug, Clone)]
struct Rare {
    /// The time of the current count. Meaningful, as `count_key`, when the
    /// entity's `counted` is set.
    count_ts: i64,
    count_key: EventKey,
    /// The time of the newest movement dropped past the window's newest
    /// [`MAX_WINDOW`]: counts before it can no longer be ordered.
    /// Meaningful when the entity's `cut` is set.
    cut_ts: i64,
}

/// One SKU's state (module docs), the value of the shard's map keyed by
/// (store, SKU).
///
/// Laid out for the shard's hot path: each movement of a random SKU costs
/// a cache miss or two, so the entity is 56 bytes and sits in the map's
/// bucket beside its SKU (64 bytes with it: one probe, where an index
/// probe and then a 120-byte slot cost two misses). What only counts and
/// hot SKUs need lives behind a pointer, and the window's length lives
/// here, not in its allocation. The count's time went there too: the
/// buckets were most of the server's heap at 1 M SKUs (heaptrack), and a
/// counted SKU is a popular one, whose `Rare` the cache keeps. A movement is appended to the window
/// without reading it, in or out of time order, so its line is a store
/// the CPU does not wait for. Reading the length and the newest entries
/// had been two or three misses in a row, and a window kept sorted read
/// and shifted its tail for every movement that came out of order, as
/// most do when tills' batches interleave: 20% of the server's CPU on a
/// fleet of tills.
#[derive(Debug, Clone)]
pub(super) struct SkuState {
    pub(super) level: i64,
    pub(super) version: u64,
    pub(super) updated_ts: i64,
    /// Set once the SKU is counted or its window cut.
    rare: Option<Box<Rare>>,
    /// The window: `slots[0]` holds its base, `slots[1..=len]` the
    /// applied movements in the order they came (module docs); empty,
    /// or as many slots as `grown_slots` gives.
    slots: Box<[Entry]>,
    len: u16,
    /// Whether the SKU has a count (its key is in `rare`).
    counted: bool,
    /// Whether the window was cut (the time is in `rare`).
    cut: bool,
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
            rare: None,
            slots: Box::new([]),
            len: 0,
            counted: false,
            cut: false,
            dirty: false,
        }
    }

    /// A SKU as its stored level row describes it (window still empty:
    /// feed it with [`SkuState::load_movement`]).
    pub(super) fn from_row(row: &StockLevelRow) -> Self {
        let mut s = Self {
            level: row.level,
            version: row.version,
            updated_ts: row.updated_ts_us,
            ..Self::empty()
        };
        if let Some((ts, key)) = row.count_ts_us.zip(row.count_key) {
            s.set_count(ts, key);
        }
        s
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
        match &self.rare {
            Some(r) if self.counted => Some((r.count_ts, r.count_key)),
            _ => None,
        }
    }

    /// The current count's time.
    fn count_ts(&self) -> Option<i64> {
        self.current_count().map(|(ts, _)| ts)
    }

    /// What few SKUs need, allocated on first use; each field means
    /// something only once its flag (`counted`, `cut`) is set.
    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(|| {
            Box::new(Rare {
                count_ts: i64::MIN,
                count_key: EventKey {
                    device: 0,
                    seq: 0,
                    idx: 0,
                },
                cut_ts: i64::MIN,
            })
        })
    }

    fn set_count(&mut self, ts: i64, key: EventKey) {
        self.counted = true;
        let rare = self.rare_mut();
        rare.count_ts = ts;
        rare.count_key = key;
    }

    fn cut_ts(&self) -> i64 {
        match &self.rare {
            Some(r) if self.cut => r.cut_ts,
            _ => i64::MIN,
        }
    }

    fn set_cut(&mut self, ts: i64) {
        let cut_ts = self.cut_ts().max(ts);
        self.cut = true;
        self.rare_mut().cut_ts = cut_ts;
    }

    /// The window's base: its entries' times are offsets from it.
    fn base(&self) -> i64 {
        self.slots.first().map_or(0, |s| s.as_base())
    }

    /// Movements the window has slots for.
    fn capacity(&self) -> usize {
        self.slots.len().saturating_sub(1)
    }

    /// The slots of the held entries.
    fn held_slots(&self) -> &[Entry] {
        self.slots
            .get(1..=usize::from(self.len))
            .unwrap_or_default()
    }

    /// The window's held movements, (time, delta), in the order they came
    /// (some may be below the floor: module docs).
    fn held(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        let base = self.base();
        self.held_slots()
            .iter()
            .map(move |e| (base.saturating_add(i64::from(e.after_base)), e.delta()))
    }

    /// `ts` as an offset from the window's base, if 32 bits hold it.
    fn offset(&self, ts: i64) -> Option<u32> {
        u32::try_from(ts.checked_sub(self.base())?).ok()
    }

    /// Movements in the window at or above the floor, once settled.
    #[cfg(test)]
    pub(super) fn window_len(&self, late_window: i64) -> usize {
        let s = self.settled(late_window);
        let floor = s.floor(late_window);
        s.held().filter(|&(t, _)| t >= floor).count()
    }

    /// A copy with the hot-window rule applied: what a count would see.
    #[cfg(test)]
    pub(super) fn settled(&self, late_window: i64) -> Self {
        let mut s = self.clone();
        s.settle(late_window);
        s
    }

    /// Asks the CPU to bring what the SKU's next movement reads and
    /// writes into the cache, ahead of an apply: the count's time, the
    /// slot the window's next movement goes to, so that the store finds
    /// it there, and the base, which the apply reads to place its time. A
    /// prefetch, not a load: the read-ahead does not wait for the line,
    /// so the loads of the next SKUs' entities overlap with it (a load
    /// here had been half of the read-ahead's time).
    pub(super) fn prefetch_for_movement(&self) {
        // A movement compares its time with the count's, which lives
        // behind `rare`: a load there had been 90% of `movement`'s time
        // (7% of the server's CPU on an AMD EPYC host) when only the window
        // was prefetched.
        if let Some(rare) = self.rare.as_deref()
            && self.counted
        {
            prefetch(rare);
        }
        // Often one line (a window of 7 takes 64 bytes); a second
        // prefetch of it costs next to nothing.
        if let Some(base) = self.slots.first() {
            prefetch(base);
        }
        if let Some(next) = self.slots.get(usize::from(self.len) + 1) {
            prefetch(next);
        }
    }

    /// Entries the window holds (for stats; reads nothing but the entity).
    pub(super) fn held_len(&self) -> usize {
        usize::from(self.len)
    }

    /// The oldest time a count may have and still be ordered, once the
    /// window is settled (module docs); before, possibly lower. A late
    /// window past [`MAX_LATE_WINDOW_US`] acts as that one.
    fn floor(&self, late_window: i64) -> i64 {
        let floor = self
            .updated_ts
            .saturating_sub(late_window.min(MAX_LATE_WINDOW_US));
        if self.cut {
            floor.max(self.cut_ts())
        } else {
            floor
        }
    }

    /// Adds a stored, applied movement to the window on activation, if the
    /// rule still needs it. Rows may come in any order: the window takes
    /// them as they come, and settled it holds the newest `MAX_WINDOW`
    /// whatever the order (sorting a store's whole late window first cost
    /// 40% of a restart).
    pub(super) fn load_movement(&mut self, ts: i64, delta: i64, late_window: i64) {
        let after_count = self.count_ts().is_none_or(|c| ts > c);
        let floor = self.floor(late_window);
        if after_count && ts >= floor {
            self.insert(ts, delta, floor);
        }
    }

    /// Applies a movement of `delta` stamped `ts`. Returns whether it was
    /// applied (false: stamped at or before the latest count, which saw
    /// it) and the level after it.
    pub(super) fn movement(&mut self, ts: i64, delta: i64, late_window: i64) -> (bool, i64) {
        if self.count_ts().is_some_and(|c| ts <= c) {
            return (false, self.level);
        }
        self.level = self.level.saturating_add(delta);
        self.version += 1;
        self.updated_ts = self.updated_ts.max(ts);
        let floor = self.floor(late_window);
        if ts >= floor {
            self.insert(ts, delta, floor);
        }
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
        self.settle(late_window);
        if self.updated_ts != i64::MIN && ts < self.floor(late_window) {
            // Movements after it may be gone from the window.
            return CountOutcome::TooLate;
        }
        if self.current_count().is_some_and(|c| (ts, key) <= c) {
            return CountOutcome::Stale;
        }
        // Held entries below the floor are older than `ts`: not summed.
        let after: i64 = self
            .held()
            .filter(|&(t, _)| t > ts)
            .fold(0i64, |acc, (_, delta)| acc.saturating_add(delta));
        let before = self.level;
        self.level = counted.saturating_add(after);
        self.set_count(ts, key);
        self.version += 1;
        self.updated_ts = self.updated_ts.max(ts);
        // Movements at or before the count are behind it for good.
        let floor = self.floor(late_window);
        self.keep_only(|t| t > ts && t >= floor);
        CountOutcome::Applied {
            delta: self.level.saturating_sub(before),
        }
    }

    /// Appends a movement to the window; `floor` is the current floor,
    /// for the entries that may go when room is needed. `ts` is at or
    /// above the floor and at or below `updated_ts`.
    fn insert(&mut self, ts: i64, delta: i64, floor: i64) {
        if usize::from(self.len) == self.capacity() {
            self.make_room(floor);
        }
        let offset = self.offset(ts).or_else(|| {
            self.rebase(floor);
            self.offset(ts)
        });
        let Some(offset) = offset else {
            // Not reached: `ts` and the floor are within the late window,
            // which 32 bits hold. Were it, the movement could not be
            // kept, and counts before it are refused instead of summed
            // without it.
            self.set_cut(ts);
            return;
        };
        if let Some(slot) = self.slots.get_mut(usize::from(self.len) + 1) {
            *slot = Entry::new(offset, delta);
            self.len += 1;
        }
    }

    /// Moves the base up to `floor` (a movement came past 32 bits of it):
    /// drops the entries below the floor and keeps the others' times.
    /// Every held time is then between the floor and `updated_ts`, one
    /// late window at most, so each fits; one that did not would be
    /// dropped and cut, as a hot window's oldest are. Once in some 11
    /// minutes of a SKU's event time, with the default hour.
    fn rebase(&mut self, floor: i64) {
        let old_base = self.base();
        let mut kept = 0;
        let mut unkept = None;
        for i in 1..=usize::from(self.len) {
            let e = self.slots[i];
            let t = old_base.saturating_add(i64::from(e.after_base));
            if t < floor {
                continue;
            }
            match t.checked_sub(floor).and_then(|o| u32::try_from(o).ok()) {
                Some(offset) => {
                    kept += 1;
                    self.slots[kept] = Entry::new(offset, e.delta());
                }
                None => unkept = unkept.max(Some(t)),
            }
        }
        self.len = u16::try_from(kept).unwrap_or(u16::MAX);
        if let Some(first) = self.slots.first_mut() {
            *first = Entry::base_slot(floor);
        }
        if let Some(t) = unkept {
            self.set_cut(t);
        }
    }

    /// Called with every slot taken: drops the entries below the floor,
    /// and then, if that freed less than a quarter of the slots, grows
    /// them (`grown_slots`); a window already at [`MAX_SLOTS`] is cut
    /// (`cut_to_newest`).
    fn make_room(&mut self, floor: i64) {
        self.keep_only(|t| t >= floor);
        let held = usize::from(self.len);
        let capacity = self.capacity();
        let freed = capacity - held;
        if freed > 0 && freed * FREED_SHARE >= capacity {
            return;
        }
        if capacity < MAX_SLOTS {
            // Most SKUs of a chain move a few times within their late
            // window: one slot first (and the base's), then some 40% more
            // each time. A new window's base is the floor, which
            // movements never go below: it moves only once one comes past
            // 32 bits of it.
            let slots = grown_slots(self.slots.len());
            let base = if self.slots.is_empty() {
                floor
            } else {
                self.base()
            };
            let mut grown = vec![Entry::EMPTY; slots].into_boxed_slice();
            grown[0] = Entry::base_slot(base);
            grown[1..=held].copy_from_slice(self.held_slots());
            self.slots = grown;
            return;
        }
        self.cut_to_newest();
    }

    /// Applies the hot-window rule (module docs) before a count is
    /// checked: a window of at most [`MAX_WINDOW`] entries needs nothing.
    fn settle(&mut self, late_window: i64) {
        if usize::from(self.len) <= MAX_WINDOW {
            return;
        }
        let floor = self.floor(late_window);
        self.keep_only(|t| t >= floor);
        self.cut_to_newest();
    }

    /// Keeps the newest [`MAX_WINDOW`] entries and raises the floor to
    /// the newest it dropped: a count at or after that time sums only
    /// movements after it, all still held. One selection, O(n), once per
    /// count or per `MAX_SLOTS - MAX_WINDOW` movements.
    fn cut_to_newest(&mut self) {
        let held = usize::from(self.len);
        let dropped = held.saturating_sub(MAX_WINDOW);
        if dropped == 0 {
            return;
        }
        let base = self.base();
        // One base for all: offsets order as the times do.
        let window = &mut self.slots[1..=held];
        window.select_nth_unstable_by_key(dropped - 1, |e| e.after_base);
        let cut = window[..dropped].iter().map(|e| e.after_base).max();
        window.copy_within(dropped.., 0);
        self.len = u16::try_from(held - dropped).unwrap_or(u16::MAX);
        if let Some(offset) = cut {
            self.set_cut(base.saturating_add(i64::from(offset)));
        }
    }

    /// Keeps the window's entries whose time `keep` holds, in their order.
    fn keep_only(&mut self, keep: impl Fn(i64) -> bool) {
        let base = self.base();
        let mut kept = 0;
        for i in 1..=usize::from(self.len) {
            let e = self.slots[i];
            if keep(base.saturating_add(i64::from(e.after_base))) {
                kept += 1;
                self.slots[kept] = e;
            }
        }
        self.len = u16::try_from(kept).unwrap_or(u16::MAX);
    }
}

/// The slots (the base's included) a window of `slots` grows to: 2, 3,
/// 4, 6, 8, 12, 16, 24 … 2,048, so 16, 24, 32, 48, 64, 96, 128 … bytes,
/// each a size class of the allocator (no slack past the request), half
/// again or a third again each time. Doubling 12-byte entries (48, 96,
/// 192 … bytes) had left a window a third empty on average; in 8-byte
/// entries it would have made 4 movements take 64 bytes where 12-byte
/// ones took 48.
fn grown_slots(slots: usize) -> usize {
    let grown = match slots {
        0 | 1 => 2,
        s if s.is_power_of_two() => s / 2 * 3,
        s => s / 3 * 4,
    };
    grown.min(MAX_SLOTS + 1)
}

#[cfg(test)]
mod tests;
