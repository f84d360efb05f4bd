//! Key encodings of the embedded store. Every integer is big-endian, so
//! the byte order of keys is the numeric order of their fields and a prefix
//! or range scan returns records in (partition, time, commit) order.

use std::ops::RangeInclusive;

use tillstream_storage::rows::Table;

/// Keyspace of the time-series blocks (every raw table).
pub(crate) const BLOCKS: &str = "blocks";
/// Keyspace of `stock_levels`.
pub(crate) const LEVELS: &str = "stock_levels";
/// Keyspace of `terminal_rollups`.
pub(crate) const ROLLUPS: &str = "terminal_rollups";
/// Keyspace of `device_watermarks`.
pub(crate) const WATERMARKS: &str = "device_watermarks";
/// Keyspace of `device_batches`.
pub(crate) const BATCHES: &str = "device_batches";
/// Keyspace of the store's own bookkeeping.
pub(crate) const META: &str = "meta";

/// Key (in [`META`]) of the id of the last commit.
pub(crate) const LAST_COMMIT: &[u8] = b"last_commit";
/// Key (in [`META`]) of the checkpoint: the journal LSN up to which every
/// record's rows are in the tables.
pub(crate) const CHECKPOINT: &[u8] = b"checkpoint";

/// `meta` key: where the block log ended with the last commit
/// (`blocklog::encode_end`).
pub(crate) const BLOCKLOG_END: &[u8] = b"blocklog_end";
/// Keys (in [`META`]) of the catalogue: `catalog/p/` + SKU, `catalog/s/`
/// + store, big-endian.
pub(crate) const CATALOG_PRODUCTS: &[u8] = b"catalog/p/";
pub(crate) const CATALOG_STORES: &[u8] = b"catalog/s/";

pub(crate) fn catalog_product(sku: u64) -> Vec<u8> {
    [CATALOG_PRODUCTS, &sku.to_be_bytes()].concat()
}

pub(crate) fn catalog_store(store: u32) -> Vec<u8> {
    [CATALOG_STORES, &store.to_be_bytes()].concat()
}

/// Folder (in the data directory) of the write-ahead journal.
pub(crate) const JOURNAL_DIR: &str = "wal";

/// Bytes of the partition field of a block key of `table`: 4 for the store
/// tables, 8 for the device tables, 0 for `dead_letters`.
pub(crate) fn part_width(table: Table) -> usize {
    match table {
        Table::Sales | Table::SaleLines | Table::StockMovements => 4,
        Table::DeviceHealth | Table::RejectedEvents => 8,
        _ => 0,
    }
}

/// Writes the partition field of `table` (`part` is a store or a device).
fn push_part(key: &mut Vec<u8>, table: Table, part: u64) {
    match part_width(table) {
        4 => key.extend_from_slice(&u32::try_from(part).unwrap_or(u32::MAX).to_be_bytes()),
        8 => key.extend_from_slice(&part.to_be_bytes()),
        _ => {}
    }
}

/// `table u8 | partition | hour u32 | commit u64`.
pub(crate) fn block_key(table: Table, part: u64, hour: u32, commit: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + 8 + 4 + 8);
    key.push(table as u8);
    push_part(&mut key, table, part);
    key.extend_from_slice(&hour.to_be_bytes());
    key.extend_from_slice(&commit.to_be_bytes());
    key
}

/// Prefix of every block of `table`, or of one partition of it.
pub(crate) fn block_prefix(table: Table, part: Option<u64>) -> Vec<u8> {
    let mut key = vec![table as u8];
    if let Some(part) = part {
        push_part(&mut key, table, part);
    }
    key
}

/// The keys of the blocks of one partition of `table` whose hour is in
/// `from_hour..=to_hour`.
pub(crate) fn block_range(
    table: Table,
    part: u64,
    from_hour: u32,
    to_hour: u32,
) -> RangeInclusive<Vec<u8>> {
    let mut start = block_prefix(table, Some(part));
    let mut end = start.clone();
    start.extend_from_slice(&from_hour.to_be_bytes());
    end.extend_from_slice(&to_hour.to_be_bytes());
    end.extend_from_slice(&u64::MAX.to_be_bytes());
    start..=end
}

/// The hour field of a block key of `table`, if the key is well formed.
pub(crate) fn block_hour(table: Table, key: &[u8]) -> Option<u32> {
    let at = 1 + part_width(table);
    let bytes: [u8; 4] = key.get(at..at + 4)?.try_into().ok()?;
    (key.len() == at + 12 && key.first() == Some(&(table as u8)))
        .then_some(u32::from_be_bytes(bytes))
}

pub(crate) use tillstream_storage::buckets::level_bucket;

/// The last byte of the keys of level blocks in the packed format
/// (data format 2): `levels` tells a value's encoding by its key's length.
const PACKED_LEVELS: u8 = 1;

/// `store u32 | bucket u16`: where a store's bucket keys start; also the
/// whole key of a bucket block in rkyv, as data format 1 wrote them (still
/// read, rewritten packed when the bucket next changes).
pub(crate) fn level_bucket_prefix(store: u32, bucket: u16) -> [u8; RKYV_LEVEL_BUCKET_KEY_LEN] {
    let mut key = [0; RKYV_LEVEL_BUCKET_KEY_LEN];
    key[..4].copy_from_slice(&store.to_be_bytes());
    key[4..].copy_from_slice(&bucket.to_be_bytes());
    key
}

/// `store u32 | bucket u16 | 01`: one block of levels in the packed
/// format, sorted by SKU. Right after the bucket's rkyv key, if any.
pub(crate) fn level_bucket_key(store: u32, bucket: u16) -> [u8; LEVEL_BUCKET_KEY_LEN] {
    let mut key = [PACKED_LEVELS; LEVEL_BUCKET_KEY_LEN];
    key[..6].copy_from_slice(&level_bucket_prefix(store, bucket));
    key
}

/// Length of a bucket key in rkyv (data format 1).
pub(crate) const RKYV_LEVEL_BUCKET_KEY_LEN: usize = 6;
/// Length of a bucket key in the packed format.
pub(crate) const LEVEL_BUCKET_KEY_LEN: usize = 7;

/// `store u32 | FF FF | commit u64 | 01`: the levels of one store that one
/// commit changed, packed and sorted by SKU (see `levels`). After every
/// bucket key of the store, so a store's prefix holds both.
pub(crate) fn level_delta_key(store: u32, commit: u64) -> [u8; LEVEL_DELTA_KEY_LEN] {
    let mut key = [PACKED_LEVELS; LEVEL_DELTA_KEY_LEN];
    key[..RKYV_LEVEL_DELTA_KEY_LEN].copy_from_slice(&rkyv_level_delta_key(store, commit));
    key
}

/// `store u32 | FF FF | commit u64`: a delta in rkyv, as data format 1
/// wrote them; still read.
pub(crate) fn rkyv_level_delta_key(store: u32, commit: u64) -> [u8; RKYV_LEVEL_DELTA_KEY_LEN] {
    let mut key = [0; RKYV_LEVEL_DELTA_KEY_LEN];
    key[..4].copy_from_slice(&store.to_be_bytes());
    key[4..6].copy_from_slice(&u16::MAX.to_be_bytes());
    key[6..].copy_from_slice(&commit.to_be_bytes());
    key
}

/// Length of a level delta key in rkyv (data format 1).
pub(crate) const RKYV_LEVEL_DELTA_KEY_LEN: usize = 14;
/// Length of a level delta key in the packed format.
pub(crate) const LEVEL_DELTA_KEY_LEN: usize = 15;

/// Whether `key` is a level key of the packed format: of a packed key's
/// length (7 or 15 bytes) and ending as one does. The length matters: an
/// rkyv bucket key's last byte is its bucket's, which may be `01` too.
pub(crate) fn is_packed_level_key(key: &[u8]) -> bool {
    matches!(key.len(), LEVEL_BUCKET_KEY_LEN | LEVEL_DELTA_KEY_LEN)
        && key.last() == Some(&PACKED_LEVELS)
}

/// `store u32 | FF FF`: the prefix of one store's level deltas.
pub(crate) fn level_delta_prefix(store: u32) -> [u8; 6] {
    level_bucket_prefix(store, u16::MAX)
}

/// Length of the keys of the first layout, one level per key
/// (`store u32 | sku u64`); still read.
pub(crate) const LEGACY_LEVEL_KEY_LEN: usize = 12;

/// `store u32 | day u32 | terminal u32 | minute u16`.
pub(crate) fn rollup_key(store: u32, day: u32, terminal: u32, minute: u16) -> [u8; 14] {
    let mut key = [0; 14];
    key[..4].copy_from_slice(&store.to_be_bytes());
    key[4..8].copy_from_slice(&day.to_be_bytes());
    key[8..12].copy_from_slice(&terminal.to_be_bytes());
    key[12..].copy_from_slice(&minute.to_be_bytes());
    key
}

/// `store u32 | day u32`: the prefix of one store's rollups of a day.
pub(crate) fn rollup_day_prefix(store: u32, day: u32) -> [u8; 8] {
    let mut key = [0; 8];
    key[..4].copy_from_slice(&store.to_be_bytes());
    key[4..].copy_from_slice(&day.to_be_bytes());
    key
}

/// `device u64`.
pub(crate) fn watermark_key(device: u64) -> [u8; 8] {
    device.to_be_bytes()
}

/// `device u64 | seq u64`.
pub(crate) fn batch_key(device: u64, seq: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&device.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use tillstream_storage::buckets::LEVEL_BUCKETS;

    #[test]
    fn block_keys_sort_by_partition_hour_commit() {
        let a = block_key(Table::Sales, 7, 10, u64::MAX);
        let b = block_key(Table::Sales, 7, 11, 0);
        let c = block_key(Table::Sales, 8, 0, 0);
        assert!(a < b && b < c);
        assert_eq!(block_hour(Table::Sales, &b), Some(11));
        assert_eq!(block_hour(Table::DeviceHealth, &b), None);
        let r = block_range(Table::Sales, 7, 10, 10);
        assert!(r.contains(&a) && !r.contains(&b));
        assert!(
            block_key(Table::DeadLetters, 99, 3, 1)
                .starts_with(&block_prefix(Table::DeadLetters, None))
        );
        assert_eq!(
            block_hour(Table::DeadLetters, &block_key(Table::DeadLetters, 0, 3, 1)),
            Some(3)
        );
    }

    #[test]
    fn point_keys_sort_numerically() {
        assert!(level_bucket_key(1, LEVEL_BUCKETS - 1) < level_bucket_key(2, 0));
        assert!(level_bucket_key(1, LEVEL_BUCKETS - 1)[..] < level_delta_key(1, 0)[..]);
        assert!(level_delta_key(1, u64::MAX)[..] < level_bucket_key(2, 0)[..]);
        assert!(level_delta_key(1, 9).starts_with(&level_delta_prefix(1)));
        // A bucket's packed key sorts right after its rkyv key, before the
        // next bucket's, and both layouts of a delta are under the prefix.
        assert!(level_bucket_prefix(1, 3)[..] < level_bucket_key(1, 3)[..]);
        assert!(level_bucket_key(1, 3)[..] < level_bucket_prefix(1, 4)[..]);
        assert!(level_bucket_key(1, 3).starts_with(&level_bucket_prefix(1, 3)));
        assert!(rkyv_level_delta_key(1, 9).starts_with(&level_delta_prefix(1)));
        assert!(level_bucket_key(1, LEVEL_BUCKETS - 1)[..] < rkyv_level_delta_key(1, 0)[..]);
        assert!(is_packed_level_key(&level_delta_key(1, 9)));
        assert!(!is_packed_level_key(&rkyv_level_delta_key(1, 9)));
        assert!(is_packed_level_key(&level_bucket_key(1, 1)));
        assert!(!is_packed_level_key(&level_bucket_prefix(1, 1)));
        assert!((0..10_000).all(|sku| level_bucket(sku) < LEVEL_BUCKETS));
        // Dense SKU numbers spread over every bucket.
        let used: std::collections::HashSet<u16> = (0..1_000).map(level_bucket).collect();
        assert_eq!(used.len(), usize::from(LEVEL_BUCKETS));
        assert!(rollup_key(1, 2, 3, 1439) < rollup_key(1, 2, 4, 0));
        assert!(rollup_key(1, 2, 3, 4).starts_with(&rollup_day_prefix(1, 2)));
        assert!(batch_key(1, 300) < batch_key(2, 1));
        assert_eq!(watermark_key(1), [0, 0, 0, 0, 0, 0, 0, 1]);
    }
}
