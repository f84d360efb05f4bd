use super::*;

#[test]
fn a_later_generation_overwrites_and_every_record_is_below_wall_clock() {
    // Generation 2's LSN 5 wins over generation 1's LSN 5 and over
    // generation 1's later LSNs.
    assert!(journal_timestamp(2, 5) > journal_timestamp(1, 5));
    assert!(journal_timestamp(2, 5) > journal_timestamp(1, 1 << 30));
    assert!(journal_timestamp(1, 6) > journal_timestamp(1, 5));
    // A pruning DELETE stamped with the wall clock (2026: ~1.8e15 µs)
    // covers records of the first 20,000 starts.
    assert!(journal_timestamp(20_000, 1 << 35) < 1_700_000_000_000_000);
    assert!(journal_timestamp(u64::MAX, u64::MAX) > 0);
}

#[test]
fn writes_group_by_partition_and_split_at_the_limits() {
    let rows = |n: usize, key: i64, bytes: usize| (0..n).map(move |i| (key, bytes, (key, i)));
    let items = rows(70, 1, 10)
        .chain(rows(1, 2, 10))
        .chain(rows(3, 1, 10))
        .chain(rows(2, 3, BATCH_BYTES))
        .enumerate()
        .map(|(at, (key, bytes, (k, _)))| (key, bytes, (k, at)));
    let chunks = chunk_by_partition(items);
    let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
    // Partition 1: 73 rows in 32 + 32 + 9; partition 2 alone; the two
    // big rows of partition 3 apart.
    assert_eq!(sizes, vec![32, 32, 9, 1, 1, 1]);
    // No chunk mixes partitions, and each keeps the rows' order.
    for c in &chunks {
        assert!(c.iter().all(|(k, _)| *k == c[0].0));
        assert!(c.windows(2).all(|w| w[0].1 < w[1].1));
    }
    assert_eq!(chunks[2][8], (1, 73));
}
