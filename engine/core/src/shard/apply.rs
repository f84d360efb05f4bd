//! `ShardCore::apply`: work items in, rows out.
//!
//! Invariants: items are applied in the order given; each SKU and rollup
//! minute changed by one call gets exactly one snapshot row, appended at
//! the end of the call with its final state; items that do not belong to
//! this shard or do not match their event are skipped and counted, never
//! a panic.

use rkyv::rancor;
use tillstream_protocol::{
    ArchivedBatch, ArchivedEvent, ArchivedMovementKind, ArchivedStockMovement, Event, RejectCode,
};
use tillstream_storage::{
    DeviceHealthRow, EventKey, MovementReason, RejectedEventRow, RowSet, SaleLineRow,
    StockMovementRow,
};

use super::sku::{CountOutcome, SkuState};
use super::sku_map::{SkuMap, Slot};
use super::stores::StoreSkus;
use super::terminal::{RollupDay, RollupSlot, SaleView, rollup_key};
use super::{LastChange, ShardCore, view};
use crate::route::{Role, WorkItem};

/// How many SKUs ahead of its lookup the read-ahead asks for a SKU's
/// bucket. Each SKU asks for two to four lines (its bucket, then its
/// count and window), and a core keeps a few dozen misses in flight, so
/// the number looks generous; but the work between two asks is short, and
/// at 16 the lookups still waited on their buckets (the read-ahead was
/// 8 to 9% of the server's CPU, most of it on that one load). At 32 the
/// shard's apply took 17.1 and 17.9% of the server's CPU (medians of two
/// sets of 4 profiles at 8 M events) against 18.3% at 16; 64 gained
/// nothing more (17.7%).
const WARM_AHEAD: usize = 32;

/// Looks up a SKU whose bucket [`ShardCore::warm_skus`] asked for, and
/// prefetches what its movement needs. Its slot, if it has an entity,
/// saves the apply a second probe.
fn warm_sku(skus: &SkuMap, sku: u64) -> Option<Slot> {
    let (slot, s) = skus.get_slotted(sku)?;
    s.prefetch_for_movement();
    Some(slot)
}

impl ShardCore {
    /// Applies the items of one batch part of `device`, whose batch has
    /// `lsn` in the engine's order, and appends the rows to `out`. Parts
    /// must come in LSN order (the LSN records what each entity's rows
    /// depend on, for [`ShardCore::passivate_idle`]). Stores and days not
    /// activated are taken as empty (and activated as such). Never panics.
    pub fn apply(
        &mut self,
        lsn: u64,
        device: u64,
        batch: &ArchivedBatch,
        items: &[WorkItem],
        now_us: i64,
        out: &mut RowSet,
    ) {
        let rows_before = out.len();
        let seq = batch.seq.to_native();
        let mut slots = std::mem::take(&mut self.warm_slots);
        slots.clear();
        self.warm_skus(batch, items, &mut slots);
        self.warm_slots = slots;
        self.warm_next = 0;
        for item in items {
            let Some(e) = batch.events.get(item.idx as usize) else {
                self.stats.misrouted += 1;
                continue;
            };
            let key = EventKey {
                device,
                seq,
                idx: item.idx,
            };
            let done = match (item.role, e) {
                (Role::Terminal, ArchivedEvent::Sale(_) | ArchivedEvent::Refund(_)) => {
                    view(e).is_some_and(|v| self.terminal(key, &v, out))
                }
                (Role::Lines, ArchivedEvent::Sale(_) | ArchivedEvent::Refund(_)) => {
                    view(e).is_some_and(|v| self.lines(key, &v, out))
                }
                (Role::Stock, ArchivedEvent::Movement(m)) => self.stock_movement(key, m, out),
                (Role::Stock, ArchivedEvent::Count(c)) => self.count(
                    key,
                    e,
                    c.store.to_native(),
                    c.sku.to_native(),
                    c.level.to_native(),
                    out,
                ),
                (Role::Health, ArchivedEvent::Health(h)) => {
                    out.device_health.push(DeviceHealthRow {
                        ts_us: h.ts_us.to_native(),
                        key,
                        store: h.store.to_native(),
                        battery_pct: h.battery_pct,
                        temperature_dc: h.temperature_dc.to_native(),
                        uptime_s: h.uptime_s.to_native(),
                        queue_depth: h.queue_depth.to_native(),
                        rssi_dbm: h.rssi_dbm.to_native(),
                    });
                    true
                }
                (Role::Rejected(code), _) => {
                    self.reject(key, e, code, out);
                    continue;
                }
                _ => false,
            };
            if done {
                self.stats.events_applied += 1;
            } else {
                self.stats.misrouted += 1;
            }
        }
        self.end_rollup_run();
        self.flush_dirty(LastChange { at_us: now_us, lsn }, out);
        self.stats.rows_emitted += out.len().saturating_sub(rows_before) as u64;
        self.stats.parts_applied += 1;
        self.stats.last_apply_us = now_us;
    }

    /// Reads, for every SKU the part's lines and stock movements move,
    /// its entity, and prefetches what its movement reads and writes
    /// (`SkuState::prefetch_for_movement`), before any is applied. Each is
    /// a cache miss or two at a chain's catalogue size; here nothing waits
    /// on them, so the CPU has many in flight at once, where the apply
    /// below, with a row's work between one SKU and the next, met them one
    /// at a time. The bucket where a SKU's probe starts is asked for
    /// [`WARM_AHEAD`] SKUs before the SKU is looked up, so its line has
    /// arrived or is on its way (looking each up at once waited for each
    /// bucket in turn: 13% of the server's CPU). New SKUs and stores not
    /// active are left to the apply.
    ///
    /// `slots` gets, for every SKU this shard owns, in the order the apply
    /// moves them ([`ShardCore::next_warm_slot`]), where its entity was
    /// found (none for a SKU or store not active yet).
    fn warm_skus(&self, batch: &ArchivedBatch, items: &[WorkItem], slots: &mut Vec<Option<Slot>>) {
        // Each SKU with its store's map, found once: the lookup
        // WARM_AHEAD SKUs later goes straight to the map, and its answer
        // to its place in `slots`.
        let mut ring: [Option<(&SkuMap, u64, usize)>; WARM_AHEAD] = [None; WARM_AHEAD];
        let mut asked = 0usize;
        let mut ask = |store: u32, sku: u64| {
            if !self.owns(store, sku) {
                return;
            }
            let at = slots.len();
            slots.push(None);
            let Some(active) = self.stores.get(store) else {
                return;
            };
            active.skus.prefetch(sku);
            if let Some((skus, sku, at)) = ring[asked % WARM_AHEAD].replace((&active.skus, sku, at))
                && let Some(slot) = slots.get_mut(at)
            {
                *slot = warm_sku(skus, sku);
            }
            asked += 1;
        };
        for item in items {
            let Some(e) = batch.events.get(item.idx as usize) else {
                continue;
            };
            match (item.role, e) {
                (Role::Lines, ArchivedEvent::Sale(_) | ArchivedEvent::Refund(_)) => {
                    if let Some(v) = view(e) {
                        for l in v.lines {
                            ask(v.store, l.sku.to_native());
                        }
                    }
                }
                (Role::Stock, ArchivedEvent::Movement(m)) => {
                    ask(m.store.to_native(), m.sku.to_native());
                }
                _ => {}
            }
        }
        // The last ones asked for, oldest first.
        for n in asked..asked + WARM_AHEAD {
            if let Some((skus, sku, at)) = ring[n % WARM_AHEAD]
                && let Some(slot) = slots.get_mut(at)
            {
                *slot = warm_sku(skus, sku);
            }
        }
    }

    /// The slot [`ShardCore::warm_skus`] found for the next SKU the apply
    /// moves. Called once for each SKU it asked for, in the same order:
    /// after the same ownership check, for lines and stock movements only.
    /// Were the two ever out of step, a slot would point at another SKU's
    /// bucket, which `SkuMap` checks, and the apply would probe as before.
    fn next_warm_slot(&mut self) -> Option<Slot> {
        let slot = self.warm_slots.get(self.warm_next).copied().flatten();
        self.warm_next += 1;
        slot
    }

    /// A receipt, shrink or transfer. False if the SKU is not this shard's.
    fn stock_movement(
        &mut self,
        key: EventKey,
        m: &ArchivedStockMovement,
        out: &mut RowSet,
    ) -> bool {
        let (store, sku) = (m.store.to_native(), m.sku.to_native());
        if !self.owns(store, sku) {
            return false;
        }
        let reason = match m.reason {
            ArchivedMovementKind::Receipt => MovementReason::Receipt,
            ArchivedMovementKind::Shrink => MovementReason::Shrink,
            ArchivedMovementKind::TransferIn => MovementReason::TransferIn,
            ArchivedMovementKind::TransferOut => MovementReason::TransferOut,
        };
        let delta = i64::from(m.delta.to_native());
        let slot = self.next_warm_slot();
        let ts = m.ts_us.to_native();
        self.movement(store, sku, slot, ts, key, 0, reason, delta, out);
        true
    }

    /// The sale row and its rollup minute. False (misrouted) if the
    /// terminal lives on another shard.
    fn terminal(&mut self, key: EventKey, v: &SaleView<'_>, out: &mut RowSet) -> bool {
        if !self.owns_terminal(v.store, v.terminal) {
            return false;
        }
        let row = v.row(key);
        let rk = rollup_key(v);
        if self.rollup_run.as_ref().is_none_or(|(k, _)| *k != rk) {
            self.end_rollup_run();
            let days = &mut self.days;
            let activations = &mut self.stats.activations;
            let slot = self.rollups.entry(rk).or_insert_with(|| {
                days.entry((rk.0, rk.1)).or_insert_with(|| {
                    *activations += 1;
                    RollupDay::loaded()
                });
                RollupSlot::new(rk)
            });
            self.rollup_run = Some((rk, *slot));
        }
        // Always there: it was started above if it was not this minute's.
        let Some((_, slot)) = self.rollup_run.as_mut() else {
            return false;
        };
        slot.add(&row);
        if !slot.dirty {
            slot.dirty = true;
            self.dirty_rollups.push(rk);
            // Once per minute and part is enough: the slot was dirty for
            // this terminal's earlier sales of the part.
            self.terminals.insert((v.store, v.terminal));
        }
        out.sales.push(row);
        true
    }

    /// Puts the rollup minute of the last run of sales back in `rollups`
    /// (see `ShardCore::rollup_run`).
    fn end_rollup_run(&mut self) {
        if let Some((rk, run)) = self.rollup_run.take()
            && let Some(slot) = self.rollups.get_mut(&rk)
        {
            *slot = run;
        }
    }

    /// The lines of a sale or refund whose SKU lives here. False if none.
    fn lines(&mut self, key: EventKey, v: &SaleView<'_>, out: &mut RowSet) -> bool {
        let mut any = false;
        for (i, l) in v.lines.iter().enumerate() {
            let sku = l.sku.to_native();
            if !self.owns(v.store, sku) {
                continue;
            }
            any = true;
            let line = u16::try_from(i).unwrap_or(u16::MAX);
            let quantity = l.quantity.to_native();
            out.sale_lines.push(SaleLineRow {
                store: v.store,
                sku,
                ts_us: v.ts,
                key,
                line,
                kind: v.kind,
                quantity,
                unit_price: l.unit_price.to_native(),
                discount: l.discount.to_native(),
                tax: l.tax.to_native(),
                amount: l.amount(),
            });
            let (reason, delta) = v.kind.stock_change(quantity);
            let slot = self.next_warm_slot();
            self.movement(v.store, sku, slot, v.ts, key, line, reason, delta, out);
        }
        any
    }

    /// The SKU's state, created empty (and its store activated empty) if
    /// it is new. The store is nearly always the last one asked for
    /// (`ActiveStores`); in its map, the entity sits in its bucket: one
    /// probe.
    /// `slot`: where the read-ahead found it, if it did.
    fn sku_mut(&mut self, store: u32, sku: u64, slot: Option<Slot>) -> (Slot, &mut SkuState) {
        let (active, new) = self.stores.get_or_load(store);
        if new {
            self.stats.activations += 1;
        }
        #[cfg(test)]
        if slot.is_some_and(|s| active.skus.holds(s, sku)) {
            self.warm_slot_hits += 1;
        }
        active.skus.get_or_insert_at(slot, sku, SkuState::empty)
    }

    #[allow(clippy::too_many_arguments)]
    fn movement(
        &mut self,
        store: u32,
        sku: u64,
        slot: Option<Slot>,
        ts: i64,
        key: EventKey,
        line: u16,
        reason: MovementReason,
        delta: i64,
        out: &mut RowSet,
    ) {
        let late_window = self.cfg.late_window_us;
        let (slot, s) = self.sku_mut(store, sku, slot);
        let (applied, level_after) = s.movement(ts, delta, late_window);
        if applied {
            if !s.dirty {
                s.dirty = true;
                self.dirty_skus.push((store, sku, slot));
            }
        } else {
            self.stats.stale_movements += 1;
        }
        out.stock_movements.push(StockMovementRow {
            store,
            sku,
            ts_us: ts,
            key,
            line,
            reason,
            delta,
            counted: 0,
            level_after,
            applied,
        });
    }

    fn count(
        &mut self,
        key: EventKey,
        e: &ArchivedEvent,
        store: u32,
        sku: u64,
        counted: i64,
        out: &mut RowSet,
    ) -> bool {
        if !self.owns(store, sku) {
            return false;
        }
        let ts = e.ts_us();
        let late_window = self.cfg.late_window_us;
        let (slot, s) = self.sku_mut(store, sku, None);
        let outcome = s.count(ts, key, counted, late_window);
        let level_after = s.level;
        let newly_dirty = matches!(outcome, CountOutcome::Applied { .. }) && !s.dirty;
        if newly_dirty {
            s.dirty = true;
            self.dirty_skus.push((store, sku, slot));
        }
        let (delta, applied) = match outcome {
            CountOutcome::TooLate => {
                self.stats.late_counts += 1;
                self.reject(key, e, RejectCode::CountTooLate, out);
                return true;
            }
            CountOutcome::Stale => {
                self.stats.stale_counts += 1;
                (0, false)
            }
            CountOutcome::Applied { delta } => (delta, true),
        };
        out.stock_movements.push(StockMovementRow {
            store,
            sku,
            ts_us: ts,
            key,
            line: 0,
            reason: MovementReason::CountCorrection,
            delta,
            counted,
            level_after,
            applied,
        });
        true
    }

    /// A `rejected_events` row. `event` holds the event archived on its
    /// own (root type `Event`, readable with
    /// `rkyv::access::<ArchivedEvent, _>`); empty if it could not be copied.
    fn reject(&mut self, key: EventKey, e: &ArchivedEvent, code: RejectCode, out: &mut RowSet) {
        let event = rkyv::deserialize::<Event, rancor::Error>(e)
            .and_then(|ev| rkyv::to_bytes::<rancor::Error>(&ev))
            .map(|b| b.to_vec())
            .unwrap_or_default();
        out.rejected.push(RejectedEventRow {
            ts_us: e.ts_us(),
            key,
            code: code.as_u16(),
            reason: code.name().to_owned(),
            event,
        });
        self.stats.rejected += 1;
    }

    /// Emits the final level row of every SKU and rollup minute changed,
    /// and records the change on their stores and days.
    fn flush_dirty(&mut self, change: LastChange, out: &mut RowSet) {
        // A part's SKUs are mostly of one store: look it up once per run.
        let mut active: Option<(u32, &mut StoreSkus)> = None;
        for &(store, sku, slot) in &self.dirty_skus {
            if active.as_ref().is_none_or(|(at, _)| *at != store) {
                active = self.stores.get_mut(store).map(|a| {
                    a.last = change;
                    (store, a)
                });
            }
            let Some((_, a)) = active.as_mut() else {
                continue;
            };
            if let Some(s) = a.skus.get_mut_at(Some(slot), sku) {
                s.dirty = false;
                out.stock_levels.push(s.row(store, sku));
            }
        }
        self.dirty_skus.clear();
        let mut last_day = None;
        for k in &self.dirty_rollups {
            if let Some(slot) = self.rollups.get_mut(k) {
                slot.dirty = false;
                slot.changed = change;
                out.terminal_rollups.push(slot.row);
                if last_day != Some((k.0, k.1)) {
                    last_day = Some((k.0, k.1));
                    self.days
                        .entry((k.0, k.1))
                        .or_insert_with(RollupDay::loaded)
                        .last = change;
                }
            }
        }
        self.dirty_rollups.clear();
    }
}
