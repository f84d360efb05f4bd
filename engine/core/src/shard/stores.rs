//! The active stores of a shard, each with its own map of SKUs.
//!
//! One map per store, not one keyed by (store, SKU): a map grows by
//! doubling, so one (hashbrown) map of 1 M SKUs held 2 M buckets (the
//! entity and its key, 80 bytes each: 168 MB), and while it grew the old
//! table and the new one were both held. Maps per store (`sku_map.rs`)
//! grow one at a time, are each as full as their own size allows, and key
//! on the SKU alone (64 bytes a bucket); a passivated store's map is
//! dropped whole.
//!
//! The stores sit in a vector behind an index map, and the last one asked
//! for is remembered: a part's lines are nearly all of one store, so a
//! line finds its store's map without hashing.

use std::collections::HashMap;

use super::LastChange;
use super::hash::Keyed;
use super::sku_map::SkuMap;

/// An active store's SKUs on this shard, and when they last changed.
#[derive(Debug)]
pub(super) struct StoreSkus {
    pub(super) last: LastChange,
    pub(super) skus: SkuMap,
}

impl StoreSkus {
    pub(super) fn loaded() -> Self {
        Self {
            last: LastChange::LOADED,
            skus: SkuMap::default(),
        }
    }
}

/// The active stores (module docs).
#[derive(Debug, Default)]
pub(super) struct ActiveStores {
    /// Store id → its place in `slots`.
    index: HashMap<u32, usize, Keyed>,
    slots: Vec<(u32, StoreSkus)>,
    /// The store last found by [`ActiveStores::get_or_load`] and its place.
    last: Option<(u32, usize)>,
}

impl ActiveStores {
    pub(super) fn contains(&self, store: u32) -> bool {
        self.index.contains_key(&store)
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The store's place in `slots`: the last one found, without hashing,
    /// or the index's.
    fn place(&self, store: u32) -> Option<usize> {
        match self.last {
            Some((s, at)) if s == store => Some(at),
            _ => self.index.get(&store).copied(),
        }
    }

    pub(super) fn get(&self, store: u32) -> Option<&StoreSkus> {
        let at = self.place(store)?;
        self.slots.get(at).map(|(_, s)| s)
    }

    pub(super) fn get_mut(&mut self, store: u32) -> Option<&mut StoreSkus> {
        let at = self.place(store)?;
        self.slots.get_mut(at).map(|(_, s)| s)
    }

    /// The store's entry; a store not active is activated empty, and the
    /// `bool` says so.
    pub(super) fn get_or_load(&mut self, store: u32) -> (&mut StoreSkus, bool) {
        let at = self.place(store);
        let (at, new) = match at {
            Some(at) if at < self.slots.len() => (at, false),
            _ => {
                self.slots.push((store, StoreSkus::loaded()));
                let at = self.slots.len() - 1;
                self.index.insert(store, at);
                (at, true)
            }
        };
        self.last = Some((store, at));
        (&mut self.slots[at].1, new)
    }

    /// Adds a store that is not active yet (one that is stays as it is).
    pub(super) fn insert(&mut self, store: u32, skus: StoreSkus) {
        if !self.contains(store) {
            self.slots.push((store, skus));
            self.index.insert(store, self.slots.len() - 1);
        }
    }

    /// Keeps the stores `keep` says yes to.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(u32, &StoreSkus) -> bool) {
        let before = self.slots.len();
        self.slots.retain(|(store, s)| keep(*store, s));
        if self.slots.len() != before {
            self.index.clear();
            self.index.extend(
                self.slots
                    .iter()
                    .enumerate()
                    .map(|(at, &(store, _))| (store, at)),
            );
            self.last = None;
        }
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &StoreSkus> {
        self.slots.iter().map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::sku::SkuState;

    fn with_sku(stores: &mut ActiveStores, store: u32, sku: u64) {
        let (s, _) = stores.get_or_load(store);
        s.skus.insert(sku, SkuState::empty());
    }

    #[test]
    fn a_store_keeps_its_skus_across_a_sweep_that_drops_another() {
        let mut stores = ActiveStores::default();
        for store in [7, 3, 9] {
            with_sku(&mut stores, store, u64::from(store) * 100);
        }
        // Store 3 leaves: 9 moves to its place in the vector, and the
        // remembered last store (9) must not point at the old place.
        stores.retain(|_, s| !s.skus.contains_key(300));
        assert_eq!(stores.len(), 2);
        assert!(!stores.contains(3));
        let (nine, new) = stores.get_or_load(9);
        assert!(!new);
        assert!(nine.skus.contains_key(900));
        assert!(stores.get(7).is_some_and(|s| s.skus.contains_key(700)));
        let (three, new) = stores.get_or_load(3);
        assert!(new);
        assert!(three.skus.is_empty());
        // Insert leaves an active store as it is.
        stores.insert(7, StoreSkus::loaded());
        assert!(stores.get(7).is_some_and(|s| s.skus.contains_key(700)));
    }
}
