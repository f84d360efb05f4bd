//! Property and scaling tests of the embedded store: random row sets
//! read back exactly, and a million events verify in seconds.

use proptest::prelude::*;

use super::tests::{TestResult, dead_letter, dump, open};
use super::*;
use tillstream_storage::query::Query;
use tillstream_storage::testkit::{T0, key};
use tillstream_storage::verify::verify;

fn arb_key() -> impl Strategy<Value = EventKey> {
    (1u64..4, 1u64..4, 0u32..8).prop_map(|(device, seq, idx)| EventKey { device, seq, idx })
}

/// Times over three days, so blocks span hours and days.
fn arb_ts() -> impl Strategy<Value = i64> {
    (0i64..3 * tillstream_storage::time::DAY_US).prop_map(|d| T0 + d)
}

prop_compose! {
    fn arb_rows()(
        sales in prop::collection::vec((1u32..4, arb_ts(), arb_key(), any::<bool>(), any::<i64>()), 0..12),
        lines in prop::collection::vec((1u32..4, 1u64..6, arb_ts(), arb_key(), any::<i32>()), 0..12),
        moves in prop::collection::vec((1u32..4, 1u64..6, arb_ts(), arb_key(), -50i64..50), 0..12),
        health in prop::collection::vec((arb_ts(), arb_key()), 0..6),
        rejected in prop::collection::vec((arb_ts(), arb_key(), ".{0,12}"), 0..4),
        dead in prop::collection::vec((arb_ts(), prop::collection::vec(any::<u8>(), 0..64)), 0..4),
    ) -> RowSet {
        let mut g = tillstream_storage::testkit::Gen::default();
        for (store, ts, k, refund, _) in &sales {
            let kind = if *refund { SaleKind::Refund } else { SaleKind::Sale };
            g.sale(*k, *store, 1, *ts, kind, &[]);
        }
        let mut rows = g.finish();
        for (r, (_, _, _, _, gross)) in rows.sales.iter_mut().zip(&sales) {
            r.gross = *gross;
        }
        rows.sale_lines = lines.iter().map(|&(store, sku, ts_us, key, quantity)| SaleLineRow {
            store, sku, ts_us, key, line: 0, kind: SaleKind::Sale, quantity,
            unit_price: 5, discount: 0, tax: 1, amount: 5,
        }).collect();
        rows.stock_movements = moves.iter().map(|&(store, sku, ts_us, key, delta)| StockMovementRow {
            store, sku, ts_us, key, line: 0, reason: MovementReason::Receipt, delta,
            counted: 0, level_after: delta, applied: true,
        }).collect();
        let mut g = tillstream_storage::testkit::Gen::default();
        health.iter().for_each(|&(ts, k)| g.health(k, 1, ts));
        rejected.iter().for_each(|(ts, k, _)| g.reject(*k, *ts));
        let extra = g.finish();
        rows.device_health = extra.device_health;
        rows.rejected = extra.rejected;
        for (r, (_, _, reason)) in rows.rejected.iter_mut().zip(&rejected) {
            r.reason.clone_from(reason);
        }
        rows.dead_letters = dead.into_iter().map(|(ts, raw)| DeadLetterRow { raw, ..dead_letter(ts) }).collect();
        rows
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Raw rows committed in several commits read back as the same multiset.
    #[test]
    fn raw_rows_read_back_exactly(sets in prop::collection::vec(arb_rows(), 1..4)) {
        let (_dir, store) = open().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut all = RowSet::default();
        for rows in &sets {
            store.commit(rows).map_err(|e| TestCaseError::fail(e.to_string()))?;
            all.append(&mut rows.clone());
        }
        let got = dump(&store).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want = dump(&tillstream_storage::testkit::MemQuery(all)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        // Snapshot tables dedupe by key; compare the raw ones.
        for ((t, g), (_, w)) in got.iter().zip(&want) {
            if !matches!(t, Table::StockLevels | Table::TerminalRollups | Table::DeviceWatermarks | Table::DeviceBatches) {
                prop_assert_eq!(g, w, "table {}", t.name());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Levels written over many commits (so stores compact their deltas),
    /// in any version order, read back as the highest version of each SKU
    /// (the first written of equal ones), before and after a reopen, with
    /// no store keeping more deltas than the bound.
    #[test]
    fn levels_read_back_as_their_newest_version(
        commits in prop::collection::vec(
            prop::collection::vec((1u32..4, 0u64..40, 1u64..20, any::<i64>()), 0..30),
            1..16,
        ),
    ) {
        let fail = |e: &dyn fmt::Display| TestCaseError::fail(e.to_string());
        let (dir, store) = open().map_err(|e| fail(&e))?;
        let mut want: std::collections::BTreeMap<(u32, u64), (u64, i64)> = Default::default();
        for rows in &commits {
            let levels: Vec<StockLevelRow> = rows.iter().map(|&(store, sku, version, level)| StockLevelRow {
                store, sku, level, count_ts_us: None, count_key: None, updated_ts_us: T0, version,
            }).collect();
            for r in &levels {
                let w = want.entry((r.store, r.sku)).or_insert((r.version, r.level));
                if r.version > w.0 {
                    *w = (r.version, r.level);
                }
            }
            store.commit(&RowSet { stock_levels: levels, ..RowSet::default() }).map_err(|e| fail(&e))?;
        }
        type Levels = Vec<((u32, u64), (u64, i64))>;
        let read = |store: &EmbeddedStore| -> Result<Levels, TestCaseError> {
            let mut got = Vec::new();
            store.scan(Table::StockLevels, &mut |r| {
                if let tillstream_storage::query::RowRef::Level(l) = r {
                    got.push(((l.store, l.sku), (l.version, l.level)));
                }
            }).map_err(|e| fail(&e))?;
            got.sort_unstable();
            Ok(got)
        };
        let want: Vec<_> = want.into_iter().collect();
        prop_assert_eq!(&read(&store)?, &want);
        for s in 1..4 {
            prop_assert!(store.level_delta_keys(s).map_err(|e| fail(&e))? <= levels::HARD_MAX_LEVEL_DELTAS);
        }
        drop(store);
        let store = EmbeddedStore::open(dir.path()).map_err(|e| fail(&e))?;
        prop_assert_eq!(&read(&store)?, &want);
        let one: Vec<_> = store.load_levels(2).map_err(|e| fail(&e))?.iter()
            .map(|l| ((l.store, l.sku), (l.version, l.level))).collect();
        let want_2: Vec<_> = want.iter().filter(|(k, _)| k.0 == 2).cloned().collect();
        prop_assert_eq!(one, want_2);
    }
}

/// 2^20 events (≈4M rows + snapshots) committed in 4096-event ticks, then
/// verified. Run in release: `cargo test --release -p tillstream-storage
/// -- --ignored million`.
#[test]
#[ignore = "slow: a scaling check to run in release"]
fn a_million_events_verify_in_seconds() -> TestResult {
    use std::time::Instant;
    let (_dir, store) = open()?;
    let mut g = tillstream_storage::testkit::Gen::default();
    let mut seq = [0u64; 64];
    let t = Instant::now();
    let mut x = 12345u64;
    for i in 0..1_048_576u64 {
        let device = i % 64;
        let idx = ((i / 64) % 256) as u32;
        if idx == 0 {
            seq[device as usize] += 1;
        }
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let sku = (x >> 33) % 20_000;
        let lines: &[(u64, i32, i64)] = if x & 1 == 0 {
            &[(sku, 1, 100)]
        } else {
            &[(sku, 2, 50), (sku + 1, 1, 10)]
        };
        let k = key(device, seq[device as usize], idx);
        g.sale(
            k,
            1 + (device % 8) as u32,
            device as u32,
            T0 + i as i64 * 1000,
            SaleKind::Sale,
            lines,
        );
        if idx == 255 {
            g.batch(device, seq[device as usize], 256);
        }
        if i % 4096 == 4095 {
            // Flush raw rows; snapshots are written once at the end.
            let raw = std::mem::take(&mut g.rows);
            store.commit(&raw)?;
            g.rows.batches = Vec::new();
        }
    }
    let rows = g.finish();
    store.commit(&rows)?;
    eprintln!("committed in {:?}", t.elapsed());
    let t = Instant::now();
    let r = verify(&store, None)?;
    eprintln!(
        "verify of the embedded store: {:?}: {} events, {} batches",
        t.elapsed(),
        r.events,
        r.batches
    );
    assert!(r.ok, "{r:#?}");
    assert_eq!(r.events, 1_048_576);
    Ok(())
}
