//! The backend's own faults against a live cluster (docs/internals/design.md,
//! "ScyllaDB"): one writer per node id, the journal's high-water mark,
//! weak consistency refused, the late window after a crash before the
//! checkpoint, and rollups written by another node id. Compiled as
//! ignored unless `TILLSTREAM_SCYLLA_NODES` is set at build time
//! (`testkit.rs`).

use super::testkit::TestKeyspace;
use super::*;
use tillstream_journal::encode_record;
use tillstream_storage::testkit::sample;
use tillstream_storage::{Query, TrailingJournal};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn records(lsns: std::ops::RangeInclusive<u64>) -> Vec<u8> {
    records_of("batch", lsns)
}

/// Journal records whose payloads say who wrote them.
fn records_of(who: &str, lsns: std::ops::RangeInclusive<u64>) -> Vec<u8> {
    let mut buf = Vec::new();
    for lsn in lsns {
        encode_record(lsn, &[format!("{who} {lsn}").as_bytes()], &mut buf);
    }
    buf
}

fn err_text<T>(r: Result<T, StoreError>) -> String {
    r.err().map(|e| e.to_string()).unwrap_or_default()
}

/// A second server started under a live one's node id is refused, not
/// interleaved with it.
#[test]
#[cfg_attr(
    not(scylla_cluster),
    ignore = "needs a ScyllaDB cluster: build with TILLSTREAM_SCYLLA_NODES set"
)]
fn a_second_writer_under_a_live_node_id_is_refused() -> TestResult {
    let ks = TestKeyspace::new("fence_live")?;
    let first = ScyllaStore::connect(ks.cfg.clone())?;
    first.journal_append(&records(1..=2), 2)?;
    let second = err_text(ScyllaStore::connect(ks.cfg.clone()));
    assert!(second.contains("another live tillstream"), "{second}");
    // The first goes on as if nothing happened.
    first.journal_append(&records(3..=3), 3)?;
    drop(first);
    // Released at a clean close: the next start takes it at once.
    let started = std::time::Instant::now();
    let next = ScyllaStore::connect(ks.cfg.clone())?;
    assert!(started.elapsed() < fence::LEASE, "{:?}", started.elapsed());
    assert_eq!(next.journal_last_lsn(), 3);
    Ok(())
}

/// A holder that stopped renewing (a frozen or partitioned process) is
/// fenced by the next start: its later appends and checkpoints fail
/// instead of writing over the new holder's records, and the new holder
/// starts after every record the old one had acknowledged.
#[test]
#[cfg_attr(
    not(scylla_cluster),
    ignore = "needs a ScyllaDB cluster: build with TILLSTREAM_SCYLLA_NODES set"
)]
fn a_frozen_holder_is_fenced_by_the_next_start() -> TestResult {
    let ks = TestKeyspace::new("fence_frozen")?;
    let old = ScyllaStore::connect(ks.cfg.clone())?;
    old.journal_append(&records(1..=3), 3)?;
    old.freeze_heartbeat();
    let new = ScyllaStore::connect(ks.cfg.clone())?;
    assert_eq!(
        new.journal_last_lsn(),
        3,
        "the walk sees every acked record"
    );
    let late = err_text(old.journal_append(&records_of("fenced", 4..=4), 4));
    assert!(late.contains("fenced"), "{late}");
    // Its store stays poisoned: a checkpoint is refused too.
    assert!(old.materialize(&[], 3).is_err());
    assert!(old.check_writable().is_err());
    new.journal_append(&records_of("new", 4..=5), 5)?;
    let mut seen = Vec::new();
    new.journal_replay(0, &mut |lsn, payload| {
        seen.push((lsn, payload.to_vec()));
        Ok(())
    })?;
    let want: Vec<(u64, Vec<u8>)> = (1..=5)
        .map(|lsn| {
            let who = if lsn <= 3 { "batch" } else { "new" };
            (lsn, format!("{who} {lsn}").into_bytes())
        })
        .collect();
    assert_eq!(seen, want);
    Ok(())
}

/// Another node adopts a frozen holder's journal and gives it back; the
/// holder thaws and appends (its mark fails, so nothing is acked). The
/// node id's next start must not replay that late append: its stores
/// have new owners by then, who write their rows.
#[test]
#[cfg_attr(
    not(scylla_cluster),
    ignore = "needs a ScyllaDB cluster: build with TILLSTREAM_SCYLLA_NODES set"
)]
fn a_fenced_holders_late_append_is_not_replayed_by_the_next_start() -> TestResult {
    let ks = TestKeyspace::new("fence_late")?;
    let old = ScyllaStore::connect(ks.cfg.clone())?;
    old.journal_append(&records(1..=3), 3)?;
    old.freeze_heartbeat();
    let adopter = ScyllaStore::connect(ScyllaConfig {
        adopting: true,
        ..ks.cfg.clone()
    })?;
    assert_eq!(adopter.journal_last_lsn(), 3);
    drop(adopter);
    let late = err_text(old.journal_append(&records_of("late", 4..=5), 5));
    assert!(late.contains("fenced"), "{late}");
    let next = ScyllaStore::connect(ks.cfg.clone())?;
    assert_eq!(
        next.journal_last_lsn(),
        3,
        "the late append was never acked"
    );
    next.journal_append(&records_of("new", 4..=4), 4)?;
    let mut seen = Vec::new();
    next.journal_replay(0, &mut |lsn, payload| {
        seen.push((lsn, String::from_utf8_lossy(payload).into_owned()));
        Ok(())
    })?;
    let want: Vec<(u64, String)> = [(1, "batch 1"), (2, "batch 2"), (3, "batch 3"), (4, "new 4")]
        .into_iter()
        .map(|(lsn, text)| (lsn, text.to_string()))
        .collect();
    assert_eq!(seen, want, "LSN 5 of the late append is left out too");
    Ok(())
}

/// A start whose journal walk ends below an LSN an ack covered refuses
/// to run: its generation would write over the missing records.
#[test]
#[cfg_attr(
    not(scylla_cluster),
    ignore = "needs a ScyllaDB cluster: build with TILLSTREAM_SCYLLA_NODES set"
)]
fn a_journal_with_a_hole_below_the_high_water_mark_refuses_to_start() -> TestResult {
    let ks = TestKeyspace::new("high_water")?;
    {
        let store = ScyllaStore::connect(ks.cfg.clone())?;
        store.journal_append(&records(1..=4), 4)?;
    }
    // A replica lost the record, or a read below quorum missed it.
    ks.run(&format!(
        "DELETE FROM {{ks}}.journal WHERE node = '{}' AND segment = 0 AND lsn = 3",
        ks.cfg.node_id
    ))?;
    let refused = err_text(ScyllaStore::connect(ks.cfg.clone()));
    assert!(
        refused.contains("ends at LSN 2") && refused.contains("up to 4"),
        "{refused}"
    );
    Ok(())
}

/// One replica of three answering for reads and writes alike can miss an
/// acknowledged write: refused at connect, with what to use instead.
#[test]
#[cfg_attr(
    not(scylla_cluster),
    ignore = "needs a ScyllaDB cluster: build with TILLSTREAM_SCYLLA_NODES set"
)]
fn a_consistency_that_can_miss_a_write_is_refused() -> TestResult {
    let ks = TestKeyspace::new("consistency")?;
    let rf: u32 = std::env::var("TILLSTREAM_SCYLLA_RF")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let mut cfg = ks.cfg.clone();
    cfg.consistency = Consistency::One;
    let got = ScyllaStore::connect(cfg.clone());
    if rf >= 2 {
        let e = err_text(got);
        assert!(e.contains("consistency one") && e.contains("quorum"), "{e}");
    } else {
        assert!(got.is_ok(), "a single replica is always read");
    }
    cfg.consistency = Consistency::LocalQuorum;
    cfg.datacenter = Some("no_such_dc".into());
    let e = err_text(ScyllaStore::connect(cfg));
    assert!(e.contains("no_such_dc"), "{e}");
    Ok(())
}

/// A crash after a materialization's rows, before its checkpoint: the
/// replay applies those movements again, so activation must not have
/// read them into the late window already.
#[test]
#[cfg_attr(
    not(scylla_cluster),
    ignore = "needs a ScyllaDB cluster: build with TILLSTREAM_SCYLLA_NODES set"
)]
fn movements_past_the_checkpoint_stay_out_of_the_late_window() -> TestResult {
    let ks = TestKeyspace::new("late_window")?;
    let rows = sample();
    let store_id = rows.stock_movements[0].store;
    let times = rows.stock_movements.iter().map(|m| m.ts_us);
    let every = (
        times.clone().min().unwrap_or(0),
        times.max().unwrap_or(0) + 1,
    );
    let window = |s: &ScyllaStore| s.load_movements(store_id, &[every]);
    let (first, second) = rows
        .stock_movements
        .split_at(rows.stock_movements.len() / 2);
    let part = |m: &[StockMovementRow]| RowSet {
        stock_movements: m.to_vec(),
        ..RowSet::default()
    };
    {
        let store = ScyllaStore::connect(ks.cfg.clone())?;
        store.materialize(&[part(first)], 1)?;
        store.write_rows_then_crash(&part(second), 2)?;
    }
    let store = ScyllaStore::connect(ks.cfg.clone())?;
    assert_eq!(store.materialized_lsn()?, 1);
    let want = |m: &[StockMovementRow]| -> Vec<WindowMovement> {
        let mut v: Vec<WindowMovement> = m
            .iter()
            .filter(|r| r.store == store_id)
            .filter_map(WindowMovement::of)
            .collect();
        v.sort();
        v
    };
    let mut got = window(&store)?;
    got.sort();
    assert_eq!(got, want(first), "only what the checkpoint covers");
    // The replay writes them again, and then they count, once.
    store.materialize(&[part(second)], 2)?;
    let mut got = window(&store)?;
    got.sort();
    assert_eq!(got, want(&rows.stock_movements));
    Ok(())
}

/// A store's rollup minute written by a node whose LSNs are lower (a node
/// recreated under a new id, or another node taking the store over): the
/// newer minute wins, because its version is its own, not the LSN.
#[test]
#[cfg_attr(
    not(scylla_cluster),
    ignore = "needs a ScyllaDB cluster: build with TILLSTREAM_SCYLLA_NODES set"
)]
fn a_rollup_from_a_node_with_lower_lsns_still_lands() -> TestResult {
    let ks = TestKeyspace::new("rollups")?;
    let rollup = sample().terminal_rollups[0];
    let at = |sales: u32| RowSet {
        terminal_rollups: vec![TerminalRollupRow { sales, ..rollup }],
        ..RowSet::default()
    };
    {
        let old = ScyllaStore::connect(ks.as_node("old-node"))?;
        old.materialize(&[at(5)], 1_000)?;
    }
    let new = ScyllaStore::connect(ks.as_node("new-node"))?;
    new.materialize(&[at(6)], 3)?;
    let minutes = new.load_rollups(rollup.store, rollup.day)?;
    let mine = minutes
        .iter()
        .find(|r| (r.terminal, r.minute) == (rollup.terminal, rollup.minute));
    assert_eq!(mine.map(|r| r.sales), Some(6));
    Ok(())
}

/// Acknowledged records still only in a node id's journal are reported,
/// to a reader of the tables too, until a checkpoint covers them: a
/// verify must not count them missing.
#[test]
#[cfg_attr(
    not(scylla_cluster),
    ignore = "needs a ScyllaDB cluster: build with TILLSTREAM_SCYLLA_NODES set"
)]
fn a_journal_past_its_checkpoint_is_reported_trailing() -> TestResult {
    let ks = TestKeyspace::new("trailing")?;
    let writer = ScyllaStore::connect(ks.cfg.clone())?;
    let other = ScyllaStore::connect(ks.as_node("other"))?;
    other.journal_append(&records(1..=2), 2)?;
    other.materialize(&[], 2)?;
    writer.journal_append(&records(1..=3), 3)?;
    let reader = ScyllaStore::connect(ScyllaConfig {
        read_only: true,
        ..ks.cfg.clone()
    })?;
    let expect = vec![TrailingJournal {
        writer: ks.cfg.node_id.clone(),
        tables_lsn: 0,
        journal_lsn: 3,
    }];
    assert_eq!(reader.trailing_journals()?, expect);
    assert_eq!(writer.trailing_journals()?, expect);
    writer.materialize(&[], 3)?;
    assert_eq!(reader.trailing_journals()?, Vec::new());
    Ok(())
}

/// The ledger's digest on the cluster: kept with each batch, 0 for a row
/// from before the column, and a keyspace made by a build without the
/// column gets it from `schema apply`.
#[test]
#[cfg_attr(
    not(scylla_cluster),
    ignore = "needs a ScyllaDB cluster: build with TILLSTREAM_SCYLLA_NODES set"
)]
fn ledger_digests_and_a_keyspace_from_before_them() -> TestResult {
    let ks = TestKeyspace::new("digest")?;
    // The keyspace as an older build left it.
    ks.run("ALTER TABLE {ks}.device_batches DROP digest")?;
    apply_schema(
        &ks.cfg,
        &tillstream_storage::schema::SchemaOptions {
            keyspace: ks.cfg.keyspace.clone(),
            replication: "{'class': 'NetworkTopologyStrategy', 'datacenter1': 1}".into(),
            ttl_days: None,
        },
    )?;
    ks.run("INSERT INTO {ks}.device_batches (device, seq_bucket, seq, events, received_at_us) VALUES (1, 0, 2, 4, 0)")?;
    let store = ScyllaStore::connect(ks.cfg.clone())?;
    let mut rows = RowSet::default();
    rows.batches.push(BatchRow {
        device: 1,
        seq: 1,
        events: 3,
        received_at_us: 0,
        digest: u64::MAX - 6,
    });
    store.commit(&rows)?;
    assert_eq!(store.ledger_digest(1, 1)?, Some(u64::MAX - 6));
    assert_eq!(store.ledger_digest(1, 2)?, Some(0));
    assert_eq!(store.ledger_digest(1, 3)?, None);
    Ok(())
}
