//! The embedded store's write path under a large commit: thousands of
//! rows across stores and hours, packed into many blocks.

use super::tests::{TestResult, dump, open};
use super::*;
use tillstream_storage::testkit::sample;

/// A commit of over 4,096 rows, across stores and hours, reads back the
/// same, before and after a reopen.
#[test]
fn a_large_commit_round_trips() -> TestResult {
    let (dir, store) = open()?;
    let base = sample();
    let mut rows = base.clone();
    for copy in 1..=200u64 {
        let store_id = u32::try_from(copy % 7).unwrap_or(0) + 1;
        let shift = |k: EventKey| EventKey {
            seq: k.seq + copy * 1_000,
            ..k
        };
        rows.sales.extend(base.sales.iter().map(|r| SaleRow {
            key: shift(r.key),
            store: store_id,
            ..*r
        }));
        rows.sale_lines
            .extend(base.sale_lines.iter().map(|r| SaleLineRow {
                key: shift(r.key),
                store: store_id,
                ..*r
            }));
        rows.stock_movements
            .extend(base.stock_movements.iter().map(|r| StockMovementRow {
                key: shift(r.key),
                store: store_id,
                ..*r
            }));
    }
    assert!(rows.len() > 4_096, "{} rows", rows.len());
    store.commit(&rows)?;
    let expect = dump(&tillstream_storage::testkit::MemQuery(rows.clone()))?;
    assert_eq!(dump(&store)?, expect);
    drop(store);
    let store = EmbeddedStore::open(dir.path())?;
    assert_eq!(dump(&store)?, expect);
    Ok(())
}
