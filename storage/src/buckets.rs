//! How rows are grouped, the same for every backend: the embedded store's
//! blocks and the ScyllaDB partitions use these, so a row is found in the
//! same group whichever wrote it.

/// Buckets of stock levels per store. Embedded: a write rewrites each
/// bucket it touches whole, so more buckets mean smaller rewrites but more
/// keys. ScyllaDB: a partition is (store, bucket), so a store of a million
/// SKUs has partitions of about 4,000 rows.
pub const LEVEL_BUCKETS: u16 = 256;

/// The bucket of a SKU's level, in `0..LEVEL_BUCKETS` (a fixed hash: SKU
/// numbers are often dense, and their low bits would crowd few buckets).
pub fn level_bucket(sku: u64) -> u16 {
    const _: () = assert!(LEVEL_BUCKETS.is_power_of_two());
    // The top bits of a Fibonacci hash.
    let shift = 64 - LEVEL_BUCKETS.trailing_zeros();
    u16::try_from(sku.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift).unwrap_or(0)
}

/// Batches per partition of the batch ledger (ScyllaDB): a partition is
/// (device, seq / `BATCHES_PER_BUCKET`).
pub const BATCHES_PER_BUCKET: u64 = 65_536;

/// The ledger partition of batch `seq`: the resend check looks a batch up
/// by device and seq alone.
pub fn batch_seq_bucket(seq: u64) -> u64 {
    seq / BATCHES_PER_BUCKET
}

/// Journal records per partition of the cluster's journal: a partition
/// is (node, lsn / `RECORDS_PER_SEGMENT`), about 8 MB of 30 KB frames.
pub const RECORDS_PER_SEGMENT: u64 = 256;

/// The journal partition of record `lsn`.
pub fn journal_segment(lsn: u64) -> u64 {
    lsn / RECORDS_PER_SEGMENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_segment_holds_256_records() {
        assert_eq!(journal_segment(1), journal_segment(255));
        assert_eq!(journal_segment(256), 1);
    }

    #[test]
    fn a_ledger_partition_holds_65536_batches() {
        assert_eq!(batch_seq_bucket(0), batch_seq_bucket(65_535));
        assert_eq!(batch_seq_bucket(65_536), 1);
        assert_eq!(batch_seq_bucket(u64::MAX), u64::MAX >> 16);
    }

    #[test]
    fn a_million_dense_skus_spread_evenly_over_the_buckets() {
        let mut per = vec![0u32; usize::from(LEVEL_BUCKETS)];
        for sku in 0..1_000_000u64 {
            per[usize::from(level_bucket(sku))] += 1;
        }
        let (lo, hi) = (per.iter().min(), per.iter().max());
        // 3,906 each if perfectly even; ScyllaDB warns at 100,000.
        assert!(
            lo.is_some_and(|&n| n > 3_500) && hi.is_some_and(|&n| n < 4_500),
            "{lo:?}..{hi:?}"
        );
    }
}
