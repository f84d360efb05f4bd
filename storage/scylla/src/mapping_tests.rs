//! Row mapping tests: every row type through CQL values and back.

use super::*;
use tillstream_storage::testkit::sample;

fn dead_letter(device: Option<u64>) -> DeadLetterRow {
    DeadLetterRow {
        ts_us: 1_700_000_000_000_000,
        device,
        peer: "10.0.0.9:4433".into(),
        code: 3,
        reason: "bad crc".into(),
        raw: vec![1, 2, 3],
    }
}

fn round_trip<T: CqlRow + Clone + PartialEq + std::fmt::Debug>(rows: &[T]) {
    assert!(!rows.is_empty(), "{}: no sample rows", T::TABLE);
    for r in rows {
        let values = r.values();
        assert_eq!(values.len(), T::COLUMNS.len(), "{}", T::TABLE);
        let back = T::from_row(Row { columns: values });
        assert_eq!(back.ok().as_ref(), Some(r), "{}", T::TABLE);
    }
}

#[test]
fn every_row_type_round_trips_through_cql_values() {
    let s = sample();
    round_trip(&s.sales);
    round_trip(&s.sale_lines);
    round_trip(&s.stock_movements);
    round_trip(&s.stock_levels);
    round_trip(&s.terminal_rollups);
    round_trip(&s.device_health);
    round_trip(&s.watermarks);
    round_trip(&s.batches);
    round_trip(&s.rejected);
    round_trip(&[dead_letter(Some(7)), dead_letter(None)]);
    let by_hour: Vec<ByStoreHour> = s
        .stock_movements
        .iter()
        .enumerate()
        .map(|(i, m)| ByStoreHour(*m, i as u64 * 1_000_003, (i % 2 == 0).then_some(i as u64)))
        .collect();
    round_trip(&by_hour);
}

#[test]
fn u64_values_keep_all_their_bits() {
    let w = WatermarkRow {
        device: u64::MAX,
        seq: 1 << 63,
        updated_at_us: -5,
    };
    assert_eq!(
        WatermarkRow::from_row(Row {
            columns: w.values()
        })
        .ok(),
        Some(w)
    );
}

#[test]
fn bucket_columns_are_computed_from_the_row() {
    let s = sample();
    let sale = s.sales[0];
    assert_eq!(sale.values()[1], big(time::hour(sale.ts_us).into()));
    let level = s.stock_levels[0];
    assert_eq!(level.values()[1], int(level_bucket(level.sku)));
    let r = TerminalRollupRow {
        day: 20_000,
        minute: 61,
        ..s.terminal_rollups[0]
    };
    assert_eq!(r.values()[1], big(20_000 * 24 + 1));
    let b = BatchRow {
        seq: 70_000,
        ..s.batches[0]
    };
    assert_eq!(b.values()[1], big(1));
}

#[test]
fn a_wrong_type_or_width_is_corrupt_not_a_panic() {
    let mut values = WatermarkRow {
        device: 1,
        seq: 2,
        updated_at_us: 3,
    }
    .values();
    values[1] = Some(CqlValue::Text("x".into()));
    assert!(WatermarkRow::from_row(Row { columns: values }).is_err());
    let rollup = sample().terminal_rollups[0];
    let mut values = rollup.values();
    values[5] = big(-1); // sales is a u32
    assert!(TerminalRollupRow::from_row(Row { columns: values }).is_err());
    assert!(
        SaleRow::from_row(Row {
            columns: vec![big(1)]
        })
        .is_err()
    );
}

#[test]
fn equal_dead_letters_in_one_write_get_distinct_ids() {
    let d = dead_letter(Some(3));
    assert_ne!(dead_letter_id(&d, 0), dead_letter_id(&d, 1));
    assert_eq!(dead_letter_id(&d, 3), dead_letter_id(&d.clone(), 3));
}
