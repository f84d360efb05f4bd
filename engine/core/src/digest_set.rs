//! A set of 32-bit digests: open addressing, linear probing, the digest
//! itself as the slot's index. What [`crate::ledger::DistinctSkus`] keeps
//! per device.
//!
//! Why not a `HashSet<u32>`: a device's set holds every (store, SKU) pair
//! it named, tens of kB, and a fleet's sets do not stay in the cache; each
//! line of a batch probed a set that missed the cache, one after the
//! other (4.4% of the server's CPU at the peak rate). Here the slot a
//! digest sits in, or starts its probe at, is known from the digest
//! alone, so [`DigestSet::prefetch`] can ask for the slots of a whole
//! batch before the first is read, and the misses overlap.
//!
//! Invariants: a slot holds 0 (empty) or a digest, never both; every
//! digest sits in its home slot or after it, with no empty slot between
//! (which removal keeps by shifting later digests back); the table is at
//! most 7/8 full, as hashbrown's tables are: a set is 4 bytes a slot where
//! hashbrown's took 5 (a digest and its control byte), and a device's set
//! can hold 100 k digests. Probe runs at 7/8 are longer than at 3/4, but
//! 16 slots share a cache line.

/// Slots of a new set's table (a power of two).
const FIRST_SLOTS: usize = 16;

/// The set (module docs). Digests are any `u32`; 0 is stored as 1 (the
/// two count as one digest), so that 0 can mark an empty slot.
#[derive(Debug, Clone, Default)]
pub(crate) struct DigestSet {
    slots: Vec<u32>,
    len: usize,
}

impl DigestSet {
    /// Digests held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    fn stored(digest: u32) -> u32 {
        digest.max(1)
    }

    /// Asks the cache for the slot `digest` would be found at, without
    /// waiting for it.
    pub(crate) fn prefetch(&self, digest: u32) {
        if let Some(slot) = self.slots.get(Self::stored(digest) as usize & self.mask()) {
            tillstream_storage::hint::prefetch(slot);
        }
    }

    /// Adds `digest`; false if it was held already.
    pub(crate) fn insert(&mut self, digest: u32) -> bool {
        let d = Self::stored(digest);
        if (self.len + 1) * 8 > self.slots.len() * 7 {
            self.grow();
        }
        let mask = self.mask();
        let mut at = d as usize & mask;
        loop {
            match self.slots[at] {
                0 => {
                    self.slots[at] = d;
                    self.len += 1;
                    return true;
                }
                held if held == d => return false,
                _ => at = (at + 1) & mask,
            }
        }
    }

    /// Removes `digest`; false if it was not held.
    pub(crate) fn remove(&mut self, digest: u32) -> bool {
        let d = Self::stored(digest);
        let mask = self.mask();
        if self.slots.is_empty() {
            return false;
        }
        let mut at = d as usize & mask;
        loop {
            match self.slots[at] {
                0 => return false,
                held if held == d => break,
                _ => at = (at + 1) & mask,
            }
        }
        // Backward shift: each later digest of the run moves into the hole
        // if the hole lies between its home slot and where it sits.
        let mut hole = at;
        let mut next = (hole + 1) & mask;
        while self.slots[next] != 0 {
            let home = self.slots[next] as usize & mask;
            if (next.wrapping_sub(home) & mask) >= (next.wrapping_sub(hole) & mask) {
                self.slots[hole] = self.slots[next];
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.slots[hole] = 0;
        self.len -= 1;
        true
    }

    /// Doubles the table and places every digest again.
    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(FIRST_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![0; size]);
        self.len = 0;
        for d in old.into_iter().filter(|&d| d != 0) {
            self.insert(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    proptest! {
        /// Against `HashSet`: the same answers for inserts and removes, in
        /// a small digest space (long probe runs, runs that wrap the end
        /// of the table, 0 beside 1).
        #[test]
        fn behaves_as_a_set(ops in proptest::collection::vec((any::<bool>(), 0u32..64), 0..400)) {
            let mut set = DigestSet::default();
            let mut model = HashSet::new();
            for (add, d) in ops {
                let d = if d == 63 { u32::MAX - (d & 1) } else { d };
                let key = d.max(1);
                if add {
                    prop_assert_eq!(set.insert(d), model.insert(key));
                } else {
                    prop_assert_eq!(set.remove(d), model.remove(&key));
                }
                prop_assert_eq!(set.len(), model.len());
                for probe in 0..64u32 {
                    let held = set.slots.contains(&probe.max(1));
                    prop_assert_eq!(held, model.contains(&probe.max(1)));
                }
                // Every held digest is found from its home slot.
                for &k in &model {
                    prop_assert!(!set.insert(k), "digest {} not found where a probe looks", k);
                }
            }
        }
    }

    #[test]
    fn a_removed_digest_leaves_the_others_findable() {
        let mut set = DigestSet::default();
        // Four digests with one home slot (16 slots: the low 4 bits).
        for d in [3, 19, 35, 51] {
            assert!(set.insert(d));
        }
        assert!(set.remove(19));
        assert!(!set.insert(35) && !set.insert(51) && !set.insert(3));
        assert!(set.insert(19), "removed");
        assert_eq!(set.len(), 4);
    }
}
