//! The engine, reduced to its decisions: sessions (ledger, plan), shard
//! mailboxes fed over per-(device, shard) channels so shards see devices
//! interleaved in any order, shard cores activated from the model store,
//! per-device assembly of commit units, and a group-commit flusher that
//! releases units through `CommitOrder` and commits them in an order
//! shuffled across devices.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

use rand::Rng;
use rand::rngs::StdRng;
use tillstream_engine_core::flush::{CommitOrder, FlushPlanner, FlushPolicy, PartTicket};
use tillstream_engine_core::ledger::{Admission, DeviceLedger};
use tillstream_engine_core::route::{BatchPlan, WorkItem, plan_batch};
use tillstream_engine_core::shard::{Need, ShardConfig, ShardCore};
use tillstream_engine_core::validate::Rules;
use tillstream_protocol::ValidatedBatch;
use tillstream_storage::{BatchRow, RowSet, StoreSnapshot, WatermarkRow};

use crate::model::{ModelStore, Sent};

pub(crate) const LATE_WINDOW_US: i64 = 10 * 60 * 1_000_000;

#[derive(Debug)]
struct Part {
    /// Dispatch order, to deliver mostly oldest first.
    stamp: u64,
    device: u64,
    seq: u64,
    batch: Rc<ValidatedBatch>,
    items: Vec<WorkItem>,
}

#[derive(Debug)]
struct Assembly {
    seq: u64,
    events: u32,
    parts_left: usize,
    rows: RowSet,
    tickets: Vec<PartTicket>,
}

#[derive(Debug)]
pub(crate) struct Unit {
    device: u64,
    seq: u64,
    events: u32,
    rows: RowSet,
}

#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) shards: u16,
    cores: Vec<ShardCore>,
    channels: BTreeMap<(u64, u16), VecDeque<Part>>,
    mailboxes: Vec<VecDeque<Part>>,
    ledgers: BTreeMap<u64, DeviceLedger>,
    assembling: BTreeMap<u64, VecDeque<Assembly>>,
    order: CommitOrder<Unit>,
    planner: FlushPlanner,
    plan: BatchPlan,
    needs: Vec<Need>,
    stamp: u64,
    pub(crate) stats: ServerStats,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ServerStats {
    pub(crate) fresh: u64,
    pub(crate) duplicates: u64,
    pub(crate) parts: u64,
    pub(crate) activations: u64,
    pub(crate) commits: u64,
    pub(crate) late_counts: u64,
    pub(crate) stale_movements: u64,
    pub(crate) passivations: u64,
}

impl Server {
    pub(crate) fn new(shards: u16) -> Self {
        Self {
            shards,
            cores: (0..shards)
                .map(|id| {
                    ShardCore::new(ShardConfig {
                        id,
                        shards,
                        late_window_us: LATE_WINDOW_US,
                        rules: Rules::default(),
                    })
                })
                .collect(),
            channels: BTreeMap::new(),
            mailboxes: (0..shards).map(|_| VecDeque::new()).collect(),
            ledgers: BTreeMap::new(),
            assembling: BTreeMap::new(),
            order: CommitOrder::new(),
            planner: FlushPlanner::new(FlushPolicy {
                max_rows: 400,
                max_wait_us: 3_000_000,
            }),
            plan: BatchPlan::new(shards),
            needs: Vec::new(),
            stamp: 0,
            stats: ServerStats::default(),
        }
    }

    /// The session: admit, plan, dispatch. Returns the device's durable
    /// watermark for a duplicate (to ack), None for a fresh batch.
    pub(crate) fn receive(
        &mut self,
        device: u64,
        seq: u64,
        batch: Rc<ValidatedBatch>,
        now: i64,
        model: &ModelStore,
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
        let mut parts = 0;
        for (s, items) in self.plan.touched() {
            parts += 1;
            self.stamp += 1;
            self.channels
                .entry((device, s))
                .or_default()
                .push_back(Part {
                    stamp: self.stamp,
                    device,
                    seq,
                    batch: batch.clone(),
                    items: items.to_vec(),
                });
        }
        let events = batch.get().events.len() as u32;
        self.assembling
            .entry(device)
            .or_default()
            .push_back(Assembly {
                seq,
                events,
                parts_left: parts,
                rows: RowSet::default(),
                tickets: Vec::new(),
            });
        self.submit_ready(device, now);
        None
    }

    pub(crate) fn ledger(&self, device: u64) -> Option<DeviceLedger> {
        self.ledgers.get(&device).copied()
    }

    /// Moves the head of a channel into its shard's mailbox: mostly the
    /// oldest, sometimes a random one (a slow session).
    pub(crate) fn deliver(&mut self, rng: &mut StdRng) -> bool {
        let busy: Vec<((u64, u16), u64)> = self
            .channels
            .iter()
            .filter_map(|(k, q)| q.front().map(|p| (*k, p.stamp)))
            .collect();
        if busy.is_empty() {
            return false;
        }
        let k = if rng.random_bool(0.7) {
            busy.iter()
                .min_by_key(|(_, stamp)| *stamp)
                .map_or(busy[0].0, |b| b.0)
        } else {
            busy[rng.random_range(0..busy.len())].0
        };
        if let Some(p) = self.channels.get_mut(&k).and_then(VecDeque::pop_front) {
            self.mailboxes[usize::from(k.1)].push_back(p);
        }
        true
    }

    /// A shard actor handles the next message of its mailbox.
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
        for need in &self.needs {
            self.stats.activations += 1;
            match *need {
                Need::Store(id) => {
                    let levels = model.load_levels(id);
                    let since = core.movements_since(&levels);
                    let recent_movements = if since == i64::MAX {
                        Vec::new()
                    } else {
                        model.load_movements(id, since)
                    };
                    core.activate_store(
                        id,
                        StoreSnapshot {
                            levels,
                            recent_movements,
                        },
                    );
                }
                Need::RollupDay { store, day } => {
                    core.activate_rollup_day(store, day, model.load_rollups(store, day))
                }
            }
        }
        let mut rows = RowSet::default();
        let ticket = core.apply(part.device, part.batch.get(), &part.items, now, &mut rows);
        self.stats.parts += 1;
        let asm = self
            .assembling
            .get_mut(&part.device)
            .and_then(|q| q.iter_mut().find(|a| a.seq == part.seq))
            .unwrap_or_else(|| panic!("no assembly for {}/{}", part.device, part.seq));
        asm.rows.append(&mut rows);
        asm.tickets.push(ticket);
        asm.parts_left -= 1;
        self.submit_ready(part.device, now);
        true
    }

    /// Units go to the flusher in each device's seq order.
    fn submit_ready(&mut self, device: u64, now: i64) {
        let Some(q) = self.assembling.get_mut(&device) else {
            return;
        };
        while q.front().is_some_and(|a| a.parts_left == 0) {
            let Some(a) = q.pop_front() else { break };
            self.planner.push(a.rows.len(), now);
            self.order.push(
                Unit {
                    device,
                    seq: a.seq,
                    events: a.events,
                    rows: a.rows,
                },
                Some(device),
                &a.tickets,
            );
        }
    }

    pub(crate) fn should_flush(&self, now: i64) -> bool {
        self.planner.should_commit(now)
    }

    /// One group commit: release what may be durable, shuffle it across
    /// devices (each device's units stay in order), commit, ack.
    pub(crate) fn flush(
        &mut self,
        rng: &mut StdRng,
        now: i64,
        model: &mut ModelStore,
        registry: &HashMap<(u64, u64), Sent>,
    ) -> Vec<(u64, u64)> {
        let mut units = Vec::new();
        self.order.release(&mut units);
        self.planner.committed();
        if !self.order.is_empty() {
            self.planner.push(0, now); // what stays blocked is due again
        }
        if units.is_empty() {
            return Vec::new();
        }
        // Random interleaving of the per-device sequences.
        let mut per_device: BTreeMap<u64, VecDeque<Unit>> = BTreeMap::new();
        for u in units {
            per_device.entry(u.device).or_default().push_back(u);
        }
        let mut rows = RowSet::default();
        let mut acks = Vec::new();
        while !per_device.is_empty() {
            let keys: Vec<u64> = per_device.keys().copied().collect();
            let d = keys[rng.random_range(0..keys.len())];
            let Some(q) = per_device.get_mut(&d) else {
                break;
            };
            if let Some(mut u) = q.pop_front() {
                rows.append(&mut u.rows);
                rows.watermarks.push(WatermarkRow {
                    device: u.device,
                    seq: u.seq,
                    updated_at_us: now,
                });
                rows.batches.push(BatchRow {
                    device: u.device,
                    seq: u.seq,
                    events: u.events,
                    received_at_us: now,
                });
                acks.push((u.device, u.seq));
            }
            if q.is_empty() {
                per_device.remove(&d);
            }
        }
        model.commit(&rows, registry);
        self.stats.commits += 1;
        for &(d, seq) in &acks {
            if let Some(l) = self.ledgers.get_mut(&d) {
                l.mark_durable(seq);
            }
        }
        acks
    }

    /// Passivates old rollup days on shards whose every part is durable.
    pub(crate) fn passivate(&mut self, before_day: u32) {
        for (s, core) in self.cores.iter_mut().enumerate() {
            if core.parts_applied() == self.order.released(s as u16) {
                self.stats.passivations += core.passivate_rollup_days_before(before_day) as u64;
            }
        }
    }

    /// Nothing in flight anywhere.
    pub(crate) fn idle(&self) -> bool {
        self.channels.values().all(VecDeque::is_empty)
            && self.mailboxes.iter().all(VecDeque::is_empty)
            && self.assembling.values().all(VecDeque::is_empty)
            && self.order.is_empty()
    }

    pub(crate) fn absorb_core_stats(&mut self) {
        for c in &self.cores {
            let s = c.stats();
            self.stats.late_counts += s.late_counts;
            self.stats.stale_movements += s.stale_movements;
        }
    }
}
