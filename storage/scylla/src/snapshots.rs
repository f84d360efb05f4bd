//! The snapshot rows of a materialization (stock levels, rollups): one
//! per key, the newest, and the version each is stamped with
//! (docs/internals/design.md, "ScyllaDB").

use std::collections::HashMap;

use tillstream_storage::rows::{RowSet, StockLevelRow, TerminalRollupRow};

/// A rollup minute's version: its sales and refunds. Each event applied
/// to the minute adds one of either, so it only grows, on any node.
pub(crate) fn rollup_version(r: &TerminalRollupRow) -> i64 {
    i64::from(r.sales) + i64::from(r.refunds)
}

/// Snapshot rows staged per chunk: a partition of the staging tables.
pub(crate) const STAGED_PER_CHUNK: usize = 1024;

pub(crate) fn staged_chunk(i: usize) -> i32 {
    i32::try_from(i / STAGED_PER_CHUNK).unwrap_or(i32::MAX)
}

/// The snapshot rows of one materialization, one per key: a SKU's
/// highest version, a rollup minute's last value (a flush gathers the
/// rows of many batches, and one key may come several times).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Snapshots {
    pub(crate) levels: Vec<StockLevelRow>,
    pub(crate) rollups: Vec<TerminalRollupRow>,
}

impl Snapshots {
    pub(crate) fn newest_of(rows: &RowSet) -> Snapshots {
        let mut levels: HashMap<(u32, u64), StockLevelRow> = HashMap::new();
        for r in &rows.stock_levels {
            let slot = levels.entry((r.store, r.sku)).or_insert(*r);
            if r.version >= slot.version {
                *slot = *r;
            }
        }
        let mut rollups: HashMap<(u32, u32, u32, u16), TerminalRollupRow> = HashMap::new();
        for r in &rows.terminal_rollups {
            // Rows are in LSN order: the last is the newest.
            rollups.insert((r.store, r.day, r.terminal, r.minute), *r);
        }
        Snapshots {
            levels: levels.into_values().collect(),
            rollups: rollups.into_values().collect(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.levels.is_empty() && self.rollups.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flush_stages_one_snapshot_row_per_key_the_newest() {
        use tillstream_storage::testkit::sample;
        let s = sample();
        let level = s.stock_levels[0];
        let rollup = s.terminal_rollups[0];
        let rows = RowSet {
            stock_levels: vec![
                StockLevelRow {
                    version: 9,
                    level: 90,
                    ..level
                },
                StockLevelRow {
                    version: 7,
                    level: 70,
                    ..level
                },
            ],
            terminal_rollups: vec![
                TerminalRollupRow { sales: 1, ..rollup },
                TerminalRollupRow { sales: 2, ..rollup },
            ],
            ..RowSet::default()
        };
        let snap = Snapshots::newest_of(&rows);
        assert_eq!(snap.levels.len(), 1);
        assert_eq!((snap.levels[0].version, snap.levels[0].level), (9, 90));
        assert_eq!(snap.rollups.len(), 1);
        assert_eq!(
            snap.rollups[0].sales, 2,
            "the last of a flush is the newest"
        );
        assert_eq!(staged_chunk(STAGED_PER_CHUNK - 1), 0);
        assert_eq!(staged_chunk(STAGED_PER_CHUNK), 1);
    }
}
