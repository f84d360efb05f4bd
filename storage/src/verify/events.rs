//! Where `verify` counts each event: a slot of its ledger batch.
//!
//! Why not a map of event keys: a store of 4 M events made that map, and
//! the map of sales beside it, most of `verify`'s time (every row of four
//! tables a probe of a table larger than the caches) and most of its
//! 1 GB. The ledger, read first, says how many events each batch holds,
//! so each batch gets a run of slots in one array: a row finds its batch
//! in a map of batches (a few per thousand events, and the last one found
//! is kept, since rows of one batch come together), then its slot by its
//! index. A key that no ledger batch has room for (an orphan, or a batch
//! of a size the engine never writes) is counted in a map as before.

use super::{Map, SaleAcc};
use crate::rows::EventKey;

/// Events a batch may claim and still get slots: a ledger row past it
/// (the engine's frames hold far fewer) is counted through the maps,
/// without allocating for what it claims.
const MAX_SLOTTED_EVENTS: u32 = 1 << 16;

/// A slot without a sale.
const NO_SALE: u32 = u32::MAX;

/// The events and sales `verify` has seen, by key.
#[derive(Default)]
pub(super) struct Events {
    /// The ledger: each batch (device, seq) and the events it holds.
    pub(super) ledger: Map<(u64, u64), u32>,
    /// Each batch with slots: its first slot and its events.
    slotted: Map<(u64, u64), (usize, u32)>,
    /// The batch found last, as `slotted` has it.
    last: Option<((u64, u64), (usize, u32))>,
    /// Primary rows stored, per slot (saturating: 2 is a duplicate).
    stored: Vec<u8>,
    /// Where each slot's sale is in `sales`.
    sale_at: Vec<u32>,
    /// Primary rows of keys without a slot.
    unslotted: Map<EventKey, u32>,
    /// Where the sale of each key without a slot is in `sales`.
    unslotted_sales: Map<EventKey, u32>,
    /// Every sale key seen (in a sale, line or movement row), in the
    /// order first seen.
    pub(super) sales: Vec<(EventKey, SaleAcc)>,
}

impl Events {
    /// Adds a ledger row. All of them come before any event (`verify`
    /// scans the ledger first): a batch added later would leave its
    /// events counted where they were seen without it.
    pub(super) fn add_batch(&mut self, device: u64, seq: u64, events: u32) {
        let batch = (device, seq);
        if self.ledger.insert(batch, events).is_some() {
            // A key is stored once; the slots of the first row stay.
            return;
        }
        if events <= MAX_SLOTTED_EVENTS {
            let first = self.stored.len();
            self.slotted.insert(batch, (first, events));
            let end = first + events as usize;
            self.stored.resize(end, 0);
            self.sale_at.resize(end, NO_SALE);
        }
    }

    fn slot(&mut self, key: &EventKey) -> Option<usize> {
        let batch = (key.device, key.seq);
        let (first, events) = match self.last {
            Some((b, found)) if b == batch => found,
            _ => {
                let found = *self.slotted.get(&batch)?;
                self.last = Some((batch, found));
                found
            }
        };
        (key.idx < events).then(|| first + key.idx as usize)
    }

    /// Records a primary row; true when its key is new.
    pub(super) fn primary(&mut self, key: EventKey) -> bool {
        match self.slot(&key) {
            Some(i) => {
                let n = &mut self.stored[i];
                *n = n.saturating_add(1);
                *n == 1
            }
            None => {
                let n = self.unslotted.entry(key).or_insert(0);
                *n += 1;
                *n == 1
            }
        }
    }

    /// What `key`'s sale has so far.
    pub(super) fn sale(&mut self, key: EventKey) -> &mut SaleAcc {
        let next = self.sales.len() as u32;
        let at = match self.slot(&key) {
            Some(i) => &mut self.sale_at[i],
            None => self.unslotted_sales.entry(key).or_insert(NO_SALE),
        };
        if *at == NO_SALE {
            *at = next;
            self.sales.push((key, SaleAcc::default()));
        }
        let at = *at as usize;
        &mut self.sales[at].1
    }

    /// Distinct events stored.
    pub(super) fn count(&self) -> u64 {
        let slotted = self.stored.iter().filter(|&&n| n > 0).count();
        (slotted + self.unslotted.len()) as u64
    }

    /// Keys stored more than once: how many, and the least.
    pub(super) fn duplicates(&self) -> (u64, Option<EventKey>) {
        let mut n = 0u64;
        let mut least: Option<EventKey> = None;
        let mut note = |key: EventKey| {
            n += 1;
            least = Some(least.map_or(key, |l| l.min(key)));
        };
        for (&(device, seq), &(first, events)) in &self.slotted {
            let runs = self.stored[first..first + events as usize].iter();
            for (idx, _) in (0u32..).zip(runs).filter(|(_, s)| **s > 1) {
                note(EventKey { device, seq, idx });
            }
        }
        for (&key, _) in self.unslotted.iter().filter(|(_, s)| **s > 1) {
            note(key);
        }
        (n, least)
    }

    /// Events of batch (device, seq) among 0..events that are not stored.
    pub(super) fn absent(&self, device: u64, seq: u64, events: u32) -> u64 {
        match self.slotted.get(&(device, seq)) {
            Some(&(first, n)) if n == events => {
                let slots = &self.stored[first..first + events as usize];
                slots.iter().filter(|&&s| s == 0).count() as u64
            }
            _ => (0..events)
                .filter(|&idx| !self.is_stored(EventKey { device, seq, idx }))
                .count() as u64,
        }
    }

    fn is_stored(&self, key: EventKey) -> bool {
        match self.slotted.get(&(key.device, key.seq)) {
            Some(&(first, events)) if key.idx < events => self.stored[first + key.idx as usize] > 0,
            _ => self.unslotted.contains_key(&key),
        }
    }

    /// Stored events whose batch is not in the ledger or holds fewer
    /// events than their index: how many, and one of them.
    pub(super) fn orphans(&self) -> (u64, Option<EventKey>) {
        // A slot is inside its batch by construction: only keys without
        // one can be orphans.
        let mut n = 0u64;
        let mut first = None;
        for key in self.unslotted.keys() {
            if self
                .ledger
                .get(&(key.device, key.seq))
                .is_none_or(|&events| key.idx >= events)
            {
                n += 1;
                first.get_or_insert(*key);
            }
        }
        (n, first)
    }

    /// Devices of the stored events that have no slot (the others are
    /// the ledger's).
    pub(super) fn unslotted_devices(&self) -> impl Iterator<Item = u64> + '_ {
        self.unslotted.keys().map(|k| k.device)
    }
}
