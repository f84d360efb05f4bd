//! Tests of stock levels (bucketed, newest version wins, the first
//! layout still read) and of the late-window reads of activation.

use super::tests::{TestResult, level_of, open};
use super::*;
use tillstream_storage::testkit::{T0, sample};

fn level(sku: u64, level: i64, version: u64) -> StockLevelRow {
    level_of(1, sku, level, version)
}

fn levels(rows: Vec<StockLevelRow>) -> RowSet {
    RowSet {
        stock_levels: rows,
        ..RowSet::default()
    }
}

#[test]
fn the_highest_level_version_wins_in_either_order() -> TestResult {
    for (first, second) in [(5u64, 3u64), (3, 5)] {
        let (dir, store) = open()?;
        store.commit(&levels(vec![level(100, first as i64 * 10, first)]))?;
        store.commit(&levels(vec![level(100, second as i64 * 10, second)]))?;
        assert_eq!(store.load_levels(1)?, vec![level(100, 50, 5)]);
        drop(store);
        // With a cold cache the stored version is read from disk.
        let store = EmbeddedStore::open(dir.path())?;
        store.commit(&levels(vec![level(100, 40, 4)]))?;
        assert_eq!(store.load_levels(1)?, vec![level(100, 50, 5)]);
        store.commit(&levels(vec![level(100, 60, 6)]))?;
        assert_eq!(store.load_levels(1)?, vec![level(100, 60, 6)]);
    }
    // Within one commit too, whatever the order of the rows.
    let (_dir, store) = open()?;
    store.commit(&levels(vec![
        level(7, 9, 9),
        level(8, 1, 1),
        level(7, 2, 2),
    ]))?;
    assert_eq!(store.load_levels(1)?, vec![level(7, 9, 9), level(8, 1, 1)]);
    assert!(store.load_levels(2)?.is_empty());
    Ok(())
}

#[test]
fn load_movements_returns_what_the_late_window_keeps() -> TestResult {
    let (_dir, store) = open()?;
    let mut rows = sample();
    rows.stock_movements.reverse();
    let every = rows.stock_movements.clone();
    // Two commits, so blocks of one hour come from two commit ids.
    let late = RowSet {
        stock_movements: rows.stock_movements.split_off(4),
        ..RowSet::default()
    };
    store.commit(&rows)?;
    store.commit(&late)?;
    // What the window keeps of the rows of `id` in `windows`, sorted.
    let want = |id: u32, windows: &[(i64, i64)]| {
        let mut kept: Vec<WindowMovement> = every
            .iter()
            .filter(|m| m.store == id && windows.iter().any(|w| (w.0..w.1).contains(&m.ts_us)))
            .filter_map(WindowMovement::of)
            .collect();
        kept.sort_unstable();
        kept
    };
    let got = |id: u32, windows: &[(i64, i64)]| -> Result<Vec<WindowMovement>, StoreError> {
        let mut got = store.load_movements(id, windows)?;
        got.sort_unstable();
        Ok(got)
    };
    let after_3m = [(T0 + 3 * tillstream_storage::time::MINUTE_US, i64::MAX)];
    assert_eq!(got(1, &after_3m)?, want(1, &after_3m));
    // The receipt at 3 min and the sale an hour later: the count's own
    // correction row at 4 min is not kept, nor are rows before 3 min.
    assert_eq!(got(1, &after_3m)?.len(), 2);
    let all = [(0, i64::MAX)];
    assert_eq!(got(1, &all)?, want(1, &all));
    assert!(
        every
            .iter()
            .any(|m| m.store == 1 && WindowMovement::of(m).is_none()),
        "the sample has a row the window does not keep"
    );
    assert!(got(1, &[(T0 + 2 * tillstream_storage::time::HOUR_US, i64::MAX)])?.is_empty());
    assert_eq!(got(2, &all)?, want(2, &all));
    assert!(!want(2, &all).is_empty());
    // Two windows read what each holds, and nothing between them.
    let ts: Vec<i64> = got(1, &all)?.iter().map(|m| m.ts_us).collect();
    let (lo, hi) = (
        ts.iter().min().copied().unwrap_or(0),
        ts.iter().max().copied().unwrap_or(0),
    );
    let two = [(lo, lo + 1), (hi, hi + 1)];
    assert!(lo < hi);
    assert_eq!(got(1, &two)?, want(1, &two));
    assert!(got(1, &two)?.iter().all(|m| m.ts_us == lo || m.ts_us == hi));
    Ok(())
}

#[test]
fn levels_in_buckets_keep_the_newest_version_across_writes_and_reopens() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let store = EmbeddedStore::open(dir.path())?;
        // Every SKU of two stores, then newer versions of some, then an
        // older version that must not win.
        let first = RowSet {
            stock_levels: (0..1_000)
                .map(|sku| level_of(1 + (sku % 2) as u32, sku, 10, 1))
                .collect(),
            ..RowSet::default()
        };
        store.commit(&first)?;
        let newer = RowSet {
            stock_levels: (0..1_000)
                .step_by(3)
                .map(|sku| level_of(1 + (sku % 2) as u32, sku, 7, 2))
                .collect(),
            ..RowSet::default()
        };
        store.materialize(std::slice::from_ref(&newer), 1)?;
        let older = RowSet {
            stock_levels: vec![level_of(1, 0, 99, 1)],
            ..RowSet::default()
        };
        store.materialize(std::slice::from_ref(&older), 2)?;
        store.sync_materialized()?;
    }
    // Reopened: the bucket cache is cold, the disk must say the same.
    let store = EmbeddedStore::open(dir.path())?;
    let one = store.load_levels(1)?;
    assert_eq!(one.len(), 500);
    assert!(one.windows(2).all(|w| w[0].sku < w[1].sku), "sorted by SKU");
    for r in &one {
        let want = if r.sku % 3 == 0 { (7, 2) } else { (10, 1) };
        assert_eq!((r.level, r.version), want, "sku {}", r.sku);
    }
    assert_eq!(store.load_levels(2)?.len(), 500);
    // A later write on a cold cache merges with what is stored.
    let more = RowSet {
        stock_levels: vec![level_of(1, 1_001, 3, 1)],
        ..RowSet::default()
    };
    store.commit(&more)?;
    assert_eq!(store.load_levels(1)?.len(), 501);
    Ok(())
}

#[test]
fn levels_of_the_first_layout_are_still_read() -> TestResult {
    let (_dir, store) = open()?;
    let mut key = Vec::from(1u32.to_be_bytes());
    key.extend_from_slice(&42u64.to_be_bytes());
    assert_eq!(key.len(), keys::LEGACY_LEVEL_KEY_LEN);
    store
        .levels
        .insert(key, archive::encode_one(&level_of(1, 42, 5, 3))?.as_slice())?;
    let got = store.load_levels(1)?;
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].sku, got[0].level), (42, 5));
    // Compactions leave the first-layout key where it is; the level of
    // the highest version still wins, whichever layout holds it.
    let sku_42 = |store: &EmbeddedStore| -> Result<i64, StoreError> {
        let got = store.load_levels(1)?;
        Ok(got
            .iter()
            .find(|l| l.sku == 42)
            .map_or(i64::MIN, |l| l.level))
    };
    for (version, want) in [(2, 5), (4, -4)] {
        for n in 0..=levels::MAX_LEVEL_DELTAS {
            let other = level(7, i64::from(n), u64::from(n) + version * 10);
            store.commit(&levels(vec![level(42, -(version as i64), version), other]))?;
        }
        assert_eq!(store.level_delta_keys(1)?, 0, "store 1 compacted");
        assert_eq!(sku_42(&store)?, want, "version {version} against 3");
    }
    Ok(())
}
