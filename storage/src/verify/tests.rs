//! Tests of [`verify`](super::verify) on hand-built row sets.

use super::*;
use crate::testkit::{MemQuery, T0, key, sample};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn check(rows: RowSet, expected: Option<&[ExpectedBatch]>) -> Result<VerifyReport, StoreError> {
    verify(&MemQuery(rows), expected)
}

/// The report has exactly the problems asked for (and not ok).
fn only(
    r: &VerifyReport,
    missing: u64,
    dups: u64,
    orphans: u64,
    stock: u64,
    rollups: u64,
    lines: u64,
) {
    let got = (
        r.missing,
        r.duplicates,
        r.orphans,
        r.stock_mismatches,
        r.rollup_mismatches,
        r.line_mismatches,
    );
    assert_eq!(
        got,
        (missing, dups, orphans, stock, rollups, lines),
        "{r:#?}"
    );
    assert!(!r.ok);
    assert!(!r.problems.is_empty());
}

#[test]
fn a_consistent_set_is_ok() -> TestResult {
    let r = check(sample(), None)?;
    assert!(r.ok, "{r:#?}");
    assert!(r.problems.is_empty());
    assert_eq!((r.events, r.batches, r.devices), (10, 4, 3));
    let acked = [
        ExpectedBatch {
            device: 1,
            seq: 1,
            events: 3,
        },
        ExpectedBatch {
            device: 3,
            seq: 1,
            events: 2,
        },
    ];
    assert!(check(sample(), Some(&acked))?.ok);
    assert!(check(RowSet::default(), Some(&[]))?.ok);
    Ok(())
}

#[test]
fn finds_a_duplicate() -> TestResult {
    let mut rows = sample();
    let dup = rows.sales[1];
    rows.sales.push(dup);
    let hp = rows.device_health[0];
    rows.device_health.push(hp);
    let r = check(rows, None)?;
    only(&r, 0, 2, 0, 0, 0, 0);
    assert_eq!(r.events, 10);
    Ok(())
}

#[test]
fn finds_a_missing_event() -> TestResult {
    let mut rows = sample();
    rows.device_health.clear();
    only(&check(rows, None)?, 1, 0, 0, 0, 0, 0);

    // An acknowledged batch the ledger does not know, and one whose
    // ledger row is short.
    let acked = [
        ExpectedBatch {
            device: 9,
            seq: 1,
            events: 4,
        },
        ExpectedBatch {
            device: 1,
            seq: 2,
            events: 3,
        },
    ];
    only(&check(sample(), Some(&acked))?, 7, 0, 0, 0, 0, 0);
    Ok(())
}

#[test]
fn finds_orphans() -> TestResult {
    let mut rows = sample();
    // A ledger row above the watermark.
    rows.batches.push(BatchRow {
        device: 1,
        seq: 3,
        events: 1,
        received_at_us: T0,
        digest: 0x5eed,
    });
    only(&check(rows, None)?, 0, 0, 1, 0, 0, 0);

    // An event of a batch with no ledger row, and one past its batch's end.
    let mut rows = sample();
    rows.device_health[0].key = key(2, 7, 0);
    rows.rejected[0].key = key(1, 2, 5);
    // Their former keys are now missing from durable batches.
    only(&check(rows, None)?, 2, 0, 2, 0, 0, 0);
    Ok(())
}

#[test]
fn finds_a_wrong_level() -> TestResult {
    let mut rows = sample();
    rows.stock_levels[0].level += 1;
    only(&check(rows, None)?, 0, 0, 0, 1, 0, 0);

    // A level with no movement must be 0; a SKU with movements needs a level.
    let mut rows = sample();
    let mut ghost = rows.stock_levels[0];
    ghost.sku = 999;
    rows.stock_levels.push(ghost);
    rows.stock_levels.remove(1);
    only(&check(rows, None)?, 0, 0, 0, 2, 0, 0);
    Ok(())
}

#[test]
fn a_count_resets_the_level_and_later_movements_apply() -> TestResult {
    let rows = sample();
    // SKU 100 of store 1: sales -3 (-2 -1), receipt +50, count 40, sale -4.
    let l = rows
        .stock_levels
        .iter()
        .find(|l| (l.store, l.sku) == (1, 100))
        .ok_or("no level")?;
    assert_eq!(l.level, 36);
    // A movement stamped before the count, arriving late, does not move
    // the level: the stored level stays right without it.
    let mut rows = sample();
    let late = StockMovementRow {
        ts_us: T0 + 90 * 1_000_000,
        key: key(2, 1, 3),
        reason: MovementReason::Shrink,
        delta: -5,
        applied: false,
        ..rows.stock_movements[3]
    };
    rows.stock_movements.push(late);
    rows.batches
        .iter_mut()
        .filter(|b| b.device == 2)
        .for_each(|b| b.events = 4);
    assert!(check(rows, None)?.ok);
    Ok(())
}

#[test]
fn finds_a_wrong_rollup() -> TestResult {
    let mut rows = sample();
    rows.terminal_rollups[0].gross += 1;
    only(&check(rows, None)?, 0, 0, 0, 0, 1, 0);

    let mut rows = sample();
    rows.terminal_rollups.remove(0);
    let extra = TerminalRollupRow {
        minute: 1000,
        sales: 1,
        ..rows.terminal_rollups[0]
    };
    rows.terminal_rollups.push(extra);
    only(&check(rows, None)?, 0, 0, 0, 0, 2, 0);
    Ok(())
}

#[test]
fn finds_line_mismatches() -> TestResult {
    let mut rows = sample();
    rows.sale_lines.remove(1);
    only(&check(rows, None)?, 0, 0, 0, 0, 0, 1);

    let mut rows = sample();
    rows.sale_lines[1].line = 0;
    only(&check(rows, None)?, 0, 0, 0, 0, 0, 1);

    // A sale movement whose key has no sale (it is the rejected event's).
    let mut rows = sample();
    let stray = StockMovementRow {
        key: key(1, 2, 1),
        ..rows.stock_movements[2]
    };
    rows.stock_movements.push(stray);
    let r = check(rows, None)?;
    // SKU 102 has no count, so the stray delta also breaks its level.
    only(&r, 0, 0, 0, 1, 0, 1);
    Ok(())
}

#[test]
fn long_sales_check_every_line() {
    let mut acc = SaleAcc::default();
    (0..70).for_each(|l| acc.add_line(l));
    (0..70).for_each(|l| acc.movements.add(l));
    assert!(acc.lines_match(70));
    let mut acc = SaleAcc::default();
    (0..69).chain([68]).for_each(|l| acc.add_line(l));
    (0..70).for_each(|l| acc.movements.add(l));
    assert!(!acc.lines_match(70));
    let mut acc = SaleAcc::default();
    (0..70).for_each(|l| acc.add_line(l));
    (0..69).chain([68]).for_each(|l| acc.movements.add(l));
    assert!(!acc.lines_match(70));
    let mut acc = SaleAcc::default();
    assert!(acc.lines_match(0));
}

#[test]
fn problems_are_capped() -> TestResult {
    let mut rows = sample();
    for l in &mut rows.stock_levels {
        l.level += 1;
    }
    for i in 0..30 {
        rows.batches.push(BatchRow {
            device: 50 + i,
            seq: 1,
            events: 1,
            received_at_us: T0,
            digest: 0x5eed,
        });
    }
    let r = check(rows, None)?;
    assert_eq!(r.orphans, 30);
    assert_eq!(r.problems.len(), MAX_PROBLEMS);
    Ok(())
}

#[test]
fn a_doubled_line_movement_does_not_hide_a_missing_one() -> TestResult {
    let mut rows = sample();
    let i = rows
        .stock_movements
        .iter()
        .position(|m| !m.reason.is_primary() && m.line == 1)
        .ok_or("the sample has a sale with two lines")?;
    // Same count of movements for the sale, but line 0 twice, line 1 never.
    rows.stock_movements[i].line = 0;
    only(&check(rows, None)?, 0, 0, 0, 0, 0, 1);
    Ok(())
}

#[test]
fn a_watermark_without_its_ledger_row_is_missing_data() -> TestResult {
    let mut rows = sample();
    rows.watermarks.push(WatermarkRow {
        device: 77,
        seq: 5,
        updated_at_us: T0,
    });
    only(&check(rows, None)?, 1, 0, 0, 0, 0, 0);
    Ok(())
}

/// A ledger row that claims more events than any frame holds gets no
/// slots (`verify/events.rs`): its events are counted by key, with the
/// same answers.
#[test]
fn a_batch_too_big_for_slots_is_checked_by_key() -> TestResult {
    let mut rows = sample();
    let claimed: u32 = (1 << 16) + 1;
    for b in rows
        .batches
        .iter_mut()
        .filter(|b| (b.device, b.seq) == (3, 1))
    {
        b.events = claimed;
    }
    let sale = rows
        .sales
        .iter()
        .find(|s| s.key == key(3, 1, 0))
        .copied()
        .ok_or("the sample has no sale of device 3")?;
    rows.sales.push(sale);
    let r = check(rows, None)?;
    // Its two stored events are neither missing nor orphans; the rest of
    // what it claims is missing, and the doubled sale is a duplicate.
    only(&r, u64::from(claimed) - 2, 1, 0, 0, 0, 0);
    assert_eq!(r.events, 10);
    Ok(())
}

/// What `verify` keeps of every sale stays small: a store of millions of
/// sales holds one of these for each.
#[test]
fn a_sale_takes_56_bytes_or_less() {
    assert!(size_of::<SaleAcc>() <= 56);
}

/// Of two ledger rows of one batch, the last counts (as the map of the
/// ledger had it): an event past its count is an orphan, though the
/// first row had room for it.
#[test]
fn the_last_of_two_ledger_rows_of_a_batch_counts() -> TestResult {
    let mut rows = sample();
    let first = rows
        .batches
        .iter()
        .find(|b| (b.device, b.seq) == (1, 1))
        .copied()
        .ok_or("the sample has no batch 1 of device 1")?;
    rows.batches.push(BatchRow {
        events: first.events - 1,
        ..first
    });
    only(&check(rows, None)?, 0, 0, 1, 0, 0, 0);
    Ok(())
}
