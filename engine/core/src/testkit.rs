//! Builders of events and validated batches, for tests, simulations and
//! benchmarks (here and in the crates that drive the core). Not used on
//! the hot path.

use rkyv::rancor;
use tillstream_protocol::frame::{FrameError, aligned};
use tillstream_protocol::{
    Batch, DeviceHealth, Event, MovementKind, Refund, Sale, SaleLine, ShelfCount, StockMovement,
    Tender, TenderMethod, ValidatedBatch,
};

/// Most events a test batch may hold.
pub const MAX_EVENTS: u32 = 4096;

/// Archives `events` as batch `seq` and validates it as the server would.
pub fn batch(seq: u64, events: Vec<Event>) -> Result<ValidatedBatch, FrameError> {
    encode(&Batch {
        seq,
        sent_at_us: 0,
        events,
    })
}

/// Archives and validates a batch.
pub fn encode(batch: &Batch) -> Result<ValidatedBatch, FrameError> {
    let bytes = rkyv::to_bytes::<rancor::Error>(batch).map_err(|e| FrameError::Invalid {
        what: "Batch",
        reason: e.to_string(),
    })?;
    ValidatedBatch::new(aligned(&bytes), MAX_EVENTS)
}

/// A sale line of `quantity` units at `unit_price`, tax 10% of the amount.
pub fn line(sku: u64, quantity: i32, unit_price: i64) -> SaleLine {
    SaleLine {
        sku,
        quantity,
        unit_price,
        discount: 0,
        tax: i64::from(quantity).saturating_mul(unit_price) / 10,
    }
}

/// A sale at `ts_us` paid by card for its amount.
pub fn sale(ts_us: i64, store: u32, terminal: u32, lines: Vec<SaleLine>) -> Event {
    let amount = lines.iter().map(SaleLine::amount).sum();
    Event::Sale(Sale {
        ts_us,
        store,
        terminal,
        operator: 1,
        txn: txn(ts_us, terminal),
        currency: *b"EUR",
        lines,
        tenders: vec![Tender {
            method: TenderMethod::Card,
            amount,
            tip: 0,
        }],
        customer: None,
    })
}

/// A refund at `ts_us` paid back in cash.
pub fn refund(ts_us: i64, store: u32, terminal: u32, lines: Vec<SaleLine>) -> Event {
    let amount = lines.iter().map(SaleLine::amount).sum();
    Event::Refund(Refund {
        ts_us,
        store,
        terminal,
        operator: 1,
        txn: txn(ts_us, terminal),
        original_txn: None,
        currency: *b"EUR",
        lines,
        tenders: vec![Tender {
            method: TenderMethod::Cash,
            amount,
            tip: 0,
        }],
    })
}

/// A stock movement (a receipt if `delta` > 0, shrink otherwise).
pub fn movement(ts_us: i64, store: u32, sku: u64, delta: i32) -> Event {
    Event::Movement(StockMovement {
        ts_us,
        store,
        sku,
        delta,
        reason: if delta > 0 {
            MovementKind::Receipt
        } else {
            MovementKind::Shrink
        },
    })
}

/// A shelf count.
pub fn count(ts_us: i64, store: u32, sku: u64, level: i64) -> Event {
    Event::Count(ShelfCount {
        ts_us,
        store,
        sku,
        level,
    })
}

/// A health ping.
pub fn health(ts_us: i64, store: u32) -> Event {
    Event::Health(DeviceHealth {
        ts_us,
        store,
        battery_pct: 80,
        temperature_dc: 215,
        uptime_s: 3600,
        queue_depth: 0,
        rssi_dbm: -61,
    })
}

fn txn(ts_us: i64, terminal: u32) -> [u8; 16] {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&ts_us.to_le_bytes());
    t[8..12].copy_from_slice(&terminal.to_le_bytes());
    t
}
