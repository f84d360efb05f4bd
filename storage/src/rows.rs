//! Row types of the logical tables (storage/schema/), one struct per table.
//!
//! Raw rows (sales, sale_lines, stock_movements, device_health,
//! rejected_events) carry the [`EventKey`] of the event they came from, so a
//! replayed event produces the same keys again. Snapshot rows (stock_levels,
//! terminal_rollups, device_watermarks) hold absolute values and are
//! idempotent upserts; stock levels carry a `version` so that the newest
//! always wins, whatever order commits land in.
//!
//! Every row is fixed-size except the two rare-path tables that keep raw
//! bytes (rejected_events, dead_letters): the hot path allocates per batch,
//! never per event.

use std::borrow::Cow;

use rkyv::{Archive, Deserialize, Serialize};

/// The identity of an event: device, batch seq, index in the batch.
#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
#[rkyv(derive(Debug))]
pub struct EventKey {
    /// The device that sent it.
    #[serde(serialize_with = "crate::json::id")]
    pub device: u64,
    /// The batch's seq.
    pub seq: u64,
    /// Index of the event in the batch.
    pub idx: u32,
}

/// Sale or refund.
#[derive(
    Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, Copy, PartialEq, Eq, Hash,
)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq))]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum SaleKind {
    /// Goods sold.
    Sale = 0,
    /// Goods returned.
    Refund = 1,
}

impl SaleKind {
    /// The stock movement a line of `quantity` units makes: its reason and
    /// its delta (a sale takes units out, a refund puts them back). The
    /// shards write it, and the embedded store derives a line's movement
    /// from its line with it (stock blocks), so the two agree by
    /// construction.
    #[inline]
    pub fn stock_change(self, quantity: i32) -> (MovementReason, i64) {
        match self {
            SaleKind::Sale => (MovementReason::Sale, -i64::from(quantity)),
            SaleKind::Refund => (MovementReason::Refund, i64::from(quantity)),
        }
    }
}

/// Why a SKU's stock moved.
#[derive(
    Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, Copy, PartialEq, Eq, Hash,
)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq))]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum MovementReason {
    /// A sale line took units off the shelf.
    Sale = 0,
    /// A refund line put units back.
    Refund = 1,
    /// A delivery.
    Receipt = 2,
    /// Loss, theft, damage.
    Shrink = 3,
    /// In from another store.
    TransferIn = 4,
    /// Out to another store.
    TransferOut = 5,
    /// A shelf count set the level (`counted`).
    CountCorrection = 6,
}

impl MovementReason {
    /// True for movements that are events of their own (receipt, shrink,
    /// transfer, count); false for those derived from sale or refund lines.
    pub fn is_primary(self) -> bool {
        !matches!(self, MovementReason::Sale | MovementReason::Refund)
    }
}

/// `sales`: partition (store, day), clustering (ts, device, seq, idx).
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SaleRow {
    /// Store.
    pub store: u32,
    /// Event time (UTC µs).
    pub ts_us: i64,
    /// Event identity.
    pub key: EventKey,
    /// Sale or refund.
    pub kind: SaleKind,
    /// The till.
    pub terminal: u32,
    /// The cashier.
    pub operator: u32,
    /// The till's transaction id.
    pub txn: [u8; 16],
    /// ISO-4217 code.
    pub currency: [u8; 3],
    /// Number of lines.
    pub lines: u16,
    /// Units over all lines.
    pub items: i64,
    /// Σ line amounts (quantity × unit price − discount), before tax.
    #[serde(rename = "gross_minor")]
    pub gross: i64,
    /// Σ line discounts.
    #[serde(rename = "discount_minor")]
    pub discount: i64,
    /// Σ line taxes.
    #[serde(rename = "tax_minor")]
    pub tax: i64,
    /// Σ tender amounts.
    #[serde(rename = "tendered_minor")]
    pub tendered: i64,
    /// Σ tender tips.
    #[serde(rename = "tip_minor")]
    pub tip: i64,
    /// Number of tenders (split payments have several).
    pub tenders: u8,
    /// Bitmask of tender methods (bit = `TenderMethod as u8`).
    pub tender_methods: u8,
    /// Loyalty customer, if any.
    #[serde(serialize_with = "crate::json::opt_id")]
    pub customer: Option<u64>,
}

/// `sale_lines`: partition (store, sku, day), clustering (ts, device, seq, idx, line).
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SaleLineRow {
    /// Store.
    pub store: u32,
    /// Product.
    #[serde(serialize_with = "crate::json::id")]
    pub sku: u64,
    /// Event time (UTC µs).
    pub ts_us: i64,
    /// Event identity.
    pub key: EventKey,
    /// Index of the line in the sale.
    pub line: u16,
    /// Sale or refund.
    pub kind: SaleKind,
    /// Units (positive for both kinds).
    pub quantity: i32,
    /// Price of one unit.
    #[serde(rename = "unit_price_minor")]
    pub unit_price: i64,
    /// Line discount.
    #[serde(rename = "discount_minor")]
    pub discount: i64,
    /// Line tax.
    #[serde(rename = "tax_minor")]
    pub tax: i64,
    /// quantity × unit price − discount.
    #[serde(rename = "amount_minor")]
    pub amount: i64,
}

/// `stock_movements`: partition (store, sku, month), clustering (ts, device, seq, idx, line).
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StockMovementRow {
    /// Store.
    pub store: u32,
    /// Product.
    #[serde(serialize_with = "crate::json::id")]
    pub sku: u64,
    /// Event time (UTC µs).
    pub ts_us: i64,
    /// Event identity.
    pub key: EventKey,
    /// Line of the sale or refund it came from; 0 for other movements.
    pub line: u16,
    /// Why it moved.
    pub reason: MovementReason,
    /// Units in (+) or out (−) as reported; for a count, counted − level before.
    pub delta: i64,
    /// For `CountCorrection`: the counted level. 0 otherwise.
    pub counted: i64,
    /// The SKU's level after this row was applied, in the order rows
    /// arrived; [`Query::stock_history`](crate::Query::stock_history)
    /// answers with the level as of the row's event time instead
    /// ([`in_time_order`](crate::in_time_order)).
    pub level_after: i64,
    /// False when the row was stamped at or before the SKU's latest count
    /// (the count already saw it), so it did not change the level.
    pub applied: bool,
}

/// `stock_levels`: partition (store), clustering (sku). The current level.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StockLevelRow {
    /// Store.
    pub store: u32,
    /// Product.
    #[serde(serialize_with = "crate::json::id")]
    pub sku: u64,
    /// Current level: latest count + movements stamped after it.
    pub level: i64,
    /// Event time of the latest count (UTC microseconds since the epoch),
    /// if the SKU was ever counted.
    pub count_ts_us: Option<i64>,
    /// Key of that count (ties between counts of the same time break on it).
    pub count_key: Option<EventKey>,
    /// Event time of the newest movement or count applied (UTC
    /// microseconds since the epoch).
    pub updated_ts_us: i64,
    /// Rows of stock_movements applied to this SKU so far; the newest
    /// version wins when two commits race.
    pub version: u64,
}

/// `terminal_rollups`: partition (store, day), clustering (terminal, minute).
#[derive(
    Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, Copy, PartialEq, Eq, Default,
)]
#[rkyv(derive(Debug))]
pub struct TerminalRollupRow {
    /// Store.
    pub store: u32,
    /// Days since the epoch.
    pub day: u32,
    /// The till.
    pub terminal: u32,
    /// Minute of the day, 0..1440.
    pub minute: u16,
    /// Sales in the minute.
    pub sales: u32,
    /// Refunds in the minute.
    pub refunds: u32,
    /// Σ gross of the sales.
    #[serde(rename = "gross_minor")]
    pub gross: i64,
    /// Σ tax of the sales.
    #[serde(rename = "tax_minor")]
    pub tax: i64,
    /// Σ gross of the refunds.
    #[serde(rename = "refunded_minor")]
    pub refunded: i64,
}

/// `device_health`: partition (device, day), clustering (ts).
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DeviceHealthRow {
    /// Event time (UTC µs).
    pub ts_us: i64,
    /// Event identity (its device is the partition's device).
    pub key: EventKey,
    /// Store the device is in.
    pub store: u32,
    /// Battery: 0–100 percent, or 255 when the device runs on mains
    /// power (no battery to report).
    pub battery_pct: u8,
    /// Temperature in tenths of a degree Celsius (`215` is 21.5 °C).
    pub temperature_dc: i16,
    /// Seconds since boot.
    pub uptime_s: u32,
    /// Batches the device holds unacknowledged.
    pub queue_depth: u32,
    /// Radio signal strength in dBm (negative; closer to 0 is stronger).
    pub rssi_dbm: i16,
}

/// `device_watermarks`: partition (device). Highest durable batch seq.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WatermarkRow {
    /// Device.
    #[serde(serialize_with = "crate::json::id")]
    pub device: u64,
    /// Highest durable batch seq.
    pub seq: u64,
    /// Server time of the commit (UTC µs).
    pub updated_at_us: i64,
}

/// The batch ledger (`device_batches`, partition (device), clustering
/// (seq)): how many events each durable batch held, so `verify` can tell a
/// missing event from a batch that was short, and which batch it was, so
/// a resend under its seq can be told from another batch.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct BatchRow {
    /// Device.
    #[serde(serialize_with = "crate::json::id")]
    pub device: u64,
    /// Batch seq.
    pub seq: u64,
    /// Events in the batch.
    pub events: u32,
    /// Server time of receipt (UTC µs).
    pub received_at_us: i64,
    /// xxh3-64 of the batch's payload as the device sent it: a batch sent
    /// again under this seq is a resend only if it has this digest. 0 in
    /// rows written before the ledger kept it (embedded data format 3 and
    /// earlier, ScyllaDB rows from before the column).
    #[serde(serialize_with = "crate::json::id")]
    pub digest: u64,
}

/// `rejected_events`: partition (device, day), clustering (ts, seq, idx).
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RejectedEventRow {
    /// Event time as the device stamped it (UTC µs).
    pub ts_us: i64,
    /// Event identity.
    pub key: EventKey,
    /// `RejectCode` value.
    pub code: u16,
    /// `RejectCode` name.
    pub reason: String,
    /// The event's archived bytes, so nothing the device sent is lost.
    pub event: Vec<u8>,
}

/// `dead_letters`: partition (day), clustering (ts, device). Frames that
/// failed validation.
#[derive(Archive, Serialize, Deserialize, serde::Serialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DeadLetterRow {
    /// Server time of receipt (UTC µs).
    pub ts_us: i64,
    /// The session's device, if it had said Hello.
    #[serde(serialize_with = "crate::json::opt_id")]
    pub device: Option<u64>,
    /// Remote address.
    pub peer: String,
    /// `ErrorCode` value.
    pub code: u16,
    /// What was wrong.
    pub reason: String,
    /// The frame's bytes, capped at [`DEAD_LETTER_MAX_BYTES`].
    pub raw: Vec<u8>,
}

/// Raw bytes kept of a dead letter.
pub const DEAD_LETTER_MAX_BYTES: usize = 4096;

/// The tables, for scans and metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Table {
    /// `sales`
    Sales = 1,
    /// `sale_lines`
    SaleLines = 2,
    /// `stock_movements`
    StockMovements = 3,
    /// `stock_levels`
    StockLevels = 4,
    /// `terminal_rollups`
    TerminalRollups = 5,
    /// `device_health`
    DeviceHealth = 6,
    /// `device_watermarks`
    DeviceWatermarks = 7,
    /// `device_batches`
    DeviceBatches = 8,
    /// `rejected_events`
    RejectedEvents = 9,
    /// `dead_letters`
    DeadLetters = 10,
}

impl Table {
    /// Every table.
    pub const ALL: [Table; 10] = [
        Table::Sales,
        Table::SaleLines,
        Table::StockMovements,
        Table::StockLevels,
        Table::TerminalRollups,
        Table::DeviceHealth,
        Table::DeviceWatermarks,
        Table::DeviceBatches,
        Table::RejectedEvents,
        Table::DeadLetters,
    ];

    /// The CQL table name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Sales => "sales",
            Table::SaleLines => "sale_lines",
            Table::StockMovements => "stock_movements",
            Table::StockLevels => "stock_levels",
            Table::TerminalRollups => "terminal_rollups",
            Table::DeviceHealth => "device_health",
            Table::DeviceWatermarks => "device_watermarks",
            Table::DeviceBatches => "device_batches",
            Table::RejectedEvents => "rejected_events",
            Table::DeadLetters => "dead_letters",
        }
    }
}

/// Everything one commit writes: rows of every table. The engine fills one
/// per batch part; a materialization takes a tick's parts as they are, in
/// order (`Store::materialize`), without copying them into one.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RowSet {
    /// `sales`
    pub sales: Vec<SaleRow>,
    /// `sale_lines`
    pub sale_lines: Vec<SaleLineRow>,
    /// `stock_movements`
    pub stock_movements: Vec<StockMovementRow>,
    /// `stock_levels` (newest `version` wins)
    pub stock_levels: Vec<StockLevelRow>,
    /// `terminal_rollups` (last write wins; one device's batches commit in order)
    pub terminal_rollups: Vec<TerminalRollupRow>,
    /// `device_health`
    pub device_health: Vec<DeviceHealthRow>,
    /// `device_watermarks` (highest seq wins)
    pub watermarks: Vec<WatermarkRow>,
    /// `device_batches`
    pub batches: Vec<BatchRow>,
    /// `rejected_events`
    pub rejected: Vec<RejectedEventRow>,
    /// `dead_letters`
    pub dead_letters: Vec<DeadLetterRow>,
}

impl RowSet {
    /// Moves every row of `other` into `self`, leaving `other` empty with
    /// its capacity.
    pub fn append(&mut self, other: &mut RowSet) {
        self.sales.append(&mut other.sales);
        self.sale_lines.append(&mut other.sale_lines);
        self.stock_movements.append(&mut other.stock_movements);
        self.stock_levels.append(&mut other.stock_levels);
        self.terminal_rollups.append(&mut other.terminal_rollups);
        self.device_health.append(&mut other.device_health);
        self.watermarks.append(&mut other.watermarks);
        self.batches.append(&mut other.batches);
        self.rejected.append(&mut other.rejected);
        self.dead_letters.append(&mut other.dead_letters);
    }

    /// Empties every table, keeping capacity.
    pub fn clear(&mut self) {
        self.sales.clear();
        self.sale_lines.clear();
        self.stock_movements.clear();
        self.stock_levels.clear();
        self.terminal_rollups.clear();
        self.device_health.clear();
        self.watermarks.clear();
        self.batches.clear();
        self.rejected.clear();
        self.dead_letters.clear();
    }

    /// Rows over all tables.
    pub fn len(&self) -> usize {
        self.sales.len()
            + self.sale_lines.len()
            + self.stock_movements.len()
            + self.stock_levels.len()
            + self.terminal_rollups.len()
            + self.device_health.len()
            + self.watermarks.len()
            + self.batches.len()
            + self.rejected.len()
            + self.dead_letters.len()
    }

    /// True when no table has a row.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows of `parts` as one set: the part itself if there is one,
    /// else a copy of them all, in order (for writers that walk one set).
    pub fn gathered(parts: &[RowSet]) -> Cow<'_, RowSet> {
        match parts {
            [one] => Cow::Borrowed(one),
            // One copy of each table (cloning each part to append it was two).
            _ => Cow::Owned(RowSet {
                sales: concat(parts, |p| &p.sales).into_owned(),
                sale_lines: concat(parts, |p| &p.sale_lines).into_owned(),
                stock_movements: concat(parts, |p| &p.stock_movements).into_owned(),
                stock_levels: concat(parts, |p| &p.stock_levels).into_owned(),
                terminal_rollups: concat(parts, |p| &p.terminal_rollups).into_owned(),
                device_health: concat(parts, |p| &p.device_health).into_owned(),
                watermarks: concat(parts, |p| &p.watermarks).into_owned(),
                batches: concat(parts, |p| &p.batches).into_owned(),
                rejected: concat(parts, |p| &p.rejected).into_owned(),
                dead_letters: concat(parts, |p| &p.dead_letters).into_owned(),
            }),
        }
    }
}

/// One table's rows of `parts`, in order: borrowed if one part holds them
/// all, else copied together (for the small tables, whose writers dedupe
/// or sort over all of a commit's rows).
pub fn concat<T: Clone>(parts: &[RowSet], table: impl Fn(&RowSet) -> &Vec<T>) -> Cow<'_, [T]> {
    let mut holding = parts.iter().filter(|p| !table(p).is_empty());
    match (holding.next(), holding.next()) {
        (None, _) => Cow::Borrowed(&[]),
        (Some(one), None) => Cow::Borrowed(table(one).as_slice()),
        _ => {
            // Sized once: a flattened iterator tells `collect` nothing, so
            // it grew the vector by doubling (a copy and fresh pages each
            // time), which showed in the materializer's profile.
            let mut all = Vec::with_capacity(parts.iter().map(|p| table(p).len()).sum());
            for p in parts {
                all.extend_from_slice(table(p));
            }
            Cow::Owned(all)
        }
    }
}

/// Rows over all tables of all `parts`.
pub fn rows_in(parts: &[RowSet]) -> usize {
    parts.iter().map(RowSet::len).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(device: u64, seq: u64) -> WatermarkRow {
        WatermarkRow {
            device,
            seq,
            updated_at_us: 0,
        }
    }

    #[test]
    fn parts_gather_into_their_concatenation() {
        let mut a = RowSet::default();
        a.watermarks.push(mark(1, 1));
        let mut b = RowSet::default();
        b.watermarks.extend([mark(2, 1), mark(1, 2)]);
        let parts = [a.clone(), RowSet::default(), b.clone()];
        let mut want = a.clone();
        want.append(&mut b.clone());
        assert_eq!(*RowSet::gathered(&parts), want);
        assert!(matches!(RowSet::gathered(&parts[..1]), Cow::Borrowed(_)));
        assert_eq!(*RowSet::gathered(&[]), RowSet::default());
    }
}
