//! Passivation: idle stores and days leave memory once their rows are in
//! the tables (`ShardCore::passivate_idle`), and come back the same from
//! those rows.

use super::tests::{NOW, R, core};
use super::*;
use crate::route::{BatchPlan, plan_batch};
use crate::testkit::{self, count, line, movement, refund, sale};
use tillstream_protocol::ValidatedBatch;
use tillstream_storage::time::MINUTE_US;
use tillstream_storage::{RowSet, StockMovementRow, WindowMovement};

/// Applies `b` with `lsn` at `now` on a one-shard core.
fn apply_at(c: &mut ShardCore, lsn: u64, b: &ValidatedBatch, now: i64) -> RowSet {
    let mut plan = BatchPlan::new(1);
    plan_batch(b.get(), 1, &Rules::default(), now, &mut plan);
    let mut out = RowSet::default();
    for (_, items) in plan.touched() {
        c.apply(lsn, 1, b.get(), items, now, &mut out);
    }
    out
}

#[test]
fn idle_stores_and_days_leave_memory_once_their_rows_are_in_the_tables() -> R {
    let mut c = core(0, 1);
    let old = testkit::batch(1, vec![sale(NOW, 1, 4, vec![line(7, 1, 100)])])?;
    apply_at(&mut c, 10, &old, NOW);
    let hot = testkit::batch(2, vec![movement(NOW, 2, 9, 5)])?;
    apply_at(&mut c, 11, &hot, NOW + HOUR_US);
    let s = c.stats();
    assert_eq!(
        (s.stores_active, s.skus_active, s.rollup_days_active),
        (2, 2, 1)
    );

    // Idle for long enough, but its rows (LSN 10) are not in the tables.
    let none = c.passivate_idle(IdleBefore::all(NOW + 1), 9);
    assert_eq!(none, Passivated::default());
    // In the tables: store 1 and its day leave; store 2 changed since.
    let gone = c.passivate_idle(IdleBefore::all(NOW + 1), 10);
    assert_eq!(
        gone,
        Passivated {
            stores: 1,
            skus: 1,
            days: 1,
            rollup_minutes: 1,
        }
    );
    let s = c.stats();
    assert_eq!(
        (s.stores_active, s.skus_active, s.rollup_days_active),
        (1, 1, 0)
    );
    assert_eq!(s.terminals_active, 0);
    assert_eq!(c.level(1, 7), None);
    assert_eq!(
        c.level(2, 9).map(|l| l.level),
        Some(5),
        "the index still finds what stayed"
    );

    // The next batch for store 1 asks for it again.
    let mut needs = Vec::new();
    let mut plan = BatchPlan::new(1);
    plan_batch(old.get(), 1, &Rules::default(), NOW, &mut plan);
    c.needs(old.get(), &plan.parts[0], &mut needs);
    assert!(needs.contains(&Need::Store(1)), "{needs:?}");
    assert!(
        needs.contains(&Need::RollupDay {
            store: 1,
            day: day(NOW)
        }),
        "{needs:?}"
    );
    Ok(())
}

#[test]
fn passivated_state_comes_back_the_same_from_its_rows() -> R {
    // One core keeps everything; the other passivates after each batch and
    // reloads from the rows it emitted: both emit the same rows.
    let mut kept = core(0, 1);
    let mut cycled = core(0, 1);
    let mut levels: std::collections::BTreeMap<(u32, u64), StockLevelRow> = Default::default();
    let mut moves: Vec<StockMovementRow> = Vec::new();
    let mut rollups: std::collections::BTreeMap<(u32, u32, u32, u16), TerminalRollupRow> =
        Default::default();
    let events = [
        vec![
            movement(NOW, 1, 5, 10),
            sale(NOW + 1, 1, 2, vec![line(5, 2, 100)]),
        ],
        vec![count(NOW - MINUTE_US, 1, 5, 50)],
        vec![
            sale(NOW + 2, 1, 2, vec![line(5, 1, 100)]),
            movement(NOW + 3, 1, 5, -4),
        ],
        vec![
            count(NOW + 2, 1, 5, 20),
            refund(NOW + 4, 1, 2, vec![line(5, 1, 100)]),
        ],
    ];
    for (i, evs) in events.into_iter().enumerate() {
        let lsn = i as u64 + 1;
        let b = testkit::batch(lsn, evs)?;
        let want = apply_at(&mut kept, lsn, &b, NOW);
        let mut plan = BatchPlan::new(1);
        plan_batch(b.get(), 1, &Rules::default(), NOW, &mut plan);
        let mut needs = Vec::new();
        cycled.needs(b.get(), &plan.parts[0], &mut needs);
        for need in needs {
            match need {
                Need::Store(st) => {
                    let lv: Vec<StockLevelRow> = levels.values().copied().collect();
                    let windows = cycled.movement_windows(&lv);
                    let recent_movements = moves
                        .iter()
                        .filter(|m| windows.iter().any(|w| (w.0..w.1).contains(&m.ts_us)))
                        .filter_map(WindowMovement::of)
                        .collect();
                    cycled.activate_store(
                        st,
                        &StoreSnapshot {
                            levels: lv,
                            recent_movements,
                        },
                    );
                }
                Need::RollupDay { store, day } => {
                    let rows: Vec<_> = rollups.values().copied().collect();
                    cycled.activate_rollup_day(store, day, &rows);
                }
            }
        }
        let got = apply_at(&mut cycled, lsn, &b, NOW);
        assert_eq!(got.stock_levels, want.stock_levels, "batch {lsn}");
        assert_eq!(got.terminal_rollups, want.terminal_rollups, "batch {lsn}");
        assert_eq!(got.stock_movements, want.stock_movements, "batch {lsn}");
        // "Materialize", then everything is idle and in the tables.
        for l in &got.stock_levels {
            levels.insert((l.store, l.sku), *l);
        }
        moves.extend(got.stock_movements.iter().copied());
        for r in &got.terminal_rollups {
            rollups.insert((r.store, r.day, r.terminal, r.minute), *r);
        }
        let p = cycled.passivate_idle(IdleBefore::all(NOW + 1), lsn);
        assert!(p.stores > 0, "batch {lsn}: {p:?}");
    }
    Ok(())
}

#[test]
fn a_handed_over_store_leaves_whole_once_its_rows_are_in_the_tables() -> R {
    let mut c = core(0, 1);
    let b1 = testkit::batch(1, vec![sale(NOW, 1, 4, vec![line(7, 1, 100)])])?;
    apply_at(&mut c, 10, &b1, NOW);
    let b2 = testkit::batch(2, vec![movement(NOW, 1, 8, 5), movement(NOW, 2, 9, 5)])?;
    apply_at(&mut c, 11, &b2, NOW);
    // Recent, but a hand-off does not wait for idleness; it does wait for
    // the tables: LSN 11 is not in them yet.
    assert!(!c.forget_store(1, 10));
    assert_eq!(c.level(1, 8).map(|l| l.level), Some(5));
    assert!(c.forget_store(1, 11));
    let s = c.stats();
    assert_eq!((s.stores_active, s.skus_active), (1, 1));
    assert_eq!((s.rollup_days_active, s.terminals_active), (0, 0));
    assert_eq!(c.level(1, 8), None);
    // The other store stays.
    assert_eq!(c.level(2, 9).map(|l| l.level), Some(5));
    Ok(())
}
