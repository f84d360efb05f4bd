use rkyv::{Archive, Deserialize, Serialize};

/// One telemetry event.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
#[repr(u8)]
pub enum Event {
    /// A till sold goods.
    Sale(Sale),
    /// A till refunded goods (they go back to stock).
    Refund(Refund),
    /// Goods arrived, left or were written off.
    Movement(StockMovement),
    /// An absolute shelf level from a sensor or a stock-take.
    Count(ShelfCount),
    /// A device's periodic health ping.
    Health(DeviceHealth),
}

impl Event {
    /// The event's own time (UTC µs).
    pub fn ts_us(&self) -> i64 {
        match self {
            Event::Sale(e) => e.ts_us,
            Event::Refund(e) => e.ts_us,
            Event::Movement(e) => e.ts_us,
            Event::Count(e) => e.ts_us,
            Event::Health(e) => e.ts_us,
        }
    }
}

impl ArchivedEvent {
    /// The event's own time (UTC µs).
    pub fn ts_us(&self) -> i64 {
        match self {
            ArchivedEvent::Sale(e) => e.ts_us.to_native(),
            ArchivedEvent::Refund(e) => e.ts_us.to_native(),
            ArchivedEvent::Movement(e) => e.ts_us.to_native(),
            ArchivedEvent::Count(e) => e.ts_us.to_native(),
            ArchivedEvent::Health(e) => e.ts_us.to_native(),
        }
    }

    /// The store the event is about.
    pub fn store(&self) -> u32 {
        match self {
            ArchivedEvent::Sale(e) => e.store.to_native(),
            ArchivedEvent::Refund(e) => e.store.to_native(),
            ArchivedEvent::Movement(e) => e.store.to_native(),
            ArchivedEvent::Count(e) => e.store.to_native(),
            ArchivedEvent::Health(e) => e.store.to_native(),
        }
    }

    /// The terminal of a sale or refund; `None` for other events.
    pub fn terminal(&self) -> Option<u32> {
        match self {
            ArchivedEvent::Sale(e) => Some(e.terminal.to_native()),
            ArchivedEvent::Refund(e) => Some(e.terminal.to_native()),
            _ => None,
        }
    }

    /// A short stable name of the kind, for metrics and logs.
    pub fn kind_name(&self) -> &'static str {
        match self {
            ArchivedEvent::Sale(_) => "sale",
            ArchivedEvent::Refund(_) => "refund",
            ArchivedEvent::Movement(_) => "movement",
            ArchivedEvent::Count(_) => "count",
            ArchivedEvent::Health(_) => "health",
        }
    }
}

/// A sale at a till.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Sale {
    /// When it happened (UTC µs).
    pub ts_us: i64,
    /// The store it happened in.
    pub store: u32,
    /// The till.
    pub terminal: u32,
    /// The cashier.
    pub operator: u32,
    /// The till's transaction id.
    pub txn: [u8; 16],
    /// ISO-4217 code of every amount in it.
    pub currency: [u8; 3],
    /// What was bought.
    pub lines: Vec<SaleLine>,
    /// How it was paid; several tenders for a split payment.
    pub tenders: Vec<Tender>,
    /// A loyalty customer, if known.
    pub customer: Option<u64>,
}

/// A refund at a till: the goods go back to stock.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Refund {
    /// When it happened (UTC µs).
    pub ts_us: i64,
    /// The store it happened in.
    pub store: u32,
    /// The till.
    pub terminal: u32,
    /// The cashier.
    pub operator: u32,
    /// The refund's own transaction id.
    pub txn: [u8; 16],
    /// The sale it refunds, if the till knows it.
    pub original_txn: Option<[u8; 16]>,
    /// ISO-4217 code of every amount in it.
    pub currency: [u8; 3],
    /// What was returned; quantities are positive.
    pub lines: Vec<SaleLine>,
    /// How the money went back.
    pub tenders: Vec<Tender>,
}

/// One line of a sale or refund.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SaleLine {
    /// The product.
    pub sku: u64,
    /// Units; must be positive.
    pub quantity: i32,
    /// Price of one unit before discount (minor units).
    pub unit_price: i64,
    /// Discount on the whole line (minor units).
    pub discount: i64,
    /// Tax on the whole line (minor units).
    pub tax: i64,
}

impl SaleLine {
    /// What the line costs before tax: quantity × unit price − discount.
    pub fn amount(&self) -> i64 {
        i64::from(self.quantity)
            .saturating_mul(self.unit_price)
            .saturating_sub(self.discount)
    }
}

impl ArchivedSaleLine {
    /// What the line costs before tax: quantity × unit price − discount.
    pub fn amount(&self) -> i64 {
        i64::from(self.quantity.to_native())
            .saturating_mul(self.unit_price.to_native())
            .saturating_sub(self.discount.to_native())
    }
}

/// One payment of a sale.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Tender {
    /// How it was paid.
    pub method: TenderMethod,
    /// Amount (minor units).
    pub amount: i64,
    /// Tip on top (minor units).
    pub tip: i64,
}

/// Payment methods.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq))]
#[repr(u8)]
pub enum TenderMethod {
    /// Notes and coins.
    Cash = 0,
    /// Chip and PIN.
    Card = 1,
    /// Tap to pay.
    Contactless = 2,
    /// A gift card.
    GiftCard = 3,
    /// A voucher or coupon.
    Voucher = 4,
    /// A phone wallet.
    Mobile = 5,
}

impl ArchivedTenderMethod {
    /// The bit of this method in a tender bitmask.
    pub fn bit(&self) -> u8 {
        1 << (*self as u8)
    }
}

/// Goods arrived, left or were written off, outside a sale.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StockMovement {
    /// When it happened (UTC µs).
    pub ts_us: i64,
    /// The store.
    pub store: u32,
    /// The product.
    pub sku: u64,
    /// Units in (positive) or out (negative); never zero.
    pub delta: i32,
    /// Why.
    pub reason: MovementKind,
}

/// Why stock moved, as reported by a device.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, Clone, Copy, PartialEq, Eq))]
#[repr(u8)]
pub enum MovementKind {
    /// A delivery.
    Receipt = 0,
    /// Loss, theft, damage.
    Shrink = 1,
    /// Moved in from another store.
    TransferIn = 2,
    /// Moved out to another store.
    TransferOut = 3,
}

/// An absolute shelf level. Ordered by its own time: it sets the level, and
/// movements stamped before it are taken to be already seen by it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ShelfCount {
    /// When the shelf was counted (UTC µs).
    pub ts_us: i64,
    /// The store.
    pub store: u32,
    /// The product.
    pub sku: u64,
    /// Units on the shelf; never negative.
    pub level: i64,
}

/// A device's periodic health ping.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DeviceHealth {
    /// When it was taken (UTC µs).
    pub ts_us: i64,
    /// The store the device is in.
    pub store: u32,
    /// Battery, 0–100; 255 when mains powered.
    pub battery_pct: u8,
    /// Temperature in tenths of a degree Celsius.
    pub temperature_dc: i16,
    /// Seconds since the device booted.
    pub uptime_s: u32,
    /// Batches the device holds unacknowledged.
    pub queue_depth: u32,
    /// Radio signal strength in dBm.
    pub rssi_dbm: i16,
}
