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
//!
//! A day's minutes leave memory one by one once idle and in the tables
//! (`ShardCore::passivate_idle`), while the day stays active: a till that
//! sells all day holds its last minute or two, not the whole day (at ~150
//! bytes a minute, 10,000 tills would hold 2 GB by closing time). The day
//! remembers, per terminal, which minutes left ([`RollupDay::evicted`], as
//! a range that may hold more); a sale in one of them needs the day
//! loaded again, which brings back just the minutes not in memory and
//! never overwrites one that is, so no minute is ever started again from
//! zero.

use tillstream_protocol::{ArchivedRefund, ArchivedSale, ArchivedSaleLine, ArchivedTender};
use tillstream_storage::time::{day, minute_of_day};
use tillstream_storage::{EventKey, SaleKind, SaleRow, TerminalRollupRow};

use std::collections::HashMap;

use super::LastChange;
use super::hash::Keyed;

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

/// A rollup row, when it last changed, and whether it changed in the
/// current `apply` call.
#[derive(Debug, Clone, Copy)]
pub(super) struct RollupSlot {
    pub(super) row: TerminalRollupRow,
    pub(super) changed: LastChange,
    pub(super) dirty: bool,
}

impl RollupSlot {
    /// A minute nobody sold in yet.
    pub(super) fn new((store, day, terminal, minute): RollupKey) -> Self {
        Self::loaded(TerminalRollupRow {
            store,
            day,
            terminal,
            minute,
            ..TerminalRollupRow::default()
        })
    }

    /// A minute as the tables hold it.
    pub(super) fn loaded(row: TerminalRollupRow) -> Self {
        Self {
            row,
            changed: LastChange::LOADED,
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

/// The minutes of one day whose slots left memory, as the range from the
/// first to the last: a superset, so a sale in a minute inside it that
/// never had a slot loads the day for nothing, which only a late sale can
/// cause (a till's minutes leave in the order it sold in them). Four
/// bytes, where a bitmap of the day's minutes is 180.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MinutesLeft {
    first: u16,
    last: u16,
}

impl MinutesLeft {
    fn contains(self, minute: u16) -> bool {
        (self.first..=self.last).contains(&minute)
    }
}

/// An active rollup day of one store (module docs).
#[derive(Debug, Clone)]
pub(super) struct RollupDay {
    /// When any of its minutes last changed.
    pub(super) last: LastChange,
    /// Per terminal, the minutes whose slot left memory while the day
    /// stayed active: empty (no allocation) until one does, and again
    /// once the day is loaded again. Per terminal, not per day, so a till
    /// selling for the first time in a minute another till's slot left
    /// does not load the day.
    pub(super) evicted: HashMap<u32, MinutesLeft, Keyed>,
}

impl RollupDay {
    /// Loaded from the tables (or started empty) and not changed since.
    pub(super) fn loaded() -> Self {
        Self {
            last: LastChange::LOADED,
            evicted: HashMap::default(),
        }
    }

    /// Whether the slot of `terminal`'s `minute` left memory (so may be in
    /// the tables but not in memory).
    pub(super) fn left(&self, terminal: u32, minute: u16) -> bool {
        self.evicted
            .get(&terminal)
            .is_some_and(|m| m.contains(minute))
    }

    /// Records that the slot of `terminal`'s `minute` leaves memory.
    pub(super) fn record_left(&mut self, terminal: u32, minute: u16) {
        self.evicted
            .entry(terminal)
            .and_modify(|m| {
                m.first = m.first.min(minute);
                m.last = m.last.max(minute);
            })
            .or_insert(MinutesLeft {
                first: minute,
                last: minute,
            });
    }
}
