//! One active store's SKUs on a shard: an open-addressing table whose
//! buckets the read-ahead can prefetch before it looks anything up.
//!
//! A movement of a random SKU costs a cache miss on its bucket. With
//! hashbrown's map the read-ahead could only look SKUs up one after the
//! other, and each lookup waited for its bucket: 13% of the server's CPU
//! sat on that one load (an AMD EPYC host, the main fleet's 50 k SKUs). Here a
//! SKU's first bucket follows from its hash alone, so the read-ahead asks
//! for the buckets of many SKUs first and looks them up after, while
//! their lines arrive together.
//!
//! Linear probing over 64-byte buckets (the SKU and its 56-byte entity in
//! one line, `Option`'s niche in the entity's boxes marking an empty one),
//! grown by doubling at 7/8 full, as hashbrown is, so 1 M SKUs take the
//! same memory. A probe past the first bucket reads the next line, which
//! the hardware's adjacent-line prefetch has often brought. SKUs leave
//! only with their whole store (passivation drops the map), so there are
//! no tombstones. The hash is keyed per map (`hash.rs`), so a device
//! cannot choose SKUs that pile up into one run of buckets.

use std::hash::BuildHasher;

use tillstream_storage::hint::prefetch;

use super::hash::Keyed;
use super::sku::SkuState;

/// A SKU and its entity, one cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Bucket(Option<(u64, SkuState)>);

const _: () = assert!(size_of::<Bucket>() == 64);

/// Where a SKU's entity was found: its bucket. Valid until the table
/// grows; every use checks the bucket's SKU, so a stale one only costs the
/// probe it was meant to save.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot(u32);

/// One store's SKUs (module docs).
#[derive(Debug, Default)]
pub(super) struct SkuMap {
    /// A power of two long, or empty.
    buckets: Box<[Bucket]>,
    len: usize,
    hasher: Keyed,
}

impl SkuMap {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bucket where `sku`'s probe starts; the table must not be empty.
    fn home(&self, sku: u64) -> usize {
        (self.hasher.hash_one(sku) as usize) & (self.buckets.len() - 1)
    }

    /// The place of `sku`, or of the empty bucket where it would go.
    fn find(&self, sku: u64) -> Result<usize, usize> {
        let mask = self.buckets.len() - 1;
        let mut at = self.home(sku);
        loop {
            match &self.buckets[at].0 {
                Some((k, _)) if *k == sku => return Ok(at),
                Some(_) => at = (at + 1) & mask,
                None => return Err(at),
            }
        }
    }

    /// Asks the CPU for the bucket where `sku`'s probe starts, without
    /// waiting for it.
    pub(super) fn prefetch(&self, sku: u64) {
        if !self.buckets.is_empty() {
            prefetch(&self.buckets[self.home(sku)]);
        }
    }

    pub(super) fn get(&self, sku: u64) -> Option<&SkuState> {
        self.get_slotted(sku).map(|(_, s)| s)
    }

    /// `sku`'s entity and its [`Slot`], which a later lookup of the same
    /// SKU may give to skip the hash and the probe.
    pub(super) fn get_slotted(&self, sku: u64) -> Option<(Slot, &SkuState)> {
        if self.len == 0 {
            return None;
        }
        let at = self.find(sku).ok()?;
        let state = self.buckets[at].0.as_ref().map(|(_, s)| s)?;
        Some((Slot(u32::try_from(at).ok()?), state))
    }

    /// Where `slot` says `sku` is, if it is still there: the table may
    /// have grown since (every SKU placed again), so the bucket's SKU is
    /// checked, and a slot that is no longer `sku`'s is no answer.
    fn at_slot(&self, slot: Option<Slot>, sku: u64) -> Option<usize> {
        let at = slot?.0 as usize;
        match self.buckets.get(at) {
            Some(Bucket(Some((k, _)))) if *k == sku => Some(at),
            _ => None,
        }
    }

    /// Whether `slot` is where `sku` is now.
    #[cfg(test)]
    pub(super) fn holds(&self, slot: Slot, sku: u64) -> bool {
        self.at_slot(Some(slot), sku).is_some()
    }

    pub(super) fn get_mut(&mut self, sku: u64) -> Option<&mut SkuState> {
        self.get_mut_at(None, sku)
    }

    /// [`SkuMap::get_mut`], straight to `slot` if `sku` is still there.
    pub(super) fn get_mut_at(&mut self, slot: Option<Slot>, sku: u64) -> Option<&mut SkuState> {
        if self.len == 0 {
            return None;
        }
        let at = match self.at_slot(slot, sku) {
            Some(at) => at,
            None => self.find(sku).ok()?,
        };
        self.buckets[at].0.as_mut().map(|(_, s)| s)
    }

    #[cfg(test)]
    pub(super) fn contains_key(&self, sku: u64) -> bool {
        self.get(sku).is_some()
    }

    /// `sku`'s entity, made by `new` if it has none.
    pub(super) fn get_or_insert_with(
        &mut self,
        sku: u64,
        new: impl FnOnce() -> SkuState,
    ) -> (Slot, &mut SkuState) {
        self.get_or_insert_at(None, sku, new)
    }

    /// [`SkuMap::get_or_insert_with`], straight to `slot` if `sku` is
    /// still there. Also gives the slot where the entity is now.
    pub(super) fn get_or_insert_at(
        &mut self,
        slot: Option<Slot>,
        sku: u64,
        new: impl FnOnce() -> SkuState,
    ) -> (Slot, &mut SkuState) {
        let at = match self.at_slot(slot, sku) {
            Some(at) => at,
            None => {
                if (self.len + 1) * 8 > self.buckets.len() * 7 {
                    self.grow();
                }
                // Its bucket, or the empty one where it goes.
                let (Ok(at) | Err(at)) = self.find(sku);
                at
            }
        };
        let len = &mut self.len;
        let (_, state) = self.buckets[at].0.get_or_insert_with(|| {
            *len += 1;
            (sku, new())
        });
        // Tables are far below 2^32 buckets (a bucket is 64 bytes).
        (Slot(at as u32), state)
    }

    /// Puts `state` as `sku`'s entity, in place of any it had.
    #[cfg(test)]
    pub(super) fn insert(&mut self, sku: u64, state: SkuState) {
        *self.get_or_insert_with(sku, SkuState::empty).1 = state;
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &SkuState> {
        self.buckets
            .iter()
            .filter_map(|b| b.0.as_ref().map(|(_, s)| s))
    }

    /// Doubles the table and places every SKU again. It starts at 4
    /// buckets, as hashbrown does: a store a till sells a few SKUs of
    /// keeps 256 bytes, not a kilobyte (the `core_memory` bench's
    /// terminals, whose stores hold one SKU, took 801 bytes each when it
    /// started at 16, 705 at 4, 725 with hashbrown).
    fn grow(&mut self) {
        let cap = (self.buckets.len() * 2).max(4);
        let old = std::mem::replace(
            &mut self.buckets,
            std::iter::repeat_with(Bucket::default).take(cap).collect(),
        );
        for bucket in old.into_vec() {
            if let Some((sku, state)) = bucket.0
                && let Err(at) = self.find(sku)
            {
                self.buckets[at].0 = Some((sku, state));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_level(level: i64) -> SkuState {
        let mut s = SkuState::empty();
        s.level = level;
        s
    }

    #[test]
    fn holds_every_sku_it_was_given_across_growth() {
        let mut map = SkuMap::default();
        for sku in 0..10_000u64 {
            map.get_or_insert_with(sku * 7919, || with_level(sku as i64));
        }
        assert_eq!(map.len(), 10_000);
        for sku in 0..10_000u64 {
            assert_eq!(map.get(sku * 7919).map(|s| s.level), Some(sku as i64));
        }
        assert!(map.get(3).is_none());
        assert_eq!(map.values().count(), 10_000);
        // Never fuller than 7/8, so a probe for a missing SKU ends.
        assert!(map.len() * 8 <= map.buckets.len() * 7);
    }

    #[test]
    fn sequential_skus_do_not_cluster() {
        // A store's catalogue is often numbered in sequence; with linear
        // probing a hash that kept neighbours together would make long
        // runs. A uniform hash at 7/8 full averages 4.5 buckets a lookup.
        let mut map = SkuMap::default();
        let n = 57_000u64; // 0.87 of 65,536
        for sku in 0..n {
            map.get_or_insert_with(1_000_000 + sku, SkuState::empty);
        }
        assert_eq!(map.buckets.len(), 65_536);
        let mask = map.buckets.len() - 1;
        let probes: usize = (0..n)
            .map(|sku| {
                let sku = 1_000_000 + sku;
                let at = map.find(sku).expect("held");
                ((at + map.buckets.len() - map.home(sku)) & mask) + 1
            })
            .sum();
        let mean = probes as f64 / n as f64;
        assert!(mean < 6.0, "{mean} buckets a lookup");
    }

    #[test]
    fn an_existing_sku_is_not_made_again() {
        let mut map = SkuMap::default();
        map.get_or_insert_with(u64::MAX, || with_level(5)).1.level += 1;
        let (_, s) = map.get_or_insert_with(u64::MAX, || with_level(100));
        assert_eq!(s.level, 6);
        map.get_mut(u64::MAX).expect("held").level = 9;
        assert_eq!(map.get(u64::MAX).map(|s| s.level), Some(9));
        assert_eq!(map.len(), 1);
        map.insert(0, with_level(1));
        assert!(map.contains_key(0) && !map.is_empty());
    }

    #[test]
    fn a_slot_from_before_the_table_grew_finds_the_same_entity() {
        let mut map = SkuMap::default();
        let (first, _) = map.get_or_insert_with(42, || with_level(42));
        let slots: Vec<(u64, Slot)> = (0..1_000u64)
            .map(|sku| {
                (
                    sku,
                    map.get_or_insert_with(sku, || with_level(sku as i64)).0,
                )
            })
            .collect();
        // 42 was placed again at every doubling: its first slot is stale,
        // and now most likely another SKU's bucket or an empty one.
        for (sku, slot) in slots.iter().copied().chain([(42, first)]) {
            let (now, s) = map.get_or_insert_at(Some(slot), sku, || with_level(-1));
            assert_eq!(s.level, sku as i64, "SKU {sku}");
            assert_eq!(map.get_slotted(sku).map(|(at, _)| at), Some(now));
            assert_eq!(
                map.get_mut_at(Some(slot), sku).map(|s| s.level),
                Some(sku as i64)
            );
        }
        assert_eq!(map.len(), 1_000, "no SKU made twice");
        // A slot of one SKU given for another finds the other.
        let (slot_of_7, _) = map.get_or_insert_with(7, SkuState::empty);
        assert_eq!(map.get_mut_at(Some(slot_of_7), 8).map(|s| s.level), Some(8));
        assert!(map.get_mut_at(Some(slot_of_7), 5_000).is_none());
        let (_, made) = map.get_or_insert_at(Some(slot_of_7), 5_000, || with_level(5));
        assert_eq!(made.level, 5);
        assert_eq!(map.get(7).map(|s| s.level), Some(7), "7 left as it was");
        assert_eq!(map.len(), 1_001);
    }

    #[test]
    fn an_empty_map_finds_nothing_and_prefetches_nothing() {
        let mut map = SkuMap::default();
        map.prefetch(1);
        assert!(map.get(1).is_none());
        assert!(map.get_mut(1).is_none());
        assert_eq!(map.values().count(), 0);
    }
}
