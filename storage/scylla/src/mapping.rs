//! Rows to CQL values and back, one impl per table, in the column order of
//! `storage/schema/002_tables.cql`. CQL has no unsigned types: u64 fields
//! travel as bigint holding the same 64 bits, u32 fields as bigint, u16 as
//! int, u8 as smallint (see the schema's header).

use scylla::value::{CqlValue, Row};

use tillstream_storage::buckets::level_bucket;
use tillstream_storage::rows::*;
use tillstream_storage::store::StoreError;
use tillstream_storage::time;

use super::cols::Cols;

/// One CQL row's values, in column order; `None` is null.
pub(crate) type Values = Vec<Option<CqlValue>>;

/// A row type stored in one CQL table.
pub(crate) trait CqlRow: Sized {
    /// The table.
    const TABLE: &'static str;
    /// Its columns, in the order of [`CqlRow::values`] and
    /// [`CqlRow::from_row`].
    const COLUMNS: &'static [&'static str];
    /// How many leading columns form the partition key: rows of one
    /// partition may share an unlogged batch.
    const PARTITION_COLUMNS: usize;
    /// The row as CQL values (bucket columns computed).
    fn values(&self) -> Values;
    /// The row back from a `SELECT` of [`CqlRow::COLUMNS`].
    fn from_row(row: Row) -> Result<Self, StoreError>;
}

pub(super) fn big(v: i64) -> Option<CqlValue> {
    Some(CqlValue::BigInt(v))
}
pub(super) fn big_u(v: u64) -> Option<CqlValue> {
    // Two's complement: the same 64 bits (the schema's convention).
    Some(CqlValue::BigInt(v as i64))
}
pub(super) fn int(v: impl Into<i32>) -> Option<CqlValue> {
    Some(CqlValue::Int(v.into()))
}
pub(super) fn small(v: impl Into<i16>) -> Option<CqlValue> {
    Some(CqlValue::SmallInt(v.into()))
}

pub(super) fn key_values(k: &EventKey) -> [Option<CqlValue>; 3] {
    [big_u(k.device), big_u(k.seq), int(k.idx as i32)]
}

impl CqlRow for SaleRow {
    const TABLE: &'static str = "sales";
    const COLUMNS: &'static [&'static str] = &[
        "store",
        "hour",
        "ts_us",
        "device",
        "seq",
        "idx",
        "kind",
        "terminal",
        "operator",
        "txn",
        "currency",
        "lines",
        "items",
        "gross",
        "discount",
        "tax",
        "tendered",
        "tip",
        "tenders",
        "tender_methods",
        "customer",
    ];
    const PARTITION_COLUMNS: usize = 2;

    fn values(&self) -> Values {
        let mut v = vec![
            big(self.store.into()),
            big(time::hour(self.ts_us).into()),
            big(self.ts_us),
        ];
        v.extend(key_values(&self.key));
        v.extend([
            small(self.kind as u8),
            big(self.terminal.into()),
            big(self.operator.into()),
            Some(CqlValue::Blob(self.txn.to_vec())),
            Some(CqlValue::Text(
                String::from_utf8_lossy(&self.currency).into_owned(),
            )),
            int(self.lines),
            big(self.items),
            big(self.gross),
            big(self.discount),
            big(self.tax),
            big(self.tendered),
            big(self.tip),
            small(self.tenders),
            small(self.tender_methods),
            self.customer.and_then(big_u),
        ]);
        v
    }

    fn from_row(row: Row) -> Result<Self, StoreError> {
        let mut c = Cols::new(Self::TABLE, row, Self::COLUMNS.len())?;
        let store = c.u32()?;
        c.i64()?; // hour
        let ts_us = c.i64()?;
        let key = c.key()?;
        let kind = c.sale_kind()?;
        let terminal = c.u32()?;
        let operator = c.u32()?;
        let txn = c.blob()?.try_into().map_err(|_| c.bad("16 bytes"))?;
        let currency = c
            .text()?
            .into_bytes()
            .try_into()
            .map_err(|_| c.bad("3 bytes"))?;
        Ok(SaleRow {
            store,
            ts_us,
            key,
            kind,
            terminal,
            operator,
            txn,
            currency,
            lines: c.int_u16()?,
            items: c.i64()?,
            gross: c.i64()?,
            discount: c.i64()?,
            tax: c.i64()?,
            tendered: c.i64()?,
            tip: c.i64()?,
            tenders: c.u8()?,
            tender_methods: c.u8()?,
            customer: c.opt_i64()?.map(|v| v as u64),
        })
    }
}

impl CqlRow for SaleLineRow {
    const TABLE: &'static str = "sale_lines";
    const COLUMNS: &'static [&'static str] = &[
        "store",
        "sku",
        "day",
        "ts_us",
        "device",
        "seq",
        "idx",
        "line",
        "kind",
        "quantity",
        "unit_price",
        "discount",
        "tax",
        "amount",
    ];
    const PARTITION_COLUMNS: usize = 3;

    fn values(&self) -> Values {
        let mut v = vec![
            big(self.store.into()),
            big_u(self.sku),
            big(time::day(self.ts_us).into()),
            big(self.ts_us),
        ];
        v.extend(key_values(&self.key));
        v.extend([
            int(self.line),
            small(self.kind as u8),
            int(self.quantity),
            big(self.unit_price),
            big(self.discount),
            big(self.tax),
            big(self.amount),
        ]);
        v
    }

    fn from_row(row: Row) -> Result<Self, StoreError> {
        let mut c = Cols::new(Self::TABLE, row, Self::COLUMNS.len())?;
        let store = c.u32()?;
        let sku = c.u64()?;
        c.i64()?; // day
        Ok(SaleLineRow {
            store,
            sku,
            ts_us: c.i64()?,
            key: c.key()?,
            line: c.int_u16()?,
            kind: c.sale_kind()?,
            quantity: c.i32()?,
            unit_price: c.i64()?,
            discount: c.i64()?,
            tax: c.i64()?,
            amount: c.i64()?,
        })
    }
}

fn movement_tail(m: &StockMovementRow) -> [Option<CqlValue>; 5] {
    [
        small(m.reason as u8),
        big(m.delta),
        big(m.counted),
        big(m.level_after),
        Some(CqlValue::Boolean(m.applied)),
    ]
}

impl CqlRow for StockMovementRow {
    const TABLE: &'static str = "stock_movements";
    const COLUMNS: &'static [&'static str] = &[
        "store",
        "sku",
        "month",
        "ts_us",
        "device",
        "seq",
        "idx",
        "line",
        "reason",
        "delta",
        "counted",
        "level_after",
        "applied",
    ];
    const PARTITION_COLUMNS: usize = 3;

    fn values(&self) -> Values {
        let mut v = vec![
            big(self.store.into()),
            big_u(self.sku),
            big(time::month(self.ts_us).into()),
            big(self.ts_us),
        ];
        v.extend(key_values(&self.key));
        v.push(int(self.line));
        v.extend(movement_tail(self));
        v
    }

    fn from_row(row: Row) -> Result<Self, StoreError> {
        let mut c = Cols::new(Self::TABLE, row, Self::COLUMNS.len())?;
        let store = c.u32()?;
        let sku = c.u64()?;
        c.i64()?; // month
        Ok(StockMovementRow {
            store,
            sku,
            ts_us: c.i64()?,
            key: c.key()?,
            line: c.int_u16()?,
            reason: c.reason()?,
            delta: c.i64()?,
            counted: c.i64()?,
            level_after: c.i64()?,
            applied: c.bool()?,
        })
    }
}

/// The same movement in `store_movements`, keyed by (store, hour), with
/// the LSN of the materialization that wrote it and its writer's
/// [`writer_hash`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ByStoreHour(
    pub(crate) StockMovementRow,
    pub(crate) u64,
    pub(crate) Option<u64>,
);

/// A node id as `store_movements.writer` holds it: FNV-1a, fixed across
/// builds. Two node ids of one keyspace sharing a hash (about one chance
/// in 2^64 per pair) would only make activation leave out the other's
/// rows past this node's checkpoint.
pub(crate) fn writer_hash(node: &str) -> u64 {
    node.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl CqlRow for ByStoreHour {
    const TABLE: &'static str = "store_movements";
    const COLUMNS: &'static [&'static str] = &[
        "store",
        "hour",
        "ts_us",
        "sku",
        "device",
        "seq",
        "idx",
        "line",
        "reason",
        "delta",
        "counted",
        "level_after",
        "applied",
        "lsn",
        "writer",
    ];
    const PARTITION_COLUMNS: usize = 2;

    fn values(&self) -> Values {
        let m = &self.0;
        let mut v = vec![
            big(m.store.into()),
            big(time::hour(m.ts_us).into()),
            big(m.ts_us),
            big_u(m.sku),
        ];
        v.extend(key_values(&m.key));
        v.push(int(m.line));
        v.extend(movement_tail(m));
        v.push(big_u(self.1));
        v.push(self.2.and_then(big_u));
        v
    }

    fn from_row(row: Row) -> Result<Self, StoreError> {
        let mut c = Cols::new(Self::TABLE, row, Self::COLUMNS.len())?;
        let store = c.u32()?;
        c.i64()?; // hour
        let ts_us = c.i64()?;
        Ok(ByStoreHour(
            StockMovementRow {
                store,
                ts_us,
                sku: c.u64()?,
                key: c.key()?,
                line: c.int_u16()?,
                reason: c.reason()?,
                delta: c.i64()?,
                counted: c.i64()?,
                level_after: c.i64()?,
                applied: c.bool()?,
            },
            c.u64()?,
            c.opt_i64()?.map(|w| w as u64),
        ))
    }
}

impl CqlRow for StockLevelRow {
    const TABLE: &'static str = "stock_levels";
    const COLUMNS: &'static [&'static str] = &[
        "store",
        "bucket",
        "sku",
        "level",
        "count_ts_us",
        "count_device",
        "count_seq",
        "count_idx",
        "updated_ts_us",
        "version",
    ];
    const PARTITION_COLUMNS: usize = 2;

    fn values(&self) -> Values {
        let k = self.count_key;
        vec![
            big(self.store.into()),
            int(level_bucket(self.sku)),
            big_u(self.sku),
            big(self.level),
            self.count_ts_us.and_then(big),
            k.and_then(|k| big_u(k.device)),
            k.and_then(|k| big_u(k.seq)),
            k.and_then(|k| int(k.idx as i32)),
            big(self.updated_ts_us),
            big_u(self.version),
        ]
    }

    fn from_row(row: Row) -> Result<Self, StoreError> {
        let mut c = Cols::new(Self::TABLE, row, Self::COLUMNS.len())?;
        let store = c.u32()?;
        c.i32()?; // bucket
        let sku = c.u64()?;
        let level = c.i64()?;
        let count_ts_us = c.opt_i64()?;
        let (device, seq, idx) = (c.opt_i64()?, c.opt_i64()?, c.opt_i32()?);
        let count_key = match (device, seq, idx) {
            (Some(d), Some(s), Some(i)) => Some(EventKey {
                device: d as u64,
                seq: s as u64,
                idx: u32::try_from(i).map_err(|_| c.bad("a u32"))?,
            }),
            _ => None,
        };
        Ok(StockLevelRow {
            store,
            sku,
            level,
            count_ts_us,
            count_key,
            updated_ts_us: c.i64()?,
            version: c.u64()?,
        })
    }
}

impl CqlRow for TerminalRollupRow {
    const TABLE: &'static str = "terminal_rollups";
    const COLUMNS: &'static [&'static str] = &[
        "store", "hour", "day", "terminal", "minute", "sales", "refunds", "gross", "tax",
        "refunded",
    ];
    const PARTITION_COLUMNS: usize = 2;

    fn values(&self) -> Values {
        vec![
            big(self.store.into()),
            big(rollup_hour(self.day, self.minute)),
            big(self.day.into()),
            big(self.terminal.into()),
            int(self.minute),
            big(self.sales.into()),
            big(self.refunds.into()),
            big(self.gross),
            big(self.tax),
            big(self.refunded),
        ]
    }

    fn from_row(row: Row) -> Result<Self, StoreError> {
        let mut c = Cols::new(Self::TABLE, row, Self::COLUMNS.len())?;
        let store = c.u32()?;
        c.i64()?; // hour
        Ok(TerminalRollupRow {
            store,
            day: c.u32()?,
            terminal: c.u32()?,
            minute: c.int_u16()?,
            sales: c.u32()?,
            refunds: c.u32()?,
            gross: c.i64()?,
            tax: c.i64()?,
            refunded: c.i64()?,
        })
    }
}

/// The `hour` partition of a rollup minute: hours since the epoch.
pub(crate) fn rollup_hour(day: u32, minute: u16) -> i64 {
    i64::from(day) * 24 + i64::from(minute / 60)
}

// The device tables (health, watermarks, the batch ledger, refusals,
// dead letters) are in mapping_devices.rs.
#[path = "mapping_devices.rs"]
mod devices;
#[cfg(test)]
pub(crate) use devices::dead_letter_id;
pub(crate) use devices::{DEAD_LETTER_COLUMNS, Placed};

#[cfg(test)]
#[path = "mapping_tests.rs"]
mod tests;
