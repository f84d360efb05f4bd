//! Row mappings of the device tables: health, watermarks, the batch
//! ledger, refused events and dead letters (see mapping.rs).

use scylla::value::{CqlValue, Row};

use super::{CqlRow, Values, big, big_u, int, small};
use crate::cols::Cols;
use tillstream_storage::buckets::batch_seq_bucket;
use tillstream_storage::rows::*;
use tillstream_storage::store::StoreError;
use tillstream_storage::time;

/// The leading columns both per-device event tables share (health and
/// refused events): device, day, ts_us, seq, idx.
fn event_head(key: &EventKey, ts_us: i64) -> Values {
    vec![
        big_u(key.device),
        big(time::day(ts_us).into()),
        big(ts_us),
        big_u(key.seq),
        int(key.idx as i32),
    ]
}

/// Reads what [`event_head`] wrote: the event's time and key.
fn read_event_head(c: &mut Cols) -> Result<(i64, EventKey), StoreError> {
    let device = c.u64()?;
    c.i64()?; // day
    let ts_us = c.i64()?;
    let key = EventKey {
        device,
        seq: c.u64()?,
        idx: c.int_u32()?,
    };
    Ok((ts_us, key))
}

impl CqlRow for DeviceHealthRow {
    const TABLE: &'static str = "device_health";
    const COLUMNS: &'static [&'static str] = &[
        "device",
        "day",
        "ts_us",
        "seq",
        "idx",
        "store",
        "battery_pct",
        "temperature_dc",
        "uptime_s",
        "queue_depth",
        "rssi_dbm",
    ];
    const PARTITION_COLUMNS: usize = 2;

    fn values(&self) -> Values {
        let mut v = event_head(&self.key, self.ts_us);
        v.extend([
            big(self.store.into()),
            small(self.battery_pct),
            small(self.temperature_dc),
            big(self.uptime_s.into()),
            big(self.queue_depth.into()),
            small(self.rssi_dbm),
        ]);
        v
    }

    fn from_row(row: Row) -> Result<Self, StoreError> {
        let mut c = Cols::new(Self::TABLE, row, Self::COLUMNS.len())?;
        let (ts_us, key) = read_event_head(&mut c)?;
        Ok(DeviceHealthRow {
            ts_us,
            key,
            store: c.u32()?,
            battery_pct: c.u8()?,
            temperature_dc: c.i16()?,
            uptime_s: c.u32()?,
            queue_depth: c.u32()?,
            rssi_dbm: c.i16()?,
        })
    }
}

impl CqlRow for WatermarkRow {
    const TABLE: &'static str = "device_watermarks";
    const COLUMNS: &'static [&'static str] = &["device", "seq", "updated_at_us"];
    const PARTITION_COLUMNS: usize = 1;

    fn values(&self) -> Values {
        vec![big_u(self.device), big_u(self.seq), big(self.updated_at_us)]
    }

    fn from_row(row: Row) -> Result<Self, StoreError> {
        let mut c = Cols::new(Self::TABLE, row, Self::COLUMNS.len())?;
        Ok(WatermarkRow {
            device: c.u64()?,
            seq: c.u64()?,
            updated_at_us: c.i64()?,
        })
    }
}

impl CqlRow for BatchRow {
    const TABLE: &'static str = "device_batches";
    const COLUMNS: &'static [&'static str] = &[
        "device",
        "seq_bucket",
        "seq",
        "events",
        "received_at_us",
        "digest",
    ];
    const PARTITION_COLUMNS: usize = 2;

    fn values(&self) -> Values {
        vec![
            big_u(self.device),
            big_u(batch_seq_bucket(self.seq)),
            big_u(self.seq),
            big(self.events.into()),
            big(self.received_at_us),
            // The digest's bits as they are: bigint is signed.
            big(self.digest as i64),
        ]
    }

    fn from_row(row: Row) -> Result<Self, StoreError> {
        let mut c = Cols::new(Self::TABLE, row, Self::COLUMNS.len())?;
        let device = c.u64()?;
        c.i64()?; // seq_bucket
        Ok(BatchRow {
            device,
            seq: c.u64()?,
            events: c.u32()?,
            received_at_us: c.i64()?,
            // Null in a row from before the column.
            digest: c.opt_i64()?.unwrap_or(0) as u64,
        })
    }
}

impl CqlRow for RejectedEventRow {
    const TABLE: &'static str = "rejected_events";
    const COLUMNS: &'static [&'static str] = &[
        "device", "day", "ts_us", "seq", "idx", "code", "reason", "event",
    ];
    const PARTITION_COLUMNS: usize = 2;

    fn values(&self) -> Values {
        let mut v = event_head(&self.key, self.ts_us);
        v.extend([
            int(self.code),
            Some(CqlValue::Text(self.reason.clone())),
            Some(CqlValue::Blob(self.event.clone())),
        ]);
        v
    }

    fn from_row(row: Row) -> Result<Self, StoreError> {
        let mut c = Cols::new(Self::TABLE, row, Self::COLUMNS.len())?;
        let (ts_us, key) = read_event_head(&mut c)?;
        Ok(RejectedEventRow {
            ts_us,
            key,
            code: c.int_u16()?,
            reason: c.text()?,
            event: c.blob()?,
        })
    }
}

/// A dead letter and its place in the write that holds it: the `id`
/// column is a CRC of the row plus that place, so two equal frames of one
/// device in one µs stay two rows, and a retried write lands on the same.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Placed<'a>(pub(crate) &'a DeadLetterRow, pub(crate) u32);

/// The `id` of a dead letter at `place` in its write.
pub(crate) fn dead_letter_id(r: &DeadLetterRow, place: u32) -> i64 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&r.ts_us.to_le_bytes());
    crc.update(r.peer.as_bytes());
    crc.update(&r.code.to_le_bytes());
    crc.update(r.reason.as_bytes());
    crc.update(&r.raw);
    (i64::from(crc.finalize()) << 32) | i64::from(place)
}

pub(crate) const DEAD_LETTER_COLUMNS: &[&str] = &[
    "hour", "ts_us", "device", "id", "peer", "code", "reason", "raw",
];

impl Placed<'_> {
    pub(crate) fn values(&self) -> Values {
        let r = self.0;
        vec![
            big(time::hour(r.ts_us).into()),
            big(r.ts_us),
            // -1 before Hello (the schema's convention).
            big(r.device.map_or(-1, |d| d as i64)),
            big(dead_letter_id(r, self.1)),
            Some(CqlValue::Text(r.peer.clone())),
            int(r.code),
            Some(CqlValue::Text(r.reason.clone())),
            Some(CqlValue::Blob(r.raw.clone())),
        ]
    }
}

impl CqlRow for DeadLetterRow {
    const TABLE: &'static str = "dead_letters";
    const COLUMNS: &'static [&'static str] = DEAD_LETTER_COLUMNS;
    const PARTITION_COLUMNS: usize = 1;

    /// The row at place 0; writes use [`Placed`].
    fn values(&self) -> Values {
        Placed(self, 0).values()
    }

    fn from_row(row: Row) -> Result<Self, StoreError> {
        let mut c = Cols::new(Self::TABLE, row, Self::COLUMNS.len())?;
        c.i64()?; // hour
        let ts_us = c.i64()?;
        let device = c.i64()?;
        c.i64()?; // id
        Ok(DeadLetterRow {
            ts_us,
            device: (device != -1).then_some(device as u64),
            peer: c.text()?,
            code: c.int_u16()?,
            reason: c.text()?,
            raw: c.blob()?,
        })
    }
}
