//! Each table's row in the packed format: the order of its fields, which
//! is the format (see `packed`), and the codes of its enums.
//!
//! Every `pack` is `#[inline(always)]`: inlined into `Packer::push`, the
//! writer's position and field index stay in registers and each field's
//! index is a constant. The compiler had left the larger rows' `pack` out
//! of line, and a sale line packed in 41 ns instead of 27 (the
//! `store_commit` bench's packing: 1.28–1.30 ms for 4,096 sales, then 0.89).
//! Every `unpack` is too, into `packed::decode_each`, for the same reason:
//! the reader's position and field index stay in registers (the
//! `store_scan` bench, a full scan of lines and movements: 12.8 and 11.0
//! ms, then 9.5; `tillstream verify` of 4 M events 10.8 s, then 9.6).

use super::{Packed, RowWriter, Unpacker};
use tillstream_storage::rows::*;

fn kind_code(k: SaleKind) -> u64 {
    k as u64
}

fn kind_of(code: u64) -> Result<SaleKind, &'static str> {
    match code {
        0 => Ok(SaleKind::Sale),
        1 => Ok(SaleKind::Refund),
        _ => Err("an unknown sale kind"),
    }
}

#[inline]
pub(crate) fn reason_of(code: u64) -> Result<MovementReason, &'static str> {
    Ok(match code {
        0 => MovementReason::Sale,
        1 => MovementReason::Refund,
        2 => MovementReason::Receipt,
        3 => MovementReason::Shrink,
        4 => MovementReason::TransferIn,
        5 => MovementReason::TransferOut,
        6 => MovementReason::CountCorrection,
        _ => return Err("an unknown movement reason"),
    })
}

#[inline]
fn pack_key(p: &mut RowWriter<'_>, k: &EventKey) {
    p.num(k.device);
    p.num(k.seq);
    p.num(u64::from(k.idx));
}

#[inline(always)]
fn unpack_key(u: &mut Unpacker<'_>) -> Result<EventKey, &'static str> {
    Ok(EventKey {
        device: u.num()?,
        seq: u.num()?,
        idx: u.narrow()?,
    })
}

impl Packed for SaleRow {
    const TABLE: Table = Table::Sales;

    #[inline(always)]
    fn pack(&self, p: &mut RowWriter<'_>) {
        p.num(u64::from(self.store));
        p.int(self.ts_us);
        pack_key(p, &self.key);
        p.num(kind_code(self.kind));
        p.num(u64::from(self.terminal));
        p.num(u64::from(self.operator));
        p.fixed(&self.txn);
        let [a, b, c] = self.currency;
        p.num(u64::from(u32::from_le_bytes([a, b, c, 0])));
        p.num(u64::from(self.lines));
        p.int(self.items);
        p.int(self.gross);
        p.int(self.discount);
        p.int(self.tax);
        p.int(self.tendered);
        p.int(self.tip);
        p.num(u64::from(self.tenders));
        p.num(u64::from(self.tender_methods));
        p.opt(self.customer);
    }

    #[inline(always)]
    fn unpack(u: &mut Unpacker<'_>) -> Result<Self, &'static str> {
        let store = u.narrow()?;
        let ts_us = u.int()?;
        let key = unpack_key(u)?;
        let kind = kind_of(u.num()?)?;
        let terminal = u.narrow()?;
        let operator = u.narrow()?;
        let txn = u.fixed()?;
        let [a, b, c, zero] = u.narrow::<u32>()?.to_le_bytes();
        if zero != 0 {
            return Err("a currency is over 3 bytes");
        }
        Ok(SaleRow {
            store,
            ts_us,
            key,
            kind,
            terminal,
            operator,
            txn,
            currency: [a, b, c],
            lines: u.narrow()?,
            items: u.int()?,
            gross: u.int()?,
            discount: u.int()?,
            tax: u.int()?,
            tendered: u.int()?,
            tip: u.int()?,
            tenders: u.narrow()?,
            tender_methods: u.narrow()?,
            customer: u.opt()?,
        })
    }
}

impl Packed for SaleLineRow {
    const TABLE: Table = Table::SaleLines;

    #[inline(always)]
    fn pack(&self, p: &mut RowWriter<'_>) {
        p.num(u64::from(self.store));
        p.int(self.ts_us);
        pack_key(p, &self.key);
        p.num(u64::from(self.line));
        p.num(self.sku);
        p.num(kind_code(self.kind));
        p.int(i64::from(self.quantity));
        p.int(self.unit_price);
        p.int(self.discount);
        p.int(self.tax);
        p.int(self.amount);
    }

    #[inline(always)]
    fn unpack(u: &mut Unpacker<'_>) -> Result<Self, &'static str> {
        Ok(SaleLineRow {
            store: u.narrow()?,
            ts_us: u.int()?,
            key: unpack_key(u)?,
            line: u.narrow()?,
            sku: u.num()?,
            kind: kind_of(u.num()?)?,
            quantity: u.narrow_int()?,
            unit_price: u.int()?,
            discount: u.int()?,
            tax: u.int()?,
            amount: u.int()?,
        })
    }

    const IN_STOCK_BLOCKS: bool = true;

    #[inline(always)]
    fn from_stock_line(line: &SaleLineRow, _moved: Option<(i64, bool)>) -> Option<Self> {
        Some(*line)
    }
}

impl Packed for StockMovementRow {
    const TABLE: Table = Table::StockMovements;

    #[inline(always)]
    fn pack(&self, p: &mut RowWriter<'_>) {
        p.num(u64::from(self.store));
        p.int(self.ts_us);
        pack_key(p, &self.key);
        p.num(u64::from(self.line));
        p.num(self.sku);
        p.num(self.reason as u64);
        p.int(self.delta);
        p.int(self.counted);
        p.int(self.level_after);
        p.num(u64::from(self.applied));
    }

    #[inline(always)]
    fn unpack(u: &mut Unpacker<'_>) -> Result<Self, &'static str> {
        Ok(StockMovementRow {
            store: u.narrow()?,
            ts_us: u.int()?,
            key: unpack_key(u)?,
            line: u.narrow()?,
            sku: u.num()?,
            reason: reason_of(u.num()?)?,
            delta: u.int()?,
            counted: u.int()?,
            level_after: u.int()?,
            applied: u.flag()?,
        })
    }

    const IN_STOCK_BLOCKS: bool = true;

    #[inline(always)]
    fn from_stock_line(line: &SaleLineRow, moved: Option<(i64, bool)>) -> Option<Self> {
        moved.map(|(level_after, applied)| super::stock::movement_of(line, level_after, applied))
    }

    #[inline(always)]
    fn from_stock_movement(m: StockMovementRow) -> Option<Self> {
        Some(m)
    }
}

impl Packed for DeviceHealthRow {
    const TABLE: Table = Table::DeviceHealth;

    #[inline(always)]
    fn pack(&self, p: &mut RowWriter<'_>) {
        p.int(self.ts_us);
        pack_key(p, &self.key);
        p.num(u64::from(self.store));
        p.num(u64::from(self.battery_pct));
        p.int(i64::from(self.temperature_dc));
        p.num(u64::from(self.uptime_s));
        p.num(u64::from(self.queue_depth));
        p.int(i64::from(self.rssi_dbm));
    }

    #[inline(always)]
    fn unpack(u: &mut Unpacker<'_>) -> Result<Self, &'static str> {
        Ok(DeviceHealthRow {
            ts_us: u.int()?,
            key: unpack_key(u)?,
            store: u.narrow()?,
            battery_pct: u.narrow()?,
            temperature_dc: u.narrow_int()?,
            uptime_s: u.narrow()?,
            queue_depth: u.narrow()?,
            rssi_dbm: u.narrow_int()?,
        })
    }
}

impl Packed for RejectedEventRow {
    const TABLE: Table = Table::RejectedEvents;

    #[inline(always)]
    fn pack(&self, p: &mut RowWriter<'_>) {
        p.int(self.ts_us);
        pack_key(p, &self.key);
        p.num(u64::from(self.code));
        p.bytes(self.reason.as_bytes());
        p.bytes(&self.event);
    }

    #[inline(always)]
    fn unpack(u: &mut Unpacker<'_>) -> Result<Self, &'static str> {
        Ok(RejectedEventRow {
            ts_us: u.int()?,
            key: unpack_key(u)?,
            code: u.narrow()?,
            reason: u.text()?,
            event: u.bytes()?.to_vec(),
        })
    }
}

impl Packed for DeadLetterRow {
    const TABLE: Table = Table::DeadLetters;

    #[inline(always)]
    fn pack(&self, p: &mut RowWriter<'_>) {
        p.int(self.ts_us);
        p.opt(self.device);
        p.bytes(self.peer.as_bytes());
        p.num(u64::from(self.code));
        p.bytes(self.reason.as_bytes());
        p.bytes(&self.raw);
    }

    #[inline(always)]
    fn unpack(u: &mut Unpacker<'_>) -> Result<Self, &'static str> {
        Ok(DeadLetterRow {
            ts_us: u.int()?,
            device: u.opt()?,
            peer: u.text()?,
            code: u.narrow()?,
            reason: u.text()?,
            raw: u.bytes()?.to_vec(),
        })
    }
}

/// A level: its store and SKU change little from row to row in a block
/// sorted by SKU, and most SKUs were never counted, so a level takes
/// about 10 bytes where its rkyv archive took 88.
impl Packed for StockLevelRow {
    const TABLE: Table = Table::StockLevels;

    #[inline(always)]
    fn pack(&self, p: &mut RowWriter<'_>) {
        p.num(u64::from(self.store));
        p.num(self.sku);
        p.int(self.level);
        p.opt(self.count_ts_us.map(|ts| ts as u64));
        let key = self.count_key.unwrap_or(EventKey {
            device: 0,
            seq: 0,
            idx: 0,
        });
        p.num(u64::from(self.count_key.is_some()));
        pack_key(p, &key);
        p.int(self.updated_ts_us);
        p.num(self.version);
    }

    #[inline(always)]
    fn unpack(u: &mut Unpacker<'_>) -> Result<Self, &'static str> {
        Ok(StockLevelRow {
            store: u.narrow()?,
            sku: u.num()?,
            level: u.int()?,
            count_ts_us: u.opt()?.map(|ts| ts as i64),
            count_key: {
                let some = u.flag()?;
                let key = unpack_key(u)?;
                some.then_some(key)
            },
            updated_ts_us: u.int()?,
            version: u.num()?,
        })
    }
}
