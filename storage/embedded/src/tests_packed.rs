//! Tests of the packed block format: any rows read back as they were
//! written, and bytes that are not a block are an error, never a panic.

use proptest::prelude::*;
use rkyv::util::AlignedVec;

use super::{Packer, decode};
use crate::archive::StoredRow;
use crate::blocks::{BlockRow, BlockSet};
use tillstream_storage::rows::*;
use tillstream_storage::store::StoreError;
use tillstream_storage::testkit::{health_row, key};

/// Packs `rows`, in order, as one block.
fn encode_rows<'a, T: super::Packed + 'a>(rows: impl Iterator<Item = &'a T>) -> AlignedVec {
    let mut p = Packer::new(T::TABLE);
    for r in rows {
        p.push(r);
    }
    p.finish();
    p.out
}

fn packed<T: super::Packed>(rows: &[T]) -> AlignedVec {
    encode_rows(rows.iter())
}

fn arb_key() -> impl Strategy<Value = EventKey> {
    (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(device, seq, idx)| EventKey {
        device,
        seq,
        idx,
    })
}

fn arb_kind() -> impl Strategy<Value = SaleKind> {
    prop_oneof![Just(SaleKind::Sale), Just(SaleKind::Refund)]
}

fn arb_sale() -> impl Strategy<Value = SaleRow> {
    (
        (any::<u32>(), any::<i64>(), arb_key(), arb_kind()),
        (
            any::<u32>(),
            any::<u32>(),
            any::<[u8; 16]>(),
            any::<[u8; 3]>(),
        ),
        (any::<u16>(), any::<[i64; 6]>(), any::<u8>(), any::<u8>()),
        any::<Option<u64>>(),
    )
        .prop_map(
            |(
                (store, ts_us, key, kind),
                (terminal, operator, txn, currency),
                (lines, [items, gross, discount, tax, tendered, tip], tenders, tender_methods),
                customer,
            )| SaleRow {
                store,
                ts_us,
                key,
                kind,
                terminal,
                operator,
                txn,
                currency,
                lines,
                items,
                gross,
                discount,
                tax,
                tendered,
                tip,
                tenders,
                tender_methods,
                customer,
            },
        )
}

fn arb_line() -> impl Strategy<Value = SaleLineRow> {
    (
        (
            any::<u32>(),
            any::<u64>(),
            any::<i64>(),
            arb_key(),
            any::<u16>(),
        ),
        (arb_kind(), any::<i32>(), any::<[i64; 4]>()),
    )
        .prop_map(
            |(
                (store, sku, ts_us, key, line),
                (kind, quantity, [unit_price, discount, tax, amount]),
            )| SaleLineRow {
                store,
                sku,
                ts_us,
                key,
                line,
                kind,
                quantity,
                unit_price,
                discount,
                tax,
                amount,
            },
        )
}

fn arb_reason() -> impl Strategy<Value = MovementReason> {
    (0u64..7).prop_map(|c| super::reason_of(c).unwrap_or(MovementReason::Sale))
}

fn arb_movement() -> impl Strategy<Value = StockMovementRow> {
    (
        (
            any::<u32>(),
            any::<u64>(),
            any::<i64>(),
            arb_key(),
            any::<u16>(),
        ),
        (arb_reason(), any::<[i64; 3]>(), any::<bool>()),
    )
        .prop_map(
            |((store, sku, ts_us, key, line), (reason, [delta, counted, level_after], applied))| {
                StockMovementRow {
                    store,
                    sku,
                    ts_us,
                    key,
                    line,
                    reason,
                    delta,
                    counted,
                    level_after,
                    applied,
                }
            },
        )
}

fn arb_health() -> impl Strategy<Value = DeviceHealthRow> {
    (
        (any::<i64>(), arb_key(), any::<u32>(), any::<u8>()),
        (any::<i16>(), any::<u32>(), any::<u32>(), any::<i16>()),
    )
        .prop_map(
            |(
                (ts_us, key, store, battery_pct),
                (temperature_dc, uptime_s, queue_depth, rssi_dbm),
            )| {
                DeviceHealthRow {
                    ts_us,
                    key,
                    store,
                    battery_pct,
                    temperature_dc,
                    uptime_s,
                    queue_depth,
                    rssi_dbm,
                }
            },
        )
}

fn arb_rejected() -> impl Strategy<Value = RejectedEventRow> {
    (
        any::<i64>(),
        arb_key(),
        any::<u16>(),
        ".{0,40}",
        // Past half the row buffer too: long fields bypass it.
        prop::collection::vec(any::<u8>(), 0..700),
    )
        .prop_map(|(ts_us, key, code, reason, event)| RejectedEventRow {
            ts_us,
            key,
            code,
            reason,
            event,
        })
}

fn arb_dead() -> impl Strategy<Value = DeadLetterRow> {
    (
        any::<i64>(),
        any::<Option<u64>>(),
        ".{0,20}",
        any::<u16>(),
        ".{0,300}",
        prop::collection::vec(any::<u8>(), 0..1200),
    )
        .prop_map(|(ts_us, device, peer, code, reason, raw)| DeadLetterRow {
            ts_us,
            device,
            peer,
            code,
            reason,
            raw,
        })
}

fn arb_level() -> impl Strategy<Value = StockLevelRow> {
    (
        (any::<u32>(), any::<u64>(), any::<i64>()),
        (any::<Option<i64>>(), prop::option::of(arb_key())),
        (any::<i64>(), any::<u64>()),
    )
        .prop_map(
            |((store, sku, level), (count_ts_us, count_key), (updated_ts_us, version))| {
                StockLevelRow {
                    store,
                    sku,
                    level,
                    count_ts_us,
                    count_key,
                    updated_ts_us,
                    version,
                }
            },
        )
}

fn round_trips<T: super::Packed + StoredRow + PartialEq + std::fmt::Debug>(
    rows: &[T],
) -> Result<(), TestCaseError> {
    let bytes = packed(rows);
    let back = decode::<T>(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(back.as_slice(), rows);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_table_round_trips(
        sales in prop::collection::vec(arb_sale(), 0..40),
        lines in prop::collection::vec(arb_line(), 0..40),
        moves in prop::collection::vec(arb_movement(), 0..40),
        health in prop::collection::vec(arb_health(), 0..20),
        rejected in prop::collection::vec(arb_rejected(), 0..6),
        dead in prop::collection::vec(arb_dead(), 0..6),
        levels in prop::collection::vec(arb_level(), 0..40),
    ) {
        round_trips(&sales)?;
        round_trips(&lines)?;
        round_trips(&moves)?;
        round_trips(&health)?;
        round_trips(&rejected)?;
        round_trips(&dead)?;
        round_trips(&levels)?;
    }

    /// Whatever the bytes after a valid header, decoding returns rows or
    /// an error; it never panics nor allocates what a count claims.
    #[test]
    fn garbage_is_an_error_not_a_panic(
        body in prop::collection::vec(any::<u8>(), 0..300),
        rows in any::<u32>(),
    ) {
        let mut bytes = b"TSP1".to_vec();
        bytes.extend_from_slice(&[Table::SaleLines as u8, 0, 0, 0]);
        bytes.extend_from_slice(&rows.to_le_bytes());
        bytes.extend_from_slice(&body);
        if let Ok(back) = decode::<SaleLineRow>(&bytes) {
            prop_assert_eq!(back.len(), rows as usize);
        }
    }

    /// Every byte of a real block flipped: an error or other rows, never a
    /// panic.
    #[test]
    fn flipped_bytes_never_panic(moves in prop::collection::vec(arb_movement(), 1..8), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut bytes = packed(&moves).to_vec();
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let _ = decode::<StockMovementRow>(&bytes);
    }
}

fn lines(n: u32) -> Vec<SaleLineRow> {
    (0..n)
        .map(|i| SaleLineRow {
            store: 7,
            sku: 10_000 + u64::from(i * 7_919 % 5_000),
            ts_us: 1_710_000_000_000_000 + i64::from(i / 3) * 1_000,
            key: EventKey {
                device: 0x7111,
                seq: 40 + u64::from(i / 384),
                idx: i / 3 % 128,
            },
            line: (i % 3) as u16,
            kind: SaleKind::Sale,
            quantity: 1 + (i % 3) as i32,
            unit_price: 199 + i64::from(i % 7) * 100,
            discount: 0,
            tax: 20,
            amount: 219,
        })
        .collect()
}

#[test]
fn a_cut_block_is_corrupt_at_every_length() {
    let bytes = packed(&lines(20));
    for len in 0..bytes.len() {
        let r = decode::<SaleLineRow>(&bytes[..len]);
        assert!(
            matches!(r, Err(StoreError::Corrupt { .. })),
            "cut at {len}: {r:?}"
        );
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(matches!(
        decode::<SaleLineRow>(&longer),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn a_blocks_row_count_is_read_from_its_header_and_never_past_its_body() {
    let bytes = packed(&lines(20));
    assert_eq!(super::row_count(&bytes), Some(20));
    assert_eq!(super::row_count(&packed::<SaleLineRow>(&[])), Some(0));
    // Not a packed block: no count, so nothing is allocated for it.
    assert_eq!(super::row_count(b"not a packed block at all"), None);
    assert_eq!(super::row_count(&bytes[..4]), None);
    // A header claiming more rows than its body has bytes: capped at a
    // row a byte, what decoding would accept.
    let mut lying = bytes.to_vec();
    lying[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let body = lying.len() - super::HEADER;
    assert_eq!(super::row_count(&lying), Some(body));
}

#[test]
fn a_block_of_another_table_is_refused() {
    let bytes = packed(&lines(3));
    assert!(matches!(
        decode::<StockMovementRow>(&bytes),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn rows_of_several_parts_pack_as_one_block_in_order() -> Result<(), StoreError> {
    let rows = lines(10);
    let (a, b) = rows.split_at(4);
    let out = encode_rows(a.iter().chain(b.iter().rev()));
    let mut want = a.to_vec();
    want.extend(b.iter().rev().copied());
    assert_eq!(decode::<SaleLineRow>(&out)?, want);
    Ok(())
}

#[test]
fn out_of_range_fields_are_corrupt() {
    // One sale line whose quantity (the 9th field) says 2^41: no i32
    // holds it.
    let mut p = Packer::new(Table::SaleLines);
    p.push_fields(|w| {
        for f in [7, 0, 1, 1, 0, 0, 5, 0] {
            w.num(f);
        }
        w.int(1 << 41);
        for _ in 0..4 {
            w.num(0);
        }
    });
    let r = decode::<SaleLineRow>(p.finish());
    assert!(
        matches!(&r, Err(StoreError::Corrupt { reason, .. }) if reason.contains("range")),
        "{r:?}"
    );
}

#[test]
fn a_realistic_block_packs_to_under_a_quarter_of_its_rkyv_size() -> Result<(), StoreError> {
    // 384 lines of 128 three-line sales from one till, as the engine
    // writes them: the point of the format.
    let rows = lines(384);
    let packed_len = packed(&rows).len();
    let rkyv_len = crate::archive::encode_block(&rows)?.len();
    assert!(
        packed_len * 4 < rkyv_len,
        "packed {packed_len} B vs rkyv {rkyv_len} B"
    );
    Ok(())
}

/// A store whose block log holds rkyv blocks (written before the packed
/// format) reads them as before, beside packed ones.
#[test]
fn rkyv_blocks_of_an_older_log_still_read() -> Result<(), Box<dyn std::error::Error>> {
    use super::super::blocklog::{BlockFormat, Ptr};
    use super::super::tests::{dump, open};
    use tillstream_storage::store::Store;

    let (_dir, store) = open()?;
    store.commit(&tillstream_storage::testkit::sample())?;
    let before = dump(&store)?;
    // Rewrite every block as the old format: rkyv, under a TSB1 pointer.
    let mut rewritten = 0;
    let values: Vec<_> = store
        .blocks
        .iter()
        .map(|g| g.into_inner())
        .collect::<Result<_, _>>()?;
    for (key, value) in values {
        let Some(ptr) = Ptr::decode(&value) else {
            continue;
        };
        assert_eq!(ptr.format, BlockFormat::Packed, "new blocks are packed");
        let rkyv = store.block_bytes(&key, &value)?;
        let old = store.block_log.stage_as(BlockFormat::Rkyv, &rkyv)?;
        store.block_log.sync()?;
        store.blocks.insert(key, old.encode())?;
        rewritten += 1;
    }
    assert!(rewritten >= 3, "sales, lines and movements at least");
    assert_eq!(dump(&store)?, before);
    Ok(())
}

/// Blocks by (partition, hour), each with its rows.
type Blocks<T> = Vec<((u64, u32), Vec<T>)>;

/// What `BlockSet::pack` must produce: the rows of each (partition, hour),
/// in the order they came, blocks sorted by key.
fn grouped<T: BlockRow + Clone>(rows: &[T]) -> Blocks<T> {
    let mut groups = std::collections::BTreeMap::<_, Vec<T>>::new();
    for r in rows {
        groups
            .entry((r.part(), tillstream_storage::time::hour(r.ts_us())))
            .or_default()
            .push(r.clone());
    }
    groups.into_iter().collect()
}

fn unpacked<T: BlockRow>(set: &mut BlockSet) -> Result<Blocks<T>, StoreError> {
    set.blocks()
        .map(|(key, bytes)| Ok((key, decode::<T>(bytes)?)))
        .collect()
}

/// Movements over few stores and hours, so that blocks get many rows.
fn arb_clustered_movements() -> impl Strategy<Value = Vec<StockMovementRow>> {
    prop::collection::vec((arb_movement(), 0u32..4, 0i64..3, 0i64..1000), 0..60).prop_map(|v| {
        v.into_iter()
            .map(|(mut m, store, hour, us)| {
                m.store = store;
                m.ts_us = hour * tillstream_storage::time::HOUR_US + us;
                m
            })
            .collect()
    })
}

proptest! {
    /// One `BlockSet` packing commit after commit, of one table and then
    /// another, gives every commit exactly the blocks a fresh grouping
    /// would: nothing of an earlier commit leaks into a later one.
    #[test]
    fn a_reused_block_set_packs_each_commit_by_partition_and_hour(
        commits in prop::collection::vec((arb_clustered_movements(), prop::collection::vec(arb_health(), 0..20)), 1..6)
    ) {
        let mut set = BlockSet::default();
        for (moves, health) in &commits {
            set.pack(moves.iter());
            prop_assert_eq!(unpacked::<StockMovementRow>(&mut set)?, grouped(moves));
            set.trim();
            set.pack(health.iter());
            prop_assert_eq!(unpacked::<DeviceHealthRow>(&mut set)?, grouped(health));
            set.trim();
        }
    }
}

#[test]
fn packers_past_the_kept_number_are_dropped_and_the_next_commit_still_packs()
-> Result<(), StoreError> {
    let mut set = BlockSet::default();
    let many: Vec<DeviceHealthRow> = (0..1500u64)
        .map(|device| health_row(key(device, 1, 0), 1, 5))
        .collect();
    set.pack(many.iter());
    assert_eq!(unpacked::<DeviceHealthRow>(&mut set)?.len(), 1500);
    set.trim();
    let few = &many[1490..];
    set.pack(few.iter().rev());
    let want: Vec<_> = grouped(&few.iter().rev().copied().collect::<Vec<_>>());
    assert_eq!(unpacked::<DeviceHealthRow>(&mut set)?, want);
    assert_eq!(want.len(), 10);
    Ok(())
}

#[test]
fn small_commits_after_a_big_one_leave_no_big_buffers_behind() -> Result<(), StoreError> {
    let mut set = BlockSet::default();
    let rows_of = |devices: u64, per_device: u64| -> Vec<DeviceHealthRow> {
        (0..devices)
            .flat_map(|device| {
                (0..per_device).map(move |seq| health_row(key(device, seq, 0), 1, 5))
            })
            .collect()
    };
    let big = rows_of(2, 50_000);
    set.pack(big.iter());
    assert_eq!(unpacked::<DeviceHealthRow>(&mut set)?, grouped(&big));
    set.trim();
    let after_big = set.capacity();
    assert!(
        after_big > 512 * 1024,
        "the big commit took {after_big} bytes"
    );

    // One small commit between big ones keeps the room: under load,
    // commits alternate big and small.
    let small = rows_of(3, 10);
    set.pack(small.iter());
    assert_eq!(unpacked::<DeviceHealthRow>(&mut set)?, grouped(&small));
    set.trim();
    assert!(
        set.capacity() >= after_big,
        "one small commit let go of the room"
    );

    // Small commit after small commit, the room goes.
    for _ in 0..40 {
        set.pack(small.iter());
        assert_eq!(unpacked::<DeviceHealthRow>(&mut set)?, grouped(&small));
        set.trim();
    }
    // Three packers, each keeping at most 64 KiB past four times its block.
    let after_small = set.capacity();
    assert!(
        after_small <= 3 * 80 * 1024,
        "{after_small} bytes kept after small commits (after the big one: {after_big})"
    );

    // Released buffers grow again, and pack as before.
    set.pack(big.iter());
    assert_eq!(unpacked::<DeviceHealthRow>(&mut set)?, grouped(&big));
    Ok(())
}

/// LEB128, a byte a turn: what the packer must write for a field, byte
/// for byte, whichever way it computes it (older builds read these).
fn leb128(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

#[test]
fn varints_are_minimal_leb128_at_every_length() {
    let mut values = vec![0, 1, 0x7f, u64::MAX];
    for bit in 0..64 {
        let p = 1u64 << bit;
        values.extend([p - 1, p, p + 1, p | (p >> 1)]);
    }
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..2_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        values.push(x >> (x % 64));
    }
    let mut p = Packer::new(Table::StockMovements);
    let mut want = Vec::new();
    for &v in &values {
        p.push_fields(|w| w.varint(v));
        want.extend(leb128(v));
    }
    p.finish();
    assert_eq!(&p.out[super::HEADER..], &want[..]);
}
