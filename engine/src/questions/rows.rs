//! The fields of every answer's rows, with their JSON types and units:
//! the one table the OpenAPI document's row schemas are built from, and
//! that the tests hold the real answers to (every field a row has is
//! here, with its type, and every field here is in the row). The answer
//! structs (storage `query.rs`, `analytics.rs`, `rows.rs`) say the same
//! units in their doc comments.

/// A field's JSON type.
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    /// An integer from `min` to `max`.
    Int {
        /// Least value.
        min: i64,
        /// Greatest value.
        max: i64,
    },
    /// A count or version: an integer from 0 to 2^64 − 1.
    Count,
    /// A 64-bit id as a JSON string of its decimal digits (so that no
    /// parser rounds it past 2^53).
    Id,
    /// UTF-8 text.
    Text,
    /// A JSON number (may have a fraction).
    Number,
    /// `true` or `false`.
    Bool,
    /// One of these strings.
    Word(&'static [&'static str]),
    /// An event's identity, `EventKey`.
    Key,
    /// The type, or `null`.
    Nullable(&'static Ty),
}

/// One field of a row.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// Its JSON name.
    pub name: &'static str,
    /// Its type.
    pub ty: Ty,
    /// What it holds, unit included.
    pub help: &'static str,
}

const fn f(name: &'static str, ty: Ty, help: &'static str) -> Field {
    Field { name, ty, help }
}

const I64: Ty = Ty::Int {
    min: i64::MIN,
    max: i64::MAX,
};
const U32: Ty = Ty::Int {
    min: 0,
    max: u32::MAX as i64,
};
const I16: Ty = Ty::Int {
    min: i16::MIN as i64,
    max: i16::MAX as i64,
};
const U16: Ty = Ty::Int {
    min: 0,
    max: u16::MAX as i64,
};
const U8: Ty = Ty::Int {
    min: 0,
    max: u8::MAX as i64,
};

/// The reasons of a stock movement, as JSON spells `MovementReason`.
pub const REASONS: &[&str] = &[
    "sale",
    "refund",
    "receipt",
    "shrink",
    "transfer_in",
    "transfer_out",
    "count_correction",
];

/// The fields of `EventKey`.
pub const KEY: &[Field] = &[
    f("device", Ty::Id, "The device that sent the event."),
    f("seq", Ty::Count, "The seq of the batch it came in."),
    f("idx", U32, "Its index in the batch, from 0."),
];

const STORE: Field = f(
    "store",
    U32,
    "Store id (the one events carry; `store_name` names it).",
);
const STORE_OR_ALL: Field = f(
    "store",
    Ty::Nullable(&U32),
    "Store id; null when the row is summed over all stores (no `store` asked).",
);
const STORE_NAME: Field = f(
    "store_name",
    Ty::Text,
    "The catalogue's name of the store; \"all stores\" when `store` is null; empty when the catalogue does not name it.",
);
const SKU: Field = f(
    "sku",
    Ty::Id,
    "SKU id (a hash of the product code when the chain has no ids of its own); `sku_code` and `sku_name` name it.",
);
const SKU_CODE: Field = f(
    "sku_code",
    Ty::Text,
    "The catalogue's code for the SKU (85123A); empty when the catalogue does not name it.",
);
const SKU_NAME: Field = f(
    "sku_name",
    Ty::Text,
    "The catalogue's name of the SKU; empty when it does not name it.",
);

/// Money: an integer of the currency's minor unit (pence, cents).
const fn money(name: &'static str, help: &'static str) -> Field {
    f(name, I64, help)
}

/// A time: UTC microseconds since the Unix epoch.
const fn time(name: &'static str, help: &'static str) -> Field {
    f(name, I64, help)
}

/// `/api/v1/sales`: storage `SalesBucket`, with the store it sums.
pub const SALES: &[Field] = &[
    STORE_OR_ALL,
    time(
        "start_us",
        "Start of the bucket: UTC microseconds since the Unix epoch.",
    ),
    f("sales", Ty::Count, "Sales in the bucket."),
    f("refunds", Ty::Count, "Refunds in the bucket."),
    f("items", I64, "Units sold (over the sales' lines)."),
    money(
        "gross_minor",
        "Σ gross of the sales (line amounts before tax), in minor units of the currency (pence, cents).",
    ),
    money("tax_minor", "Σ tax of the sales, minor units."),
    money("refunded_minor", "Σ gross of the refunds, minor units."),
    money("net_minor", "gross_minor − refunded_minor, minor units."),
    STORE_NAME,
];

/// `/api/v1/top-skus`: storage `SkuTotal`, named.
pub const SKU_TOTAL: &[Field] = &[
    STORE_OR_ALL,
    SKU,
    f(
        "quantity",
        I64,
        "Units sold net of refunds: quantity_sold − quantity_refunded.",
    ),
    f("quantity_sold", I64, "Units on sale lines."),
    f("quantity_refunded", I64, "Units on refund lines."),
    money(
        "revenue_minor",
        "Amount sold net of refunds, in minor units of the currency.",
    ),
    f("lines", Ty::Count, "Sale and refund lines counted."),
    SKU_CODE,
    SKU_NAME,
    STORE_NAME,
];

/// `/api/v1/stock-history`: storage `StockMovementRow`, named.
pub const MOVEMENT: &[Field] = &[
    STORE,
    SKU,
    time(
        "ts_us",
        "Event time: UTC microseconds since the Unix epoch.",
    ),
    f(
        "key",
        Ty::Key,
        "The event it came from: device, batch seq, index in the batch.",
    ),
    f(
        "line",
        U16,
        "Line of the sale or refund it came from; 0 for other movements.",
    ),
    f("reason", Ty::Word(REASONS), "Why the stock moved."),
    f(
        "delta",
        I64,
        "Units in (+) or out (−); for a count_correction, counted − the level before.",
    ),
    f(
        "counted",
        I64,
        "For a count_correction, the level counted on the shelf; 0 otherwise.",
    ),
    f(
        "level_after",
        I64,
        "Units in stock as of this movement's event time (the latest count at or before it plus the movements between).",
    ),
    f(
        "applied",
        Ty::Bool,
        "False when a count stamped at or after it already saw it, so it did not change the level.",
    ),
    SKU_CODE,
    SKU_NAME,
    STORE_NAME,
];

/// `/api/v1/low-stock`: storage `StockLevelRow`, named.
pub const LEVEL: &[Field] = &[
    STORE,
    SKU,
    f(
        "level",
        I64,
        "Units in stock now: the latest count plus the movements stamped after it.",
    ),
    f(
        "count_ts_us",
        Ty::Nullable(&I64),
        "Event time of the latest shelf count (UTC microseconds since the epoch); null if never counted.",
    ),
    f(
        "count_key",
        Ty::Nullable(&Ty::Key),
        "The event of that count; null if never counted.",
    ),
    time(
        "updated_ts_us",
        "Event time of the newest movement or count applied (UTC microseconds since the epoch).",
    ),
    f(
        "version",
        Ty::Count,
        "Movements applied to the SKU so far (the newest version wins).",
    ),
    SKU_CODE,
    SKU_NAME,
    STORE_NAME,
];

/// `/api/v1/watermarks` and `/v1/watermarks`: storage `WatermarkRow`.
pub const WATERMARK: &[Field] = &[
    f("device", Ty::Id, "Device id."),
    f("seq", Ty::Count, "Its highest durable batch seq."),
    time(
        "updated_at_us",
        "Server time of the commit that raised it (UTC microseconds since the epoch).",
    ),
];

/// `/api/v1/terminals`: storage `TerminalTotal`, named.
pub const TERMINAL: &[Field] = &[
    STORE,
    f("terminal", U32, "The till."),
    f("sales", Ty::Count, "Sales in the range."),
    f("refunds", Ty::Count, "Refunds in the range."),
    money("gross_minor", "Σ gross of the sales, minor units."),
    money("tax_minor", "Σ tax of the sales, minor units."),
    money("refunded_minor", "Σ gross of the refunds, minor units."),
    money("net_minor", "gross_minor − refunded_minor, minor units."),
    time(
        "last_active_us",
        "Start of the last minute with a sale or refund (UTC microseconds since the epoch).",
    ),
    STORE_NAME,
];

/// `/api/v1/health`: storage `DeviceHealth`, named.
pub const HEALTH: &[Field] = &[
    f("device", Ty::Id, "Device id."),
    f("store", U32, "Store it last reported for."),
    f("reports", Ty::Count, "Health reports in the range."),
    time(
        "last_seen_us",
        "Time of its last report (UTC microseconds since the epoch).",
    ),
    f(
        "battery_pct",
        U8,
        "Battery at the last report: 0–100 percent, or 255 when the device runs on mains power (no battery to report). Devices send one byte unchecked, so 101–254 may appear and mean nothing.",
    ),
    f(
        "battery_min_pct",
        U8,
        "Lowest battery in the range: 0–100 percent; 255 when every report was on mains power.",
    ),
    f(
        "temperature_max_dc",
        I16,
        "Highest temperature in the range, in tenths of a degree Celsius (215 = 21.5 °C).",
    ),
    f(
        "rssi_min_dbm",
        I16,
        "Weakest radio signal in the range, in dBm (−61; closer to 0 is stronger).",
    ),
    f(
        "queue_depth_max",
        U32,
        "Most batches it held unacknowledged at a report in the range.",
    ),
    f(
        "uptime_s",
        U32,
        "Seconds since the device booted, at the last report.",
    ),
    STORE_NAME,
];

/// `/api/v1/dead-stock`: storage `DeadStock`, named.
pub const DEAD_STOCK: &[Field] = &[
    STORE,
    SKU,
    f("level", I64, "Units in stock now (above 0)."),
    f(
        "last_sale_us",
        Ty::Nullable(&I64),
        "Time of its last sale ever seen (UTC microseconds since the epoch); null if it never sold.",
    ),
    SKU_CODE,
    SKU_NAME,
    STORE_NAME,
];

/// `/api/v1/basket-pairs`: storage `BasketPair`, named.
pub const BASKET_PAIR: &[Field] = &[
    STORE_OR_ALL,
    f("sku_a", Ty::Id, "One SKU id of the pair (the lower)."),
    f("sku_b", Ty::Id, "The other SKU id."),
    f("baskets", Ty::Count, "Sales holding both."),
    f(
        "support",
        Ty::Number,
        "baskets over all sales in the range, 0 to 1.",
    ),
    f(
        "confidence",
        Ty::Number,
        "baskets over the sales holding sku_a, 0 to 1: how often a buyer of A also takes B.",
    ),
    f(
        "lift",
        Ty::Number,
        "confidence over B's share of all sales: above 1, A makes B likelier than chance.",
    ),
    f(
        "sku_a_code",
        Ty::Text,
        "The catalogue's code for sku_a; empty when it does not name it.",
    ),
    f("sku_a_name", Ty::Text, "The catalogue's name of sku_a."),
    f(
        "sku_b_code",
        Ty::Text,
        "The catalogue's code for sku_b; empty when it does not name it.",
    ),
    f("sku_b_name", Ty::Text, "The catalogue's name of sku_b."),
    STORE_NAME,
];
