//! Dedupe and watermarks of one device.
//!
//! A device numbers its batches from 1 and resends the unacknowledged ones
//! after a reconnect, with the same seq and the same events. The ledger
//! tells a fresh batch from a resend, and when a resend may be acked.
//!
//! Invariants:
//! - `durable <= applied` always;
//! - [`DeviceLedger::admit`] returns [`Admission::Fresh`] for a seq at most
//!   once over the ledger's life (seqs admitted are strictly increasing);
//! - gaps are allowed (a device may drop a batch it could not encode); a
//!   seq below `applied` that was never seen is a `Duplicate` too, which is
//!   safe because a device sends its batches in order on one stream;
//! - after a restart the ledger starts from the store's watermark
//!   (`DeviceLedger::new(durable)`): anything above it was not durable and
//!   is applied again, anything at or below it is acked again.

use std::hash::BuildHasher;

use crate::digest_set::DigestSet;
use crate::shard::hash::Keyed;

/// The watermarks of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceLedger {
    /// Highest seq handed to the shards.
    applied: u64,
    /// Highest seq whose rows (and every earlier batch's) are durable.
    durable: u64,
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Never seen: route and apply it.
    Fresh,
    /// Already applied: never apply it again; ack it once
    /// [`DeviceLedger::durable`] reaches its seq.
    Duplicate,
    /// More than [`MAX_SEQ_JUMP`] above the highest seq admitted: refused
    /// and not recorded. Accepting it would make every later real batch of
    /// the device look like a duplicate (acked, never stored).
    TooFarAhead,
}

/// The largest gap a device may leave between two batch seqs.
pub const MAX_SEQ_JUMP: u64 = 1 << 20;

impl DeviceLedger {
    /// A ledger for a device whose batches up to `durable` are in the store.
    pub fn new(durable: u64) -> Self {
        Self {
            applied: durable,
            durable,
        }
    }

    /// Admits batch `seq`: `Fresh` iff it is above every seq admitted so
    /// far (and then records it), `TooFarAhead` if it leaps more than
    /// [`MAX_SEQ_JUMP`] past them, `Duplicate` otherwise.
    pub fn admit(&mut self, seq: u64) -> Admission {
        if seq > self.applied.saturating_add(MAX_SEQ_JUMP) {
            Admission::TooFarAhead
        } else if seq > self.applied {
            self.applied = seq;
            Admission::Fresh
        } else {
            Admission::Duplicate
        }
    }

    /// Records that every batch up to `seq` is durable. Never lowers the
    /// watermark; a seq above `applied` raises `applied` too, so it is
    /// never admitted as fresh afterwards.
    pub fn mark_durable(&mut self, seq: u64) {
        self.durable = self.durable.max(seq);
        self.applied = self.applied.max(self.durable);
    }

    /// Highest seq admitted.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Highest durable seq: what `Welcome` and `Ack` carry.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// Whether batch `seq` may be acked.
    pub fn is_durable(&self, seq: u64) -> bool {
        seq <= self.durable
    }

    /// True when every admitted batch is durable: nothing of this device
    /// is in flight, so its state may be dropped.
    pub fn is_quiescent(&self) -> bool {
        self.applied == self.durable
    }
}

/// Digests of a device's latest fresh batches, to tell a true resend
/// (same seq, same bytes) from another batch under a seq already used: a
/// device that lost its seq counter, or one that says Hello with another
/// device's id. The seq alone would ack the impostor and drop it.
///
/// Invariants: it holds at most [`RecentDigests::CAPACITY`] entries, the
/// latest by seq; a seq it does not hold is [`DigestCheck::Unknown`], never
/// a match (the caller then asks the store whether that seq was stored).
#[derive(Debug, Clone, Default)]
pub struct RecentDigests {
    entries: std::collections::VecDeque<(u64, u64)>,
}

/// What [`RecentDigests::check`] knows of a resent seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestCheck {
    /// The same bytes were admitted under this seq: a true resend.
    Same,
    /// Other bytes were admitted under this seq.
    Different,
    /// Not among the latest fresh batches.
    Unknown,
}

impl RecentDigests {
    /// Entries kept: above a device's window of unacknowledged batches
    /// (64), so every batch a reconnecting device may resend is here.
    pub const CAPACITY: usize = 128;

    /// Records fresh batch `seq` with `digest`.
    pub fn record(&mut self, seq: u64, digest: u64) {
        if self.entries.len() == Self::CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back((seq, digest));
    }

    /// Compares a resent `seq`'s `digest` with what was admitted.
    pub fn check(&self, seq: u64, digest: u64) -> DigestCheck {
        match self.entries.iter().rev().find(|e| e.0 == seq) {
            Some(&(_, d)) if d == digest => DigestCheck::Same,
            Some(_) => DigestCheck::Different,
            None => DigestCheck::Unknown,
        }
    }
}

/// The stores (or terminals) one device has sent for, up to a limit. A
/// till or a shelf sensor belongs to one store (a gateway to a few), a till
/// is one terminal; each new store costs the server an activation (a read
/// of its levels and late windows) and each new terminal its rollup rows,
/// so a device spraying ids must be stopped before its batch is applied.
///
/// Invariant: it never holds more than its limit; [`DistinctKeys::admit`]
/// adds a batch's keys all or none.
#[derive(Debug, Clone, Default)]
pub struct DistinctKeys {
    seen: Vec<u32>,
}

impl DistinctKeys {
    /// Keys recorded so far (a mark for [`DistinctKeys::forget_since`]).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no key is recorded.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Forgets the keys recorded after `mark` (a batch refused for another
    /// reason after its keys were admitted records nothing).
    pub fn forget_since(&mut self, mark: usize) {
        self.seen.truncate(mark);
    }

    /// Whether a batch naming `keys` may pass with at most `limit`
    /// distinct keys per device; if so, records them.
    pub fn admit(&mut self, keys: impl IntoIterator<Item = u32>, limit: usize) -> bool {
        let before = self.seen.len();
        for s in keys {
            if !self.seen.contains(&s) {
                if self.seen.len() >= limit {
                    self.seen.truncate(before);
                    return false;
                }
                self.seen.push(s);
            }
        }
        true
    }
}

/// The distinct (store, SKU) pairs one device named while the server holds
/// its slot: each new one is an entity a shard keeps, so a device naming
/// random SKUs must be stopped past a limit, as one spraying stores is.
/// Keyed hashing: the device chooses the keys.
///
/// A pair is kept as 32 bits of its keyed digest, not as itself: 4 bytes
/// instead of 16 in a set that holds every SKU a till ever sold (100 tills
/// naming ~50 k SKUs each are ~5 M entries: 41 MB of the heap at 1 M
/// resident SKUs with 64-bit digests, about half that now). Among n
/// pairs of one device, about n²/2³³ share a digest with another (5 at
/// the 200 k default limit); each lets one pair more pass, so the limit
/// is a few pairs generous, never stricter. The seed is unknown outside
/// the process, so a device cannot aim for a collision.
///
/// Kept in a [`DigestSet`], whose slots for a whole batch are asked of the
/// cache before the first is read (module docs of `digest_set`).
///
/// Invariant: it never holds more than its limit; [`DistinctSkus::admit`]
/// adds a batch's pairs all or none.
#[derive(Debug, Clone, Default)]
pub struct DistinctSkus {
    seen: DigestSet,
    digest: Keyed,
    /// The batch's digests (the first pass), then those it added.
    batch: Vec<u32>,
}

impl DistinctSkus {
    /// Pairs recorded so far.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none is recorded.
    pub fn is_empty(&self) -> bool {
        self.seen.len() == 0
    }

    /// Whether a batch naming `keys` may pass with at most `limit`
    /// distinct pairs per device; if so, records them.
    pub fn admit(&mut self, keys: impl IntoIterator<Item = (u32, u64)>, limit: usize) -> bool {
        // First every digest, each slot asked for; then the probes.
        self.batch.clear();
        for k in keys {
            // The low half: the digest's bits are equally mixed.
            let d = self.digest.hash_one(k) as u32;
            self.seen.prefetch(d);
            self.batch.push(d);
        }
        let mut added = 0;
        for i in 0..self.batch.len() {
            let d = self.batch[i];
            if self.seen.insert(d) {
                // Those added move to the front: the rest were read.
                self.batch[added] = d;
                added += 1;
                if self.seen.len() > limit {
                    for &f in &self.batch[..added] {
                        self.seen.remove(f);
                    }
                    return false;
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn a_device_naming_too_many_skus_is_refused_all_or_none() {
        let mut d = DistinctSkus::default();
        assert!(d.admit([(1, 1), (1, 2), (1, 1)], 3));
        assert!(d.admit([(1, 2), (1, 1)], 3), "known pairs always pass");
        assert!(!d.admit([(1, 3), (1, 4)], 3), "two new pairs, one place");
        assert_eq!(d.len(), 2, "the refused batch recorded nothing");
        assert!(d.admit([(1, 3)], 3));
        assert!(
            !d.admit([(2, 1)], 3),
            "the same SKU in another store is another pair"
        );
    }

    #[test]
    fn a_device_may_send_for_a_few_stores_all_or_none() {
        let mut d = DistinctKeys::default();
        assert!(d.admit([1, 1, 2], 3));
        assert!(d.admit([2, 1], 3), "known stores always pass");
        assert!(!d.admit([3, 4], 3), "two new stores, one place");
        assert!(d.admit([3], 3), "the refused batch recorded nothing");
        assert!(!d.admit([9], 3));
        assert!(d.admit([1, 2, 3], 3));
        // A batch refused for another reason records nothing either.
        let mut e = DistinctKeys::default();
        assert!(e.admit([1], 3));
        let mark = e.len();
        assert!(e.admit([2, 3], 3));
        e.forget_since(mark);
        assert_eq!(e.len(), 1);
        assert!(e.admit([4, 5], 3), "the forgotten keys left room");
    }

    #[test]
    fn recent_digests_tell_a_resend_from_another_batch() {
        let mut r = RecentDigests::default();
        for seq in 1..=200 {
            r.record(seq, seq * 7);
        }
        assert_eq!(r.check(200, 1400), DigestCheck::Same);
        assert_eq!(r.check(200, 1401), DigestCheck::Different);
        assert_eq!(
            r.check(73, 511),
            DigestCheck::Same,
            "the latest 128 are kept"
        );
        assert_eq!(r.check(72, 504), DigestCheck::Unknown, "older ones are not");
        assert_eq!(r.check(500, 0), DigestCheck::Unknown);
    }

    #[test]
    fn a_leap_past_the_max_jump_is_refused_and_not_recorded() {
        let mut l = DeviceLedger::new(10);
        assert_eq!(l.admit(10 + MAX_SEQ_JUMP + 1), Admission::TooFarAhead);
        assert_eq!(l.admit(u64::MAX), Admission::TooFarAhead);
        assert_eq!(l.applied(), 10);
        assert_eq!(l.admit(11), Admission::Fresh);
        assert_eq!(l.admit(11 + MAX_SEQ_JUMP), Admission::Fresh);
    }

    #[test]
    fn fresh_then_duplicate() {
        let mut l = DeviceLedger::new(0);
        assert!(l.is_quiescent());
        assert_eq!(l.admit(1), Admission::Fresh);
        assert_eq!(l.admit(1), Admission::Duplicate);
        assert_eq!(l.admit(3), Admission::Fresh, "gaps are allowed");
        assert_eq!(
            l.admit(2),
            Admission::Duplicate,
            "a late lower seq is a resend"
        );
        assert!(!l.is_quiescent());
        assert!(!l.is_durable(1));
        l.mark_durable(3);
        assert!(l.is_durable(3) && l.is_quiescent());
        l.mark_durable(1);
        assert_eq!(l.durable(), 3, "never lowered");
    }

    #[test]
    fn restart_from_watermark() {
        let mut l = DeviceLedger::new(5);
        assert_eq!((l.applied(), l.durable()), (5, 5));
        assert_eq!(l.admit(5), Admission::Duplicate);
        assert_eq!(l.admit(6), Admission::Fresh);
        l.mark_durable(9);
        assert_eq!(l.applied(), 9);
        assert_eq!(l.admit(8), Admission::Duplicate);
    }

    proptest! {
        #[test]
        fn never_admits_a_seq_twice(ops in proptest::collection::vec((0u64..40, any::<bool>()), 0..200)) {
            let mut l = DeviceLedger::new(0);
            let mut admitted = HashSet::new();
            for (seq, durable) in ops {
                if durable {
                    // Only what was applied can become durable.
                    let s = seq.min(l.applied());
                    l.mark_durable(s);
                } else if l.admit(seq) == Admission::Fresh {
                    prop_assert!(admitted.insert(seq), "seq {} admitted twice", seq);
                }
                prop_assert!(l.durable() <= l.applied());
            }
        }
    }
}
