//! The same suite against a live ScyllaDB cluster, when
//! `TILLSTREAM_SCYLLA_NODES` names one at build time (`host:port,...`;
//! `TILLSTREAM_SCYLLA_DC`, default `datacenter1`, and
//! `TILLSTREAM_SCYLLA_RF`, default 1, shape the test keyspaces). Each
//! test makes a keyspace of its own, `tillstream_conformance_<n>`, and
//! "reopening" is connecting a new store to it under the same node id:
//! what a replacement node does.

use tillstream_storage::testkit::conformance::*;
use tillstream_storage::testkit::sample;
use tillstream_storage::*;

use crate::ScyllaStore;
use crate::testkit::TestKeyspace;

struct Scylla(TestKeyspace);

impl Harness for Scylla {
    type S = ScyllaStore;
    fn open(&mut self) -> Result<ScyllaStore, StoreError> {
        ScyllaStore::connect(self.0.cfg.clone())
    }
}

fn scylla() -> Result<Scylla, Box<dyn std::error::Error>> {
    Ok(Scylla(TestKeyspace::new("conformance")?))
}

#[test]
#[cfg_attr(
    not(scylla_cluster),
    ignore = "needs a ScyllaDB cluster: build with TILLSTREAM_SCYLLA_NODES set"
)]
fn scylla_rows_round_trip() -> TestResult {
    rows_round_trip(&mut scylla()?)
}

#[test]
#[cfg_attr(
    not(scylla_cluster),
    ignore = "needs a ScyllaDB cluster: build with TILLSTREAM_SCYLLA_NODES set"
)]
fn scylla_parts_store_what_their_concatenation_stores() -> TestResult {
    parts_store_what_their_concatenation_stores(&mut scylla()?)
}

#[test]
#[cfg_attr(
    not(scylla_cluster),
    ignore = "needs a ScyllaDB cluster: build with TILLSTREAM_SCYLLA_NODES set"
)]
fn scylla_journal_replays_what_the_checkpoint_does_not_cover() -> TestResult {
    the_journal_replays_what_the_checkpoint_does_not_cover(&mut scylla()?)
}

#[test]
#[cfg_attr(
    not(scylla_cluster),
    ignore = "needs a ScyllaDB cluster: build with TILLSTREAM_SCYLLA_NODES set"
)]
fn scylla_a_crash_between_rows_and_checkpoint_loses_and_doubles_nothing() -> TestResult {
    a_crash_between_rows_and_checkpoint_loses_and_doubles_nothing(&mut scylla()?)
}

#[test]
#[cfg_attr(
    not(scylla_cluster),
    ignore = "needs a ScyllaDB cluster: build with TILLSTREAM_SCYLLA_NODES set"
)]
fn scylla_snapshot_rows_keep_the_newest() -> TestResult {
    snapshot_rows_keep_the_newest(&mut scylla()?)
}

#[test]
#[cfg_attr(
    not(scylla_cluster),
    ignore = "needs a ScyllaDB cluster: build with TILLSTREAM_SCYLLA_NODES set"
)]
fn scylla_queries_answer_from_the_rows() -> TestResult {
    queries_answer_from_the_rows(&mut scylla()?)
}

/// A crash after a checkpoint, before its snapshot rows left the
/// staging tables: the next start copies them in, so the levels and
/// rollups are those of the checkpoint, not of the one before.
#[test]
#[cfg_attr(
    not(scylla_cluster),
    ignore = "needs a ScyllaDB cluster: build with TILLSTREAM_SCYLLA_NODES set"
)]
fn scylla_a_crash_after_the_checkpoint_is_finished_at_the_next_start() -> TestResult {
    let mut b = scylla()?;
    let rows = sample();
    let level = rows.stock_levels[0];
    let rollup = rows.terminal_rollups[0];
    let at = |version: u64, sales: u32| RowSet {
        stock_levels: vec![StockLevelRow {
            version,
            level: i64::try_from(version).unwrap_or(0) * 10,
            ..level
        }],
        terminal_rollups: vec![TerminalRollupRow { sales, ..rollup }],
        ..RowSet::default()
    };
    {
        let store = b.open()?;
        store.materialize(std::slice::from_ref(&at(1, 1)), 1)?;
        store.materialize_then_crash(&at(2, 5), 2)?;
        // Before the next start the tables still hold checkpoint 1's.
        let levels = store.load_levels(level.store)?;
        assert_eq!(levels.iter().map(|l| l.version).max(), Some(1));
    }
    let store = b.open()?;
    assert_eq!(store.materialized_lsn()?, 2);
    let levels = store.load_levels(level.store)?;
    let mine = levels.iter().find(|l| l.sku == level.sku);
    assert_eq!(mine.map(|l| (l.version, l.level)), Some((2, 20)));
    let rollups = store.load_rollups(rollup.store, rollup.day)?;
    let minute = rollups
        .iter()
        .find(|r| (r.terminal, r.minute) == (rollup.terminal, rollup.minute));
    assert_eq!(minute.map(|r| r.sales), Some(5));
    Ok(())
}
