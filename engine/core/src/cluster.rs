//! Which node serves which store when several tillstream nodes share one
//! cluster (ARCHITECTURE.md, "Several nodes"): plain functions over what
//! the members, owners and lease tables say, so each rule is tested
//! without a cluster.
//!
//! - **Who should own a store**: rendezvous hashing over the live members
//!   ([`rendezvous`]). A member joining or leaving moves only the stores
//!   it wins or held (about 1/n of them), and every node computes the same
//!   answer from the same member list, with no coordinator.
//! - **Who replays a dead node's journal**: the live member that wins the
//!   dead node's id by the same hashing ([`adopter`]), so one node
//!   tries, and the journal's own lease (a lightweight transaction)
//!   refuses a second should two views differ.
//! - **When a store may be taken** ([`may_take`]): its row names no one,
//!   or this node, or a node that is gone *and* whose journal is all in
//!   the tables. Never before: the records that node acknowledged for the
//!   store must be in the tables before anyone applies the store's next
//!   batch.
//! - **What a node's periodic look at the rows changes** ([`reconcile`]):
//!   it takes the stores rendezvous gives it before their devices ask,
//!   and gives back the rows that name it for stores it does not serve.

/// The splitmix64 finalizer (as `route`): a fixed bijection, so every
/// node and every version computes the same weights.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a of a node id: fixed, unlike `std`'s keyed hashers.
fn node_hash(node: &str) -> u64 {
    node.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The weight of `node` for `key`: the highest wins.
fn weight(key: u64, node: &str) -> u64 {
    mix64(node_hash(node) ^ mix64(key))
}

/// The index in `nodes` of the node that should own `store`: the one of
/// highest weight (ties, which need equal ids, go to the first). `None`
/// when `nodes` is empty.
pub fn rendezvous(store: u32, nodes: &[&str]) -> Option<usize> {
    best(u64::from(store), nodes)
}

/// The index in `live` of the node that replays the journal of `dead`.
/// Salted apart from [`rendezvous`], so one death does not land all its
/// journal work on the node that also wins most of its stores.
pub fn adopter(dead: &str, live: &[&str]) -> Option<usize> {
    best(node_hash(dead) ^ 0x6a09_e667_f3bc_c908, live)
}

fn best(key: u64, nodes: &[&str]) -> Option<usize> {
    nodes
        .iter()
        .enumerate()
        .max_by(|(ia, a), (ib, b)| {
            weight(key, a)
                .cmp(&weight(key, b))
                // Equal weights: the lower index wins.
                .then(ib.cmp(ia))
        })
        .map(|(i, _)| i)
}

/// A member row as read, with its node lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberLiveness {
    /// When it last renewed its row (µs, its clock).
    pub renewed_at_us: i64,
    /// When its node lease was last written: every journal append and an
    /// idle heartbeat renew it, so a node busy enough to be late with its
    /// member row is still seen alive by its journal.
    pub lease_renewed_at_us: i64,
    /// It said it is leaving, or was found fenced: it takes no stores.
    pub leaving: bool,
    /// The generation its row names, and the generation of its node
    /// lease: a row older than the lease is a fenced process's.
    pub generation: u64,
    /// The generation of its node lease now.
    pub lease_generation: u64,
}

impl MemberLiveness {
    /// Whether the member may be given stores: seen (its row or its
    /// lease renewed) within `lease_us` of `now_us`, not leaving, and
    /// still the holder of its node id.
    pub fn live(&self, now_us: i64, lease_us: i64) -> bool {
        !self.leaving && !self.gone(now_us, lease_us)
    }

    /// Whether the member is gone: neither its row nor its lease renewed
    /// within `lease_us`, or fenced. A leaving member that still renews
    /// is not gone: it is handing its stores over.
    pub fn gone(&self, now_us: i64, lease_us: i64) -> bool {
        let seen = self.renewed_at_us.max(self.lease_renewed_at_us);
        self.generation < self.lease_generation || now_us.saturating_sub(seen) >= lease_us
    }
}

/// A node's journal as its lease and checkpoint rows say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalState {
    /// The process holding the node id; empty once given back.
    pub holder: String,
    /// The last LSN an ack may have covered.
    pub journal_high: u64,
    /// Every record up to here is in the tables.
    pub checkpoint: u64,
}

impl JournalState {
    /// Whether everything the node acknowledged is in the tables and no
    /// process holds its id to add more.
    pub fn drained(&self) -> bool {
        self.holder.is_empty() && self.checkpoint >= self.journal_high
    }
}

/// A store's ownership row as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRow {
    /// Raised by each take: the fencing token of the store.
    pub epoch: u64,
    /// The node holding it; empty once released.
    pub owner: String,
}

/// What a node may do about a store it should own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Take {
    /// Take it: raise the epoch from this one (`None`: no row yet).
    From(Option<u64>),
    /// Not yet: the holder may still have records of the store that are
    /// not in the tables. The sentence says which.
    Wait(String),
}

/// Whether node `me` may take a store whose row is `row` (module docs).
/// `holder_gone`: the row's owner is gone by the members table;
/// `holder_journal`: its journal's state.
pub fn may_take(
    me: &str,
    row: Option<&OwnerRow>,
    holder_gone: bool,
    holder_journal: Option<&JournalState>,
) -> Take {
    let Some(row) = row else {
        return Take::From(None);
    };
    // Released by a hand-off (which waited for the tables), or ours: a
    // restarted node replayed its own journal before it served anyone.
    if row.owner.is_empty() || row.owner == me {
        return Take::From(Some(row.epoch));
    }
    if !holder_gone {
        return Take::Wait(format!(
            "node {} still serves this store and is handing it over",
            row.owner
        ));
    }
    match holder_journal {
        Some(j) if j.drained() => Take::From(Some(row.epoch)),
        Some(j) => Take::Wait(format!(
            "node {} is gone; its journal is being replayed (tables at {}, acknowledged up to {})",
            row.owner, j.checkpoint, j.journal_high
        )),
        // A node that never took its id wrote nothing.
        None => Take::From(Some(row.epoch)),
    }
}

/// What a node does, at its periodic look at every store's row, about a
/// store whose row it read and that it does not hold in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconcile {
    /// Take it now (through [`may_take`]), before its devices' next
    /// `Hello` asks: rendezvous picks this node, and the row names no
    /// one, this node, or a node gone.
    Take,
    /// Give it back: the row names this node, which does not serve it
    /// (a start after a crash, a leave whose hand-off timed out, a take
    /// whose answer was lost), and another node should. Safe because this
    /// process replayed its own journal before it served anyone. Left
    /// alone, the other node would send the store's devices here, and
    /// this node would send them back.
    Release,
    /// Nothing to do.
    Keep,
}

/// The [`Reconcile`] for `row`, given the live member rendezvous picks
/// for the store (`target`) and whether the row's owner is gone.
pub fn reconcile(me: &str, row: &OwnerRow, target: Option<&str>, owner_gone: bool) -> Reconcile {
    let mine = target == Some(me);
    if row.owner == me {
        return if mine {
            Reconcile::Take
        } else {
            Reconcile::Release
        };
    }
    if mine && (row.owner.is_empty() || owner_gone) {
        Reconcile::Take
    } else {
        Reconcile::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_naming_this_node_is_taken_back_or_given_back() {
        let row = |owner: &str| OwnerRow {
            epoch: 4,
            owner: owner.into(),
        };
        // Ours and ours by rendezvous: serve it (a take raises the epoch).
        assert_eq!(reconcile("a", &row("a"), Some("a"), false), Reconcile::Take);
        // Ours by the row only: the node that should serve it cannot
        // take it while the row names a live node. Give it back.
        assert_eq!(
            reconcile("a", &row("a"), Some("b"), false),
            Reconcile::Release
        );
        assert_eq!(reconcile("a", &row("a"), None, false), Reconcile::Release);
        // Released, or its holder gone: the node rendezvous picks takes it.
        assert_eq!(reconcile("a", &row(""), Some("a"), false), Reconcile::Take);
        assert_eq!(reconcile("a", &row("b"), Some("a"), true), Reconcile::Take);
        // Another live node holds it (and is handing it over), or another
        // node should take it: nothing to do here.
        assert_eq!(reconcile("a", &row("b"), Some("a"), false), Reconcile::Keep);
        assert_eq!(reconcile("a", &row(""), Some("b"), false), Reconcile::Keep);
        assert_eq!(reconcile("a", &row("c"), Some("b"), true), Reconcile::Keep);
    }

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    fn refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    #[test]
    fn rendezvous_spreads_stores_and_moves_only_a_leavers_share() {
        let three = nodes(3);
        let mut count = [0usize; 3];
        let owners: Vec<usize> = (0..3000)
            .map(|s| rendezvous(s, &refs(&three)).unwrap_or(usize::MAX))
            .collect();
        for &o in &owners {
            count[o] += 1;
        }
        for c in count {
            assert!((800..1200).contains(&c), "uneven spread {count:?}");
        }
        // node-1 leaves: only its stores move.
        let two = vec![three[0].clone(), three[2].clone()];
        for (s, &before) in owners.iter().enumerate() {
            let after = rendezvous(s as u32, &refs(&two)).unwrap_or(usize::MAX);
            let after = if after == 0 { 0 } else { 2 };
            if before != 1 {
                assert_eq!(after, before, "store {s} moved though its owner stayed");
            }
        }
        // A fourth joins: it takes about a quarter, and only takes.
        let four = nodes(4);
        let mut taken = 0;
        for (s, &before) in owners.iter().enumerate() {
            let after = rendezvous(s as u32, &refs(&four)).unwrap_or(usize::MAX);
            if after == 3 {
                taken += 1;
            } else {
                assert_eq!(after, before, "store {s} moved between old members");
            }
        }
        assert!((600..900).contains(&taken), "the joiner took {taken}");
        assert_eq!(rendezvous(1, &[]), None);
    }

    #[test]
    fn the_order_of_the_member_list_does_not_change_the_owner() {
        let a = nodes(5);
        let mut b = a.clone();
        b.reverse();
        for s in 0..500 {
            let x = rendezvous(s, &refs(&a)).map(|i| &a[i]);
            let y = rendezvous(s, &refs(&b)).map(|i| &b[i]);
            assert_eq!(x, y);
        }
        let x = adopter("node-9", &refs(&a)).map(|i| &a[i]);
        let y = adopter("node-9", &refs(&b)).map(|i| &b[i]);
        assert_eq!(x, y);
    }

    #[test]
    fn a_member_is_live_while_it_renews_and_holds_its_id() {
        let m = MemberLiveness {
            renewed_at_us: 1_000_000,
            lease_renewed_at_us: 0,
            leaving: false,
            generation: 4,
            lease_generation: 4,
        };
        assert!(m.live(6_999_999, 6_000_000));
        assert!(!m.gone(6_999_999, 6_000_000));
        assert!(!m.live(7_000_000, 6_000_000));
        assert!(m.gone(7_000_000, 6_000_000));
        // Fenced: another process took its node id.
        let fenced = MemberLiveness {
            lease_generation: 5,
            ..m
        };
        assert!(!fenced.live(1_000_001, 6_000_000));
        assert!(fenced.gone(1_000_001, 6_000_000));
        // Leaving: takes nothing, but is not gone while it renews.
        let leaving = MemberLiveness { leaving: true, ..m };
        assert!(!leaving.live(1_000_001, 6_000_000));
        assert!(!leaving.gone(1_000_001, 6_000_000));
        // Late with its row but appending to its journal: alive.
        let busy = MemberLiveness {
            lease_renewed_at_us: 6_500_000,
            ..m
        };
        assert!(busy.live(7_000_000, 6_000_000));
        assert!(!busy.gone(7_000_000, 6_000_000));
        assert!(busy.gone(12_500_000, 6_000_000));
    }

    #[test]
    fn a_store_is_taken_only_once_its_holders_records_are_in_the_tables() {
        let row = |owner: &str| OwnerRow {
            epoch: 7,
            owner: owner.into(),
        };
        assert_eq!(may_take("b", None, false, None), Take::From(None));
        assert_eq!(
            may_take("b", Some(&row("")), false, None),
            Take::From(Some(7))
        );
        assert_eq!(
            may_take("b", Some(&row("b")), false, None),
            Take::From(Some(7))
        );
        // A live holder hands over; nobody takes from it.
        assert!(matches!(
            may_take("b", Some(&row("a")), false, None),
            Take::Wait(_)
        ));
        let busy = JournalState {
            holder: "a-process".into(),
            journal_high: 90,
            checkpoint: 90,
        };
        assert!(matches!(
            may_take("b", Some(&row("a")), true, Some(&busy)),
            Take::Wait(_)
        ));
        let behind = JournalState {
            holder: String::new(),
            journal_high: 90,
            checkpoint: 80,
        };
        assert!(matches!(
            may_take("b", Some(&row("a")), true, Some(&behind)),
            Take::Wait(_)
        ));
        let drained = JournalState {
            checkpoint: 90,
            ..behind
        };
        assert_eq!(
            may_take("b", Some(&row("a")), true, Some(&drained)),
            Take::From(Some(7))
        );
    }
}
