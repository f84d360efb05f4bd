//! One shard's entities: terminals (sale rows, rollups) and SKUs (stock
//! levels), and the rows applying a batch part produces.
//!
//! The engine drives a [`ShardCore`] in this order, for each batch part
//! routed to it:
//! 1. [`ShardCore::needs`]: what must be loaded from the store first;
//! 2. for each [`Need::Store`]: read the store's levels,
//!    [`ShardCore::movement_windows`] on them, read the movements in those
//!    windows, then [`ShardCore::activate_store`]; for each
//!    [`Need::RollupDay`]: read that day's rollups and
//!    [`ShardCore::activate_rollup_day`];
//! 3. [`ShardCore::apply`] with the part's LSN, which appends rows;
//! 4. now and then, [`ShardCore::passivate_idle`] with the LSN the tables
//!    hold, which drops the stores and rollup days idle since a time, and
//!    the rollup minutes idle since a (shorter) time from the days that
//!    stay.
//!
//! Invariants:
//! - a SKU lives on `shard_of_sku(store, sku, shards)` and only there; a
//!   terminal on `shard_of_terminal(store, terminal, shards)`, whichever
//!   device reports it. `apply` ignores work that is not this
//!   shard's (counted as `misrouted`), so the plan and the cores must use
//!   the same shard count;
//! - activation never overwrites live state: a store already active is not
//!   loaded again, nor a day, except to bring back the minutes that left
//!   it, which fills only the slots not in memory;
//! - a store or rollup day is only passivated once every row that changed
//!   it is in the tables (its last LSN is at most the tables' LSN), so
//!   loading it again gives the state it had; the same holds for a rollup
//!   minute evicted from a day that stays, and its day records that it
//!   left, so a sale in it needs the day loaded again first;
//! - each `apply` call emits, per SKU it changed, one `StockLevelRow` with
//!   its final state (versions strictly increase), and per rollup minute it
//!   changed, one `TerminalRollupRow`;
//! - `apply` never panics, whatever the items say.

mod apply;
pub(crate) mod hash;
mod sku;
mod sku_map;
mod stores;
mod terminal;

use std::collections::{HashMap, HashSet};

use tillstream_protocol::{ArchivedBatch, ArchivedEvent};
use tillstream_storage::time::{HOUR_US, day};
use tillstream_storage::{StockLevelRow, StoreSnapshot, TerminalRollupRow};

use crate::route::{Role, WorkItem, shard_of_sku, shard_of_terminal};
use crate::validate::Rules;
use hash::Keyed;
use sku::SkuState;
use sku_map::Slot;
use stores::{ActiveStores, StoreSkus};
use terminal::{RollupDay, RollupKey, RollupSlot, SaleView, rollup_key};

/// The settings of one shard.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// This shard's id, in `0..shards`.
    pub id: u16,
    /// The number of shards (the same the plans route with).
    pub shards: u16,
    /// How late a shelf count may be, relative to its SKU's newest event,
    /// and still be ordered (µs); at most about 71.6 minutes (`u32::MAX`
    /// µs, what a window's entry holds), a longer one acting as that.
    pub late_window_us: i64,
    /// The validation rules.
    pub rules: Rules,
}

impl ShardConfig {
    /// [`ShardCore::movement_windows`] for a shard with these settings:
    /// what activation must read needs only the settings, not the state.
    ///
    /// Each SKU of this shard needs the movements of its late window,
    /// `[updated_ts - late_window, updated_ts]`; the windows are widened to
    /// whole hours (the store's movement blocks are per hour) and merged,
    /// so a store whose SKUs moved recently is one or two ranges, and one
    /// SKU last seen years ago adds its own hour or two, not the years
    /// between. Sorted, disjoint, each `[from, to)`.
    pub fn movement_windows(&self, levels: &[StockLevelRow]) -> Vec<(i64, i64)> {
        let mut hours: Vec<(i64, i64)> = levels
            .iter()
            .filter(|r| shard_of_sku(r.store, r.sku, self.shards) == self.id)
            .map(|r| {
                let from = r.updated_ts_us.saturating_sub(self.late_window_us);
                let to = r.updated_ts_us.saturating_add(1);
                (
                    from.div_euclid(HOUR_US).saturating_mul(HOUR_US),
                    to.div_euclid(HOUR_US)
                        .saturating_add(i64::from(to.rem_euclid(HOUR_US) != 0))
                        .saturating_mul(HOUR_US),
                )
            })
            .collect();
        hours.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::new();
        for (from, to) in hours {
            match merged.last_mut() {
                Some(last) if from <= last.1 => last.1 = last.1.max(to),
                _ => merged.push((from, to)),
            }
        }
        merged
    }
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            id: 0,
            shards: 1,
            late_window_us: HOUR_US,
            rules: Rules::default(),
        }
    }
}

/// Something to load from the store before `apply` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Need {
    /// The levels (and late-window movements) of a store's SKUs.
    Store(u32),
    /// The terminal rollups of a store's day.
    RollupDay {
        /// The store.
        store: u32,
        /// Days since the epoch.
        day: u32,
    },
}

/// Counters and gauges of one shard, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// `apply` calls (batch parts).
    pub parts_applied: u64,
    /// Work items applied (rejections not included).
    pub events_applied: u64,
    /// Rows appended over all tables.
    pub rows_emitted: u64,
    /// `rejected_events` rows emitted (validation and late counts).
    pub rejected: u64,
    /// Counts refused as `CountTooLate`.
    pub late_counts: u64,
    /// Counts older than their SKU's current count (recorded, not applied).
    pub stale_counts: u64,
    /// Movements stamped at or before their SKU's count (not applied).
    pub stale_movements: u64,
    /// Items ignored: not this shard's, or not matching their event.
    pub misrouted: u64,
    /// Stores and rollup days loaded (or started empty), and days loaded
    /// again for minutes that had left.
    pub activations: u64,
    /// SKUs in memory.
    pub skus_active: u64,
    /// Movements held in late windows (an entry below its SKU's floor
    /// stays until its room is needed).
    pub window_movements: u64,
    /// Terminals that sold on this shard since it started.
    pub terminals_active: u64,
    /// Stores active.
    pub stores_active: u64,
    /// Rollup days active.
    pub rollup_days_active: u64,
    /// Rollup minutes in memory.
    pub rollup_minutes: u64,
    /// The `now_us` of the latest `apply`.
    pub last_apply_us: i64,
}

/// When an active store, rollup day or rollup minute last changed: the
/// `now_us` and the LSN of the last `apply` that changed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LastChange {
    at_us: i64,
    lsn: u64,
}

impl LastChange {
    /// Loaded from the store and not changed since.
    const LOADED: LastChange = LastChange {
        at_us: i64::MIN,
        lsn: 0,
    };

    fn idle(&self, before_us: i64, materialized_lsn: u64) -> bool {
        self.at_us < before_us && self.lsn <= materialized_lsn
    }
}

/// What a passivation sweep drops: what last changed before these times
/// (µs, on the clock of `apply`'s `now_us`) and is in the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleBefore {
    /// Stores (their SKUs) and rollup days.
    pub entities_us: i64,
    /// Rollup minutes of the days that stay (module docs of `terminal`).
    pub minutes_us: i64,
}

impl IdleBefore {
    /// The same time for both.
    pub fn all(before_us: i64) -> Self {
        Self {
            entities_us: before_us,
            minutes_us: before_us,
        }
    }
}

/// What [`ShardCore::passivate_idle`] dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Passivated {
    /// Stores whose SKUs left memory.
    pub stores: u64,
    /// SKUs that left memory.
    pub skus: u64,
    /// Rollup days that left memory.
    pub days: u64,
    /// Rollup minutes that left memory, with their day or alone.
    pub rollup_minutes: u64,
}

/// The entities of one shard (module docs). Pure: no I/O, no clock.
#[derive(Debug)]
pub struct ShardCore {
    cfg: ShardConfig,
    /// The active stores and their SKUs.
    stores: ActiveStores,
    /// SKUs changed by the current `apply` call, in first-change order,
    /// with where each was.
    dirty_skus: Vec<(u32, u64, Slot)>,
    /// Where the read-ahead found the SKUs the current `apply` call moves,
    /// in the order it moves them (`apply::next_warm_slot`).
    warm_slots: Vec<Option<Slot>>,
    /// The next of `warm_slots` to take.
    warm_next: usize,
    /// Movements whose SKU was where the read-ahead's slot said.
    #[cfg(test)]
    warm_slot_hits: usize,
    days: HashMap<(u32, u32), RollupDay, Keyed>,
    rollups: HashMap<RollupKey, RollupSlot, Keyed>,
    /// The rollup minute the sales just applied went to, held here while
    /// the next sales keep its key, and put back in `rollups` when one
    /// does not or the `apply` call ends (so `None` outside `apply`). A
    /// part of a till's batch is its sales of a minute or two, and a
    /// probe of `rollups` per sale (hashing four fields, then the bucket)
    /// was 1.3% of the server's CPU.
    rollup_run: Option<(RollupKey, RollupSlot)>,
    dirty_rollups: Vec<RollupKey>,
    terminals: HashSet<(u32, u32), Keyed>,
    stats: ShardStats,
}

impl ShardCore {
    /// An empty shard: nothing is active.
    pub fn new(cfg: ShardConfig) -> Self {
        Self {
            cfg,
            stores: ActiveStores::default(),
            dirty_skus: Vec::new(),
            warm_slots: Vec::new(),
            warm_next: 0,
            #[cfg(test)]
            warm_slot_hits: 0,
            days: HashMap::default(),
            rollups: HashMap::default(),
            rollup_run: None,
            dirty_rollups: Vec::new(),
            terminals: HashSet::default(),
            stats: ShardStats::default(),
        }
    }

    /// The shard's settings.
    pub fn config(&self) -> &ShardConfig {
        &self.cfg
    }

    fn owns(&self, store: u32, sku: u64) -> bool {
        shard_of_sku(store, sku, self.cfg.shards) == self.cfg.id
    }

    fn owns_terminal(&self, store: u32, terminal: u32) -> bool {
        shard_of_terminal(store, terminal, self.cfg.shards) == self.cfg.id
    }

    /// What must be activated before `apply` can run these items: stores
    /// whose SKUs this shard has not loaded, and (store, day) of rollups not
    /// loaded or with a sale in a minute whose slot left memory. Appends to
    /// `out` what it does not hold yet.
    pub fn needs(&self, batch: &ArchivedBatch, items: &[WorkItem], out: &mut Vec<Need>) {
        let mut add = |n: Need| {
            if !out.contains(&n) {
                out.push(n);
            }
        };
        // A part's events are mostly of one store and day: the last found
        // active is not looked up again. This ran a map probe per event
        // and hashed every line for its shard: 2.4% of the server's CPU
        // in a profile at peak.
        let mut store_active = None;
        // The day of the last sale, if active: most parts are one till's.
        let mut day_active: Option<((u32, u32), &RollupDay)> = None;
        let mut store_needed = |store: u32| {
            store_active != Some(store) && {
                let needed = !self.stores.contains(store);
                if !needed {
                    store_active = Some(store);
                }
                needed
            }
        };
        for item in items {
            let Some(e) = batch.events.get(item.idx as usize) else {
                continue;
            };
            match (item.role, e) {
                (Role::Terminal, _) => {
                    if let Some(v) = view(e) {
                        let key = (v.store, day(v.ts));
                        let active = match day_active {
                            Some((k, d)) if k == key => Some(d),
                            _ => self.days.get(&key),
                        };
                        let needed = match active {
                            None => true,
                            Some(d) => {
                                day_active = Some((key, d));
                                // Its minute's slot may have left memory.
                                !d.evicted.is_empty() && {
                                    let rk = rollup_key(&v);
                                    d.left(rk.2, rk.3) && !self.rollups.contains_key(&rk)
                                }
                            }
                        };
                        if needed {
                            add(Need::RollupDay {
                                store: key.0,
                                day: key.1,
                            });
                        }
                    }
                }
                (Role::Lines, _) => {
                    if let Some(v) = view(e)
                        && store_needed(v.store)
                        && v.lines
                            .iter()
                            .any(|l| self.owns(v.store, l.sku.to_native()))
                    {
                        add(Need::Store(v.store));
                    }
                }
                (Role::Stock, ArchivedEvent::Movement(m)) => {
                    let s = m.store.to_native();
                    if store_needed(s) {
                        add(Need::Store(s));
                    }
                }
                (Role::Stock, ArchivedEvent::Count(c)) => {
                    let s = c.store.to_native();
                    if store_needed(s) {
                        add(Need::Store(s));
                    }
                }
                _ => {}
            }
        }
    }

    /// Activation step 1 → 2: given the levels of a store, the time
    /// windows whose movements must be loaded: this shard's SKUs' late
    /// windows (see [`ShardConfig::movement_windows`]); empty if it owns
    /// none (nothing to load).
    pub fn movement_windows(&self, levels: &[StockLevelRow]) -> Vec<(i64, i64)> {
        self.cfg.movement_windows(levels)
    }

    /// Loads the SKUs of `store` that live on this shard from `snapshot`
    /// (levels, and the movements in [`ShardCore::movement_windows`], in
    /// time order). A store already active is left as it is.
    pub fn activate_store(&mut self, store: u32, snapshot: &StoreSnapshot) {
        if self.stores.contains(store) {
            return;
        }
        let mut active = StoreSkus::loaded();
        for row in &snapshot.levels {
            if row.store != store || !self.owns(row.store, row.sku) {
                continue;
            }
            active
                .skus
                .get_or_insert_with(row.sku, || SkuState::from_row(row));
        }
        let lw = self.cfg.late_window_us;
        for m in &snapshot.recent_movements {
            if let Some(s) = active.skus.get_mut(m.sku) {
                s.load_movement(m.ts_us, m.delta, lw);
            }
        }
        self.stores.insert(store, active);
        self.stats.activations += 1;
    }

    /// Loads the rollups of `store`'s `day` for the terminals that live on
    /// this shard; only a terminal's own shard ever updates its rows, so
    /// the others' rows are not kept. A day already active is left as it
    /// is, except that the minutes that left it come back: a slot still in
    /// memory is kept (it is as new as the tables' row or newer), and any
    /// other row of the day in the tables is one that left.
    pub fn activate_rollup_day(&mut self, store: u32, day: u32, rollups: &[TerminalRollupRow]) {
        match self.days.get_mut(&(store, day)) {
            None => {
                self.days.insert((store, day), RollupDay::loaded());
            }
            Some(d) if d.evicted.is_empty() => return,
            Some(d) => d.evicted = HashMap::default(),
        }
        self.stats.activations += 1;
        for &row in rollups {
            if row.store == store && row.day == day && self.owns_terminal(store, row.terminal) {
                let key = (row.store, row.day, row.terminal, row.minute);
                self.rollups
                    .entry(key)
                    .or_insert_with(|| RollupSlot::loaded(row));
            }
        }
    }

    /// Passivation: drops the stores (their SKUs) and rollup days that
    /// last changed before `idle.entities_us`, and from the days that stay
    /// the rollup minutes that last changed before `idle.minutes_us`, all
    /// only if their rows are in the tables (their last LSN is at most
    /// `materialized_lsn`). They are loaded again from the store when a
    /// batch needs them; one whose rows are still on their way stays,
    /// whatever its age, since loading it again now would turn its state
    /// back.
    pub fn passivate_idle(&mut self, idle: IdleBefore, materialized_lsn: u64) -> Passivated {
        let mut out = Passivated::default();
        self.stores.retain(|_, active| {
            let stays = !active.last.idle(idle.entities_us, materialized_lsn);
            if !stays {
                out.stores += 1;
                out.skus += active.skus.len() as u64;
            }
            stays
        });
        let before = self.days.len();
        self.days
            .retain(|_, d| !d.last.idle(idle.entities_us, materialized_lsn));
        out.days = (before - self.days.len()) as u64;
        if out.days > 0 {
            let live: HashSet<u32, Keyed> = self.days.keys().map(|&(store, _)| store).collect();
            self.terminals.retain(|(store, _)| live.contains(store));
        }
        let before = self.rollups.len();
        let days = &mut self.days;
        self.rollups
            .retain(
                |&(store, day, terminal, minute), slot| match days.get_mut(&(store, day)) {
                    // Its day left: the day is loaded again whole when needed.
                    None => false,
                    Some(_) if !slot.changed.idle(idle.minutes_us, materialized_lsn) => true,
                    // It leaves with its day recording that it left: else a
                    // sale in it would start it again from zero.
                    Some(d) => {
                        d.record_left(terminal, minute);
                        false
                    }
                },
            );
        out.rollup_minutes = (before - self.rollups.len()) as u64;
        if out.rollup_minutes > 0 {
            self.rollups.shrink_to(self.rollups.len() * 2);
        }
        out
    }

    /// Drops everything of `store` (its SKUs, rollup days and minutes,
    /// terminals) whose rows are in the tables (last LSN at most
    /// `materialized_lsn`), whatever its age: the store is being handed
    /// to another node, which loads it from the tables; kept here, it
    /// would be stale should the store come back. True once nothing of it
    /// is left; false means some of it waits for the tables (call again).
    pub fn forget_store(&mut self, store: u32, materialized_lsn: u64) -> bool {
        let mut all = true;
        self.stores.retain(|s, active| {
            let stays = s == store && active.last.lsn > materialized_lsn;
            all &= !stays;
            s != store || stays
        });
        self.days.retain(|&(s, _), d| {
            let stays = s == store && d.last.lsn > materialized_lsn;
            all &= !stays;
            s != store || stays
        });
        let days = &self.days;
        self.rollups
            .retain(|&(s, day, _, _), _| s != store || days.contains_key(&(s, day)));
        if all {
            self.terminals.retain(|(s, _)| *s != store);
        }
        all
    }

    /// The shard's counters and gauges (walks the SKUs for the window
    /// gauge: call it per metrics tick, not per batch).
    pub fn stats(&self) -> ShardStats {
        let mut s = self.stats;
        for active in self.stores.values() {
            s.skus_active += active.skus.len() as u64;
            s.window_movements += active
                .skus
                .values()
                .map(|k| k.held_len() as u64)
                .sum::<u64>();
        }
        s.terminals_active = self.terminals.len() as u64;
        s.stores_active = self.stores.len() as u64;
        s.rollup_days_active = self.days.len() as u64;
        s.rollup_minutes = self.rollups.len() as u64;
        s
    }

    /// The current level row of a SKU, if this shard holds it (for tests
    /// and `tillstream top`).
    pub fn level(&self, store: u32, sku: u64) -> Option<StockLevelRow> {
        self.stores
            .get(store)
            .and_then(|a| a.skus.get(sku))
            .map(|s| s.row(store, sku))
    }
}

/// The sale or refund fields of an event, if it is one.
fn view(e: &ArchivedEvent) -> Option<SaleView<'_>> {
    match e {
        ArchivedEvent::Sale(s) => Some(SaleView::sale(s)),
        ArchivedEvent::Refund(r) => Some(SaleView::refund(r)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_minutes;
#[cfg(test)]
mod tests_passivate;
