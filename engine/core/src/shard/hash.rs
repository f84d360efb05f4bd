//! A fixed, fast hasher for the entity maps.
//!
//! Keys are small integers (store, SKU, day, terminal, minute), so SipHash
//! would cost more than the rest of a lookup. The hasher is fixed (no
//! random seed), in keeping with a core that uses no randomness; its
//! output never decides anything visible (rows are emitted in event order,
//! not map order). Only authenticated devices choose keys, and a store's
//! catalogue bounds them; a hostile device could still aim for collisions,
//! which would slow its own shard, not corrupt it.

use std::hash::{BuildHasherDefault, Hasher};

/// The hasher's builder, for `HashMap<K, V, Fixed>`.
pub(super) type Fixed = BuildHasherDefault<FixedHasher>;

/// Folds words with a multiply-rotate and finishes with the splitmix64
/// finalizer, so every input bit reaches the bits hashbrown uses.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct FixedHasher(u64);

impl FixedHasher {
    fn fold(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(26) ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl Hasher for FixedHasher {
    fn finish(&self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.fold(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.fold(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.fold(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.fold(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.fold(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.fold(i as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn spreads_sequential_keys() {
        let b = Fixed::default();
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
}
