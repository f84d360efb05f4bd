//! What a till emits: sales, refunds, health pings.

use rand::Rng;
use rand::rngs::StdRng;
use tillstream_protocol::{DeviceHealth, Event, Refund, Sale, SaleLine, Tender, TenderMethod};

use super::catalogue::{Catalogue, Shelves};
use super::{DeviceSpec, DeviceState, weighted};

/// The chain's currency.
pub const CURRENCY: [u8; 3] = *b"GBP";

/// Basket sizes 1..=8 lines, by weight.
const BASKET: [u32; 8] = [30, 22, 15, 11, 8, 6, 4, 4];
/// Quantities of a line, by weight.
const QUANTITY: [(i32, u32); 6] = [(1, 78), (2, 14), (3, 4), (4, 2), (6, 1), (12, 1)];
/// Payment methods of a single-tender sale, by weight.
const METHOD: [(TenderMethod, u32); 6] = [
    (TenderMethod::Contactless, 52),
    (TenderMethod::Card, 25),
    (TenderMethod::Cash, 15),
    (TenderMethod::Mobile, 6),
    (TenderMethod::GiftCard, 1),
    (TenderMethod::Voucher, 1),
];
/// Share of lines with a discount.
const DISCOUNT_SHARE: f64 = 0.07;
/// Share of sales paid with two tenders.
const SPLIT_SHARE: f64 = 0.04;
/// Share of sales with a tip.
const TIP_SHARE: f64 = 0.005;
/// Share of sales to a known loyalty customer.
const LOYALTY_SHARE: f64 = 0.35;
/// Loyalty customers of the chain.
const CUSTOMERS: u64 = 200_000;
/// Share of refunds that name the sale they refund.
const KNOWN_ORIGINAL_SHARE: f64 = 0.6;
/// Sales a till remembers for later refunds.
pub(super) const RECENT_TXNS: usize = 8;

/// A random transaction id shaped like a UUIDv4.
fn txn_id(rng: &mut StdRng) -> [u8; 16] {
    let mut id: [u8; 16] = rng.random();
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

fn line(rng: &mut StdRng, catalogue: &Catalogue, shelves: &mut Shelves, qty: i32) -> SaleLine {
    let i = shelves.pick(rng);
    let p = catalogue.get(i);
    let gross = i64::from(qty) * p.price;
    let discount = if qty >= 3 && rng.random_bool(0.5) {
        // Three for the price of two.
        p.price * i64::from(qty / 3)
    } else if rng.random_bool(DISCOUNT_SHARE) {
        let pct = [10, 20, 25, 33, 50][rng.random_range(0..5)];
        gross * pct / 100
    } else {
        0
    };
    SaleLine {
        sku: p.sku,
        quantity: qty,
        unit_price: p.price,
        discount,
        tax: p.tax_on(gross - discount),
    }
}

/// Total to pay for `lines`: amounts plus tax.
fn total(lines: &[SaleLine]) -> i64 {
    lines.iter().map(|l| l.amount() + l.tax).sum()
}

fn tenders(rng: &mut StdRng, total: i64) -> Vec<Tender> {
    let method = METHOD[weighted(rng, &METHOD.map(|(_, w)| w))].0;
    if total > 200 && rng.random_bool(SPLIT_SHARE) {
        // A gift card, voucher or some cash first, the rest on a card.
        let first = [
            TenderMethod::GiftCard,
            TenderMethod::Voucher,
            TenderMethod::Cash,
        ][rng.random_range(0..3)];
        let part = total * rng.random_range(10..60) / 100;
        let rest = if method == first {
            TenderMethod::Card
        } else {
            method
        };
        return vec![
            Tender {
                method: first,
                amount: part,
                tip: 0,
            },
            Tender {
                method: rest,
                amount: total - part,
                tip: 0,
            },
        ];
    }
    let tip = if matches!(method, TenderMethod::Card | TenderMethod::Contactless)
        && rng.random_bool(TIP_SHARE)
    {
        total * rng.random_range(5..16) / 100
    } else {
        0
    };
    vec![Tender {
        method,
        amount: total,
        tip,
    }]
}

/// A sale of 1–8 lines; the goods leave the simulated shelves.
pub(super) fn sale(
    rng: &mut StdRng,
    catalogue: &Catalogue,
    shelves: &mut Shelves,
    dev: &DeviceSpec,
    st: &mut DeviceState,
    ts_us: i64,
) -> Event {
    let n = weighted(rng, &BASKET) + 1;
    let lines: Vec<SaleLine> = (0..n)
        .map(|_| {
            let qty = QUANTITY[weighted(rng, &QUANTITY.map(|(_, w)| w))].0;
            line(rng, catalogue, shelves, qty)
        })
        .collect();
    for l in &lines {
        shelves.adjust(index_of(l.sku), -i64::from(l.quantity));
    }
    let txn = txn_id(rng);
    if st.recent_txns.len() == RECENT_TXNS {
        st.recent_txns.pop_front();
    }
    st.recent_txns.push_back(txn);
    let total = total(&lines);
    Event::Sale(Sale {
        ts_us,
        store: dev.store,
        terminal: dev.index,
        operator: st.operator,
        txn,
        currency: CURRENCY,
        tenders: tenders(rng, total),
        lines,
        customer: rng
            .random_bool(LOYALTY_SHARE)
            .then(|| rng.random_range(1..=CUSTOMERS)),
    })
}

/// A refund of 1–2 items; the goods go back to the simulated shelves.
pub(super) fn refund(
    rng: &mut StdRng,
    catalogue: &Catalogue,
    shelves: &mut Shelves,
    dev: &DeviceSpec,
    st: &mut DeviceState,
    ts_us: i64,
) -> Event {
    let n = rng.random_range(1..=2);
    let lines: Vec<SaleLine> = (0..n)
        .map(|_| {
            let mut l = line(rng, catalogue, shelves, 1);
            l.discount = 0;
            l.tax = catalogue.get(index_of(l.sku)).tax_on(l.unit_price);
            l
        })
        .collect();
    for l in &lines {
        shelves.adjust(index_of(l.sku), i64::from(l.quantity));
    }
    let original_txn = if !st.recent_txns.is_empty() && rng.random_bool(KNOWN_ORIGINAL_SHARE) {
        st.recent_txns
            .get(rng.random_range(0..st.recent_txns.len()))
            .copied()
    } else {
        None
    };
    let total = total(&lines);
    let method = if rng.random_bool(0.7) {
        TenderMethod::Card
    } else {
        TenderMethod::Cash
    };
    Event::Refund(Refund {
        ts_us,
        store: dev.store,
        terminal: dev.index,
        operator: st.operator,
        txn: txn_id(rng),
        original_txn,
        currency: CURRENCY,
        lines,
        tenders: vec![Tender {
            method,
            amount: total,
            tip: 0,
        }],
    })
}

/// A till's health ping: mains powered, warm, wired or strong Wi-Fi.
pub(super) fn health(rng: &mut StdRng, dev: &DeviceSpec, st: &DeviceState, ts_us: i64) -> Event {
    Event::Health(DeviceHealth {
        ts_us,
        store: dev.store,
        battery_pct: 255,
        temperature_dc: rng.random_range(350..450),
        uptime_s: st.uptime_s(ts_us),
        queue_depth: 0,
        rssi_dbm: st.rssi_dbm + rng.random_range(-3..=3),
    })
}

/// Catalogue index of a SKU id.
pub(super) fn index_of(sku: u64) -> usize {
    usize::try_from(sku.saturating_sub(super::catalogue::SKU_BASE)).unwrap_or(0)
}
