//! Test helpers: a generator of consistent row sets (what the engine would
//! write for a stream of events, with levels, rollups, ledger and
//! watermarks derived the way ARCHITECTURE.md says) and an in-memory [`Query`]
//! over a `RowSet`, for tests that need no backend.

pub mod conformance;

use std::collections::BTreeMap;

use crate::query::*;
use crate::rows::*;
use crate::store::StoreError;
use crate::time;

/// 2011-02-20T00:00:00Z, a Sunday.
pub const T0: i64 = 15_025 * time::DAY_US;

/// Builds the rows of a stream of events. Emit each SKU's events in time
/// order: levels are a running sum, reset by counts.
#[derive(Debug, Default)]
pub struct Gen {
    pub rows: RowSet,
    levels: BTreeMap<(u32, u64), StockLevelRow>,
    rollups: BTreeMap<(u32, u32, u32, u16), TerminalRollupRow>,
    marks: BTreeMap<u64, u64>,
}

pub fn key(device: u64, seq: u64, idx: u32) -> EventKey {
    EventKey { device, seq, idx }
}

/// A device's health ping of event `k` in `store`, at `ts_us`.
pub fn health_row(k: EventKey, store: u32, ts_us: i64) -> DeviceHealthRow {
    DeviceHealthRow {
        ts_us,
        key: k,
        store,
        battery_pct: 80,
        temperature_dc: 215,
        uptime_s: 3600,
        queue_depth: 0,
        rssi_dbm: -70,
    }
}

impl Gen {
    fn apply(&mut self, m: &mut StockMovementRow) {
        let l = self
            .levels
            .entry((m.store, m.sku))
            .or_insert(StockLevelRow {
                store: m.store,
                sku: m.sku,
                level: 0,
                count_ts_us: None,
                count_key: None,
                updated_ts_us: 0,
                version: 0,
            });
        if m.reason == MovementReason::CountCorrection {
            m.delta = m.counted - l.level;
            l.level = m.counted;
            l.count_ts_us = Some(m.ts_us);
            l.count_key = Some(m.key);
        } else {
            l.level += m.delta;
        }
        l.updated_ts_us = m.ts_us;
        l.version += 1;
        m.level_after = l.level;
        m.applied = true;
    }

    #[allow(clippy::too_many_arguments)]
    fn movement(
        &mut self,
        k: EventKey,
        store: u32,
        sku: u64,
        ts_us: i64,
        reason: MovementReason,
        delta: i64,
        line: u16,
    ) {
        let mut m = StockMovementRow {
            store,
            sku,
            ts_us,
            key: k,
            line,
            reason,
            delta,
            counted: if reason == MovementReason::CountCorrection {
                delta
            } else {
                0
            },
            level_after: 0,
            applied: false,
        };
        self.apply(&mut m);
        self.rows.stock_movements.push(m);
    }

    /// A sale or refund with lines of (sku, quantity, unit price).
    #[allow(clippy::too_many_arguments)]
    pub fn sale(
        &mut self,
        k: EventKey,
        store: u32,
        terminal: u32,
        ts_us: i64,
        kind: SaleKind,
        lines: &[(u64, i32, i64)],
    ) {
        let (mut items, mut gross, mut tax) = (0, 0, 0);
        for (line, &(sku, quantity, unit_price)) in (0u16..).zip(lines) {
            let amount = i64::from(quantity) * unit_price;
            let line_tax = amount / 10;
            items += i64::from(quantity);
            gross += amount;
            tax += line_tax;
            self.rows.sale_lines.push(SaleLineRow {
                store,
                sku,
                ts_us,
                key: k,
                line,
                kind,
                quantity,
                unit_price,
                discount: 0,
                tax: line_tax,
                amount,
            });
            let (reason, delta) = kind.stock_change(quantity);
            self.movement(k, store, sku, ts_us, reason, delta, line);
        }
        self.rows.sales.push(SaleRow {
            store,
            ts_us,
            key: k,
            kind,
            terminal,
            operator: 7,
            txn: [k.idx as u8; 16],
            currency: *b"EUR",
            lines: lines.len() as u16,
            items,
            gross,
            discount: 0,
            tax,
            tendered: gross + tax,
            tip: 0,
            tenders: 1,
            tender_methods: 1,
            customer: (k.idx & 1 == 0).then_some(u64::from(k.idx)),
        });
        let (day, minute) = (time::day(ts_us), time::minute_of_day(ts_us));
        let r = self
            .rollups
            .entry((store, day, terminal, minute))
            .or_insert(TerminalRollupRow {
                store,
                day,
                terminal,
                minute,
                ..TerminalRollupRow::default()
            });
        match kind {
            SaleKind::Sale => {
                r.sales += 1;
                r.gross += gross;
                r.tax += tax;
            }
            SaleKind::Refund => {
                r.refunds += 1;
                r.refunded += gross;
            }
        }
    }

    /// A primary movement (receipt, shrink, transfer): `delta` as reported.
    pub fn stock(
        &mut self,
        k: EventKey,
        store: u32,
        sku: u64,
        ts_us: i64,
        reason: MovementReason,
        delta: i64,
    ) {
        self.movement(k, store, sku, ts_us, reason, delta, 0);
    }

    /// A shelf count setting the level to `counted`.
    pub fn count(&mut self, k: EventKey, store: u32, sku: u64, ts_us: i64, counted: i64) {
        self.movement(
            k,
            store,
            sku,
            ts_us,
            MovementReason::CountCorrection,
            counted,
            0,
        );
    }

    /// A health ping.
    pub fn health(&mut self, k: EventKey, store: u32, ts_us: i64) {
        self.rows.device_health.push(health_row(k, store, ts_us));
    }

    /// A refused event.
    pub fn reject(&mut self, k: EventKey, ts_us: i64) {
        self.rows.rejected.push(RejectedEventRow {
            ts_us,
            key: k,
            code: 3,
            reason: "negative quantity".into(),
            event: vec![1, 2, 3, k.idx as u8],
        });
    }

    /// A durable batch: its ledger row, and the watermark moves up to it.
    pub fn batch(&mut self, device: u64, seq: u64, events: u32) {
        self.rows.batches.push(BatchRow {
            device,
            seq,
            events,
            received_at_us: T0 + seq as i64,
            digest: seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        });
        let m = self.marks.entry(device).or_insert(0);
        *m = (*m).max(seq);
    }

    /// The rows, with the current levels, rollups and watermarks.
    pub fn finish(mut self) -> RowSet {
        self.rows.stock_levels = self.levels.into_values().collect();
        self.rows.terminal_rollups = self.rollups.into_values().collect();
        self.rows.watermarks = self
            .marks
            .into_iter()
            .map(|(device, seq)| WatermarkRow {
                device,
                seq,
                updated_at_us: T0,
            })
            .collect();
        self.rows
    }
}

/// A small consistent data set: two stores, two devices, sales, refunds,
/// receipts, a count, health pings, a rejected event; every batch durable.
pub fn sample() -> RowSet {
    let mut g = Gen::default();
    let m = time::MINUTE_US;
    // Device 1 (store 1, terminal 10): batch 1 with three sales.
    g.sale(
        key(1, 1, 0),
        1,
        10,
        T0 + m,
        SaleKind::Sale,
        &[(100, 2, 250), (101, 1, 1000), (102, 3, 99)],
    );
    g.sale(
        key(1, 1, 1),
        1,
        10,
        T0 + m + 5,
        SaleKind::Sale,
        &[(100, 1, 250)],
    );
    g.sale(
        key(1, 1, 2),
        1,
        10,
        T0 + 2 * m,
        SaleKind::Refund,
        &[(101, 1, 1000)],
    );
    g.batch(1, 1, 3);
    // Device 2 (shelf sensor of store 1): a receipt, a count, a ping.
    g.stock(
        key(2, 1, 0),
        1,
        100,
        T0 + 3 * m,
        MovementReason::Receipt,
        50,
    );
    g.count(key(2, 1, 1), 1, 100, T0 + 4 * m, 40);
    g.health(key(2, 1, 2), 1, T0 + 4 * m);
    g.batch(2, 1, 3);
    // Device 1 again, an hour later: a sale after the count, a reject.
    g.sale(
        key(1, 2, 0),
        1,
        10,
        T0 + time::HOUR_US,
        SaleKind::Sale,
        &[(100, 4, 250)],
    );
    g.reject(key(1, 2, 1), T0 + time::HOUR_US);
    g.batch(1, 2, 2);
    // Device 3 (store 2, terminal 20), the next day.
    g.sale(
        key(3, 1, 0),
        2,
        20,
        T0 + time::DAY_US,
        SaleKind::Sale,
        &[(100, 1, 300), (200, 5, 20)],
    );
    g.stock(
        key(3, 1, 1),
        2,
        200,
        T0 + time::DAY_US + m,
        MovementReason::Shrink,
        -2,
    );
    g.batch(3, 1, 2);
    g.finish()
}

/// A [`Query`] over rows in memory. Only `scan` and `watermarks` are
/// meaningful; the analytics methods return nothing.
#[derive(Debug, Default)]
pub struct MemQuery(pub RowSet);

impl Query for MemQuery {
    fn sales_by_time(
        &self,
        _: Option<u32>,
        _: i64,
        _: i64,
        _: Bucket,
    ) -> Result<Vec<SalesBucket>, StoreError> {
        Ok(Vec::new())
    }
    fn top_skus(
        &self,
        _: Option<u32>,
        _: i64,
        _: i64,
        _: TopBy,
        _: usize,
    ) -> Result<Vec<SkuTotal>, StoreError> {
        Ok(Vec::new())
    }
    fn sku_movements(
        &self,
        _: u32,
        _: u64,
        _: i64,
        _: i64,
    ) -> Result<Vec<StockMovementRow>, StoreError> {
        Ok(Vec::new())
    }
    fn low_stock(&self, _: Option<u32>, _: i64) -> Result<Vec<StockLevelRow>, StoreError> {
        Ok(Vec::new())
    }
    fn watermarks(&self) -> Result<Vec<WatermarkRow>, StoreError> {
        Ok(self.0.watermarks.clone())
    }
    fn catalog(&self) -> Result<crate::catalog::Catalog, StoreError> {
        Ok(crate::catalog::Catalog::default())
    }
    fn scan(&self, table: Table, f: &mut dyn FnMut(RowRef<'_>)) -> Result<(), StoreError> {
        let r = &self.0;
        match table {
            Table::Sales => r.sales.iter().for_each(|x| f(RowRef::Sale(x))),
            Table::SaleLines => r.sale_lines.iter().for_each(|x| f(RowRef::SaleLine(x))),
            Table::StockMovements => r
                .stock_movements
                .iter()
                .for_each(|x| f(RowRef::Movement(x))),
            Table::StockLevels => r.stock_levels.iter().for_each(|x| f(RowRef::Level(x))),
            Table::TerminalRollups => r.terminal_rollups.iter().for_each(|x| f(RowRef::Rollup(x))),
            Table::DeviceHealth => r.device_health.iter().for_each(|x| f(RowRef::Health(x))),
            Table::DeviceWatermarks => r.watermarks.iter().for_each(|x| f(RowRef::Watermark(x))),
            Table::DeviceBatches => r.batches.iter().for_each(|x| f(RowRef::Batch(x))),
            Table::RejectedEvents => r.rejected.iter().for_each(|x| f(RowRef::Rejected(x))),
            Table::DeadLetters => r.dead_letters.iter().for_each(|x| f(RowRef::DeadLetter(x))),
        }
        Ok(())
    }
}
