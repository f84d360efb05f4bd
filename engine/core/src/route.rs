//! Routing: which shard applies which part of which event.
//!
//! A terminal lives on `shard_of_terminal(store, terminal)`, a SKU on
//! `shard_of_sku(store, sku)`. A sale or refund touches its terminal's shard
//! (the sale row and the rollups) and the shard of each of its lines' SKUs
//! (the line rows and the stock movements). What belongs to the device
//! rather than to a till (health pings, refused events) goes to
//! `shard_of_device(device)`.
//!
//! Terminals are routed by what their rollups are keyed by, not by the
//! device that reports them: a till replaced by a new device (or two
//! devices reporting for one till) must still have one writer per rollup
//! row, or the shards' absolute rows overwrite each other.
//!
//! Invariants:
//! - the hashes are fixed and seedless: the same inputs give the same shard
//!   in every process and every version of this crate (a golden test pins
//!   them). Changing them between restarts would still be safe, since
//!   nothing lives only in memory, but it would make every entity activate
//!   again;
//! - [`plan_batch`] puts each event on each shard at most once per role,
//!   with its items in event order; each valid sale or refund yields one
//!   `Terminal` item and one `Lines` item per distinct shard of its lines,
//!   a movement or count one `Stock` item, a health ping one `Health` item,
//!   and a refused event one `Rejected` item (on the device's shard) plus
//!   one entry in `plan.rejected`;
//! - no allocation per event once the plan's vectors have grown: reuse the
//!   plan across batches.

use tillstream_protocol::{
    ArchivedBatch, ArchivedEvent, ArchivedSaleLine, RejectCode, RejectedRef,
};

use crate::validate::{Rules, check_event};

/// The splitmix64 finalizer: a fixed bijection with full avalanche.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Maps a well-mixed hash to `0..shards` without modulo bias (Lemire's
/// multiply-shift). `shards == 0` is treated as one shard.
fn reduce(h: u64, shards: u16) -> u16 {
    let n = u128::from(shards.max(1));
    u16::try_from((u128::from(h) * n) >> 64).unwrap_or(0)
}

/// The shard of a device's terminal entity, in `0..shards` (0 when
/// `shards` is 0).
pub fn shard_of_device(device: u64, shards: u16) -> u16 {
    reduce(mix64(device ^ 0x5DEE_CE66_D1CE_4E5B), shards)
}

/// The shard of a terminal entity (its sale rows and rollups), in
/// `0..shards` (0 when `shards` is 0).
pub fn shard_of_terminal(store: u32, terminal: u32, shards: u16) -> u16 {
    if shards <= 1 {
        return 0;
    }
    let h = (u64::from(store) << 32) | u64::from(terminal);
    reduce(mix64(h ^ 0x7E4A_1C0D_2B3F_9A65), shards)
}

/// The shard of a SKU entity, in `0..shards` (0 when `shards` is 0).
pub fn shard_of_sku(store: u32, sku: u64, shards: u16) -> u16 {
    // One shard (the default on two cores) needs no hash: the routing
    // asks this of every line, and the shard's apply again.
    if shards <= 1 {
        return 0;
    }
    let h = mix64(sku.wrapping_add(0x9E37_79B9_7F4A_7C15)) ^ u64::from(store);
    reduce(mix64(h), shards)
}

/// What a shard does with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The sale or refund row and the terminal's rollups (the terminal's
    /// shard).
    Terminal,
    /// The lines of a sale or refund whose SKU lives on this shard: line
    /// rows and stock movements.
    Lines,
    /// A stock movement or shelf count (the SKU's shard).
    Stock,
    /// A device health ping (device's shard).
    Health,
    /// An event refused on semantic grounds (device's shard): store it in
    /// `rejected_events`.
    Rejected(RejectCode),
}

/// One event of a batch for one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkItem {
    /// Index of the event in the batch.
    pub idx: u32,
    /// What the shard does with it.
    pub role: Role,
}

/// A batch split into per-shard work. Reuse one per session: `clear`
/// keeps the capacity.
#[derive(Debug)]
pub struct BatchPlan {
    /// Work items per shard (index = shard id), in event order.
    pub parts: Vec<Vec<WorkItem>>,
    /// Events the plan refused on semantic grounds (bad fields, another
    /// store). The shards may refuse more at apply time (a count older
    /// than its SKU's late window); the `Ack` reports both from the rows.
    pub rejected: Vec<RejectedRef>,
}

impl BatchPlan {
    /// An empty plan over `shards` shards (0 is treated as 1).
    pub fn new(shards: u16) -> Self {
        Self {
            parts: vec![Vec::new(); usize::from(shards.max(1))],
            rejected: Vec::new(),
        }
    }

    /// The number of shards the plan routes to.
    pub fn shards(&self) -> u16 {
        u16::try_from(self.parts.len()).unwrap_or(u16::MAX)
    }

    /// Empties every part, keeping capacity.
    pub fn clear(&mut self) {
        for p in &mut self.parts {
            p.clear();
        }
        self.rejected.clear();
    }

    /// The shards with work, and their items.
    pub fn touched(&self) -> impl Iterator<Item = (u16, &[WorkItem])> {
        self.parts
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.is_empty())
            .map(|(s, p)| (u16::try_from(s).unwrap_or(u16::MAX), p.as_slice()))
    }

    /// Events over all parts and roles (an event touching three shards
    /// counts three times).
    pub fn items(&self) -> usize {
        self.parts.iter().map(Vec::len).sum()
    }
}

/// Splits `batch` of `device` into per-shard work items (see the module
/// docs), after checking each event against `rules`. Clears `plan` first.
pub fn plan_batch(
    batch: &ArchivedBatch,
    device: u64,
    rules: &Rules,
    now_us: i64,
    plan: &mut BatchPlan,
) {
    plan_batch_scoped(batch, device, &Scope::default(), rules, now_us, plan);
}

/// What a device's credential lets it send: events of one store, of some
/// kinds. The default allows everything (authentication off, or a journal
/// record written before scopes were journaled).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Scope {
    /// The only store the device may name; `None`: any.
    pub store: Option<u32>,
    /// The kinds of event it may send.
    pub kinds: Kinds,
}

/// Which kinds of event a device may send.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Kinds {
    /// Every kind.
    #[default]
    All,
    /// A till: sales, refunds and health.
    Sales,
    /// A shelf sensor: shelf counts, stock movements and health.
    Stock,
}

impl Kinds {
    /// Whether an event of this kind is allowed.
    pub fn allow(self, e: &ArchivedEvent) -> bool {
        matches!(
            (self, e),
            (Kinds::All, _)
                | (_, ArchivedEvent::Health(_))
                | (
                    Kinds::Sales,
                    ArchivedEvent::Sale(_) | ArchivedEvent::Refund(_)
                )
                | (
                    Kinds::Stock,
                    ArchivedEvent::Count(_) | ArchivedEvent::Movement(_)
                )
        )
    }
}

impl Scope {
    /// Why `e` is outside the scope, if it is: another store
    /// ([`RejectCode::WrongStore`]) or a kind the role may not send
    /// ([`RejectCode::NotPermitted`]).
    pub fn check(&self, e: &ArchivedEvent) -> Result<(), RejectCode> {
        match self.store {
            Some(s) if event_store(e) != s => Err(RejectCode::WrongStore),
            _ if !self.kinds.allow(e) => Err(RejectCode::NotPermitted),
            _ => Ok(()),
        }
    }
}

/// [`plan_batch`] for a device bound to a [`Scope`]: an event outside it
/// is refused with its code (and kept in `rejected_events`), before any
/// other check.
pub fn plan_batch_scoped(
    batch: &ArchivedBatch,
    device: u64,
    scope: &Scope,
    rules: &Rules,
    now_us: i64,
    plan: &mut BatchPlan,
) {
    plan.clear();
    let shards = plan.shards();
    let seq = batch.seq.to_native();
    let dev_shard = usize::from(shard_of_device(device, shards));
    for (i, e) in batch.events.iter().enumerate() {
        let idx = u32::try_from(i).unwrap_or(u32::MAX);
        let verdict = scope.check(e).and_then(|()| check_event(e, rules, now_us));
        if let Err(code) = verdict {
            push(plan, dev_shard, idx, Role::Rejected(code));
            plan.rejected.push(RejectedRef {
                seq,
                idx,
                code: code.as_u16(),
            });
            continue;
        }
        match e {
            ArchivedEvent::Sale(s) => {
                let store = s.store.to_native();
                let t = shard_of_terminal(store, s.terminal.to_native(), shards);
                push(plan, usize::from(t), idx, Role::Terminal);
                for l in s.lines.iter() {
                    push_lines(plan, store, l.sku.to_native(), shards, idx);
                }
            }
            ArchivedEvent::Refund(r) => {
                let store = r.store.to_native();
                let t = shard_of_terminal(store, r.terminal.to_native(), shards);
                push(plan, usize::from(t), idx, Role::Terminal);
                for l in r.lines.iter() {
                    push_lines(plan, store, l.sku.to_native(), shards, idx);
                }
            }
            ArchivedEvent::Movement(m) => {
                let s = shard_of_sku(m.store.to_native(), m.sku.to_native(), shards);
                push(plan, usize::from(s), idx, Role::Stock);
            }
            ArchivedEvent::Count(c) => {
                let s = shard_of_sku(c.store.to_native(), c.sku.to_native(), shards);
                push(plan, usize::from(s), idx, Role::Stock);
            }
            ArchivedEvent::Health(_) => push(plan, dev_shard, idx, Role::Health),
        }
    }
}

/// The store an event names.
pub fn event_store(e: &ArchivedEvent) -> u32 {
    match e {
        ArchivedEvent::Sale(s) => s.store.to_native(),
        ArchivedEvent::Refund(r) => r.store.to_native(),
        ArchivedEvent::Movement(m) => m.store.to_native(),
        ArchivedEvent::Count(c) => c.store.to_native(),
        ArchivedEvent::Health(h) => h.store.to_native(),
    }
}

/// The (store, SKU) pairs an event names: a sale's or refund's lines, a
/// movement's or count's SKU, none for a health ping.
pub fn event_skus(e: &ArchivedEvent) -> impl Iterator<Item = (u32, u64)> + '_ {
    let store = event_store(e);
    let (lines, single): (&[ArchivedSaleLine], Option<u64>) = match e {
        ArchivedEvent::Sale(s) => (&s.lines, None),
        ArchivedEvent::Refund(r) => (&r.lines, None),
        ArchivedEvent::Movement(m) => (&[], Some(m.sku.to_native())),
        ArchivedEvent::Count(c) => (&[], Some(c.sku.to_native())),
        ArchivedEvent::Health(_) => (&[], None),
    };
    lines
        .iter()
        .map(move |l| (store, l.sku.to_native()))
        .chain(single.map(move |sku| (store, sku)))
}

fn push(plan: &mut BatchPlan, shard: usize, idx: u32, role: Role) {
    if let Some(p) = plan.parts.get_mut(shard) {
        p.push(WorkItem { idx, role });
    }
}

/// Adds a `Lines` item for event `idx` on the SKU's shard unless that
/// shard already has one: an event's items on one shard are contiguous, so
/// looking at the last item is enough.
fn push_lines(plan: &mut BatchPlan, store: u32, sku: u64, shards: u16, idx: u32) {
    let item = WorkItem {
        idx,
        role: Role::Lines,
    };
    let shard = usize::from(shard_of_sku(store, sku, shards));
    if let Some(p) = plan
        .parts
        .get_mut(shard)
        .filter(|p| p.last() != Some(&item))
    {
        p.push(item);
    }
}

#[cfg(test)]
mod tests;
