//! The hasher of the entity maps: keyed, with a per-process random seed.
//!
//! Devices choose the keys (store, SKU, terminal, day), so a fixed hasher
//! let a hostile one pick SKUs that all land in one bucket and turn every
//! lookup of its shard into a scan (hash flooding). foldhash (hashbrown's
//! own default) with a random seed per map is as fast as the fixed one on
//! these small integer keys, and the seed is unknown outside the process.
//! Its `quality` variant, not `fast`: with some process seeds `fast` put
//! 64,000 sequential SKUs of one store into 64 low-bit buckets as unevenly
//! as 1,000 ± 1,784 (2 of 2,000 processes sampled); `quality`, one more
//! multiply per hash, stayed within ± 161 over the same 2,000, which is
//! what a uniform hash gives.
//!
//! Nothing the core emits depends on map order (rows follow event order,
//! and the dirty lists are vectors), so the random seed keeps the core's
//! output deterministic.

/// The hasher's builder, for `HashMap<K, V, Keyed>`: each map draws its own
/// seed.
pub(crate) type Keyed = foldhash::quality::RandomState;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn spreads_sequential_keys() {
        let b = Keyed::default();
        let mut buckets = [0u32; 64];
        for sku in 0..64_000u64 {
            let h = b.hash_one((7u32, sku));
            buckets[(h & 63) as usize] += 1;
        }
        for n in buckets {
            assert!((800..1200).contains(&n), "uneven low bits: {n}");
        }
        assert_ne!(b.hash_one((1u32, 2u64)), b.hash_one((2u32, 1u64)));
    }

    #[test]
    fn two_maps_do_not_share_a_seed() {
        // With a fixed hasher every map (and every process) places a key
        // in the same bucket, which is what lets a device aim collisions.
        let (a, b) = (Keyed::default(), Keyed::default());
        let same = (0..64u64)
            .filter(|&sku| a.hash_one((1u32, sku)) == b.hash_one((1u32, sku)))
            .count();
        assert_eq!(same, 0);
    }
}
