//! The store contract, as tests any backend must pass through the `Store`
//! and `Query` traits alone: rows round-trip through a reopen, the journal
//! replays what the checkpoint does not cover, a crash between a batch's
//! rows and its checkpoint loses and doubles nothing once replayed,
//! snapshot rows keep the newest, and verify holds. The embedded
//! store runs it always; a backend for a cluster runs the same functions
//! against a live one (docs/internals/design.md, "Exactly once").

use std::collections::BTreeMap;

use crate::query::{Query, RowRef};
use crate::rows::*;
use crate::store::{Store, StoreError};
use crate::testkit::sample;
use crate::verify::verify;
use tillstream_journal::encode_record;

/// What a contract test returns.
pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A backend under test: opens its store, and opens it again (a restart:
/// everything not durable is gone, everything durable is back).
pub trait Harness {
    /// The store.
    type S: Store + Query;
    /// Opens (or reopens) the store.
    fn open(&mut self) -> Result<Self::S, StoreError>;
}

/// Rows per table, as `scan` hands them out.
fn counts(q: &dyn Query) -> Result<BTreeMap<&'static str, usize>, StoreError> {
    let mut out = BTreeMap::new();
    for t in Table::ALL {
        let mut n = 0;
        q.scan(t, &mut |_| n += 1)?;
        out.insert(t.name(), n);
    }
    Ok(out)
}

fn expected_counts(rows: &RowSet) -> BTreeMap<&'static str, usize> {
    BTreeMap::from([
        ("sales", rows.sales.len()),
        ("sale_lines", rows.sale_lines.len()),
        ("stock_movements", rows.stock_movements.len()),
        ("stock_levels", rows.stock_levels.len()),
        ("terminal_rollups", rows.terminal_rollups.len()),
        ("device_health", rows.device_health.len()),
        ("device_watermarks", rows.watermarks.len()),
        ("device_batches", rows.batches.len()),
        ("rejected_events", rows.rejected.len()),
        ("dead_letters", rows.dead_letters.len()),
    ])
}

/// Every row of every table comes back, also after a reopen, and the
/// store verifies.
pub fn rows_round_trip(b: &mut impl Harness) -> TestResult {
    let rows = sample();
    {
        let store = b.open()?;
        store.commit(&rows)?;
        assert_eq!(counts(&store)?, expected_counts(&rows));
    }
    let store = b.open()?;
    assert_eq!(counts(&store)?, expected_counts(&rows), "after a reopen");
    let report = verify(&store, None)?;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.duplicates, 0);
    Ok(())
}

/// Every row of every table, as `scan` hands them out, sorted.
fn contents(q: &dyn Query) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    for t in Table::ALL {
        q.scan(t, &mut |r| out.push(format!("{r:?}")))?;
    }
    out.sort();
    Ok(out)
}

/// A materialization takes a commit's rows as several sets (the engine's
/// batch parts, not copied into one): what it stores is what their
/// concatenation stores, row for row, whichever set holds a table's rows
/// and with empty sets among them.
pub fn parts_store_what_their_concatenation_stores(b: &mut impl Harness) -> TestResult {
    let whole = sample();
    let mut first = whole.clone();
    let mut last = RowSet::default();
    macro_rules! split {
        ($($t:ident),*) => {$(
            let at = first.$t.len() / 2;
            last.$t = first.$t.split_off(at);
        )*};
    }
    split!(
        sales,
        sale_lines,
        stock_movements,
        stock_levels,
        terminal_rollups
    );
    split!(device_health, watermarks, batches, rejected, dead_letters);
    let middle = RowSet {
        stock_levels: std::mem::take(&mut last.stock_levels),
        ..RowSet::default()
    };
    let parts = [RowSet::default(), first, middle, RowSet::default(), last];
    assert_eq!(rows_in(&parts), whole.len());
    {
        let store = b.open()?;
        let info = store.materialize(&parts, 1)?;
        assert_eq!(info.rows, whole.len());
        store.sync_materialized()?;
    }
    let store = b.open()?;
    assert_eq!(store.materialized_lsn()?, 1);
    let expected = contents(&crate::testkit::MemQuery(whole))?;
    assert_eq!(contents(&store)?, expected);
    let report = verify(&store, None)?;
    assert!(report.ok && report.duplicates == 0, "{report:?}");
    Ok(())
}

/// The journal gives back, after a reopen, exactly the records the
/// checkpoint does not cover, in LSN order and byte for byte.
pub fn the_journal_replays_what_the_checkpoint_does_not_cover(b: &mut impl Harness) -> TestResult {
    let payload = |lsn: u64| format!("record {lsn}").into_bytes();
    {
        let store = b.open()?;
        let first = store.journal_last_lsn() + 1;
        assert_eq!(first, 1, "a fresh store's journal is empty");
        let mut buf = Vec::new();
        for lsn in 1..=5 {
            encode_record(lsn, &[&payload(lsn)], &mut buf);
        }
        store.journal_append(&buf, 5)?;
        assert_eq!(store.journal_last_lsn(), 5);
        // Records 1..=3 are materialized (with a sample of rows).
        store.materialize(std::slice::from_ref(&sample()), 3)?;
        assert_eq!(store.materialized_lsn()?, 3);
        assert_eq!(store.sync_materialized()?, 3);
    }
    let store = b.open()?;
    assert_eq!(store.materialized_lsn()?, 3, "the checkpoint is durable");
    assert_eq!(store.journal_last_lsn(), 5, "so is the journal");
    let mut seen = Vec::new();
    // The engine's visitor reads the store while it replays (activation):
    // a backend must allow that.
    let visited = store.journal_replay(3, &mut |lsn, bytes| {
        store.load_levels(1)?;
        store.watermark(1)?;
        seen.push((lsn, bytes.to_vec()));
        Ok(())
    })?;
    assert_eq!(visited, 2);
    assert_eq!(seen, vec![(4, payload(4)), (5, payload(5))]);
    assert_eq!(counts(&store)?, expected_counts(&sample()));
    Ok(())
}

/// A crash can land after a batch's rows were written and before the
/// checkpoint that covers them is durable. Whatever the backend kept, rows
/// and checkpoint agree: replaying the journal after the checkpoint it
/// reports, and materializing those records again, leaves every row
/// stored once (the embedded store rolls rows and checkpoint back
/// together; a cluster backend writes rows under idempotent keys, so
/// writing them twice is writing them once).
pub fn a_crash_between_rows_and_checkpoint_loses_and_doubles_nothing(
    b: &mut impl Harness,
) -> TestResult {
    let mut first = sample();
    // The second batch carries the watermarks: a crash between its rows
    // and its checkpoint must leave them exact once replayed.
    let second = RowSet {
        sales: first.sales.split_off(3),
        sale_lines: first.sale_lines.split_off(5),
        watermarks: std::mem::take(&mut first.watermarks),
        ..RowSet::default()
    };
    let rows_of = |payload: &[u8]| match payload {
        b"first" => Ok(first.clone()),
        b"second" => Ok(second.clone()),
        other => Err(StoreError::Corrupt {
            what: "test record",
            reason: format!("{other:?}"),
        }),
    };
    {
        let store = b.open()?;
        let mut buf = Vec::new();
        encode_record(1, &[b"first"], &mut buf);
        encode_record(2, &[b"second"], &mut buf);
        store.journal_append(&buf, 2)?;
        store.materialize(std::slice::from_ref(&first), 1)?;
        store.sync_materialized()?;
        // The crash: the second batch's rows written, never synced.
        store.materialize(std::slice::from_ref(&second), 2)?;
    }
    let store = b.open()?;
    let checkpoint = store.materialized_lsn()?;
    assert!(
        checkpoint == 1 || checkpoint == 2,
        "checkpoint {checkpoint}"
    );
    let mut again = Vec::new();
    store.journal_replay(checkpoint, &mut |lsn, payload| {
        again.push((lsn, rows_of(payload)?));
        Ok(())
    })?;
    for (lsn, rows) in &again {
        store.materialize(std::slice::from_ref(rows), *lsn)?;
    }
    store.sync_materialized()?;
    assert_eq!(counts(&store)?, expected_counts(&sample()));
    let report = verify(&store, None)?;
    assert!(report.ok && report.duplicates == 0, "{report:?}");
    Ok(())
}

/// Snapshot rows are upserts: a stock level keeps its highest version and
/// a watermark its highest seq, whatever order the writes land in.
pub fn snapshot_rows_keep_the_newest(b: &mut impl Harness) -> TestResult {
    let store = b.open()?;
    let level = |level: i64, version: u64| StockLevelRow {
        store: 9,
        sku: 77,
        level,
        count_ts_us: None,
        count_key: None,
        updated_ts_us: 1_000,
        version,
    };
    let mark = |seq: u64| WatermarkRow {
        device: 5,
        seq,
        updated_at_us: 1_000,
    };
    for (l, m) in [(level(10, 2), mark(8)), (level(3, 1), mark(4))] {
        store.commit(&RowSet {
            stock_levels: vec![l],
            watermarks: vec![m],
            ..RowSet::default()
        })?;
    }
    let levels = store.load_levels(9)?;
    assert_eq!(levels.len(), 1);
    assert_eq!((levels[0].level, levels[0].version), (10, 2));
    assert_eq!(store.watermark(5)?, 8);
    let mut marks = Vec::new();
    store.scan(Table::DeviceWatermarks, &mut |r| {
        if let RowRef::Watermark(w) = r {
            marks.push((w.device, w.seq));
        }
    })?;
    assert_eq!(marks, vec![(5, 8)]);
    Ok(())
}

/// Every question of the query API reads the rows it should: a store's
/// partitions, the time window's edges, the sums over all stores.
pub fn queries_answer_from_the_rows(b: &mut impl Harness) -> TestResult {
    use crate::query::{Bucket, SalesSeries, SkuTotals, TopBy, lowest_levels};
    let rows = sample();
    let store = b.open()?;
    store.commit(&rows)?;
    let from = rows.sales.iter().map(|r| r.ts_us).min().unwrap_or(0) + 1;
    let to = rows.sales.iter().map(|r| r.ts_us).max().unwrap_or(0) + 1;
    for (who, bucket) in [
        (None, Bucket::Hour),
        (Some(1), Bucket::Day),
        (Some(2), Bucket::Hour),
    ] {
        let mut want = SalesSeries::new(from, to, bucket);
        rows.sales
            .iter()
            .filter(|r| who.is_none_or(|s| s == r.store))
            .for_each(|r| want.add(r));
        assert_eq!(
            store.sales_by_time(who, from, to, bucket)?,
            want.finish(),
            "sales of {who:?}"
        );
    }
    for (who, by) in [(None, TopBy::Quantity), (Some(1), TopBy::Revenue)] {
        let mut want = SkuTotals::new(from, to, who.is_some());
        rows.sale_lines
            .iter()
            .filter(|r| who.is_none_or(|s| s == r.store))
            .for_each(|r| want.add(r));
        assert_eq!(store.top_skus(who, from, to, by, 2)?, want.finish(by, 2));
    }
    let m = rows.stock_movements[0];
    let mut history: Vec<StockMovementRow> = rows
        .stock_movements
        .iter()
        .filter(|r| (r.store, r.sku) == (m.store, m.sku))
        .copied()
        .collect();
    crate::query::in_time_order(&mut history);
    assert!(history.len() > 1, "the sample moves one SKU more than once");
    assert_eq!(
        store.stock_history(m.store, m.sku, i64::MIN + 1, i64::MAX)?,
        history
    );
    // A window that starts after the first movement leaves it out.
    assert_eq!(
        store.stock_history(m.store, m.sku, history[0].ts_us + 1, i64::MAX)?,
        history[1..]
    );
    assert_eq!(
        store.low_stock(None, 1_000)?,
        lowest_levels(rows.stock_levels.clone(), 1_000)
    );
    let mut marks = rows.watermarks.clone();
    marks.sort_unstable_by_key(|w| w.device);
    assert_eq!(store.watermarks()?, marks);
    Ok(())
}
