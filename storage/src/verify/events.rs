//! Where `verify` counts each event: a slot of its ledger batch.
//!
//! Why not a map of event keys: a store of 4 M events made that map, and
//! the map of sales beside it, most of `verify`'s time (every row of four
//! tables a probe of a table larger than the caches) and most of its
//! 1 GB. The ledger, read first, says how many events each batch holds,
//! so each batch gets a run of slots in one array, when its first event
//! is seen: a row finds its batch in a map of batches (a few per thousand
//! events, and the last one found is kept, since rows of one batch come
//! together), then its slot by its index. A key that no ledger batch has
//! room for (an orphan) is counted in a map as before, and so are the
//! events of a batch that gets no slots: one that claims more events than
//! the engine's frames hold, or one past the slots' budget, which keeps
//! the slots within a few times the rows read, whatever a damaged ledger
//! claims.

use super::{Map, SaleAcc};
use crate::rows::EventKey;

/// Events a batch may claim and still get slots: a ledger row past it
/// (the engine's frames hold far fewer) is counted through the maps,
/// without allocating for what it claims.
const MAX_SLOTTED_EVENTS: u32 = 1 << 16;

/// Slots a batch may take beyond [`SLOTS_PER_ROW`] a row read.
const SLOTS_AHEAD: usize = 1 << 16;

/// Slots the array may hold a row read (a healthy store's batches have
/// about one row an event: a sale's lines and movements are more).
const SLOTS_PER_ROW: usize = 4;

/// A slot without a sale.
const NO_SALE: u32 = u32::MAX;

/// A batch's (device, seq).
type Batch = (u64, u64);

/// A batch's slots: the first, and how many (its events); `None` for a
/// batch that has none.
type Run = Option<(usize, u32)>;

/// The events and sales `verify` has seen, by key.
#[derive(Default)]
pub(super) struct Events {
    /// The ledger: each batch (device, seq) and the events it holds.
    pub(super) ledger: Map<Batch, u32>,
    /// Each batch an event was seen of: its first slot and its events,
    /// or `None` when it has no slots (its events are in the maps).
    slotted: Map<Batch, Run>,
    /// The batch found last, as `slotted` has it.
    last: Option<(Batch, Run)>,
    /// Rows looked up, for the slots' budget.
    rows: usize,
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
    /// Adds a ledger row (of one key, the last row counts, as in a map).
    /// All of them come before any event (`verify` scans the ledger
    /// first): slots are given by the counts the ledger has then.
    pub(super) fn add_batch(&mut self, device: u64, seq: u64, events: u32) {
        self.ledger.insert((device, seq), events);
    }

    fn slot(&mut self, key: &EventKey) -> Option<usize> {
        let batch = (key.device, key.seq);
        self.rows += 1;
        let run = match self.last {
            Some((b, run)) if b == batch => run,
            _ => {
                let run = match self.slotted.get(&batch) {
                    Some(&run) => run,
                    None => self.give_slots(batch)?,
                };
                self.last = Some((batch, run));
                run
            }
        };
        let (first, events) = run?;
        (key.idx < events).then(|| first + key.idx as usize)
    }

    /// Decides, at its first event, whether `batch` gets slots and gives
    /// them; `None` (nothing recorded) for a batch not in the ledger.
    fn give_slots(&mut self, batch: Batch) -> Option<Run> {
        let events = *self.ledger.get(&batch)?;
        let first = self.stored.len();
        let end = first + events as usize;
        let budget = SLOTS_PER_ROW * self.rows + SLOTS_AHEAD;
        let run = (events <= MAX_SLOTTED_EVENTS && end <= budget).then(|| {
            self.stored.resize(end, 0);
            self.sale_at.resize(end, NO_SALE);
            (first, events)
        });
        self.slotted.insert(batch, run);
        Some(run)
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
        for (&(device, seq), &(first, events)) in self.slotted_runs() {
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
            Some(&Some((first, n))) if n == events => {
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
            Some(&Some((first, events))) if key.idx < events => {
                self.stored[first + key.idx as usize] > 0
            }
            _ => self.unslotted.contains_key(&key),
        }
    }

    /// Stored events whose batch is not in the ledger or holds fewer
    /// events than their index: how many, and one of them.
    pub(super) fn orphans(&self) -> (u64, Option<EventKey>) {
        // A slot is inside its batch as the whole ledger counts it (slots
        // are given once the ledger is read): only keys without one can
        // be orphans.
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

    fn slotted_runs(&self) -> impl Iterator<Item = (&(u64, u64), &(usize, u32))> {
        self.slotted
            .iter()
            .filter_map(|(batch, run)| run.as_ref().map(|run| (batch, run)))
    }

    /// Devices of the stored events that have no slot (the others are
    /// the ledger's).
    pub(super) fn unslotted_devices(&self) -> impl Iterator<Item = u64> + '_ {
        self.unslotted.keys().map(|k| k.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A damaged ledger that claims far more events than are stored
    /// gets slots within the budget, and the same answers.
    #[test]
    fn claims_past_the_rows_read_get_no_slots_but_the_same_answers() {
        let mut e = Events::default();
        let batches = 200u64;
        for seq in 0..batches {
            e.add_batch(1, seq, MAX_SLOTTED_EVENTS);
        }
        for seq in 0..batches {
            assert!(e.primary(EventKey {
                device: 1,
                seq,
                idx: 5
            }));
        }
        let claimed = batches as usize * MAX_SLOTTED_EVENTS as usize;
        assert!(
            e.stored.len() <= SLOTS_PER_ROW * batches as usize + SLOTS_AHEAD,
            "{} slots for {batches} rows read ({claimed} claimed)",
            e.stored.len()
        );
        // Some batches got slots and some did not; each answers alike.
        assert!(matches!(e.slotted.get(&(1, 0)), Some(Some(_))));
        assert_eq!(e.slotted.get(&(1, batches - 1)), Some(&None));
        assert!(!e.unslotted.is_empty());
        assert_eq!(e.count(), batches);
        // The first batch has slots, the last none.
        for seq in [0, batches - 1] {
            let absent = e.absent(1, seq, MAX_SLOTTED_EVENTS);
            assert_eq!(absent, u64::from(MAX_SLOTTED_EVENTS) - 1);
        }
        assert_eq!(e.orphans(), (0, None));
        // A second row of a key is a duplicate, slotted or not.
        for seq in [0, batches - 1] {
            assert!(!e.primary(EventKey {
                device: 1,
                seq,
                idx: 5
            }));
        }
        assert_eq!(e.duplicates().0, 2);
    }
}
