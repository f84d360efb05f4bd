//! The value format: rkyv archives of one row (point keys) or of a
//! `Vec<Row>` (level blocks, and raw-row blocks written inline or before
//! the packed format of the block log, `packed`), validated with bytecheck
//! before any field is read.
//! Stored bytes are never trusted: a value that fails validation is
//! [`StoreError::Corrupt`], never a panic.

use std::hash::Hash;

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::Error as RkyvError;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use crate::rows::*;
use crate::store::StoreError;
use crate::time;

/// A row type the embedded store can archive and validate.
pub(crate) trait StoredRow:
    Archive<
        Archived: for<'a> CheckBytes<HighValidator<'a, RkyvError>>
                      + Deserialize<Self, HighDeserializer<RkyvError>>,
    > + for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, RkyvError>>
    + Sized
{
    /// What the row is called in error messages.
    const WHAT: &'static str;
}

/// A row of a time-series table, stored in blocks grouped by
/// (partition, hour).
pub(crate) trait BlockRow: StoredRow + Clone + super::packed::Packed {
    /// Its table.
    const TABLE: Table;
    /// The block partition: store, device or 0 (see `keys::part_width`).
    fn part(&self) -> u64;
    /// Event (or receipt) time, UTC µs.
    fn ts_us(&self) -> i64;
}

macro_rules! stored {
    ($($ty:ty => $what:literal),* $(,)?) => {
        $(impl StoredRow for $ty { const WHAT: &'static str = $what; })*
    };
}

stored! {
    SaleRow => "sales row",
    SaleLineRow => "sale_lines row",
    StockMovementRow => "stock_movements row",
    StockLevelRow => "stock_levels row",
    TerminalRollupRow => "terminal_rollups row",
    DeviceHealthRow => "device_health row",
    WatermarkRow => "device_watermarks row",
    BatchRow => "device_batches row",
    RejectedEventRow => "rejected_events row",
    DeadLetterRow => "dead_letters row",
}

macro_rules! block_row {
    ($ty:ty, $table:expr, |$r:ident| $part:expr) => {
        impl BlockRow for $ty {
            const TABLE: Table = $table;
            fn part(&self) -> u64 {
                let $r = self;
                $part
            }
            fn ts_us(&self) -> i64 {
                self.ts_us
            }
        }
    };
}

block_row!(SaleRow, Table::Sales, |r| u64::from(r.store));
block_row!(SaleLineRow, Table::SaleLines, |r| u64::from(r.store));
block_row!(StockMovementRow, Table::StockMovements, |r| u64::from(
    r.store
));
block_row!(DeviceHealthRow, Table::DeviceHealth, |r| r.key.device);
block_row!(RejectedEventRow, Table::RejectedEvents, |r| r.key.device);
block_row!(DeadLetterRow, Table::DeadLetters, |_r| 0);

fn encode_err(what: &'static str, e: RkyvError) -> StoreError {
    StoreError::Backend {
        op: what,
        source: Box::new(e),
    }
}

fn corrupt(what: &'static str, e: RkyvError) -> StoreError {
    StoreError::Corrupt {
        what,
        reason: e.to_string(),
    }
}

/// Archives one row.
pub(crate) fn encode_one<T: StoredRow>(row: &T) -> Result<AlignedVec, StoreError> {
    rkyv::to_bytes::<RkyvError>(row).map_err(|e| encode_err("encoding a row", e))
}

/// Archives a block of rows.
pub(crate) fn encode_block<T: StoredRow>(rows: &Vec<T>) -> Result<AlignedVec, StoreError> {
    // Sized up front: growing from empty copied each block several times.
    let size = rows.len() * size_of::<T::Archived>() + 64;
    rkyv::api::high::to_bytes_in::<_, RkyvError>(rows, AlignedVec::with_capacity(size))
        .map_err(|e| encode_err("encoding a block", e))
}

/// Copies `bytes` into the aligned scratch buffer `buf` (fjall's values have
/// no alignment guarantee) and returns it.
fn aligned<'b>(bytes: &[u8], buf: &'b mut AlignedVec) -> &'b AlignedVec {
    buf.clear();
    buf.extend_from_slice(bytes);
    buf
}

/// Validates and deserializes one row.
pub(crate) fn decode_one<T: StoredRow>(
    bytes: &[u8],
    buf: &mut AlignedVec,
) -> Result<T, StoreError> {
    rkyv::from_bytes::<T, RkyvError>(aligned(bytes, buf)).map_err(|e| corrupt(T::WHAT, e))
}

/// Validates and deserializes a block of rows.
pub(crate) fn decode_block<T: StoredRow>(
    bytes: &[u8],
    buf: &mut AlignedVec,
) -> Result<Vec<T>, StoreError> {
    rkyv::from_bytes::<Vec<T>, RkyvError>(aligned(bytes, buf)).map_err(|e| corrupt(T::WHAT, e))
}

/// Groups `rows` into blocks by (partition, hour): for each, its rows in
/// the order they came in. Blocks come out sorted by (partition, hour).
/// References rather than copies: a flush's raw rows are hundreds of MB a
/// second at full load, and copying them into per-group vectors (grown
/// row by row) was a pass over all of them.
pub(crate) fn group<'a, T: BlockRow + 'a>(
    rows: impl Iterator<Item = &'a T>,
) -> Vec<((u64, u32), Vec<&'a T>)> {
    let mut groups: super::FastMap<(u64, u32), Vec<&'a T>> = super::FastMap::default();
    for r in rows {
        groups
            .entry((r.part(), time::hour(r.ts_us())))
            .or_default()
            .push(r);
    }
    let mut out: Vec<_> = groups.into_iter().collect();
    out.sort_unstable_by_key(|(k, _)| *k);
    out
}

/// Keeps, for every key, the one row `keep_new(old, new)` prefers; later
/// rows win ties when `keep_new` says so. Returns them in first-seen order.
pub(crate) fn dedupe<T: Clone, K: Hash + Eq>(
    rows: &[T],
    key: impl Fn(&T) -> K,
    keep_new: impl Fn(&T, &T) -> bool,
) -> Vec<T> {
    let mut at: super::FastMap<K, usize> =
        super::FastMap::with_capacity_and_hasher(rows.len(), Default::default());
    let mut out: Vec<T> = Vec::with_capacity(rows.len());
    for r in rows {
        match at.get(&key(r)) {
            Some(&i) => {
                if let Some(slot) = out.get_mut(i).filter(|slot| keep_new(slot, r)) {
                    *slot = r.clone();
                }
            }
            None => {
                at.insert(key(r), out.len());
                out.push(r.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(device: u64, ts_us: i64) -> DeviceHealthRow {
        DeviceHealthRow {
            ts_us,
            key: EventKey {
                device,
                seq: 1,
                idx: 0,
            },
            store: 1,
            battery_pct: 50,
            temperature_dc: 200,
            uptime_s: 1,
            queue_depth: 0,
            rssi_dbm: -60,
        }
    }

    #[test]
    fn blocks_round_trip_and_reject_garbage() -> Result<(), StoreError> {
        let rows = vec![health(1, 5), health(1, 6)];
        let bytes = encode_block(&rows)?;
        let mut buf = AlignedVec::new();
        // Misaligned input is copied, not rejected.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        assert_eq!(
            decode_block::<DeviceHealthRow>(&shifted[1..], &mut buf)?,
            rows
        );
        let err = decode_block::<DeviceHealthRow>(&bytes[..bytes.len() / 2], &mut buf);
        assert!(matches!(err, Err(StoreError::Corrupt { .. })));
        let err = decode_one::<DeadLetterRow>(&[0xFF; 64], &mut buf);
        assert!(matches!(err, Err(StoreError::Corrupt { .. })));
        Ok(())
    }

    #[test]
    fn grouping_by_partition_and_hour() {
        let h = time::HOUR_US;
        let rows = [health(2, 0), health(1, h), health(1, 1), health(1, h + 5)];
        let groups = group(rows.iter());
        let r = &rows;
        assert_eq!(
            groups,
            vec![
                ((1, 0), vec![&r[2]]),
                ((1, 1), vec![&r[1], &r[3]]),
                ((2, 0), vec![&r[0]])
            ]
        );
        assert_eq!(group(rows[..1].iter()).len(), 1);
        assert!(group::<DeviceHealthRow>([].iter()).is_empty());
    }

    #[test]
    fn dedupe_keeps_the_preferred_row() {
        let rows = [(1, 5), (2, 1), (1, 3), (1, 9)];
        let kept = dedupe(&rows, |r| r.0, |old, new| new.1 >= old.1);
        assert_eq!(kept, vec![(1, 9), (2, 1)]);
    }
}
