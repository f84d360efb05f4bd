//! Tests of the embedded store's write path: round trips, upsert rules,
//! commit ids, poisoning, corrupt values, and a property test.

use std::sync::Arc;

use tempfile::TempDir;

use super::*;
use tillstream_storage::query::{Query, RowRef};
use tillstream_storage::testkit::{T0, key, sample};
use tillstream_storage::verify::verify;

pub(super) type TestResult = Result<(), Box<dyn std::error::Error>>;

pub(super) fn open() -> Result<(TempDir, EmbeddedStore), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path())?;
    Ok((dir, store))
}

/// Every row of every table, each table's rows sorted by their `Debug`
/// text: equal results mean equal multisets.
pub(super) fn dump(q: &dyn Query) -> Result<Vec<(Table, Vec<String>)>, StoreError> {
    let mut out = Vec::new();
    for t in Table::ALL {
        let mut rows = Vec::new();
        q.scan(t, &mut |r| {
            rows.push(match r {
                RowRef::Sale(x) => format!("{x:?}"),
                RowRef::SaleLine(x) => format!("{x:?}"),
                RowRef::Movement(x) => format!("{x:?}"),
                RowRef::Level(x) => format!("{x:?}"),
                RowRef::Rollup(x) => format!("{x:?}"),
                RowRef::Health(x) => format!("{x:?}"),
                RowRef::Watermark(x) => format!("{x:?}"),
                RowRef::Batch(x) => format!("{x:?}"),
                RowRef::Rejected(x) => format!("{x:?}"),
                RowRef::DeadLetter(x) => format!("{x:?}"),
            });
        })?;
        rows.sort();
        out.push((t, rows));
    }
    Ok(out)
}

pub(super) fn dead_letter(ts_us: i64) -> DeadLetterRow {
    DeadLetterRow {
        ts_us,
        device: Some(4),
        peer: "192.0.2.7:4433".into(),
        code: 2,
        reason: "bad checksum".into(),
        raw: vec![0xAB; 40],
    }
}

pub(super) fn level_of(store: u32, sku: u64, level: i64, version: u64) -> StockLevelRow {
    StockLevelRow {
        store,
        sku,
        level,
        count_ts_us: None,
        count_key: None,
        updated_ts_us: T0,
        version,
    }
}

fn mark(device: u64, seq: u64) -> RowSet {
    RowSet {
        watermarks: vec![WatermarkRow {
            device,
            seq,
            updated_at_us: T0,
        }],
        ..RowSet::default()
    }
}

#[test]
fn the_store_is_send_sync_and_shared_by_arc() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<EmbeddedStore>();
    assert_send_sync::<Arc<EmbeddedStore>>();
}

#[test]
fn every_table_round_trips_through_a_reopen() -> TestResult {
    let (dir, store) = open()?;
    let mut rows = sample();
    rows.dead_letters = vec![dead_letter(T0), dead_letter(T0 + 2 * time_hour())];
    let info = store.commit(&rows)?;
    assert_eq!(info.rows, rows.len());
    // 13 blocks for 38 raw rows, 12 point keys, the store's level delta,
    // the commit id, the end of the block log.
    assert_eq!(info.records, 28, "{info:?}");
    let before = dump(&store)?;
    let expect = dump(&tillstream_storage::testkit::MemQuery(rows.clone()))?;
    assert_eq!(before, expect);
    let next = store.next_commit_id();
    drop(store);

    let store = EmbeddedStore::open(dir.path())?;
    assert_eq!(dump(&store)?, expect);
    assert_eq!(store.next_commit_id(), next);
    assert!(verify(&store, None)?.ok);
    Ok(())
}

fn time_hour() -> i64 {
    tillstream_storage::time::HOUR_US
}

#[test]
fn rows_split_over_many_commits_verify_ok() -> TestResult {
    let (_dir, store) = open()?;
    let rows = sample();
    // One commit per table, raw rows first, as three flush ticks might.
    let mut raw = rows.clone();
    raw.stock_levels.clear();
    raw.terminal_rollups.clear();
    raw.watermarks.clear();
    store.commit(&RowSet {
        sales: raw.sales.split_off(2),
        ..RowSet::default()
    })?;
    store.commit(&raw)?;
    store.commit(&RowSet {
        stock_levels: rows.stock_levels.clone(),
        terminal_rollups: rows.terminal_rollups.clone(),
        watermarks: rows.watermarks.clone(),
        ..RowSet::default()
    })?;
    assert_eq!(store.next_commit_id(), 4);
    let r = verify(&store, None)?;
    assert!(r.ok, "{r:#?}");
    assert_eq!(
        dump(&store)?,
        dump(&tillstream_storage::testkit::MemQuery(rows))?
    );
    Ok(())
}

#[test]
fn an_empty_commit_writes_nothing() -> TestResult {
    let (_dir, store) = open()?;
    assert_eq!(store.commit(&RowSet::default())?, CommitInfo::default());
    assert_eq!(store.next_commit_id(), 1);
    Ok(())
}

#[test]
fn the_highest_watermark_wins() -> TestResult {
    let (dir, store) = open()?;
    assert_eq!(store.watermark(1)?, 0);
    store.commit(&mark(1, 5))?;
    store.commit(&mark(1, 3))?;
    store.commit(&mark(2, 1))?;
    assert_eq!(store.watermark(1)?, 5);
    drop(store);
    let store = EmbeddedStore::open(dir.path())?;
    store.commit(&mark(1, 4))?;
    assert_eq!(store.watermark(1)?, 5);
    assert_eq!(store.watermark(2)?, 1);
    let seqs: Vec<_> = store
        .watermarks()?
        .iter()
        .map(|w| (w.device, w.seq))
        .collect();
    assert_eq!(seqs, vec![(1, 5), (2, 1)]);
    Ok(())
}

#[test]
fn rollups_and_batches_are_upserts() -> TestResult {
    let (_dir, store) = open()?;
    let r = TerminalRollupRow {
        store: 1,
        day: 3,
        terminal: 2,
        minute: 4,
        sales: 1,
        ..Default::default()
    };
    let b = BatchRow {
        device: 1,
        seq: 1,
        events: 3,
        received_at_us: T0,
        digest: 0x5eed,
    };
    store.commit(&RowSet {
        terminal_rollups: vec![r],
        batches: vec![b],
        ..RowSet::default()
    })?;
    let r2 = TerminalRollupRow { sales: 2, ..r };
    let r3 = TerminalRollupRow { sales: 3, ..r };
    store.commit(&RowSet {
        terminal_rollups: vec![r2, r3],
        batches: vec![b],
        ..RowSet::default()
    })?;
    assert_eq!(store.load_rollups(1, 3)?, vec![r3]);
    assert!(store.load_rollups(1, 4)?.is_empty());
    // Within one commit units come in arrival order, not apply order: the
    // rollup that counts more events wins wherever it stands.
    let r4 = TerminalRollupRow {
        sales: 3,
        refunds: 1,
        ..r
    };
    store.commit(&RowSet {
        terminal_rollups: vec![r4, r3],
        ..RowSet::default()
    })?;
    assert_eq!(store.load_rollups(1, 3)?, vec![r4]);
    let mut batches = 0;
    store.scan(Table::DeviceBatches, &mut |_| batches += 1)?;
    assert_eq!(batches, 1);
    Ok(())
}

#[test]
fn a_failed_sync_poisons_for_good() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open_with_failing_sync(dir.path(), 1, None)?;
    store.commit(&mark(1, 1))?;
    store.check_writable()?;
    let err = store.commit(&mark(1, 2));
    assert!(
        matches!(err, Err(StoreError::Poisoned(ref why)) if why.contains("injected")),
        "{err:?}"
    );
    assert!(store.is_poisoned());
    assert!(matches!(
        store.check_writable(),
        Err(StoreError::Poisoned(_))
    ));
    // Nothing later is accepted, not even an empty commit.
    assert!(matches!(
        store.commit(&mark(1, 3)),
        Err(StoreError::Poisoned(_))
    ));
    assert!(matches!(
        store.commit(&RowSet::default()),
        Err(StoreError::Poisoned(_))
    ));
    // The watermark reported stays the durable one.
    assert_eq!(store.watermark(1)?, 1);
    Ok(())
}

#[test]
fn poison_for_test_refuses_commits() -> TestResult {
    let (_dir, store) = open()?;
    store.poison_for_test("disk full");
    store.poison_for_test("second reason is not kept");
    match store.commit(&sample()) {
        Err(StoreError::Poisoned(why)) => assert_eq!(why, "disk full"),
        other => return Err(format!("expected Poisoned, got {other:?}").into()),
    }
    assert!(format!("{store:?}").contains("poisoned: true"));
    Ok(())
}

#[test]
fn corrupt_values_are_errors_not_panics() -> TestResult {
    let (_dir, store) = open()?;
    store.commit(&sample())?;
    store.levels.insert(
        keys::level_bucket_key(1, keys::level_bucket(5)),
        [0xFFu8; 7],
    )?;
    assert!(matches!(
        store.load_levels(1),
        Err(StoreError::Corrupt { .. })
    ));
    let k = keys::block_key(Table::Sales, 1, tillstream_storage::time::hour(T0), 999);
    store.blocks.insert(k, [1u8, 2, 3])?;
    assert!(matches!(
        store.scan(Table::Sales, &mut |_| {}),
        Err(StoreError::Corrupt { .. })
    ));
    // A malformed key inside a table's prefix is corrupt too.
    store
        .blocks
        .insert([Table::SaleLines as u8, 0, 0], [0u8; 8])?;
    assert!(matches!(
        store.scan(Table::SaleLines, &mut |_| {}),
        Err(StoreError::Corrupt { .. })
    ));
    store.marks.insert(keys::watermark_key(77), [9u8; 3])?;
    assert!(matches!(
        store.watermark(77),
        Err(StoreError::Corrupt { .. })
    ));
    Ok(())
}

#[test]
fn concurrent_commits_get_distinct_ids() -> TestResult {
    let (_dir, store) = open()?;
    let store = Arc::new(store);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || -> Result<(), StoreError> {
                for i in 0..5 {
                    let mut g = tillstream_storage::testkit::Gen::default();
                    g.health(key(t, i, 0), 1, T0);
                    store.commit(&g.finish())?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "a thread panicked")??;
    }
    assert_eq!(store.next_commit_id(), 21);
    let mut n = 0;
    store.scan(Table::DeviceHealth, &mut |_| n += 1)?;
    assert_eq!(n, 20);
    Ok(())
}

/// Counts the rows of device 9 that `scan_all` hands over while a commit of
/// device 9's batch lands during the scan of its first table.
fn rows_of_a_write_during_a_scan(
    store: &EmbeddedStore,
    scan_all: impl Fn(&EmbeddedStore, &[Table], &mut dyn FnMut(RowRef<'_>)) -> Result<(), StoreError>,
) -> Result<u32, Box<dyn std::error::Error>> {
    let later = RowSet {
        device_health: vec![DeviceHealthRow {
            ts_us: T0,
            key: key(9, 1, 0),
            store: 1,
            battery_pct: 90,
            temperature_dc: 200,
            uptime_s: 1,
            queue_depth: 0,
            rssi_dbm: -50,
        }],
        batches: vec![BatchRow {
            device: 9,
            seq: 1,
            events: 1,
            received_at_us: T0,
            digest: 0x5eed,
        }],
        ..RowSet::default()
    };
    let mut wrote: Option<Result<(), StoreError>> = None;
    let mut seen = 0;
    let tables = [Table::Sales, Table::DeviceHealth, Table::DeviceBatches];
    scan_all(store, &tables, &mut |r| {
        if wrote.is_none() {
            wrote = Some(store.commit(&later).map(|_| ()));
        }
        match r {
            RowRef::Health(h) if h.key.device == 9 => seen += 1,
            RowRef::Batch(b) if b.device == 9 => seen += 1,
            _ => {}
        }
    })?;
    wrote.ok_or("the scan handed over no row")??;
    Ok(seen)
}

#[test]
fn a_consistent_scan_does_not_see_a_write_that_lands_during_it() -> TestResult {
    let (_dir, store) = open()?;
    store.commit(&sample())?;
    let seen = rows_of_a_write_during_a_scan(&store, |s, t, f| s.scan_consistent(t, f))?;
    assert_eq!(seen, 0, "rows of a later write showed up mid-scan");
    // Table by table, as verify used to read, the same write shows: half a
    // batch's tables before it, half after.
    let (_dir2, store2) = open()?;
    store2.commit(&sample())?;
    let seen = rows_of_a_write_during_a_scan(&store2, |s, tables, f| {
        for &t in tables {
            s.scan(t, f)?;
        }
        Ok(())
    })?;
    assert_eq!(seen, 2);
    Ok(())
}

#[test]
fn verify_reports_values_near_the_ends_of_i64_without_panicking() -> TestResult {
    let (_dir, store) = open()?;
    let mut rows = sample();
    for m in &mut rows.stock_movements {
        m.delta = i64::MAX;
    }
    for s in &mut rows.sales {
        s.gross = i64::MAX;
        s.tax = i64::MAX;
    }
    store.commit(&rows)?;
    // Debug builds panic on overflow: reaching the report is the check.
    let report = verify(&store, None)?;
    assert!(!report.ok, "made-up sums cannot verify: {report:?}");
    Ok(())
}

#[test]
fn the_caches_stay_bounded_and_what_they_drop_is_read_back() -> TestResult {
    let (_dir, store) = open()?;
    // Levels in 200 stores, version 2 each; the test build keeps the
    // delta counts of 4 stores and compacts a store at 3 deltas.
    let v2: Vec<StockLevelRow> = (1..=200).map(|s| level_of(s, 7, 20, 2)).collect();
    for chunk in v2.chunks(20) {
        store.commit(&RowSet {
            stock_levels: chunk.to_vec(),
            ..RowSet::default()
        })?;
        assert!(
            store.level_deltas.lock().len() <= 4 + 20,
            "the counts grew past their bound"
        );
    }
    // Older versions arriving late lose, though their counts were
    // dropped: the highest version wins whatever was compacted.
    for _ in 0..5 {
        store.commit(&RowSet {
            stock_levels: (1..=200).map(|s| level_of(s, 7, 99, 1)).collect(),
            ..RowSet::default()
        })?;
    }
    for s in 1..=200 {
        let levels = store.load_levels(s)?;
        assert_eq!(levels.len(), 1);
        assert_eq!((levels[0].level, levels[0].version), (20, 2), "store {s}");
        assert!(store.level_delta_keys(s)? <= levels::HARD_MAX_LEVEL_DELTAS);
    }
    // Watermarks likewise: the highest seq stays, the cache stays small.
    for d in 1..=100u64 {
        store.commit(&mark(d, 5))?;
    }
    for d in 1..=100u64 {
        store.commit(&mark(d, 3))?;
        assert_eq!(store.watermark(d)?, 5, "device {d}");
    }
    assert!(store.mark_seqs.read().len() <= 64 + 1);
    Ok(())
}

/// Copies the tree `from` to `to`, files and directories.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}

/// The tables durable at checkpoint 2 while the journal was truncated
/// through 4 and starts at 5, as when fjall swallowed the failed sync of
/// checkpoint 4 (`durability.rs`): records 3 and 4 are gone, and the open
/// says so instead of replaying from 5.
#[test]
fn a_journal_that_starts_past_the_checkpoint_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (live, durable) = (dir.path().join("live"), dir.path().join("durable"));
    {
        let store = EmbeddedStore::open(&live)?;
        store.materialize(&[], 2)?;
        store.sync_materialized()?;
    }
    copy_tree(&live, &durable)?;
    {
        let store = EmbeddedStore::open(&live)?;
        store.materialize(&[], 4)?;
        store.sync_materialized()?;
    }
    {
        let store = EmbeddedStore::open(&live)?;
        let mut records = Vec::new();
        tillstream_journal::encode_record(5, &[b"five"], &mut records);
        tillstream_journal::encode_record(6, &[b"six"], &mut records);
        store.journal_append(&records, 6)?;
    }
    let wal = durable.join(keys::JOURNAL_DIR);
    std::fs::remove_dir_all(&wal)?;
    copy_tree(&live.join(keys::JOURNAL_DIR), &wal)?;
    let err = EmbeddedStore::open(&durable).err().map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("checkpointed to LSN 2") && e.contains("starts at LSN 5")),
        "{err:?}"
    );
    // The store as it was, journal and tables in step, still opens.
    let store = EmbeddedStore::open(&live)?;
    assert_eq!(store.journal_last_lsn(), 6);
    Ok(())
}

/// The ledger keeps each batch's digest; a row as data format 3 wrote it,
/// before the digest, still reads (digest 0), in a point read and a scan.
#[test]
fn ledger_rows_keep_their_digest_and_format_3_rows_still_read() -> TestResult {
    let (_dir, store) = open()?;
    let b = BatchRow {
        device: 1,
        seq: 1,
        events: 3,
        received_at_us: T0,
        digest: 77,
    };
    store.commit(&RowSet {
        batches: vec![b],
        ..RowSet::default()
    })?;
    assert_eq!(store.ledger_digest(1, 1)?, Some(77));
    assert_eq!(store.ledger_digest(1, 2)?, None);
    let old = rkyv::to_bytes::<rkyv::rancor::Error>(&archive::BatchRowV3 {
        device: 1,
        seq: 2,
        events: 4,
        received_at_us: T0,
    })?;
    store
        .batches
        .insert(keys::batch_key(1, 2), old.as_slice())?;
    assert_eq!(store.ledger_digest(1, 2)?, Some(0));
    let mut scanned = Vec::new();
    store.scan(Table::DeviceBatches, &mut |r| {
        if let RowRef::Batch(b) = r {
            scanned.push((b.seq, b.events, b.digest));
        }
    })?;
    assert_eq!(scanned, [(1, 3, 77), (2, 4, 0)]);
    Ok(())
}
