//! Rollup minutes that leave memory while their day stays in use
//! (`ShardCore::passivate_idle`).

use super::*;
use crate::route::{BatchPlan, plan_batch};
use crate::testkit::{self, line, refund, sale};
use tillstream_protocol::ValidatedBatch;
use tillstream_storage::RowSet;
use tillstream_storage::time::{MINUTE_US, minute_of_day};

type R = Result<(), Box<dyn std::error::Error>>;

/// 22:13 UTC: the half hour before it is the same day.
const NOW: i64 = 1_700_000_000_000_000;

type Tables = std::collections::BTreeMap<(u32, u32, u32, u16), TerminalRollupRow>;

fn plan(b: &ValidatedBatch) -> BatchPlan {
    let mut plan = BatchPlan::new(1);
    plan_batch(b.get(), 1, &Rules::default(), NOW, &mut plan);
    plan
}

fn needs(c: &ShardCore, b: &ValidatedBatch) -> Vec<Need> {
    let mut out = Vec::new();
    c.needs(b.get(), &plan(b).parts[0], &mut out);
    out
}

/// Loads what `b` needs from `tables`, then applies it with `lsn` at `now`.
fn load_and_apply(c: &mut ShardCore, tables: &Tables, lsn: u64, b: &ValidatedBatch) -> RowSet {
    for need in needs(c, b) {
        if let Need::RollupDay { store, day } = need {
            let rows: Vec<_> = tables.values().copied().collect();
            c.activate_rollup_day(store, day, &rows);
        }
    }
    let mut out = RowSet::default();
    for (_, items) in plan(b).touched() {
        c.apply(lsn, 1, b.get(), items, NOW, &mut out);
    }
    out
}

/// A sweep that drops only rollup minutes (no store or day is old
/// enough); returns how many went.
fn evict(c: &mut ShardCore, minutes_before_us: i64, materialized_lsn: u64) -> u64 {
    let idle = IdleBefore {
        entities_us: i64::MIN,
        minutes_us: minutes_before_us,
    };
    let gone = c.passivate_idle(idle, materialized_lsn);
    assert_eq!((gone.stores, gone.days), (0, 0));
    gone.rollup_minutes
}

fn materialize(tables: &mut Tables, out: &RowSet) {
    for r in &out.terminal_rollups {
        tables.insert((r.store, r.day, r.terminal, r.minute), *r);
    }
}

#[test]
fn a_late_sale_in_an_evicted_minute_adds_to_its_stored_row() -> R {
    let mut c = ShardCore::new(ShardConfig::default());
    let mut tables = Tables::default();
    let early = NOW - 10 * MINUTE_US;
    let first = testkit::batch(1, vec![sale(early, 1, 4, vec![line(7, 1, 100)])])?;
    let out = load_and_apply(&mut c, &tables, 10, &first);
    materialize(&mut tables, &out);
    let next = testkit::batch(2, vec![sale(NOW, 1, 4, vec![line(7, 1, 100)])])?;
    let out = load_and_apply(&mut c, &tables, 11, &next);
    materialize(&mut tables, &out);
    assert_eq!(c.stats().rollup_minutes, 2);

    // Idle, but the tables do not hold its row yet: it stays.
    assert_eq!(evict(&mut c, NOW + 1, 9), 0);
    // Both minutes are in the tables and idle: both go, the day stays.
    assert_eq!(evict(&mut c, NOW + 1, 11), 2);
    let s = c.stats();
    assert_eq!((s.rollup_minutes, s.rollup_days_active), (0, 1));

    // A sale in a minute after those that left needs nothing loaded, nor
    // one of another till in a minute whose slot left for till 4 only.
    let other = testkit::batch(3, vec![sale(early + 2, 1, 5, vec![line(7, 1, 10)])])?;
    assert_eq!(needs(&c, &other), vec![]);
    let fresh = |seq| testkit::batch(seq, vec![sale(NOW + MINUTE_US, 1, 4, vec![line(7, 1, 50)])]);
    assert_eq!(needs(&c, &fresh(4)?), vec![]);
    // Applied on the day its minutes left, it must not make the day
    // forget them. Its first sale reaches the tables, the second not yet.
    let out = load_and_apply(&mut c, &tables, 12, &fresh(4)?);
    materialize(&mut tables, &out);
    load_and_apply(&mut c, &tables, 13, &fresh(5)?);

    // A sale in an evicted minute needs its day again ...
    let late = testkit::batch(6, vec![sale(early + 1, 1, 4, vec![line(7, 2, 100)])])?;
    assert_eq!(
        needs(&c, &late),
        vec![Need::RollupDay {
            store: 1,
            day: day(early)
        }]
    );
    // ... and adds to what the tables hold, not to zero.
    let out = load_and_apply(&mut c, &tables, 14, &late);
    assert_eq!(out.terminal_rollups.len(), 1);
    let r = out.terminal_rollups[0];
    assert_eq!((r.minute, r.sales, r.gross), (minute_of_day(early), 2, 300));
    // The reload brought back the other minute that left, and a later
    // sale there needs nothing.
    assert_eq!(c.stats().rollup_minutes, 3);
    assert_eq!(needs(&c, &next), vec![]);
    // It kept the slot in memory, newer than the tables' row of it.
    let out = load_and_apply(&mut c, &tables, 15, &fresh(7)?);
    assert_eq!(out.terminal_rollups[0].sales, 3);
    Ok(())
}

#[test]
fn evicting_minutes_after_every_batch_emits_the_rows_of_keeping_them() -> R {
    // Two tills, sales and refunds over six minutes, some late; one core
    // keeps every minute, the other evicts all it can after each batch
    // and reloads from the rows it emitted.
    let mut kept = ShardCore::new(ShardConfig::default());
    let mut evicting = ShardCore::new(ShardConfig::default());
    let mut tables = Tables::default();
    let at = |m: i64, s: i64| NOW - 6 * MINUTE_US + m * MINUTE_US + s;
    let batches = [
        vec![sale(at(0, 1), 1, 1, vec![line(7, 1, 100)])],
        vec![sale(at(1, 2), 1, 2, vec![line(7, 2, 100)])],
        vec![
            sale(at(2, 3), 1, 1, vec![line(8, 1, 250)]),
            sale(at(0, 4), 1, 2, vec![line(7, 1, 100)]),
        ],
        vec![refund(at(0, 5), 1, 1, vec![line(7, 1, 100)])],
        vec![
            sale(at(5, 6), 1, 2, vec![line(9, 3, 10)]),
            sale(at(1, 7), 1, 2, vec![line(9, 1, 10)]),
        ],
        vec![sale(at(2, 8), 1, 1, vec![line(7, 1, 100)])],
    ];
    let mut evicted = 0;
    for (i, events) in batches.into_iter().enumerate() {
        let lsn = i as u64 + 1;
        let b = testkit::batch(lsn, events)?;
        let want = load_and_apply(&mut kept, &Tables::default(), lsn, &b);
        let got = load_and_apply(&mut evicting, &tables, lsn, &b);
        assert_eq!(got.terminal_rollups, want.terminal_rollups, "batch {lsn}");
        materialize(&mut tables, &got);
        evicted += evict(&mut evicting, NOW + 1, lsn);
        assert_eq!(evicting.stats().rollup_minutes, 0, "batch {lsn}");
    }
    assert!(evicted >= 6, "{evicted}");
    Ok(())
}
