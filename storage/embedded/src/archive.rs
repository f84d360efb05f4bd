//! The value format: rkyv archives of one row (point keys) or of a
//! `Vec<Row>` (level blocks, and raw-row blocks written inline or before
//! the packed format of the block log, `packed`), validated with bytecheck
//! before any field is read.
//! Stored bytes are never trusted: a value that fails validation is
//! [`StoreError::Corrupt`], never a panic.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::Error as RkyvError;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use tillstream_storage::rows::*;
use tillstream_storage::store::StoreError;

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

    /// The row from bytes an older data format wrote for it, which do not
    /// validate as this format's: `None` when there is no older layout,
    /// or these bytes are not one either.
    fn from_older(bytes: &AlignedVec) -> Option<Self> {
        let _ = bytes;
        None
    }
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
    RejectedEventRow => "rejected_events row",
    DeadLetterRow => "dead_letters row",
}

/// A ledger row as data formats 1 to 3 wrote it, before
/// [`BatchRow::digest`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchRowV3 {
    pub(crate) device: u64,
    pub(crate) seq: u64,
    pub(crate) events: u32,
    pub(crate) received_at_us: i64,
}

impl StoredRow for BatchRow {
    const WHAT: &'static str = "device_batches row";

    fn from_older(bytes: &AlignedVec) -> Option<Self> {
        let old = rkyv::from_bytes::<BatchRowV3, RkyvError>(bytes).ok()?;
        Some(BatchRow {
            device: old.device,
            seq: old.seq,
            events: old.events,
            received_at_us: old.received_at_us,
            digest: 0,
        })
    }
}

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
    let bytes = aligned(bytes, buf);
    rkyv::from_bytes::<T, RkyvError>(bytes)
        .or_else(|e| T::from_older(bytes).ok_or_else(|| corrupt(T::WHAT, e)))
}

/// Validates and deserializes a block of rows.
pub(crate) fn decode_block<T: StoredRow>(
    bytes: &[u8],
    buf: &mut AlignedVec,
) -> Result<Vec<T>, StoreError> {
    rkyv::from_bytes::<Vec<T>, RkyvError>(aligned(bytes, buf)).map_err(|e| corrupt(T::WHAT, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tillstream_storage::testkit::{health_row, key};

    #[test]
    fn blocks_round_trip_and_reject_garbage() -> Result<(), StoreError> {
        let rows = vec![
            health_row(key(1, 1, 0), 1, 5),
            health_row(key(1, 1, 1), 1, 6),
        ];
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
}
