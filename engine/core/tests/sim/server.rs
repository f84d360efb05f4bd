//! The engine, reduced to its decisions and its write path, as it runs:
//! - the sequencer: a fresh batch gets the next LSN, its parts go into the
//!   shards' mailboxes and its record into the journal, all in one step,
//!   so every mailbox holds parts in LSN order;
//! - shard actors, stepped in any interleaving, that activate from the
//!   model store and apply parts with their LSN;
//! - the journal, synced up to a random point: only synced records
//!   survive a crash;
//! - the flusher: a batch is acknowledged once it is applied on all its
//!   shards and the journal holds it, in LSN order; acknowledged rows are
//!   materialized with the LSN of the last one (the tables' checkpoint);
//! - passivation of what sat idle, bounded by the checkpoint;
//! - recovery: the journal after the checkpoint applied again, in order,
//!   with the time the live path stamped each batch with.

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use rand::Rng;
use rand::rngs::StdRng;
use tillstream_engine_core::ledger::{Admission, DeviceLedger};
use tillstream_engine_core::route::{BatchPlan, WorkItem, plan_batch};
use tillstream_engine_core::shard::{IdleBefore, Need, ShardConfig, ShardCore};
use tillstream_engine_core::validate::Rules;
use tillstream_protocol::ValidatedBatch;
use tillstream_storage::{BatchRow, RowSet, StoreSnapshot, WatermarkRow};

use crate::model::{ModelStore, Registry};

pub(crate) const LATE_WINDOW_US: i64 = 10 * 60 * 1_000_000;

/// One journal record: what replay needs to rebuild the batch's rows.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    lsn: u64,
    device: u64,
    seq: u64,
    now: i64,
    batch: Rc<ValidatedBatch>,
}

/// The journal on disk: records in LSN order, synced up to `synced`.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    records: VecDeque<Record>,
    synced: u64,
}

impl Journal {
    fn last_lsn(&self) -> u64 {
        self.records.back().map_or(self.synced, |r| r.lsn)
    }

    /// The writer syncs what is pending, or only part of it (a crash may
    /// come between two group commits).
    pub(crate) fn sync(&mut self, rng: &mut StdRng) {
        let last = self.last_lsn();
        if last > self.synced {
            self.synced = if rng.random_bool(0.8) {
                last
            } else {
                rng.random_range(self.synced..=last)
            };
        }
    }

    /// A power cut: unsynced records vanish.
    pub(crate) fn crash(&mut self) {
        while self.records.back().is_some_and(|r| r.lsn > self.synced) {
            self.records.pop_back();
        }
    }

    /// Drops what the tables hold (the store truncates once synced).
    fn truncate_through(&mut self, lsn: u64) {
        while self.records.front().is_some_and(|r| r.lsn <= lsn) {
            self.records.pop_front();
        }
    }
}

#[derive(Debug)]
struct Part {
    lsn: u64,
    device: u64,
    batch: Rc<ValidatedBatch>,
    items: Vec<WorkItem>,
}

/// A sequenced batch on its way to its ack.
#[derive(Debug)]
struct Unit {
    device: u64,
    seq: u64,
    events: u32,
    now: i64,
    parts_left: usize,
    rows: RowSet,
}

#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) shards: u16,
    cores: Vec<ShardCore>,
    mailboxes: Vec<VecDeque<Part>>,
    ledgers: BTreeMap<u64, DeviceLedger>,
    next_lsn: u64,
    /// Sequenced and not yet acknowledged, by LSN.
    units: BTreeMap<u64, Unit>,
    /// The next LSN to acknowledge.
    next_ack: u64,
    /// Acknowledged rows waiting for the next materialization, and the
    /// LSN of the last of them.
    gathered: RowSet,
    gathered_lsn: u64,
    plan: BatchPlan,
    needs: Vec<Need>,
    pub(crate) stats: ServerStats,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ServerStats {
    pub(crate) fresh: u64,
    pub(crate) duplicates: u64,
    pub(crate) parts: u64,
    pub(crate) activations: u64,
    pub(crate) materializations: u64,
    pub(crate) replayed: u64,
    pub(crate) late_counts: u64,
    pub(crate) stale_movements: u64,
    pub(crate) passivated_stores: u64,
    pub(crate) passivated_days: u64,
    pub(crate) passivated_minutes: u64,
}

fn cores(shards: u16) -> Vec<ShardCore> {
    (0..shards)
        .map(|id| ShardCore::new(shard_config(id, shards)))
        .collect()
}

fn shard_config(id: u16, shards: u16) -> ShardConfig {
    ShardConfig {
        id,
        shards,
        late_window_us: LATE_WINDOW_US,
        rules: Rules::default(),
    }
}

/// What activation reads for `need`, installed on `core` (as the engine's
/// shard actors do).
fn activate(core: &mut ShardCore, need: Need, model: &ModelStore) {
    match need {
        Need::Store(id) => {
            let levels = model.load_levels(id);
            let windows = core.movement_windows(&levels);
            let recent_movements = model.load_movements(id, &windows);
            core.activate_store(
                id,
                &StoreSnapshot {
                    levels,
                    recent_movements,
                },
            );
        }
        Need::RollupDay { store, day } => {
            core.activate_rollup_day(store, day, &model.load_rollups(store, day));
        }
    }
}

fn push_ledger(rows: &mut RowSet, device: u64, seq: u64, events: u32, now: i64) {
    rows.batches.push(BatchRow {
        device,
        seq,
        events,
        received_at_us: now,
        // A stand-in: the model never checks a resend against the ledger.
        digest: seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
    });
    rows.watermarks.push(WatermarkRow {
        device,
        seq,
        updated_at_us: now,
    });
}

impl Server {
    /// A server starting over `model`: the journal's records after the
    /// tables' checkpoint are applied again and materialized first
    /// (recovery), and the shards start from the cores replay left.
    pub(crate) fn start(
        shards: u16,
        model: &mut ModelStore,
        journal: &mut Journal,
        registry: &Registry,
        stats: ServerStats,
    ) -> Self {
        let mut s = Self {
            shards,
            cores: cores(shards),
            mailboxes: (0..shards).map(|_| VecDeque::new()).collect(),
            ledgers: BTreeMap::new(),
            next_lsn: journal.last_lsn() + 1,
            units: BTreeMap::new(),
            next_ack: journal.last_lsn() + 1,
            gathered: RowSet::default(),
            gathered_lsn: 0,
            plan: BatchPlan::new(shards),
            needs: Vec::new(),
            stats,
        };
        s.recover(model, journal, registry);
        s
    }

    fn recover(&mut self, model: &mut ModelStore, journal: &mut Journal, registry: &Registry) {
        let from = model.checkpoint;
        let mut rows = RowSet::default();
        let mut last = from;
        for r in journal.records.iter().filter(|r| r.lsn > from) {
            let archived = r.batch.get();
            plan_batch(archived, r.device, &Rules::default(), r.now, &mut self.plan);
            for (shard, items) in self.plan.touched() {
                self.needs.clear();
                let core = &mut self.cores[usize::from(shard)];
                core.needs(archived, items, &mut self.needs);
                for &need in &self.needs {
                    self.stats.activations += 1;
                    activate(core, need, model);
                }
                core.apply(r.lsn, r.device, archived, items, r.now, &mut rows);
            }
            let events = u32::try_from(archived.events.len()).unwrap_or(u32::MAX);
            push_ledger(&mut rows, r.device, r.seq, events, r.now);
            self.stats.replayed += 1;
            last = r.lsn;
        }
        if last > from {
            model.materialize(&rows, last, registry);
            journal.truncate_through(last);
        }
    }

    /// The session: admit, plan, sequence. Returns the device's durable
    /// watermark for a duplicate (to ack), None for a fresh batch.
    pub(crate) fn receive(
        &mut self,
        device: u64,
        seq: u64,
        batch: Rc<ValidatedBatch>,
        now: i64,
        model: &ModelStore,
        journal: &mut Journal,
    ) -> Option<u64> {
        let ledger = self
            .ledgers
            .entry(device)
            .or_insert_with(|| DeviceLedger::new(model.watermark(device)));
        if ledger.admit(seq) == Admission::Duplicate {
            self.stats.duplicates += 1;
            return Some(ledger.durable());
        }
        self.stats.fresh += 1;
        plan_batch(batch.get(), device, &Rules::default(), now, &mut self.plan);
        // The sequencer's one step: LSN, mailboxes, journal.
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        let mut parts = 0;
        for (s, items) in self.plan.touched() {
            parts += 1;
            self.mailboxes[usize::from(s)].push_back(Part {
                lsn,
                device,
                batch: batch.clone(),
                items: items.to_vec(),
            });
        }
        journal.records.push_back(Record {
            lsn,
            device,
            seq,
            now,
            batch: batch.clone(),
        });
        self.units.insert(
            lsn,
            Unit {
                device,
                seq,
                events: u32::try_from(batch.get().events.len()).unwrap_or(u32::MAX),
                now,
                parts_left: parts,
                rows: RowSet::default(),
            },
        );
        None
    }

    pub(crate) fn ledger(&self, device: u64) -> Option<DeviceLedger> {
        self.ledgers.get(&device).copied()
    }

    /// A shard actor handles the next message of its mailbox; shards run
    /// in any interleaving.
    pub(crate) fn step_shard(&mut self, rng: &mut StdRng, now: i64, model: &ModelStore) -> bool {
        let busy: Vec<usize> = (0..self.mailboxes.len())
            .filter(|&s| !self.mailboxes[s].is_empty())
            .collect();
        if busy.is_empty() {
            return false;
        }
        let s = busy[rng.random_range(0..busy.len())];
        let Some(part) = self.mailboxes[s].pop_front() else {
            return false;
        };
        let core = &mut self.cores[s];
        self.needs.clear();
        core.needs(part.batch.get(), &part.items, &mut self.needs);
        for &need in &self.needs {
            self.stats.activations += 1;
            activate(core, need, model);
        }
        let unit = self
            .units
            .get_mut(&part.lsn)
            .unwrap_or_else(|| panic!("no unit for lsn {}", part.lsn));
        core.apply(
            part.lsn,
            part.device,
            part.batch.get(),
            &part.items,
            now,
            &mut unit.rows,
        );
        unit.parts_left -= 1;
        self.stats.parts += 1;
        true
    }

    /// The flusher: acknowledges, in LSN order, every unit applied on all
    /// its shards that the journal holds. Returns the (device, seq) acked.
    pub(crate) fn release(&mut self, journal: &Journal) -> Vec<(u64, u64)> {
        let mut acks = Vec::new();
        while self.next_ack <= journal.synced {
            let ready = self
                .units
                .get(&self.next_ack)
                .is_some_and(|u| u.parts_left == 0);
            if !ready {
                break;
            }
            let Some(mut u) = self.units.remove(&self.next_ack) else {
                break;
            };
            self.gathered.append(&mut u.rows);
            push_ledger(&mut self.gathered, u.device, u.seq, u.events, u.now);
            self.gathered_lsn = self.next_ack;
            if let Some(l) = self.ledgers.get_mut(&u.device) {
                l.mark_durable(u.seq);
            }
            acks.push((u.device, u.seq));
            self.next_ack += 1;
        }
        acks
    }

    /// Writes what was acknowledged to the tables, with its checkpoint;
    /// the journal then drops what the tables hold.
    pub(crate) fn materialize(
        &mut self,
        model: &mut ModelStore,
        journal: &mut Journal,
        registry: &Registry,
    ) {
        if self.gathered_lsn == 0 {
            return;
        }
        let rows = std::mem::take(&mut self.gathered);
        model.materialize(&rows, self.gathered_lsn, registry);
        journal.truncate_through(self.gathered_lsn);
        self.gathered_lsn = 0;
        self.stats.materializations += 1;
    }

    /// Passivates what changed before `idle_before_us` and is in the tables,
    /// and evicts such rollup minutes from the days that stay.
    pub(crate) fn passivate(&mut self, idle_before_us: i64, model: &ModelStore) {
        for core in &mut self.cores {
            // As the engine's sweep does, with one horizon here: the
            // sim's clock jumps minutes, so both kinds of idle come up.
            let p = core.passivate_idle(IdleBefore::all(idle_before_us), model.checkpoint);
            self.stats.passivated_stores += p.stores;
            self.stats.passivated_days += p.days;
            self.stats.passivated_minutes += p.rollup_minutes;
        }
    }

    /// Nothing in flight anywhere.
    pub(crate) fn idle(&self) -> bool {
        self.mailboxes.iter().all(VecDeque::is_empty)
            && self.units.is_empty()
            && self.gathered_lsn == 0
    }

    pub(crate) fn absorb_core_stats(&mut self) {
        for c in &self.cores {
            let s = c.stats();
            self.stats.late_counts += s.late_counts;
            self.stats.stale_movements += s.stale_movements;
        }
    }
}
