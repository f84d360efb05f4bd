//! Tests of `levels`: compaction, its bound, and the newest-level merge.

use super::*;
use crate::tests::level_of as level;
use tillstream_storage::store::Store;

#[test]
fn one_store_compacts_per_commit_unless_one_is_at_the_hard_bound() {
    let m = MAX_LEVEL_DELTAS;
    assert_eq!(compaction_pick([0, m - 1, 1].into_iter()), None);
    assert_eq!(compaction_pick([m, m + 1, m + 1, 2].into_iter()), Some(1));
    assert_eq!(compaction_pick([m, 0].into_iter()), Some(0));
}

#[test]
fn stores_that_reach_the_bound_together_compact_in_turn() -> crate::tests::TestResult {
    let (_dir, store) = crate::tests::open()?;
    // Four stores touched by every commit: their counts rise in step.
    let stores = 1..=4u32;
    let mut version = 0;
    let mut compacted_per_commit = Vec::new();
    for _ in 0..6 * MAX_LEVEL_DELTAS {
        version += 1;
        let rows = stores
            .clone()
            .map(|s| level(s, 7, version as i64, version))
            .collect();
        let before: Vec<u32> = stores
            .clone()
            .map(|s| store.level_delta_keys(s))
            .collect::<Result<_, _>>()?;
        store.commit(&RowSet {
            stock_levels: rows,
            ..RowSet::default()
        })?;
        let mut compacted = 0;
        for (s, was) in stores.clone().zip(before) {
            let now = store.level_delta_keys(s)?;
            assert!(now <= HARD_MAX_LEVEL_DELTAS, "store {s}: {now} deltas");
            compacted += usize::from(now < was);
            let levels = store.load_levels(s)?;
            assert_eq!((levels.len(), levels[0].version), (1, version), "store {s}");
        }
        compacted_per_commit.push(compacted);
    }
    assert!(
        compacted_per_commit.iter().all(|&n| n <= 1),
        "{compacted_per_commit:?}"
    );
    assert!(
        compacted_per_commit.iter().sum::<usize>() >= 4,
        "every store compacted"
    );
    Ok(())
}

#[test]
fn levels_of_data_format_1_still_read_and_are_rewritten_packed_when_compacted()
-> crate::tests::TestResult {
    let (_dir, store) = crate::tests::open()?;
    // What a format-1 build wrote: rkyv bucket blocks and an rkyv delta.
    let mut old: Vec<StockLevelRow> = (0..300u64).map(|sku| level(1, sku, 1000, 1)).collect();
    old.sort_by_key(|r| (keys::level_bucket(r.sku), r.sku));
    for run in old.chunk_by(|a, b| keys::level_bucket(a.sku) == keys::level_bucket(b.sku)) {
        let bucket = keys::level_bucket(run[0].sku);
        let value = crate::archive::encode_block(&run.to_vec())?;
        store
            .levels
            .insert(keys::level_bucket_prefix(1, bucket), value.as_slice())?;
    }
    let value = crate::archive::encode_block(&vec![level(1, 5, 555, 2)])?;
    store
        .levels
        .insert(keys::rkyv_level_delta_key(1, 0), value.as_slice())?;
    let level_of =
        |levels: &[StockLevelRow], sku: u64| levels.iter().find(|r| r.sku == sku).map(|r| r.level);
    let levels = store.load_levels(1)?;
    assert_eq!(levels.len(), 300);
    assert_eq!(
        (level_of(&levels, 5), level_of(&levels, 6)),
        (Some(555), Some(1000))
    );

    // This build's commits add packed deltas until the store compacts.
    let mut version = 2;
    while store
        .levels
        .get(keys::rkyv_level_delta_key(1, 0))?
        .is_some()
    {
        assert!(version < 4 * u64::from(MAX_LEVEL_DELTAS), "never compacted");
        version += 1;
        store.commit(&RowSet {
            stock_levels: vec![level(1, 7, version as i64, version)],
            ..RowSet::default()
        })?;
    }
    let levels = store.load_levels(1)?;
    assert_eq!(levels.len(), 300);
    assert_eq!(level_of(&levels, 5), Some(555));
    assert_eq!(level_of(&levels, 7), Some(version as i64));
    assert_eq!(level_of(&levels, 6), Some(1000));
    // The buckets that changed are packed now, their rkyv blocks gone;
    // the others are left as they were.
    for sku in [5, 7] {
        let bucket = keys::level_bucket(sku);
        assert!(
            store
                .levels
                .get(keys::level_bucket_prefix(1, bucket))?
                .is_none()
        );
        assert!(
            store
                .levels
                .get(keys::level_bucket_key(1, bucket))?
                .is_some()
        );
    }
    let untouched = (0..300)
        .map(keys::level_bucket)
        .find(|b| ![5, 7].map(keys::level_bucket).contains(b))
        .ok_or("every bucket changed")?;
    assert!(
        store
            .levels
            .get(keys::level_bucket_prefix(1, untouched))?
            .is_some()
    );
    Ok(())
}

#[test]
fn a_delta_of_levels_packs_to_under_a_fifth_of_its_rkyv_size() -> crate::tests::TestResult {
    // A commit's changed levels of one store, sorted by SKU.
    let run: Vec<StockLevelRow> = (0..2_000u64)
        .map(|i| StockLevelRow {
            updated_ts_us: tillstream_storage::testkit::T0 + (i as i64 * 7_919) % 50_000,
            ..level(3, 10_000 + i * 3, 40 - (i % 90) as i64, 100 + i % 500)
        })
        .collect();
    let rkyv = crate::archive::encode_block(&run)?.len();
    let mut packer = Packer::new(Table::StockLevels);
    let bytes = encode_levels(&mut packer, &run).to_vec();
    assert!(
        bytes.len() * 5 < rkyv,
        "{} packed, {rkyv} in rkyv",
        bytes.len()
    );
    assert_eq!(packed::decode::<StockLevelRow>(&bytes)?, run);
    Ok(())
}

proptest::proptest! {
    /// Against a model: per (store, SKU) the first row of the highest
    /// version, in (store, SKU) order, with SKUs far apart too (the
    /// radix sort's high key bytes).
    #[test]
    fn newest_levels_keeps_the_first_of_the_highest_version(
        picks in proptest::collection::vec((0u32..3, 0usize..6, 0u64..4, -9i64..9), 0..200),
    ) {
        const SKUS: [u64; 6] = [0, 1, 255, 256, 1 << 40, u64::MAX];
        let mut rows: Vec<StockLevelRow> = picks
            .iter()
            .map(|&(store, sku, version, l)| level(store, SKUS[sku], l, version))
            .collect();
        let mut model = std::collections::BTreeMap::new();
        for r in &rows {
            let best = model.entry((r.store, r.sku)).or_insert(*r);
            if r.version > best.version {
                *best = *r;
            }
        }
        newest_levels(&mut rows);
        proptest::prop_assert_eq!(rows, model.into_values().collect::<Vec<_>>());
    }

    /// A commit's levels, read in place across its parts with buffers
    /// kept from an earlier commit, are what the merge of all its rows
    /// in one vector gives.
    #[test]
    fn a_commits_newest_levels_are_read_across_its_parts(
        picks in proptest::collection::vec((0u32..3, 0u64..6, 0u64..4, -9i64..9), 0..200),
        cuts in proptest::collection::vec(0usize..200, 0..8),
        earlier in proptest::collection::vec((0u32..3, 0u64..6, 0u64..4, -9i64..9), 0..50),
    ) {
        let rows_of = |picks: &[(u32, u64, u64, i64)]| -> Vec<StockLevelRow> {
            picks.iter().map(|&(store, sku, version, l)| level(store, sku, l, version)).collect()
        };
        let rows = rows_of(&picks);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(rows.len())).collect();
        cuts.sort_unstable();
        let mut parts = Vec::new();
        let mut from = 0;
        for to in cuts.into_iter().chain([rows.len()]) {
            parts.push(RowSet {
                stock_levels: rows[from..to].to_vec(),
                ..RowSet::default()
            });
            from = to;
        }
        let mut scratch = LevelScratch::default();
        let earlier = [RowSet { stock_levels: rows_of(&earlier), ..RowSet::default() }];
        scratch.gather_newest(&earlier).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
        scratch.trim(0);
        scratch.gather_newest(&parts).map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
        let mut want = rows;
        newest_levels(&mut want);
        proptest::prop_assert_eq!(&scratch.newest, &want);
    }
}

#[test]
fn the_highest_version_wins_and_ties_keep_the_first() {
    let mut rows = vec![
        level(2, 1, 10, 3),
        level(1, 5, 1, 1),
        level(1, 5, 2, 2),
        level(2, 1, 99, 3),
        level(1, 4, 7, 1),
        level(1, 5, 0, 1),
    ];
    newest_levels(&mut rows);
    let got: Vec<_> = rows.iter().map(|r| (r.store, r.sku, r.level)).collect();
    assert_eq!(got, [(1, 4, 7), (1, 5, 2), (2, 1, 10)]);
}
