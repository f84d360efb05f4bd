//! `tillstream verify`: the integrity check of the invariants (docs/internals/design.md), over any backend
//! that implements [`Query`].
//!
//! It checks, in one pass over each table (O(rows); the ledger first, whose
//! batches give their events slots: `verify/events.rs`):
//! - every event is stored in exactly one primary row (a sale or refund, a
//!   primary stock movement, a health ping, or a rejected event): keys seen
//!   twice are `duplicates`;
//! - every event of a durable batch (a ledger row at or below its device's
//!   watermark) is present: else `missing`; ledger rows above the watermark,
//!   primary rows without a ledger row, and primary rows whose index is
//!   past their batch's event count are `orphans`; if the client's list of
//!   acknowledged batches is given, each must be in the ledger with the
//!   same event count and all its events present, else its events are
//!   `missing`;
//! - each sale has exactly its `lines` sale lines (0..n) and as many
//!   sale/refund stock movements: else `line_mismatches` (lines or
//!   movements without a sale count too);
//! - each SKU's level equals its latest count plus the deltas stamped
//!   strictly after that count (the sum of all deltas without a count):
//!   else `stock_mismatches`;
//! - each terminal minute's rollup equals the sums of its stored sales:
//!   else `rollup_mismatches`.
//!
//! Sales and refunds enter the rollups once per distinct event, so a
//! duplicate shows up as a duplicate, not also as a rollup mismatch.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use crate::query::{Query, RowRef};
use crate::rows::*;
use crate::store::StoreError;
use crate::time;

/// A batch a client holds an acknowledgement for.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ExpectedBatch {
    /// Device that sent it.
    #[serde(
        serialize_with = "crate::json::id",
        deserialize_with = "crate::json::de_id"
    )]
    pub device: u64,
    /// Its seq.
    pub seq: u64,
    /// Events it held.
    pub events: u32,
}

/// What [`verify`] found. `ok` is true when every counter is zero.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// No problem found.
    pub ok: bool,
    /// Distinct events stored (primary rows by key).
    pub events: u64,
    /// Batches in the ledger.
    pub batches: u64,
    /// Devices seen (ledger, watermarks, events).
    pub devices: u64,
    /// Events of durable or acknowledged batches that are not stored.
    pub missing: u64,
    /// Event keys stored in more than one primary row.
    pub duplicates: u64,
    /// Ledger rows above their watermark, and events without a batch.
    pub orphans: u64,
    /// SKUs whose stored level differs from their movements.
    pub stock_mismatches: u64,
    /// Terminal minutes whose rollup differs from their sales.
    pub rollup_mismatches: u64,
    /// Sales whose lines or line movements do not match their line count.
    pub line_mismatches: u64,
    /// The first problems, human readable.
    pub problems: Vec<String>,
}

/// Problems kept in [`VerifyReport::problems`].
pub const MAX_PROBLEMS: usize = 20;

/// FxHash-style hasher: the keys are integers we stored ourselves, so a
/// fast multiply-rotate beats SipHash several times over.
#[derive(Default, Clone, Copy)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

type Map<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A set of line numbers, expected to be exactly `0..n`, each once.
#[derive(Default)]
struct LineSet {
    /// Rows seen.
    rows: u32,
    /// Line numbers < 64 seen.
    mask: u64,
    /// Line numbers >= 64 seen (rare). Boxed, so that a set is 24 bytes
    /// where a `Vec` made it 40: `verify` keeps two for every sale.
    #[allow(clippy::box_collection)]
    high: Option<Box<Vec<u16>>>,
    /// A line number < 64 was seen twice.
    dup: bool,
}

impl LineSet {
    fn add(&mut self, line: u16) {
        self.rows += 1;
        if line < 64 {
            let bit = 1u64 << line;
            self.dup |= self.mask & bit != 0;
            self.mask |= bit;
        } else {
            self.high.get_or_insert_default().push(line);
        }
    }

    /// True when the lines are exactly 0..n, once each.
    fn is_exactly(&mut self, n: u16) -> bool {
        let low = u32::from(n.min(64));
        let want_mask = if low == 64 {
            u64::MAX
        } else {
            (1u64 << low) - 1
        };
        let high = self.high.as_deref_mut().map_or(&mut [][..], |h| &mut h[..]);
        high.sort_unstable();
        let high_ok = high.iter().copied().eq(64..n.max(64));
        !self.dup && self.mask == want_mask && high_ok && self.rows == u32::from(n)
    }
}

/// What one sale key has: its row, its lines, its line movements.
#[derive(Default)]
struct SaleAcc {
    /// `lines` of the (first) SaleRow, if there is one.
    lines: Option<u16>,
    /// SaleLineRows seen, by line.
    line_rows: LineSet,
    /// Sale/Refund movements seen, by line: a doubled line-0 movement and
    /// a missing line-1 movement must not pass as "two movements".
    movements: LineSet,
}

impl SaleAcc {
    fn add_line(&mut self, line: u16) {
        self.line_rows.add(line);
    }

    /// True when the lines are exactly 0..n, once each, and so are the
    /// movements.
    fn lines_match(&mut self, n: u16) -> bool {
        self.line_rows.is_exactly(n) && self.movements.is_exactly(n)
    }
}

/// What one SKU's movements add up to.
#[derive(Default)]
struct SkuAcc {
    /// Latest count: (ts, key, counted).
    count: Option<(i64, EventKey, i64)>,
    /// (ts, delta) of every non-count movement.
    deltas: Vec<(i64, i64)>,
}

impl SkuAcc {
    /// Saturating, as the engine computes levels: hostile values near the
    /// ends of `i64` give a mismatch to report, never a panic.
    fn expected_level(&self) -> i64 {
        let after = |from: i64| {
            self.deltas
                .iter()
                .filter(|d| d.0 > from)
                .fold(0i64, |acc, d| acc.saturating_add(d.1))
        };
        match self.count {
            Some((ts, _, counted)) => counted.saturating_add(after(ts)),
            None => after(i64::MIN),
        }
    }
}

type RollupKey = (u32, u32, u32, u16);

#[derive(Default)]
struct Verifier {
    report: VerifyReport,
    events: Events,
    skus: Map<(u32, u64), SkuAcc>,
    rollups: Map<RollupKey, TerminalRollupRow>,
    levels: Vec<StockLevelRow>,
    stored_rollups: Vec<TerminalRollupRow>,
}

impl Verifier {
    fn problem(&mut self, msg: impl FnOnce() -> String) {
        if self.report.problems.len() < MAX_PROBLEMS {
            self.report.problems.push(msg());
        }
    }

    fn sale(&mut self, r: &SaleRow) {
        if !self.events.primary(r.key) {
            return;
        }
        self.events.sale(r.key).lines = Some(r.lines);
        let key = (
            r.store,
            time::day(r.ts_us),
            r.terminal,
            time::minute_of_day(r.ts_us),
        );
        let m = self
            .rollups
            .entry(key)
            .or_insert_with(|| TerminalRollupRow {
                store: key.0,
                day: key.1,
                terminal: key.2,
                minute: key.3,
                ..TerminalRollupRow::default()
            });
        match r.kind {
            // Saturating, as the engine's rollups are.
            SaleKind::Sale => {
                m.sales = m.sales.saturating_add(1);
                m.gross = m.gross.saturating_add(r.gross);
                m.tax = m.tax.saturating_add(r.tax);
            }
            SaleKind::Refund => {
                m.refunds = m.refunds.saturating_add(1);
                m.refunded = m.refunded.saturating_add(r.gross);
            }
        }
    }

    fn movement(&mut self, r: &StockMovementRow) {
        if r.reason.is_primary() {
            self.events.primary(r.key);
        } else {
            self.events.sale(r.key).movements.add(r.line);
        }
        let sku = self.skus.entry((r.store, r.sku)).or_default();
        if r.reason == MovementReason::CountCorrection {
            if sku
                .count
                .is_none_or(|(ts, key, _)| (r.ts_us, r.key) > (ts, key))
            {
                sku.count = Some((r.ts_us, r.key, r.counted));
            }
        } else {
            sku.deltas.push((r.ts_us, r.delta));
        }
    }

    fn check_lines(&mut self) {
        let mut sales = std::mem::take(&mut self.events.sales);
        for (key, acc) in &mut sales {
            let ok = match acc.lines {
                Some(n) => acc.lines_match(n),
                None => false,
            };
            if !ok {
                self.report.line_mismatches += 1;
                self.problem(|| match acc.lines {
                    Some(n) => format!(
                        "sale {key:?}: {n} lines expected, {} line rows and {} line movements stored",
                        acc.line_rows.rows, acc.movements.rows
                    ),
                    None => format!("sale lines or movements of {key:?} without a sale row"),
                });
            }
        }
    }

    fn check_stock(&mut self) {
        let mut levels: Map<(u32, u64), i64> = Map::default();
        for l in std::mem::take(&mut self.levels) {
            levels.insert((l.store, l.sku), l.level);
        }
        let mut skus: Vec<_> = std::mem::take(&mut self.skus).into_iter().collect();
        skus.sort_unstable_by_key(|(k, _)| *k);
        for ((store, sku), acc) in skus {
            let want = acc.expected_level();
            match levels.remove(&(store, sku)) {
                Some(have) if have == want => {}
                have => {
                    self.report.stock_mismatches += 1;
                    self.problem(|| {
                        format!("stock of store {store} sku {sku}: movements give {want}, level row says {have:?}")
                    });
                }
            }
        }
        for ((store, sku), have) in levels {
            if have != 0 {
                self.report.stock_mismatches += 1;
                self.problem(|| {
                    format!("stock of store {store} sku {sku}: level {have} without any movement")
                });
            }
        }
    }

    fn check_rollups(&mut self) {
        for r in std::mem::take(&mut self.stored_rollups) {
            let key = (r.store, r.day, r.terminal, r.minute);
            let want = self.rollups.remove(&key).unwrap_or(TerminalRollupRow {
                store: r.store,
                day: r.day,
                terminal: r.terminal,
                minute: r.minute,
                ..TerminalRollupRow::default()
            });
            if want != r {
                self.report.rollup_mismatches += 1;
                self.problem(|| format!("rollup {key:?}: sales give {want:?}, stored {r:?}"));
            }
        }
        let mut left: Vec<RollupKey> = self.rollups.keys().copied().collect();
        left.sort_unstable();
        for key in left {
            self.report.rollup_mismatches += 1;
            self.problem(|| format!("rollup {key:?}: the minute has sales but no rollup row"));
        }
    }

    fn check_batches(&mut self, marks: &Map<u64, u64>, expected: Option<&[ExpectedBatch]>) {
        let wm = |device: u64| marks.get(&device).copied().unwrap_or(0);
        // A watermark is written in the same commit as its batch's ledger
        // row: a watermark without it means a batch below it may be gone
        // unseen (gaps in seqs are legal, so nothing else would show it).
        let mut marks_sorted: Vec<(u64, u64)> = marks.iter().map(|(d, s)| (*d, *s)).collect();
        marks_sorted.sort_unstable();
        for (device, seq) in marks_sorted {
            if seq > 0 && !self.events.ledger.contains_key(&(device, seq)) {
                self.report.missing += 1;
                self.problem(|| {
                    format!("device {device} has watermark {seq} but no ledger row for batch {seq}")
                });
            }
        }
        let mut ledger: Vec<((u64, u64), u32)> =
            self.events.ledger.iter().map(|(k, v)| (*k, *v)).collect();
        ledger.sort_unstable();
        for ((device, seq), events) in ledger {
            if seq > wm(device) {
                self.report.orphans += 1;
                self.problem(|| {
                    format!(
                        "device {device} batch {seq} is in the ledger above the watermark {}",
                        wm(device)
                    )
                });
                continue;
            }
            let absent = self.events.absent(device, seq, events);
            if absent > 0 {
                self.report.missing += absent;
                self.problem(|| {
                    format!("device {device} batch {seq}: {absent} of {events} events missing")
                });
            }
        }
        let (orphans, first) = self.events.orphans();
        if let Some(key) = first {
            self.report.orphans += orphans;
            self.problem(|| {
                format!("{orphans} events have no ledger batch (or are past its end), e.g. {key:?}")
            });
        }
        for e in expected.unwrap_or_default() {
            match self.events.ledger.get(&(e.device, e.seq)).copied() {
                Some(n) if n == e.events => {
                    // Batches at or below the watermark were counted above.
                    if e.seq > wm(e.device) {
                        let absent = self.events.absent(e.device, e.seq, e.events);
                        self.report.missing += absent;
                    }
                }
                stored => {
                    self.report.missing += u64::from(e.events.max(1));
                    self.problem(|| {
                        format!(
                            "acknowledged batch {} of device {} ({} events) not in the ledger as such: {stored:?}",
                            e.seq, e.device, e.events
                        )
                    });
                }
            }
        }
    }
}

/// Checks the invariants (docs/internals/design.md, "Invariants") over every table `q` holds; with
/// `expected`, also that each acknowledged batch is stored whole.
pub fn verify(
    q: &dyn Query,
    expected: Option<&[ExpectedBatch]>,
) -> Result<VerifyReport, StoreError> {
    let mut v = Verifier::default();
    let mut marks: Map<u64, u64> = Map::default();
    // One snapshot for every table: on a live server a write landing
    // between two tables' scans would show as rows without their batch.
    // The ledger first: it gives each batch's events their slots
    // (`verify/events.rs`).
    let tables = [
        Table::DeviceBatches,
        Table::Sales,
        Table::StockMovements,
        Table::SaleLines,
        Table::DeviceHealth,
        Table::RejectedEvents,
        Table::StockLevels,
        Table::TerminalRollups,
        Table::DeviceWatermarks,
    ];
    q.scan_consistent(&tables, &mut |r| match r {
        RowRef::Sale(s) => v.sale(s),
        RowRef::Movement(m) => v.movement(m),
        RowRef::SaleLine(l) => v.events.sale(l.key).add_line(l.line),
        RowRef::Health(h) => {
            v.events.primary(h.key);
        }
        RowRef::Rejected(x) => {
            v.events.primary(x.key);
        }
        RowRef::Level(l) => v.levels.push(*l),
        RowRef::Rollup(x) => v.stored_rollups.push(*x),
        RowRef::Batch(b) => v.events.add_batch(b.device, b.seq, b.events),
        RowRef::Watermark(w) => {
            let m = marks.entry(w.device).or_insert(0);
            *m = (*m).max(w.seq);
        }
        _ => {}
    })?;

    let (dups, least) = v.events.duplicates();
    v.report.duplicates = dups;
    if let Some(key) = least {
        v.problem(|| format!("{dups} events stored more than once, e.g. {key:?}"));
    }
    v.check_batches(&marks, expected);
    v.check_lines();
    v.check_stock();
    v.check_rollups();

    let mut devices: HashSet<u64, BuildHasherDefault<FastHasher>> = HashSet::default();
    devices.extend(v.events.ledger.keys().map(|k| k.0));
    devices.extend(marks.keys().copied());
    devices.extend(v.events.unslotted_devices());
    let r = &mut v.report;
    r.events = v.events.count();
    r.batches = v.events.ledger.len() as u64;
    r.devices = devices.len() as u64;
    r.ok = r.missing == 0
        && r.duplicates == 0
        && r.orphans == 0
        && r.stock_mismatches == 0
        && r.rollup_mismatches == 0
        && r.line_mismatches == 0;
    Ok(v.report)
}

mod events;
use events::Events;

#[cfg(test)]
mod tests;
