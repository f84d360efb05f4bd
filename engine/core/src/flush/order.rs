//! Which commit units may become durable together.
//!
//! A commit unit is one device batch: the rows of all its shard parts and
//! its watermark. Shards apply parts of different devices in mailbox
//! order, and each part builds on the state the earlier ones left (a stock
//! level counts every movement before it). So if unit Y's part on shard A
//! was applied after unit X's, committing Y without X and crashing leaves a
//! stored level that counts X's movement while X's rows are missing; X is
//! resent, applied again and counted twice.
//!
//! [`CommitOrder`] releases the largest set of arrived units that is
//! closed under "must be durable before":
//! - on each shard, part `n` needs parts `0..n` (per the [`PartTicket`]s
//!   that `ShardCore::apply` hands out);
//! - for each device, a batch needs the device's earlier batches (the
//!   watermark is cumulative).
//!
//! Units in a cycle of these relations (X before Y on one shard, Y before
//! X on another) are released together, which is exactly right for an
//! atomic commit. Every released set is safe to commit as one atomic
//! commit; released sets must be committed in the order they are released.
//!
//! Invariants: a unit is released at most once; a released unit's parts
//! and device predecessors were all released in the same or an earlier
//! call; units come out in arrival order; nothing is released while a part
//! it depends on has not arrived.

use std::collections::{HashMap, VecDeque};

/// The position of one batch part in its shard's apply order: the `n`th
/// call of `ShardCore::apply` on shard `shard` (from 0, per process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartTicket {
    /// The shard that applied the part.
    pub shard: u16,
    /// Its number in that shard's apply order.
    pub n: u64,
}

/// Tickets further than this ahead of their shard's frontier are refused
/// (they cannot come from a real shard and would cost memory).
const MAX_GAP: u64 = 1 << 22;

#[derive(Debug)]
struct Entry<T> {
    unit: Option<T>,
    /// A ticket was bogus (handed out twice, or far ahead): never released.
    refused: bool,
    /// Scratch of `release`.
    blocked: bool,
}

/// Orders commit units so the store holds a consistent cut (module docs).
/// Pure and single-threaded: the flusher owns one.
#[derive(Debug)]
pub struct CommitOrder<T> {
    /// Per shard: the first part number not yet released.
    frontier: Vec<u64>,
    /// Per shard: slot `i` holds the entry owning part `frontier + i`.
    slots: Vec<VecDeque<Option<usize>>>,
    /// Entries by id; `None` is a free id.
    entries: Vec<Option<Entry<T>>>,
    free: Vec<usize>,
    /// Pending entry ids in arrival order.
    arrivals: Vec<usize>,
    /// Per device: pending entry ids in arrival (= seq) order.
    devices: HashMap<u64, VecDeque<usize>>,
    /// Per shard: how many leading slots a release takes (scratch).
    cut: Vec<usize>,
}

impl<T> Default for CommitOrder<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> CommitOrder<T> {
    /// An empty order. Shards are added as tickets name them.
    pub fn new() -> Self {
        Self {
            frontier: Vec::new(),
            slots: Vec::new(),
            entries: Vec::new(),
            free: Vec::new(),
            arrivals: Vec::new(),
            devices: HashMap::new(),
            cut: Vec::new(),
        }
    }

    /// How many parts of `shard` were released so far: once it equals the
    /// shard's `parts_applied()` after a commit, everything the shard
    /// applied is durable.
    pub fn released(&self, shard: u16) -> u64 {
        self.frontier.get(usize::from(shard)).copied().unwrap_or(0)
    }

    /// Units waiting.
    pub fn pending(&self) -> usize {
        self.arrivals.len()
    }

    /// True when no unit waits.
    pub fn is_empty(&self) -> bool {
        self.arrivals.is_empty()
    }

    /// Adds a unit. `device` is the batch's device (`None` for units with
    /// no watermark, such as dead letters); a device's units must be pushed
    /// in seq order. `parts` are the tickets of every shard part of the
    /// batch (empty for a batch without work).
    pub fn push(&mut self, unit: T, device: Option<u64>, parts: &[PartTicket]) {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.entries.push(None);
                self.entries.len() - 1
            }
        };
        let mut refused = false;
        for p in parts {
            let s = usize::from(p.shard);
            if s >= self.frontier.len() {
                self.frontier.resize(s + 1, 0);
                self.slots.resize_with(s + 1, VecDeque::new);
            }
            let Some(off) = p.n.checked_sub(self.frontier[s]) else {
                continue; // already released: a stale ticket waits for nothing
            };
            if off >= MAX_GAP {
                refused = true;
                continue;
            }
            let off = usize::try_from(off).unwrap_or(usize::MAX);
            let slots = &mut self.slots[s];
            if slots.len() <= off {
                slots.resize(off + 1, None);
            }
            match slots[off] {
                None => slots[off] = Some(id),
                Some(_) => refused = true, // a ticket handed out twice
            }
        }
        self.entries[id] = Some(Entry {
            unit: Some(unit),
            refused,
            blocked: refused,
        });
        self.arrivals.push(id);
        if let Some(d) = device {
            self.devices.entry(d).or_default().push_back(id);
        }
    }

    /// Moves every unit that may be committed now into `out`, in arrival
    /// order. Commit them in one atomic commit, before the next release.
    pub fn release(&mut self, out: &mut Vec<T>) {
        if self.arrivals.is_empty() {
            return;
        }
        // Start: only entries refused at push are blocked.
        for &id in &self.arrivals {
            if let Some(e) = self.entries[id].as_mut() {
                e.blocked = e.refused;
            }
        }
        // A missing part blocks its shard from there on.
        self.cut.clear();
        for s in &self.slots {
            self.cut
                .push(s.iter().position(Option::is_none).unwrap_or(s.len()));
        }
        // Propagate to a fixpoint: blocked entries block the rest of every
        // shard they are on, and the later batches of their device.
        loop {
            let mut changed = false;
            for (s, slots) in self.slots.iter().enumerate() {
                let first_blocked = slots
                    .iter()
                    .take(self.cut[s])
                    .position(|slot| slot.is_some_and(|id| is_blocked(&self.entries, id)));
                if let Some(p) = first_blocked {
                    self.cut[s] = p;
                }
                for id in slots.iter().skip(self.cut[s]).flatten() {
                    changed |= block(&mut self.entries, *id);
                }
            }
            for queue in self.devices.values() {
                if let Some(p) = queue.iter().position(|&id| is_blocked(&self.entries, id)) {
                    for &id in queue.iter().skip(p + 1) {
                        changed |= block(&mut self.entries, id);
                    }
                }
            }
            if !changed {
                break;
            }
        }
        // Release the rest.
        let entries = &mut self.entries;
        let free = &mut self.free;
        self.arrivals.retain(|&id| {
            let keep = is_blocked(entries, id);
            if !keep {
                if let Some(unit) = entries[id].take().and_then(|mut e| e.unit.take()) {
                    out.push(unit);
                }
                free.push(id);
            }
            keep
        });
        for (s, slots) in self.slots.iter_mut().enumerate() {
            let n = self.cut[s];
            slots.drain(..n);
            self.frontier[s] += n as u64;
        }
        let entries = &self.entries;
        self.devices.retain(|_, queue| {
            while queue.front().is_some_and(|&id| entries[id].is_none()) {
                queue.pop_front();
            }
            !queue.is_empty()
        });
    }
}

impl<T> CommitOrder<T> {
    /// Takes every pending unit, released or not, in arrival order, and
    /// forgets them. For an engine that can no longer commit (a batch was
    /// applied on only some of its shards): the caller fails them all
    /// instead of letting them wait for parts that will never come.
    pub fn drain_all(&mut self, out: &mut Vec<T>) {
        for id in self.arrivals.drain(..) {
            if let Some(unit) = self.entries[id].take().and_then(|mut e| e.unit.take()) {
                out.push(unit);
            }
            self.free.push(id);
        }
        for slots in &mut self.slots {
            slots.clear();
        }
        self.devices.clear();
    }
}

fn is_blocked<T>(entries: &[Option<Entry<T>>], id: usize) -> bool {
    entries
        .get(id)
        .and_then(Option::as_ref)
        .is_some_and(|e| e.blocked)
}

/// Marks an entry blocked; true if it was not.
fn block<T>(entries: &mut [Option<Entry<T>>], id: usize) -> bool {
    match entries.get_mut(id).and_then(Option::as_mut) {
        Some(e) if !e.blocked => {
            e.blocked = true;
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
