//! An in-memory store with the `Store` semantics, and the invariants of
//! docs/internals/design.md checked on it.
//!
//! Semantics: a commit is atomic; raw rows are appended (so a row stored
//! twice shows); stock levels keep the highest version; rollups the last
//! write; watermarks the highest seq.
//!
//! Checks (each panics with a description when broken):
//! - every raw row is stored once per (table, key, line);
//! - no row belongs to a batch above its device's watermark, and every
//!   batch at or below it has, per event, exactly the rows it should (a
//!   rejection with the expected code for a bad event);
//! - each SKU's level equals its latest count plus the movements stamped
//!   after it (all its movements with no count), its version is the number
//!   of applied rows and its level their summed deltas;
//! - each rollup row equals the sums over the stored sales of its minute.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use tillstream_protocol::{Batch, Event, RejectCode};
use tillstream_storage::time::{day, minute_of_day};
use tillstream_storage::{
    EventKey, MovementReason, RowSet, SaleKind, SaleRow, StockLevelRow, StockMovementRow,
    TerminalRollupRow, WindowMovement,
};

/// What each batch sent was meant to be, by (device, seq).
pub(crate) type Registry = HashMap<(u64, u64), Sent>;

/// (store, day, terminal, minute)
pub(crate) type RollupKey = (u32, u32, u32, u16);

/// What the generator meant each event of a batch to be.
#[derive(Debug)]
pub(crate) struct Sent {
    pub(crate) batch: Rc<Batch>,
    /// Per event: the code it must be rejected with, if it is bad.
    pub(crate) bad: Vec<Option<RejectCode>>,
}

#[derive(Debug, Default)]
pub(crate) struct ModelStore {
    pub(crate) levels: BTreeMap<(u32, u64), StockLevelRow>,
    pub(crate) rollups: BTreeMap<RollupKey, TerminalRollupRow>,
    pub(crate) watermarks: BTreeMap<u64, u64>,
    pub(crate) batches: BTreeSet<(u64, u64)>,
    sales: Vec<SaleRow>,
    movements: Vec<StockMovementRow>,
    movements_by_store: BTreeMap<u32, Vec<usize>>,
    movements_by_sku: HashMap<(u32, u64), Vec<usize>>,
    sales_by_minute: HashMap<RollupKey, Vec<usize>>,
    /// Raw rows per (table, key, line).
    seen: HashMap<(u8, EventKey, u16), u32>,
    /// Raw rows per event, for the completeness check.
    per_event: HashMap<EventKey, EventRows>,
    pub(crate) commits: u64,
    pub(crate) rows: u64,
    /// The LSN of the last batch the tables hold.
    pub(crate) checkpoint: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct EventRows {
    sales: u32,
    lines: u32,
    movements: u32,
    health: u32,
    rejected: u32,
    code: u16,
}

fn minute_key(s: &SaleRow) -> RollupKey {
    (s.store, day(s.ts_us), s.terminal, minute_of_day(s.ts_us))
}

impl ModelStore {
    pub(crate) fn watermark(&self, device: u64) -> u64 {
        self.watermarks.get(&device).copied().unwrap_or(0)
    }

    pub(crate) fn load_levels(&self, store: u32) -> Vec<StockLevelRow> {
        self.levels
            .range((store, 0)..=(store, u64::MAX))
            .map(|(_, r)| *r)
            .collect()
    }

    /// Movements of `store` stamped in one of `windows` that a late window
    /// keeps, in (ts, key, line) order.
    pub(crate) fn load_movements(&self, store: u32, windows: &[(i64, i64)]) -> Vec<WindowMovement> {
        let mut out: Vec<StockMovementRow> = self
            .movements_by_store
            .get(&store)
            .map(|ids| {
                ids.iter()
                    .map(|&i| self.movements[i])
                    .filter(|m| windows.iter().any(|w| (w.0..w.1).contains(&m.ts_us)))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|m| (m.ts_us, m.key, m.line));
        out.iter().filter_map(WindowMovement::of).collect()
    }

    pub(crate) fn load_rollups(&self, store: u32, day: u32) -> Vec<TerminalRollupRow> {
        self.rollups
            .range((store, day, 0, 0)..=(store, day, u32::MAX, u16::MAX))
            .map(|(_, r)| *r)
            .collect()
    }

    fn raw(&mut self, table: u8, key: EventKey, line: u16) {
        let n = self.seen.entry((table, key, line)).or_insert(0);
        *n += 1;
        assert_eq!(*n, 1, "row stored twice: table {table} {key:?} line {line}");
    }

    /// Writes `rows` with the checkpoint `lsn` atomically, then checks
    /// what it touched. The tables only ever move forward in LSN order.
    pub(crate) fn materialize(&mut self, rows: &RowSet, lsn: u64, registry: &Registry) {
        assert!(
            lsn > self.checkpoint,
            "checkpoint went from {} to {lsn}",
            self.checkpoint
        );
        self.checkpoint = lsn;
        self.commit(rows, registry);
    }

    /// Commits `rows` atomically, then checks what it touched.
    fn commit(&mut self, rows: &RowSet, registry: &Registry) {
        self.commits += 1;
        self.rows += rows.len() as u64;
        let mut skus = BTreeSet::new();
        let mut minutes = BTreeSet::new();
        for s in &rows.sales {
            self.raw(1, s.key, 0);
            let k = minute_key(s);
            self.sales_by_minute
                .entry(k)
                .or_default()
                .push(self.sales.len());
            self.sales.push(*s);
            minutes.insert(k);
            self.per_event.entry(s.key).or_default().sales += 1;
        }
        for l in &rows.sale_lines {
            self.raw(2, l.key, l.line);
            self.per_event.entry(l.key).or_default().lines += 1;
        }
        for m in &rows.stock_movements {
            self.raw(3, m.key, m.line);
            let i = self.movements.len();
            self.movements.push(*m);
            self.movements_by_store.entry(m.store).or_default().push(i);
            self.movements_by_sku
                .entry((m.store, m.sku))
                .or_default()
                .push(i);
            skus.insert((m.store, m.sku));
            self.per_event.entry(m.key).or_default().movements += 1;
        }
        for h in &rows.device_health {
            self.raw(6, h.key, 0);
            self.per_event.entry(h.key).or_default().health += 1;
        }
        for r in &rows.rejected {
            self.raw(9, r.key, 0);
            let e = self.per_event.entry(r.key).or_default();
            e.rejected += 1;
            e.code = r.code;
        }
        for l in &rows.stock_levels {
            let k = (l.store, l.sku);
            skus.insert(k);
            match self.levels.get(&k) {
                Some(old) if old.version >= l.version => {
                    assert!(
                        old.version > l.version || old == l,
                        "two level rows with one version: {old:?} {l:?}"
                    );
                }
                _ => {
                    self.levels.insert(k, *l);
                }
            }
        }
        for r in &rows.terminal_rollups {
            let k = (r.store, r.day, r.terminal, r.minute);
            minutes.insert(k);
            self.rollups.insert(k, *r);
        }
        let mut new_batches = Vec::new();
        for w in &rows.watermarks {
            let m = self.watermarks.entry(w.device).or_insert(0);
            *m = (*m).max(w.seq);
        }
        for b in &rows.batches {
            assert!(
                self.batches.insert((b.device, b.seq)),
                "batch {b:?} committed twice"
            );
            new_batches.push((b.device, b.seq));
        }
        // Every raw row of this commit is at or below its watermark.
        let keys = rows
            .sales
            .iter()
            .map(|r| r.key)
            .chain(rows.sale_lines.iter().map(|r| r.key))
            .chain(rows.stock_movements.iter().map(|r| r.key))
            .chain(rows.device_health.iter().map(|r| r.key))
            .chain(rows.rejected.iter().map(|r| r.key));
        for k in keys {
            assert!(
                k.seq <= self.watermark(k.device) && self.batches.contains(&(k.device, k.seq)),
                "row of {k:?} committed without its batch"
            );
        }
        for b in new_batches {
            self.check_batch(b, registry);
        }
        for k in skus {
            self.check_sku(k);
        }
        for k in minutes {
            self.check_minute(k);
        }
    }

    /// Every event of a durable batch has exactly its rows.
    fn check_batch(&self, (device, seq): (u64, u64), registry: &HashMap<(u64, u64), Sent>) {
        let sent = registry
            .get(&(device, seq))
            .unwrap_or_else(|| panic!("unknown batch {device}/{seq}"));
        for (i, e) in sent.batch.events.iter().enumerate() {
            let key = EventKey {
                device,
                seq,
                idx: i as u32,
            };
            let got = self.per_event.get(&key).copied().unwrap_or_default();
            if let Some(code) = sent.bad[i] {
                assert_eq!(
                    (got.rejected, got.code),
                    (1, code.as_u16()),
                    "bad event {key:?} {e:?}: {got:?}"
                );
                assert_eq!(
                    got.sales + got.lines + got.movements + got.health,
                    0,
                    "{key:?}"
                );
                continue;
            }
            let ok = match e {
                Event::Sale(s) => {
                    let n = s.lines.len() as u32;
                    (
                        got.sales,
                        got.lines,
                        got.movements,
                        got.health,
                        got.rejected,
                    ) == (1, n, n, 0, 0)
                }
                Event::Refund(r) => {
                    let n = r.lines.len() as u32;
                    (
                        got.sales,
                        got.lines,
                        got.movements,
                        got.health,
                        got.rejected,
                    ) == (1, n, n, 0, 0)
                }
                Event::Movement(_) => {
                    (
                        got.sales,
                        got.lines,
                        got.movements,
                        got.health,
                        got.rejected,
                    ) == (0, 0, 1, 0, 0)
                }
                Event::Count(_) => {
                    let late = got.rejected == 1
                        && got.code == RejectCode::CountTooLate.as_u16()
                        && got.movements == 0;
                    late || (
                        got.sales,
                        got.lines,
                        got.movements,
                        got.health,
                        got.rejected,
                    ) == (0, 0, 1, 0, 0)
                }
                Event::Health(_) => {
                    (
                        got.sales,
                        got.lines,
                        got.movements,
                        got.health,
                        got.rejected,
                    ) == (0, 0, 0, 1, 0)
                }
            };
            assert!(ok, "event {key:?} stored wrongly: {got:?} for {e:?}");
        }
    }

    /// Level = latest count + movements stamped after it.
    fn check_sku(&self, k: (u32, u64)) {
        let ids = self
            .movements_by_sku
            .get(&k)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let rows = ids.iter().map(|&i| &self.movements[i]);
        let latest = rows
            .clone()
            .filter(|m| m.reason == MovementReason::CountCorrection)
            .max_by_key(|m| (m.ts_us, m.key));
        let expected = match latest {
            Some(c) => {
                c.counted
                    + rows
                        .clone()
                        .filter(|m| {
                            m.reason != MovementReason::CountCorrection && m.ts_us > c.ts_us
                        })
                        .map(|m| m.delta)
                        .sum::<i64>()
            }
            None => rows.clone().map(|m| m.delta).sum(),
        };
        let applied = rows.clone().filter(|m| m.applied).count() as u64;
        let summed: i64 = rows.clone().filter(|m| m.applied).map(|m| m.delta).sum();
        let Some(level) = self.levels.get(&k) else {
            assert_eq!(applied, 0, "SKU {k:?} has applied rows but no level");
            return;
        };
        assert_eq!(
            level.level, expected,
            "SKU {k:?}: level {level:?}, latest count {latest:?}"
        );
        assert_eq!(
            level.count_ts_us,
            latest.map(|c| c.ts_us),
            "SKU {k:?} count time"
        );
        assert_eq!(
            level.count_key,
            latest.map(|c| c.key),
            "SKU {k:?} count key"
        );
        assert_eq!(
            level.version, applied,
            "SKU {k:?}: version is not the applied rows"
        );
        assert_eq!(
            level.level, summed,
            "SKU {k:?}: level is not the applied deltas"
        );
    }

    /// A rollup minute = the sums of its stored sales.
    fn check_minute(&self, k: RollupKey) {
        let mut want = TerminalRollupRow {
            store: k.0,
            day: k.1,
            terminal: k.2,
            minute: k.3,
            ..Default::default()
        };
        for &i in self
            .sales_by_minute
            .get(&k)
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let s = &self.sales[i];
            match s.kind {
                SaleKind::Sale => {
                    want.sales += 1;
                    want.gross += s.gross;
                    want.tax += s.tax;
                }
                SaleKind::Refund => {
                    want.refunds += 1;
                    want.refunded += s.gross;
                }
            }
        }
        let got = self.rollups.get(&k).copied().unwrap_or(TerminalRollupRow {
            store: k.0,
            day: k.1,
            terminal: k.2,
            minute: k.3,
            ..Default::default()
        });
        assert_eq!(got, want, "rollup {k:?} is not the sum of its sales");
    }

    /// Every check, over everything stored.
    pub(crate) fn check_all(&self, registry: &HashMap<(u64, u64), Sent>) {
        for (&(device, seq), _) in registry.iter() {
            let durable = seq <= self.watermark(device);
            assert_eq!(
                durable,
                self.batches.contains(&(device, seq)),
                "batch {device}/{seq} vs watermark"
            );
            if durable {
                self.check_batch((device, seq), registry);
            }
        }
        for k in self.per_event.keys() {
            assert!(
                self.batches.contains(&(k.device, k.seq)),
                "rows of {k:?} without its batch"
            );
        }
        let skus: BTreeSet<(u32, u64)> = self
            .movements_by_sku
            .keys()
            .copied()
            .chain(self.levels.keys().copied())
            .collect();
        for k in skus {
            self.check_sku(k);
        }
        let minutes: BTreeSet<RollupKey> = self
            .sales_by_minute
            .keys()
            .copied()
            .chain(self.rollups.keys().copied())
            .collect();
        for k in minutes {
            self.check_minute(k);
        }
    }

    pub(crate) fn movement_rows(&self) -> usize {
        self.movements.len()
    }

    pub(crate) fn sale_rows(&self) -> usize {
        self.sales.len()
    }

    /// Rejections by code.
    pub(crate) fn rejected_by_code(&self) -> BTreeMap<u16, usize> {
        let mut m = BTreeMap::new();
        for e in self.per_event.values() {
            if e.rejected > 0 {
                *m.entry(e.code).or_insert(0) += 1;
            }
        }
        m
    }

    /// A digest of the stored state, to compare two runs of one seed.
    pub(crate) fn digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |x: u64| h = (h ^ x).wrapping_mul(0x100_0000_01b3);
        for l in self.levels.values() {
            eat(l.sku);
            eat(l.level as u64);
            eat(l.version);
        }
        for r in self.rollups.values() {
            eat(u64::from(r.sales));
            eat(r.gross as u64);
        }
        for (d, s) in &self.watermarks {
            eat(*d);
            eat(*s);
        }
        eat(self.movements.len() as u64);
        eat(self.sales.len() as u64);
        h
    }
}
