//! The terminal entity: sale rows and per-minute rollups of one till.
//!
//! A terminal lives on `shard_of_terminal(store, terminal)`, whichever
//! device reports it, so only that shard ever writes its rollups. The rollups of a terminal are
//! kept per `(store, day, terminal, minute)` as absolute values: a row is
//! rewritten whole whenever its minute changes, so a replay or a reload
//! never double counts.
//!
//! Invariant: every rollup row equals the sums over the sale rows of its
//! key that this shard emitted, plus what it was loaded with.

use tillstream_protocol::{ArchivedRefund, ArchivedSale, ArchivedSaleLine, ArchivedTender};
use tillstream_storage::time::{day, minute_of_day};
use tillstream_storage::{EventKey, SaleKind, SaleRow, TerminalRollupRow};

/// The fields sales and refunds share, read in place.
#[derive(Debug, Clone, Copy)]
pub(super) struct SaleView<'a> {
    pub(super) kind: SaleKind,
    pub(super) ts: i64,
    pub(super) store: u32,
    pub(super) terminal: u32,
    pub(super) operator: u32,
    pub(super) txn: [u8; 16],
    pub(super) currency: [u8; 3],
    pub(super) lines: &'a [ArchivedSaleLine],
    pub(super) tenders: &'a [ArchivedTender],
    pub(super) customer: Option<u64>,
}

impl<'a> SaleView<'a> {
    pub(super) fn sale(s: &'a ArchivedSale) -> Self {
        Self {
            kind: SaleKind::Sale,
            ts: s.ts_us.to_native(),
            store: s.store.to_native(),
            terminal: s.terminal.to_native(),
            operator: s.operator.to_native(),
            txn: s.txn,
            currency: s.currency,
            lines: &s.lines,
            tenders: &s.tenders,
            customer: s.customer.as_ref().map(|c| c.to_native()),
        }
    }

    pub(super) fn refund(r: &'a ArchivedRefund) -> Self {
        Self {
            kind: SaleKind::Refund,
            ts: r.ts_us.to_native(),
            store: r.store.to_native(),
            terminal: r.terminal.to_native(),
            operator: r.operator.to_native(),
            txn: r.txn,
            currency: r.currency,
            lines: &r.lines,
            tenders: &r.tenders,
            customer: None,
        }
    }

    /// The `sales` row.
    pub(super) fn row(&self, key: EventKey) -> SaleRow {
        let (mut items, mut gross, mut discount, mut tax) = (0i64, 0i64, 0i64, 0i64);
        for l in self.lines {
            items = items.saturating_add(i64::from(l.quantity.to_native()));
            gross = gross.saturating_add(l.amount());
            discount = discount.saturating_add(l.discount.to_native());
            tax = tax.saturating_add(l.tax.to_native());
        }
        let (mut tendered, mut tip, mut methods) = (0i64, 0i64, 0u8);
        for t in self.tenders {
            tendered = tendered.saturating_add(t.amount.to_native());
            tip = tip.saturating_add(t.tip.to_native());
            methods |= t.method.bit();
        }
        SaleRow {
            store: self.store,
            ts_us: self.ts,
            key,
            kind: self.kind,
            terminal: self.terminal,
            operator: self.operator,
            txn: self.txn,
            currency: self.currency,
            lines: u16::try_from(self.lines.len()).unwrap_or(u16::MAX),
            items,
            gross,
            discount,
            tax,
            tendered,
            tip,
            tenders: u8::try_from(self.tenders.len()).unwrap_or(u8::MAX),
            tender_methods: methods,
            customer: self.customer,
        }
    }
}

/// The key of one rollup row.
pub(super) type RollupKey = (u32, u32, u32, u16);

/// The rollup key of a sale.
pub(super) fn rollup_key(v: &SaleView<'_>) -> RollupKey {
    (v.store, day(v.ts), v.terminal, minute_of_day(v.ts))
}

/// A rollup row and whether it changed in the current `apply` call.
#[derive(Debug, Clone, Copy)]
pub(super) struct RollupSlot {
    pub(super) row: TerminalRollupRow,
    pub(super) dirty: bool,
}

impl RollupSlot {
    pub(super) fn new((store, day, terminal, minute): RollupKey) -> Self {
        Self {
            row: TerminalRollupRow {
                store,
                day,
                terminal,
                minute,
                ..TerminalRollupRow::default()
            },
            dirty: false,
        }
    }

    /// Counts one sale row in.
    pub(super) fn add(&mut self, s: &SaleRow) {
        let r = &mut self.row;
        match s.kind {
            SaleKind::Sale => {
                r.sales = r.sales.saturating_add(1);
                r.gross = r.gross.saturating_add(s.gross);
                r.tax = r.tax.saturating_add(s.tax);
            }
            SaleKind::Refund => {
                r.refunds = r.refunds.saturating_add(1);
                r.refunded = r.refunded.saturating_add(s.gross);
            }
        }
    }
}
