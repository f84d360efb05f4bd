//! The read side analysts use (`tillstream query`, the HTTP API), and the
//! raw scans `verify` walks.

use serde::Serialize;

use crate::rows::*;
use crate::store::StoreError;

/// Width of a time bucket of a sales series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bucket {
    /// One row per minute.
    Minute,
    /// One row per hour.
    Hour,
    /// One row per day.
    Day,
}

/// One bucket of a sales series. Money is in minor units (pence, cents),
/// and its JSON names say so (`gross_minor`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct SalesBucket {
    /// Start of the bucket: UTC microseconds since the epoch.
    pub start_us: i64,
    /// Sales in it.
    pub sales: u64,
    /// Refunds in it.
    pub refunds: u64,
    /// Units sold.
    pub items: i64,
    /// Σ gross of sales.
    #[serde(rename = "gross_minor")]
    pub gross: i64,
    /// Σ tax of sales.
    #[serde(rename = "tax_minor")]
    pub tax: i64,
    /// Σ gross of refunds.
    #[serde(rename = "refunded_minor")]
    pub refunded: i64,
    /// gross − refunded.
    #[serde(rename = "net_minor")]
    pub net: i64,
}

/// Ranking of [`Query::top_skus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TopBy {
    /// Units sold (net of refunds).
    Quantity,
    /// Amount sold (net of refunds).
    Revenue,
}

/// One SKU's totals over a time range (money in minor units).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SkuTotal {
    /// Store; `None` (JSON `null`, named "all stores") when summed over
    /// all stores.
    pub store: Option<u32>,
    /// Product.
    #[serde(serialize_with = "crate::json::id")]
    pub sku: u64,
    /// Units sold net of refunds: `quantity_sold - quantity_refunded`.
    pub quantity: i64,
    /// Units on sale lines.
    pub quantity_sold: i64,
    /// Units on refund lines.
    pub quantity_refunded: i64,
    /// Amount sold net of refunds, in minor units of the currency.
    #[serde(rename = "revenue_minor")]
    pub revenue: i64,
    /// Sale lines counted.
    pub lines: u64,
}

/// A borrowed row of any table, as [`Query::scan`] hands them out.
#[derive(Debug, Clone, Copy)]
pub enum RowRef<'a> {
    /// `sales`
    Sale(&'a SaleRow),
    /// `sale_lines`
    SaleLine(&'a SaleLineRow),
    /// `stock_movements`
    Movement(&'a StockMovementRow),
    /// `stock_levels`
    Level(&'a StockLevelRow),
    /// `terminal_rollups`
    Rollup(&'a TerminalRollupRow),
    /// `device_health`
    Health(&'a DeviceHealthRow),
    /// `device_watermarks`
    Watermark(&'a WatermarkRow),
    /// `device_batches`
    Batch(&'a BatchRow),
    /// `rejected_events`
    Rejected(&'a RejectedEventRow),
    /// `dead_letters`
    DeadLetter(&'a DeadLetterRow),
}

/// Reads of the tables. Times are UTC µs, ranges are `[from, to)`.
pub trait Query {
    /// Sales and refunds of one store (or all) bucketed by hour or day.
    /// Buckets without sales are left out.
    fn sales_by_time(
        &self,
        store: Option<u32>,
        from_us: i64,
        to_us: i64,
        bucket: Bucket,
    ) -> Result<Vec<SalesBucket>, StoreError>;

    /// The `limit` best SKUs of one store (or all, summed per SKU with
    /// `store` 0) by quantity or revenue, best first.
    fn top_skus(
        &self,
        store: Option<u32>,
        from_us: i64,
        to_us: i64,
        by: TopBy,
        limit: usize,
    ) -> Result<Vec<SkuTotal>, StoreError>;

    /// A SKU's stored `stock_movements` rows stamped in `[from_us, to_us)`,
    /// in any order, as the engine wrote them (`level_after` is the level
    /// when each was applied, in arrival order).
    fn sku_movements(
        &self,
        store: u32,
        sku: u64,
        from_us: i64,
        to_us: i64,
    ) -> Result<Vec<StockMovementRow>, StoreError>;

    /// A SKU's stock movements stamped in `[from_us, to_us)` in event-time
    /// order, each with the level as of its time ([`in_time_order`]). The
    /// level at `from_us` depends on every row before it, so this reads
    /// the SKU's movements from the beginning up to `to_us`.
    fn stock_history(
        &self,
        store: u32,
        sku: u64,
        from_us: i64,
        to_us: i64,
    ) -> Result<Vec<StockMovementRow>, StoreError> {
        if from_us >= to_us {
            return Ok(Vec::new());
        }
        let mut rows = self.sku_movements(store, sku, i64::MIN, to_us)?;
        in_time_order(&mut rows);
        rows.retain(|r| r.ts_us >= from_us);
        Ok(rows)
    }

    /// Current levels strictly below `below`, lowest first.
    fn low_stock(&self, store: Option<u32>, below: i64) -> Result<Vec<StockLevelRow>, StoreError>;

    /// Every device's durable watermark, by device.
    fn watermarks(&self) -> Result<Vec<WatermarkRow>, StoreError>;

    /// The product catalogue and store list (empty until one is imported).
    fn catalog(&self) -> Result<crate::catalog::Catalog, StoreError>;

    /// Hands every row of `table` to `f`: in the table's key order on the
    /// embedded store, in the cluster's token order on ScyllaDB (callers
    /// must not depend on either).
    fn scan(&self, table: Table, f: &mut dyn FnMut(RowRef<'_>)) -> Result<(), StoreError>;

    /// [`Query::scan`] of each of `tables` in turn, all as of one moment:
    /// a reader that checks tables against each other (verify) on a live
    /// server must not see one table before a write and the next after it.
    /// The default scans each table as it is (for a backend without
    /// snapshots); a backend that has them overrides it.
    fn scan_consistent(
        &self,
        tables: &[Table],
        f: &mut dyn FnMut(RowRef<'_>),
    ) -> Result<(), StoreError> {
        for &t in tables {
            self.scan(t, f)?;
        }
        Ok(())
    }

    /// The writers whose journal holds records the tables do not yet:
    /// acknowledged batches that no reader of the tables sees until that
    /// writer materializes them (a running server within its flush
    /// interval, a stopped one when it next starts). Empty on the
    /// embedded store, which a tool brings up to its journal when it
    /// opens it.
    fn trailing_journals(&self) -> Result<Vec<TrailingJournal>, StoreError> {
        Ok(Vec::new())
    }
}

/// A writer whose journal holds records the tables do not yet
/// ([`Query::trailing_journals`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TrailingJournal {
    /// The writer: a ScyllaDB node id.
    pub writer: String,
    /// The last LSN the tables hold (its checkpoint).
    pub tables_lsn: u64,
    /// The last LSN an acknowledgement may have covered.
    pub journal_lsn: u64,
}

/// Sorts one SKU's movements into event-time order and sets each row's
/// `level_after` to the level as of its time, by the engine's stock rule
/// (docs/internals/design.md, "Stock converges"): the latest count at or before it
/// plus the deltas of the movements between; with no count before it, the
/// sum of every delta up to it. Ties: at one time, movements come before a
/// count (a count sees what is stamped at its own time), counts by key,
/// movements by key and line.
///
/// The stored `level_after` is the level the engine reached when it
/// applied the row, in the order rows arrived. Devices that were offline,
/// or a replay, send rows late, so that order is not time's: a late
/// movement changes the level of every row after it up to the next
/// count, and a reader recomputes those levels here rather than store
/// them again. With every row of the SKU from its first, the last row's
/// level is the SKU's current level (`stock_levels`).
pub fn in_time_order(rows: &mut [StockMovementRow]) {
    rows.sort_unstable_by_key(|r| {
        let count = r.reason == MovementReason::CountCorrection;
        (r.ts_us, count, r.key, r.line)
    });
    let mut level = 0i64;
    for r in rows {
        level = if r.reason == MovementReason::CountCorrection {
            r.counted
        } else {
            level.saturating_add(r.delta)
        };
        r.level_after = level;
    }
}

/// Folds sales into the buckets of [`Query::sales_by_time`]; every backend
/// reads its rows its own way and sums them here, so the answers agree.
#[derive(Debug)]
pub struct SalesSeries {
    bucket: Bucket,
    from_us: i64,
    to_us: i64,
    out: std::collections::BTreeMap<i64, SalesBucket>,
}

impl SalesSeries {
    /// An empty series over `[from_us, to_us)`.
    pub fn new(from_us: i64, to_us: i64, bucket: Bucket) -> Self {
        SalesSeries {
            bucket,
            from_us,
            to_us,
            out: std::collections::BTreeMap::new(),
        }
    }

    /// Adds `r` if it is stamped inside the range. `items` counts the
    /// units of sales only (like `gross`).
    pub fn add(&mut self, r: &SaleRow) {
        if r.ts_us < self.from_us || r.ts_us >= self.to_us {
            return;
        }
        let start_us = match self.bucket {
            Bucket::Minute => r.ts_us - r.ts_us.rem_euclid(crate::time::MINUTE_US),
            Bucket::Hour => crate::time::hour_start_us(crate::time::hour(r.ts_us)),
            Bucket::Day => crate::time::day_start_us(crate::time::day(r.ts_us)),
        };
        let b = self.out.entry(start_us).or_insert_with(|| SalesBucket {
            start_us,
            ..SalesBucket::default()
        });
        match r.kind {
            SaleKind::Sale => {
                b.sales += 1;
                b.items += r.items;
                b.gross += r.gross;
                b.tax += r.tax;
            }
            SaleKind::Refund => {
                b.refunds += 1;
                b.refunded += r.gross;
            }
        }
    }

    /// The buckets in time order, empty ones left out.
    pub fn finish(self) -> Vec<SalesBucket> {
        self.out
            .into_values()
            .map(|mut b| {
                b.net = b.gross - b.refunded;
                b
            })
            .collect()
    }
}

/// Sums sale lines per SKU for [`Query::top_skus`], the same for every
/// backend.
#[derive(Debug)]
pub struct SkuTotals {
    per_store: bool,
    from_us: i64,
    to_us: i64,
    totals: std::collections::HashMap<(u32, u64), SkuTotal>,
}

impl SkuTotals {
    /// Empty totals over `[from_us, to_us)`; `per_store` false sums each
    /// SKU over all stores (reported with no store).
    pub fn new(from_us: i64, to_us: i64, per_store: bool) -> Self {
        SkuTotals {
            per_store,
            from_us,
            to_us,
            totals: std::collections::HashMap::new(),
        }
    }

    /// Adds `r` if it is stamped inside the range.
    pub fn add(&mut self, r: &SaleLineRow) {
        if r.ts_us < self.from_us || r.ts_us >= self.to_us {
            return;
        }
        let sign = match r.kind {
            SaleKind::Sale => 1,
            SaleKind::Refund => -1,
        };
        let s = if self.per_store { r.store } else { 0 };
        let t = self.totals.entry((s, r.sku)).or_insert(SkuTotal {
            store: self.per_store.then_some(s),
            sku: r.sku,
            quantity: 0,
            quantity_sold: 0,
            quantity_refunded: 0,
            revenue: 0,
            lines: 0,
        });
        match r.kind {
            SaleKind::Sale => t.quantity_sold += i64::from(r.quantity),
            SaleKind::Refund => t.quantity_refunded += i64::from(r.quantity),
        }
        t.quantity += sign * i64::from(r.quantity);
        t.revenue += sign * r.amount;
        t.lines += 1;
    }

    /// The `limit` best, best first; ties in (store, SKU) order.
    pub fn finish(self, by: TopBy, limit: usize) -> Vec<SkuTotal> {
        let mut out: Vec<SkuTotal> = self.totals.into_values().collect();
        out.sort_unstable_by(|a, b| {
            let (ka, kb) = match by {
                TopBy::Quantity => (a.quantity, b.quantity),
                TopBy::Revenue => (a.revenue, b.revenue),
            };
            kb.cmp(&ka).then((a.store, a.sku).cmp(&(b.store, b.sku)))
        });
        out.truncate(limit);
        out
    }
}

/// The answer of [`Query::low_stock`] from candidate levels: those below
/// `below`, lowest first.
pub fn lowest_levels(levels: Vec<StockLevelRow>, below: i64) -> Vec<StockLevelRow> {
    let mut out: Vec<StockLevelRow> = levels.into_iter().filter(|r| r.level < below).collect();
    out.sort_by_key(|r| (r.level, r.store, r.sku));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::sample;
    use crate::time::MINUTE_US;

    /// Minute buckets start on the minute and together hold what one
    /// day bucket holds.
    #[test]
    fn minute_buckets_split_what_the_day_holds() {
        let rows = sample();
        let series = |bucket| {
            let mut s = SalesSeries::new(i64::MIN, i64::MAX, bucket);
            rows.sales.iter().for_each(|r| s.add(r));
            s.finish()
        };
        let minutes = series(Bucket::Minute);
        assert!(minutes.len() > 1);
        assert!(
            minutes
                .iter()
                .all(|b| b.start_us.rem_euclid(MINUTE_US) == 0)
        );
        let sum = |bs: &[SalesBucket]| {
            bs.iter()
                .map(|b| (b.sales, b.refunds, b.net))
                .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
        };
        assert_eq!(sum(&minutes), sum(&series(Bucket::Day)));
    }
}
