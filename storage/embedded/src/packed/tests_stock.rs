//! Tests of stock blocks: every line and every movement reads back, from
//! whichever table's key; bytes that are not a stock block are an error,
//! never a panic.

use proptest::prelude::*;

use super::movement_of;
use crate::blocks::{BlockKey, BlockSet, block_key_of};
use crate::packed::decode;
use crate::stock_blocks::{blocks, pack};
use tillstream_storage::rows::*;
use tillstream_storage::store::StoreError;
use tillstream_storage::testkit::key;

/// What a shard writes for one event of a part.
#[derive(Debug, Clone)]
enum Written {
    /// A sale line and the movement it made.
    Line(SaleLineRow, i64, bool),
    /// A line whose movement is not its own (a quantity of another line).
    Unmatched(SaleLineRow, i64),
    /// A line with no movement (rows not of a shard).
    Bare(SaleLineRow),
    /// A receipt, shrink, transfer or count.
    Other(StockMovementRow),
}

fn line(store: u32, sku: u64, ts_us: i64, seq: u64, n: u16, refund: bool, qty: i32) -> SaleLineRow {
    SaleLineRow {
        store,
        sku,
        ts_us,
        key: key(7, seq, u32::from(n)),
        line: n,
        kind: if refund {
            SaleKind::Refund
        } else {
            SaleKind::Sale
        },
        quantity: qty,
        unit_price: 199,
        discount: 0,
        tax: 20,
        amount: 199 * i64::from(qty),
    }
}

fn arb_written() -> impl Strategy<Value = Written> {
    let arb_line = (
        0u32..3,
        0u64..50,
        0i64..3 * 3_600_000_000,
        0u64..20,
        0u16..8,
        any::<bool>(),
        1i32..5,
    )
        .prop_map(|(store, sku, ts, seq, n, refund, qty)| {
            line(store, sku, ts, seq, n, refund, qty)
        });
    let reason = prop_oneof![
        Just(MovementReason::Receipt),
        Just(MovementReason::Shrink),
        Just(MovementReason::CountCorrection),
        Just(MovementReason::Sale),
    ];
    prop_oneof![
        6 => (arb_line.clone(), -100i64..100, any::<bool>()).prop_map(|(l, level, applied)| Written::Line(l, level, applied)),
        1 => (arb_line.clone(), -100i64..100).prop_map(|(l, level)| Written::Unmatched(l, level)),
        1 => arb_line.prop_map(Written::Bare),
        2 => (0u32..3, 0u64..50, 0i64..3 * 3_600_000_000, reason, -9i64..9, any::<bool>()).prop_map(
            |(store, sku, ts_us, reason, delta, applied)| Written::Other(StockMovementRow {
                store,
                sku,
                ts_us,
                key: key(9, 1, 0),
                line: 0,
                reason,
                delta,
                counted: if reason == MovementReason::CountCorrection { 40 } else { 0 },
                level_after: 40,
                applied,
            })
        ),
    ]
}

/// The rows of `events`, as a shard writes them into one part.
fn part(events: &[Written]) -> RowSet {
    let mut rows = RowSet::default();
    for e in events {
        match e {
            Written::Line(l, level, applied) => {
                rows.sale_lines.push(*l);
                rows.stock_movements.push(movement_of(l, *level, *applied));
            }
            Written::Unmatched(l, level) => {
                rows.sale_lines.push(*l);
                let mut m = movement_of(l, *level, true);
                m.delta += 1000;
                rows.stock_movements.push(m);
            }
            Written::Bare(l) => rows.sale_lines.push(*l),
            Written::Other(m) => rows.stock_movements.push(*m),
        }
    }
    rows
}

/// Every block of `parts`, packed and read back from each table's key:
/// (lines by key, movements by key).
type ByKey<T> = std::collections::BTreeMap<BlockKey, Vec<T>>;

fn pack_and_read(
    parts: &[RowSet],
) -> Result<(ByKey<SaleLineRow>, ByKey<StockMovementRow>), StoreError> {
    let (mut lines, mut others) = (BlockSet::default(), BlockSet::default());
    pack(parts, &mut lines, &mut others);
    let (mut ls, mut ms) = (ByKey::new(), ByKey::new());
    for b in blocks(&mut lines, &mut others)? {
        let bytes: Vec<u8> = b.bytes().concat();
        if b.stock {
            ls.insert(b.key, decode::<SaleLineRow>(&bytes)?);
        }
        ms.insert(b.key, decode::<StockMovementRow>(&bytes)?);
    }
    Ok((ls, ms))
}

fn sorted(mut v: Vec<StockMovementRow>) -> Vec<StockMovementRow> {
    v.sort_by_key(|m| {
        (
            m.store,
            m.sku,
            m.ts_us,
            m.key,
            m.line,
            m.delta,
            m.level_after,
            m.applied,
        )
    });
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever a part holds, each line reads back in order under its
    /// block's `sale_lines` key, and each movement under its block's
    /// `stock_movements` key, once.
    #[test]
    fn every_line_and_movement_reads_back_from_its_own_key(
        events in prop::collection::vec(prop::collection::vec(arb_written(), 0..60), 1..4)
    ) {
        let parts: Vec<RowSet> = events.iter().map(|e| part(e)).collect();
        let (ls, ms) = pack_and_read(&parts).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut want_lines = ByKey::<SaleLineRow>::new();
        let mut want_moves = ByKey::<StockMovementRow>::new();
        for p in &parts {
            for l in &p.sale_lines {
                want_lines.entry(block_key_of(l)).or_default().push(*l);
            }
            for m in &p.stock_movements {
                want_moves.entry(block_key_of(m)).or_default().push(*m);
            }
        }
        prop_assert_eq!(ls, want_lines);
        let ms: ByKey<_> = ms.into_iter().map(|(k, v)| (k, sorted(v))).filter(|(_, v)| !v.is_empty()).collect();
        let want_moves: ByKey<_> = want_moves.into_iter().map(|(k, v)| (k, sorted(v))).collect();
        prop_assert_eq!(ms, want_moves);
    }
}

fn a_stock_block() -> Result<Vec<u8>, StoreError> {
    let events: Vec<Written> = (0..40)
        .map(|i| {
            let l = line(
                1,
                i % 7,
                1_000 + i as i64,
                i / 4,
                (i % 4) as u16,
                i % 5 == 0,
                2,
            );
            if i % 6 == 5 {
                Written::Other(StockMovementRow {
                    reason: MovementReason::Receipt,
                    delta: 12,
                    ..movement_of(&l, 30, true)
                })
            } else {
                Written::Line(l, 30 - i as i64, i % 3 != 0)
            }
        })
        .collect();
    let parts = [part(&events)];
    let (mut lines, mut others) = (BlockSet::default(), BlockSet::default());
    pack(&parts, &mut lines, &mut others);
    let out = blocks(&mut lines, &mut others)?;
    assert_eq!(out.len(), 1, "one store, one hour: one block");
    assert!(out[0].stock);
    Ok(out[0].bytes().concat())
}

#[test]
fn a_cut_stock_block_is_corrupt_as_movements_and_never_misread_as_lines() -> Result<(), StoreError>
{
    let block = a_stock_block()?;
    let lines = decode::<SaleLineRow>(&block)?;
    assert_eq!(lines.len(), 34);
    assert_eq!(decode::<StockMovementRow>(&block)?.len(), 40);
    for cut in 0..block.len() {
        let bytes = &block[..cut];
        assert!(
            matches!(
                decode::<StockMovementRow>(bytes),
                Err(StoreError::Corrupt { .. })
            ),
            "cut at {cut}"
        );
        // The lines section ends before the other movements: a cut past
        // it leaves every line whole.
        match decode::<SaleLineRow>(bytes) {
            Err(StoreError::Corrupt { .. }) => {}
            Ok(read) => assert_eq!(read, lines, "cut at {cut}"),
            Err(e) => panic!("cut at {cut}: {e}"),
        }
    }
    Ok(())
}

#[test]
fn a_stock_block_is_refused_as_any_other_table_and_flipped_bytes_never_panic()
-> Result<(), StoreError> {
    let block = a_stock_block()?;
    assert!(matches!(
        decode::<SaleRow>(&block),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        decode::<DeviceHealthRow>(&block),
        Err(StoreError::Corrupt { .. })
    ));
    for at in 0..block.len() {
        for bit in [0x01u8, 0x80] {
            let mut bytes = block.clone();
            bytes[at] ^= bit;
            let _ = decode::<StockMovementRow>(&bytes);
            let _ = decode::<SaleLineRow>(&bytes);
        }
    }
    Ok(())
}

#[test]
fn a_line_whose_movement_differs_in_any_way_keeps_that_movement_as_it_was() -> Result<(), StoreError>
{
    let l = line(1, 5, 1_000, 3, 0, false, 2);
    let exact = movement_of(&l, 8, true);
    for other in [
        StockMovementRow { delta: -3, ..exact },
        StockMovementRow {
            counted: 1,
            ..exact
        },
        StockMovementRow {
            reason: MovementReason::Refund,
            ..exact
        },
        StockMovementRow { line: 1, ..exact },
        StockMovementRow { sku: 6, ..exact },
    ] {
        let parts = [RowSet {
            sale_lines: vec![l],
            stock_movements: vec![other],
            ..RowSet::default()
        }];
        let (ls, ms) = pack_and_read(&parts)?;
        assert_eq!(ls.values().flatten().copied().collect::<Vec<_>>(), vec![l]);
        assert_eq!(
            ms.values().flatten().copied().collect::<Vec<_>>(),
            vec![other]
        );
    }
    Ok(())
}
