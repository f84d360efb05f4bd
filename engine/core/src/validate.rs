//! Semantic checks of one event.
//!
//! The bytes were already validated by the protocol crate (bytecheck); this
//! decides whether a well-formed event makes sense. A refused event is not
//! lost: it is routed as `Role::Rejected` and stored in `rejected_events`.
//!
//! Invariants: [`check_event`] is a pure function of the event, the rules
//! and `now_us`; it never allocates and never panics. Checks that need
//! entity state (a count older than its SKU's late window) are decided in
//! `ShardCore::apply`, not here.

use tillstream_protocol::{ArchivedEvent, ArchivedSaleLine, ArchivedTender, RejectCode};
use tillstream_storage::time::HOUR_US;

/// 2000-01-01T00:00:00Z in microseconds since the epoch.
pub const Y2000_US: i64 = 946_684_800_000_000;

/// Most tenders one sale may carry: `SaleRow::tenders` is a `u8`.
pub const MAX_TENDERS: usize = u8::MAX as usize;

/// How far ahead an event may be stamped by default: a few minutes of
/// clock drift. More would let one fast clock push every SKU it touches
/// ahead (a SKU's late-count floor follows its newest event), so that
/// honest shelf counts are refused as too late while the skew lasts.
pub const DEFAULT_MAX_FUTURE_US: i64 = 5 * 60 * 1_000_000;

/// The bound before it was configurable; journal records written then
/// were validated with it, and are replayed with it.
pub const LEGACY_MAX_FUTURE_US: i64 = 24 * HOUR_US;

/// The limits an event is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// How far ahead of the server's clock an event may be stamped; later
    /// events are refused (`FutureTimestamp`) and kept in
    /// `rejected_events`.
    pub max_future_us: i64,
    /// The earliest plausible event time.
    pub min_ts_us: i64,
    /// Most lines one sale or refund may hold (also caps its tenders).
    pub max_lines: u32,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            max_future_us: DEFAULT_MAX_FUTURE_US,
            min_ts_us: Y2000_US,
            max_lines: 512,
        }
    }
}

/// Checks one event. `Ok` means it may be applied; `Err` names the reason
/// it is refused.
///
/// In order: the timestamp (future, then implausible), then the kind's own
/// rules: a sale or refund needs 1..=`max_lines` lines, at most
/// `min(max_lines, 255)` tenders, positive quantities and non-negative unit
/// prices, discounts and taxes; a movement needs a non-zero delta; a count
/// a non-negative level.
pub fn check_event(e: &ArchivedEvent, rules: &Rules, now_us: i64) -> Result<(), RejectCode> {
    let ts = e.ts_us();
    if ts > now_us.saturating_add(rules.max_future_us) {
        return Err(RejectCode::FutureTimestamp);
    }
    if ts < rules.min_ts_us {
        return Err(RejectCode::ImplausibleTimestamp);
    }
    match e {
        ArchivedEvent::Sale(s) => check_lines(&s.lines, &s.tenders, rules),
        ArchivedEvent::Refund(r) => check_lines(&r.lines, &r.tenders, rules),
        ArchivedEvent::Movement(m) => {
            if m.delta.to_native() == 0 {
                Err(RejectCode::ZeroDelta)
            } else {
                Ok(())
            }
        }
        ArchivedEvent::Count(c) => {
            if c.level.to_native() < 0 {
                Err(RejectCode::NegativeLevel)
            } else {
                Ok(())
            }
        }
        ArchivedEvent::Health(_) => Ok(()),
    }
}

fn check_lines(
    lines: &[ArchivedSaleLine],
    tenders: &[ArchivedTender],
    rules: &Rules,
) -> Result<(), RejectCode> {
    if lines.is_empty() {
        return Err(RejectCode::NoLines);
    }
    let max_lines = usize::try_from(rules.max_lines).unwrap_or(usize::MAX);
    if lines.len() > max_lines || tenders.len() > max_lines.min(MAX_TENDERS) {
        return Err(RejectCode::TooManyLines);
    }
    for l in lines {
        if l.quantity.to_native() <= 0 {
            return Err(RejectCode::NonPositiveQuantity);
        }
        if l.unit_price.to_native() < 0 || l.discount.to_native() < 0 || l.tax.to_native() < 0 {
            return Err(RejectCode::NegativeAmount);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkyv::rancor;
    use tillstream_protocol::{
        DeviceHealth, Event, MovementKind, Sale, SaleLine, ShelfCount, StockMovement, Tender,
        TenderMethod,
    };

    const NOW: i64 = Y2000_US + 20 * 365 * 24 * HOUR_US;

    fn check(e: &Event, now: i64) -> Result<Result<(), RejectCode>, rancor::Error> {
        let bytes = rkyv::to_bytes::<rancor::Error>(e)?;
        let a = rkyv::access::<ArchivedEvent, rancor::Error>(&bytes)?;
        Ok(check_event(a, &Rules::default(), now))
    }

    fn line(quantity: i32, unit_price: i64) -> SaleLine {
        SaleLine {
            sku: 7,
            quantity,
            unit_price,
            discount: 0,
            tax: 10,
        }
    }

    fn sale(ts_us: i64, lines: Vec<SaleLine>, tenders: usize) -> Event {
        Event::Sale(Sale {
            ts_us,
            store: 1,
            terminal: 2,
            operator: 3,
            txn: [0; 16],
            currency: *b"EUR",
            lines,
            tenders: vec![
                Tender {
                    method: TenderMethod::Card,
                    amount: 100,
                    tip: 0,
                };
                tenders
            ],
            customer: None,
        })
    }

    #[test]
    fn sales() -> Result<(), rancor::Error> {
        assert_eq!(check(&sale(NOW, vec![line(1, 100)], 1), NOW)?, Ok(()));
        assert_eq!(check(&sale(NOW, vec![], 1), NOW)?, Err(RejectCode::NoLines));
        assert_eq!(
            check(&sale(NOW, vec![line(1, 1), line(0, 1)], 1), NOW)?,
            Err(RejectCode::NonPositiveQuantity)
        );
        assert_eq!(
            check(&sale(NOW, vec![line(1, -1)], 1), NOW)?,
            Err(RejectCode::NegativeAmount)
        );
        assert_eq!(
            check(&sale(NOW, vec![line(1, 1); 513], 1), NOW)?,
            Err(RejectCode::TooManyLines)
        );
        assert_eq!(
            check(&sale(NOW, vec![line(1, 1)], 256), NOW)?,
            Err(RejectCode::TooManyLines)
        );
        Ok(())
    }

    #[test]
    fn timestamps() -> Result<(), rancor::Error> {
        let ok = sale(NOW + DEFAULT_MAX_FUTURE_US, vec![line(1, 1)], 0);
        assert_eq!(check(&ok, NOW)?, Ok(()));
        let future = sale(NOW + DEFAULT_MAX_FUTURE_US + 1, vec![line(1, 1)], 0);
        assert_eq!(check(&future, NOW)?, Err(RejectCode::FutureTimestamp));
        let old = sale(Y2000_US - 1, vec![line(1, 1)], 0);
        assert_eq!(check(&old, NOW)?, Err(RejectCode::ImplausibleTimestamp));
        // No overflow near the ends of the range.
        assert_eq!(check(&ok, i64::MAX)?, Ok(()));
        Ok(())
    }

    #[test]
    fn stock_and_health() -> Result<(), rancor::Error> {
        let mv = |delta| {
            Event::Movement(StockMovement {
                ts_us: NOW,
                store: 1,
                sku: 2,
                delta,
                reason: MovementKind::Receipt,
            })
        };
        assert_eq!(check(&mv(3), NOW)?, Ok(()));
        assert_eq!(check(&mv(0), NOW)?, Err(RejectCode::ZeroDelta));
        let count = |level| {
            Event::Count(ShelfCount {
                ts_us: NOW,
                store: 1,
                sku: 2,
                level,
            })
        };
        assert_eq!(check(&count(0), NOW)?, Ok(()));
        assert_eq!(check(&count(-1), NOW)?, Err(RejectCode::NegativeLevel));
        let h = Event::Health(DeviceHealth {
            ts_us: NOW,
            store: 1,
            battery_pct: 50,
            temperature_dc: 200,
            uptime_s: 5,
            queue_depth: 0,
            rssi_dbm: -60,
        });
        assert_eq!(check(&h, NOW)?, Ok(()));
        Ok(())
    }
}
