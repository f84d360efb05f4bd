//! Tests of the embedded store's [`Query`] implementation on the sample
//! data set of `testutil` (expected figures worked out by hand there).

use super::tests::{TestResult, open};
use tillstream_storage::query::*;
use tillstream_storage::rows::*;
use tillstream_storage::store::Store;
use tillstream_storage::testkit::{T0, sample};
use tillstream_storage::time::{DAY_US, HOUR_US, MINUTE_US};

fn loaded() -> Result<(tempfile::TempDir, super::EmbeddedStore), Box<dyn std::error::Error>> {
    let (dir, store) = open()?;
    let mut rows = sample();
    // Two commits, so that one hour has blocks of two commit ids.
    let second = RowSet {
        sales: rows.sales.split_off(3),
        sale_lines: rows.sale_lines.split_off(5),
        ..RowSet::default()
    };
    store.commit(&rows)?;
    store.commit(&second)?;
    Ok((dir, store))
}

fn bucket(
    start_us: i64,
    sales: u64,
    refunds: u64,
    items: i64,
    gross: i64,
    tax: i64,
    refunded: i64,
) -> SalesBucket {
    SalesBucket {
        start_us,
        sales,
        refunds,
        items,
        gross,
        tax,
        refunded,
        net: gross - refunded,
    }
}

#[test]
fn sales_by_hour_and_by_day() -> TestResult {
    let (_dir, store) = loaded()?;
    let hours = store.sales_by_time(Some(1), T0, T0 + DAY_US, Bucket::Hour)?;
    assert_eq!(
        hours,
        vec![
            bucket(T0, 2, 1, 7, 2047, 204, 1000),
            bucket(T0 + HOUR_US, 1, 0, 4, 1000, 100, 0)
        ]
    );
    let days = store.sales_by_time(None, T0, T0 + 2 * DAY_US, Bucket::Day)?;
    assert_eq!(
        days,
        vec![
            bucket(T0, 3, 1, 11, 3047, 304, 1000),
            bucket(T0 + DAY_US, 1, 0, 6, 400, 40, 0)
        ]
    );
    // [from, to): the refund at T0+2m is in, the sale at T0+1h is out.
    let edge = store.sales_by_time(Some(1), T0 + 2 * MINUTE_US, T0 + HOUR_US, Bucket::Day)?;
    assert_eq!(edge, vec![bucket(T0, 0, 1, 0, 0, 0, 1000)]);
    assert!(
        store
            .sales_by_time(Some(2), T0, T0 + DAY_US, Bucket::Hour)?
            .is_empty()
    );
    assert!(store.sales_by_time(None, T0, T0, Bucket::Hour)?.is_empty());
    Ok(())
}

fn ranking(v: &[SkuTotal]) -> Vec<(Option<u32>, u64, i64, i64, u64)> {
    v.iter()
        .map(|t| (t.store, t.sku, t.quantity, t.revenue, t.lines))
        .collect()
}

#[test]
fn top_skus_by_quantity_and_revenue() -> TestResult {
    let (_dir, store) = loaded()?;
    let all = (T0, T0 + 2 * DAY_US);
    let q = store.top_skus(None, all.0, all.1, TopBy::Quantity, 10)?;
    assert_eq!(
        ranking(&q),
        vec![
            (None, 100, 8, 2050, 4),
            (None, 200, 5, 100, 1),
            (None, 102, 3, 297, 1),
            (None, 101, 0, 0, 2)
        ]
    );
    let r = store.top_skus(None, all.0, all.1, TopBy::Revenue, 2)?;
    assert_eq!(
        ranking(&r),
        vec![(None, 100, 8, 2050, 4), (None, 102, 3, 297, 1)]
    );
    let one = store.top_skus(Some(1), all.0, all.1, TopBy::Quantity, 1)?;
    assert_eq!(ranking(&one), vec![(Some(1), 100, 7, 1750, 3)]);
    assert!(
        store
            .top_skus(Some(1), all.0, all.1, TopBy::Quantity, 0)?
            .is_empty()
    );
    Ok(())
}

#[test]
fn stock_history_in_time_order() -> TestResult {
    let (_dir, store) = loaded()?;
    use MovementReason::*;
    let levels = |h: Vec<StockMovementRow>| -> Vec<(MovementReason, i64)> {
        h.iter().map(|m| (m.reason, m.level_after)).collect()
    };
    let h = store.stock_history(1, 100, T0, T0 + DAY_US)?;
    assert_eq!(
        levels(h),
        vec![
            (Sale, -2),
            (Sale, -3),
            (Receipt, 47),
            (CountCorrection, 40),
            (Sale, 36)
        ]
    );
    // A device that was offline sends a shrink of 5, stamped between the
    // first two sales, after the count: the engine recorded it unapplied
    // at level 36 (the count saw it). In time order it lowers every row
    // after it up to the count, which absorbs it.
    let late = RowSet {
        stock_movements: vec![StockMovementRow {
            store: 1,
            sku: 100,
            ts_us: T0 + MINUTE_US + 2,
            key: EventKey {
                device: 9,
                seq: 1,
                idx: 0,
            },
            line: 0,
            reason: Shrink,
            delta: -5,
            counted: 0,
            level_after: 36,
            applied: false,
        }],
        ..RowSet::default()
    };
    store.commit(&late)?;
    let h = store.stock_history(1, 100, T0, T0 + DAY_US)?;
    assert_eq!(
        levels(h),
        vec![
            (Sale, -2),
            (Shrink, -7),
            (Sale, -8),
            (Receipt, 42),
            (CountCorrection, 40),
            (Sale, 36)
        ]
    );
    // A window's first row carries the level of everything before it.
    let window = store.stock_history(1, 100, T0 + 3 * MINUTE_US, T0 + HOUR_US)?;
    assert_eq!(levels(window), vec![(Receipt, 42), (CountCorrection, 40)]);
    assert!(store.stock_history(1, 999, T0, T0 + DAY_US)?.is_empty());
    Ok(())
}

#[test]
fn counts_reset_the_level_in_time_order() {
    use MovementReason::*;
    let row =
        |ts_us: i64, idx: u32, reason: MovementReason, delta: i64, counted: i64| StockMovementRow {
            store: 1,
            sku: 7,
            ts_us,
            key: EventKey {
                device: 1,
                seq: 1,
                idx,
            },
            line: 0,
            reason,
            delta,
            counted,
            level_after: i64::MIN,
            applied: true,
        };
    // Given in arrival order; two counts at one time break on their key,
    // and a movement at a count's time is one the count saw.
    let mut rows = vec![
        row(30, 5, Sale, -1, 0),
        row(20, 4, CountCorrection, 0, 12),
        row(20, 3, CountCorrection, 0, 10),
        row(20, 6, Receipt, 4, 0),
        row(10, 1, Receipt, 3, 0),
    ];
    in_time_order(&mut rows);
    let got: Vec<_> = rows.iter().map(|r| (r.ts_us, r.level_after)).collect();
    assert_eq!(got, vec![(10, 3), (20, 7), (20, 10), (20, 12), (30, 11)]);
}

#[test]
fn low_stock_lowest_first() -> TestResult {
    let (_dir, store) = loaded()?;
    let low: Vec<_> = store
        .low_stock(None, 1)?
        .iter()
        .map(|l| (l.store, l.sku, l.level))
        .collect();
    assert_eq!(
        low,
        vec![(2, 200, -7), (1, 102, -3), (2, 100, -1), (1, 101, 0)]
    );
    let low: Vec<_> = store
        .low_stock(Some(1), 0)?
        .iter()
        .map(|l| (l.sku, l.level))
        .collect();
    assert_eq!(low, vec![(102, -3)]);
    Ok(())
}

#[test]
fn watermarks_and_rollups() -> TestResult {
    let (_dir, store) = loaded()?;
    let marks: Vec<_> = store
        .watermarks()?
        .iter()
        .map(|w| (w.device, w.seq))
        .collect();
    assert_eq!(marks, vec![(1, 2), (2, 1), (3, 1)]);
    let r: Vec<_> = store
        .load_rollups(1, tillstream_storage::time::day(T0))?
        .iter()
        .map(|r| {
            (
                r.terminal, r.minute, r.sales, r.refunds, r.gross, r.refunded,
            )
        })
        .collect();
    assert_eq!(
        r,
        vec![
            (10, 1, 2, 0, 2047, 0),
            (10, 2, 0, 1, 0, 1000),
            (10, 60, 1, 0, 1000, 0)
        ]
    );
    let levels: Vec<_> = store
        .load_levels(1)?
        .iter()
        .map(|l| (l.sku, l.level))
        .collect();
    assert_eq!(levels, vec![(100, 36), (101, 0), (102, -3)]);
    Ok(())
}
