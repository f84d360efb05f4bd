use super::*;
use crate::route::{BatchPlan, plan_batch};
use crate::testkit::{self, count, health, line, movement, refund, sale};
use rkyv::rancor;
use tillstream_protocol::RejectCode;
use tillstream_protocol::ValidatedBatch;
use tillstream_protocol::frame::FrameError;
use tillstream_storage::time::{MINUTE_US, minute_of_day};
use tillstream_storage::{EventKey, RowSet, WindowMovement};

pub(super) type R = Result<(), Box<dyn std::error::Error>>;

pub(super) const NOW: i64 = 1_700_000_000_000_000;
const LW: i64 = HOUR_US;

pub(super) fn core(id: u16, shards: u16) -> ShardCore {
    ShardCore::new(ShardConfig {
        id,
        shards,
        ..ShardConfig::default()
    })
}

/// Plans `b` over `cores` and applies every part; returns the rows.
fn run(cores: &mut [ShardCore], device: u64, b: &ValidatedBatch) -> RowSet {
    let shards = u16::try_from(cores.len()).unwrap_or(1);
    let mut plan = BatchPlan::new(shards);
    plan_batch(b.get(), device, &Rules::default(), NOW, &mut plan);
    let mut out = RowSet::default();
    for (s, items) in plan.touched() {
        cores[usize::from(s)].apply(
            b.get().seq.to_native(),
            device,
            b.get(),
            items,
            NOW,
            &mut out,
        );
    }
    out
}

fn testkit_aligned(b: &[u8]) -> tillstream_protocol::frame::PayloadBuf {
    tillstream_protocol::frame::aligned(b)
}

#[test]
fn a_sale_writes_its_rows_across_shards() -> R {
    for shards in [1u16, 2, 3, 7] {
        let mut cores: Vec<ShardCore> = (0..shards).map(|i| core(i, shards)).collect();
        let lines = vec![line(10, 2, 150), line(11, 1, 300), line(10, 1, 150)];
        let b = testkit::batch(3, vec![sale(NOW, 1, 4, lines)])?;
        let out = run(&mut cores, 9, &b);
        assert_eq!(out.sales.len(), 1);
        let s = &out.sales[0];
        assert_eq!((s.gross, s.items, s.lines, s.tax), (750, 4, 3, 75));
        assert_eq!((s.tendered, s.tenders, s.tender_methods), (750, 1, 1 << 1));
        assert_eq!(
            s.key,
            EventKey {
                device: 9,
                seq: 3,
                idx: 0
            }
        );
        let mut lines: Vec<u16> = out.sale_lines.iter().map(|l| l.line).collect();
        lines.sort_unstable();
        assert_eq!(lines, [0, 1, 2]);
        let mut mv: Vec<(u64, u16, i64, i64)> = out
            .stock_movements
            .iter()
            .map(|m| (m.sku, m.line, m.delta, m.level_after))
            .collect();
        mv.sort_unstable();
        assert_eq!(mv, [(10, 0, -2, -2), (10, 2, -1, -3), (11, 1, -1, -1)]);
        let mut levels: Vec<(u64, i64, u64)> = out
            .stock_levels
            .iter()
            .map(|l| (l.sku, l.level, l.version))
            .collect();
        levels.sort_unstable();
        assert_eq!(
            levels,
            [(10, -3, 2), (11, -1, 1)],
            "one row per SKU, final state"
        );
        assert_eq!(out.terminal_rollups.len(), 1);
        let r = out.terminal_rollups[0];
        assert_eq!(
            (r.sales, r.gross, r.tax, r.minute),
            (1, 750, 75, minute_of_day(NOW))
        );
    }
    Ok(())
}

#[test]
fn rollups_are_absolute_and_emitted_once_per_minute() -> R {
    let mut cores = vec![core(0, 1)];
    let b = testkit::batch(
        1,
        vec![
            sale(NOW, 1, 4, vec![line(1, 1, 100)]),
            sale(NOW + 1, 1, 4, vec![line(1, 1, 50)]),
            refund(NOW + 2, 1, 4, vec![line(1, 1, 100)]),
            sale(NOW + MINUTE_US, 1, 4, vec![line(1, 1, 7)]),
        ],
    )?;
    let out = run(&mut cores, 1, &b);
    let rows: Vec<(u32, u32, i64, i64)> = out
        .terminal_rollups
        .iter()
        .map(|r| (r.sales, r.refunds, r.gross, r.refunded))
        .collect();
    assert_eq!(rows, [(2, 1, 150, 100), (1, 0, 7, 0)]);
    let b = testkit::batch(2, vec![sale(NOW + 3, 1, 4, vec![line(1, 1, 1)])])?;
    let out = run(&mut cores, 1, &b);
    assert_eq!(out.terminal_rollups[0].sales, 3);
    assert_eq!(out.terminal_rollups[0].gross, 151);
    Ok(())
}

/// A part's sales that leave a minute and come back to it, or alternate
/// between two tills, each count in their own minute once: the run of
/// sales held out of the rollup map (`ShardCore::rollup_run`) goes back
/// to it whenever the key changes.
#[test]
fn sales_back_and_forth_between_minutes_and_tills_count_once_each() -> R {
    let mut c = core(0, 1);
    let next = NOW + MINUTE_US;
    let b = testkit::batch(
        1,
        vec![
            sale(NOW, 1, 4, vec![line(1, 1, 1)]),
            sale(next, 1, 4, vec![line(1, 1, 10)]),
            sale(NOW + 1, 1, 4, vec![line(1, 1, 100)]),
            sale(NOW + 2, 1, 5, vec![line(1, 1, 1_000)]),
            refund(NOW + 3, 1, 4, vec![line(1, 1, 1)]),
            sale(NOW + 4, 1, 5, vec![line(1, 1, 10_000)]),
        ],
    )?;
    let out = run(std::slice::from_mut(&mut c), 1, &b);
    let mut rows: Vec<(u32, u16, u32, u32, i64)> = out
        .terminal_rollups
        .iter()
        .map(|r| (r.terminal, r.minute, r.sales, r.refunds, r.gross))
        .collect();
    rows.sort_unstable();
    let (m, m1) = (minute_of_day(NOW), minute_of_day(next));
    assert_eq!(
        rows,
        [(4, m, 2, 1, 101), (4, m1, 1, 0, 10), (5, m, 2, 0, 11_000)]
    );
    // What the next part adds to is what this one left in the map.
    let b = testkit::batch(2, vec![sale(NOW + 5, 1, 4, vec![line(1, 1, 2)])])?;
    let out = run(std::slice::from_mut(&mut c), 1, &b);
    let r = &out.terminal_rollups[0];
    assert_eq!((r.terminal, r.sales, r.refunds, r.gross), (4, 3, 1, 103));
    Ok(())
}

#[test]
fn needs_then_activation() -> R {
    let mut c = core(0, 1);
    let b = testkit::batch(
        1,
        vec![
            sale(NOW, 1, 4, vec![line(5, 1, 100)]),
            movement(NOW, 2, 5, 3),
            count(NOW, 2, 6, 3),
            health(NOW, 1),
        ],
    )?;
    let mut plan = BatchPlan::new(1);
    plan_batch(b.get(), 1, &Rules::default(), NOW, &mut plan);
    let mut needs = Vec::new();
    c.needs(b.get(), &plan.parts[0], &mut needs);
    let day = day(NOW);
    assert_eq!(
        needs,
        [
            Need::RollupDay { store: 1, day },
            Need::Store(1),
            Need::Store(2)
        ]
    );
    // Store 2 had SKU 5 at level 40, counted an hour ago, with a movement
    // since; the late window reaches back one hour before its newest event.
    let key = EventKey {
        device: 8,
        seq: 1,
        idx: 0,
    };
    let levels = vec![StockLevelRow {
        store: 2,
        sku: 5,
        level: 40,
        count_ts_us: Some(NOW - 60 * MINUTE_US),
        count_key: Some(key),
        updated_ts_us: NOW - 10 * MINUTE_US,
        version: 7,
    }];
    let windows = c.movement_windows(&levels);
    assert_eq!(windows.len(), 1, "{windows:?}");
    let (from, to) = windows[0];
    assert!(
        from <= NOW - 70 * MINUTE_US && to > NOW - 10 * MINUTE_US,
        "{windows:?}"
    );
    assert!(from % HOUR_US == 0 && to % HOUR_US == 0 && to - from <= 3 * HOUR_US);
    assert!(c.movement_windows(&[]).is_empty());
    // A SKU last seen in 2000 adds its own hours, not the years between.
    let mut ancient = levels[0];
    ancient.sku = 6;
    ancient.count_ts_us = None;
    ancient.updated_ts_us = crate::validate::Y2000_US + 36 * HOUR_US;
    let both = c.movement_windows(&[levels[0], ancient]);
    assert_eq!(both.len(), 2, "{both:?}");
    let covered: i64 = both.iter().map(|w| w.1 - w.0).sum();
    assert!(covered <= 6 * HOUR_US, "{both:?}");
    let moved = WindowMovement {
        sku: 5,
        ts_us: NOW - 10 * MINUTE_US,
        delta: 10,
    };
    c.activate_store(
        2,
        &StoreSnapshot {
            levels,
            recent_movements: vec![moved],
        },
    );
    c.activate_store(1, &StoreSnapshot::default());
    let old = TerminalRollupRow {
        store: 1,
        day,
        terminal: 4,
        minute: minute_of_day(NOW),
        sales: 5,
        gross: 1000,
        ..Default::default()
    };
    c.activate_rollup_day(1, day, &[old]);
    needs.clear();
    c.needs(b.get(), &plan.parts[0], &mut needs);
    assert!(needs.is_empty());
    let mut out = RowSet::default();
    c.apply(1, 1, b.get(), &plan.parts[0], NOW, &mut out);
    assert_eq!(
        out.terminal_rollups[0].sales, 6,
        "loaded rollups are added to"
    );
    assert_eq!(out.terminal_rollups[0].gross, 1100);
    let l = c
        .level(2, 5)
        .ok_or(FrameError::Violation("sku 5 not loaded"))?;
    assert_eq!((l.level, l.version), (43, 8));
    // A count between the old count and the loaded movement recomputes on
    // top of it.
    let b = testkit::batch(2, vec![count(NOW - 30 * MINUTE_US, 2, 5, 20)])?;
    let out = run(std::slice::from_mut(&mut c), 1, &b);
    assert_eq!(out.stock_levels[0].level, 33);
    assert_eq!(out.stock_levels[0].version, 9);
    assert_eq!(out.stock_movements[0].delta, -10);
    assert_eq!(c.stats().activations, 3);
    Ok(())
}

#[test]
fn needs_names_each_missing_store_and_day_once_whatever_the_order() -> R {
    // `needs` skips the store and day it last found active: runs of one
    // store, switches between an active and a missing one, and a day
    // boundary must still name exactly what is missing.
    let mut c = core(0, 1);
    let (today, yesterday) = (NOW, NOW - 24 * HOUR_US);
    c.activate_store(1, &StoreSnapshot::default());
    c.activate_rollup_day(1, day(today), &[]);
    let b = testkit::batch(
        1,
        vec![
            sale(today, 1, 4, vec![line(5, 1, 100)]),
            sale(today, 1, 4, vec![line(6, 1, 100)]),
            sale(today, 2, 4, vec![line(5, 1, 100)]),
            sale(today, 1, 4, vec![line(7, 1, 100)]),
            sale(yesterday, 1, 4, vec![line(5, 1, 100)]),
            movement(today, 1, 5, 3),
            movement(today, 3, 5, 3),
            sale(today, 2, 4, vec![line(8, 1, 100)]),
            count(today, 3, 6, 3),
            count(today, 1, 6, 3),
            sale(yesterday, 1, 4, vec![line(5, 1, 100)]),
        ],
    )?;
    let mut plan = BatchPlan::new(1);
    plan_batch(b.get(), 1, &Rules::default(), NOW, &mut plan);
    let mut needs = Vec::new();
    c.needs(b.get(), &plan.parts[0], &mut needs);
    needs.sort_by_key(|n| format!("{n:?}"));
    let mut want = vec![
        Need::RollupDay {
            store: 2,
            day: day(today),
        },
        Need::RollupDay {
            store: 1,
            day: day(yesterday),
        },
        Need::Store(2),
        Need::Store(3),
    ];
    want.sort_by_key(|n| format!("{n:?}"));
    assert_eq!(needs, want);
    Ok(())
}

#[test]
fn late_counts_are_rejected_by_the_sku_shard() -> R {
    let mut cores: Vec<ShardCore> = (0..3).map(|i| core(i, 3)).collect();
    let b = testkit::batch(1, vec![movement(NOW, 1, 5, 3)])?;
    run(&mut cores, 1, &b);
    let b = testkit::batch(
        2,
        vec![count(NOW - LW - 1, 1, 5, 0), count(NOW - LW, 1, 5, 1)],
    )?;
    let out = run(&mut cores, 1, &b);
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].code, RejectCode::CountTooLate.as_u16());
    assert_eq!(out.rejected[0].reason, "count_too_late");
    let bytes = testkit_aligned(&out.rejected[0].event);
    let ev = rkyv::access::<ArchivedEvent, rancor::Error>(&bytes)?;
    assert_eq!(ev.ts_us(), NOW - LW - 1);
    assert_eq!(out.stock_levels[0].level, 4);
    let owner = usize::from(shard_of_sku(1, 5, 3));
    assert_eq!(cores[owner].stats().late_counts, 1);
    Ok(())
}

#[test]
fn stale_rows_are_recorded_but_not_applied() -> R {
    let mut cores = vec![core(0, 1)];
    let b = testkit::batch(
        1,
        vec![
            count(NOW, 1, 5, 10),
            movement(NOW - 1, 1, 5, 3),
            movement(NOW, 1, 5, 3),
            count(NOW - 5, 1, 5, 99),
        ],
    )?;
    let out = run(&mut cores, 1, &b);
    let applied: Vec<bool> = out.stock_movements.iter().map(|m| m.applied).collect();
    assert_eq!(applied, [true, false, false, false]);
    assert_eq!(out.stock_levels.len(), 1);
    assert_eq!(
        (out.stock_levels[0].level, out.stock_levels[0].version),
        (10, 1)
    );
    let s = cores[0].stats();
    assert_eq!((s.stale_counts, s.stale_movements), (1, 2));
    Ok(())
}

#[test]
fn bogus_items_are_ignored() -> R {
    let mut c = core(0, 1);
    let b = testkit::batch(1, vec![health(NOW, 1), movement(NOW, 1, 1, 1)])?;
    let items = [
        WorkItem {
            idx: 7,
            role: Role::Health,
        },
        WorkItem {
            idx: 0,
            role: Role::Stock,
        },
        WorkItem {
            idx: 1,
            role: Role::Terminal,
        },
        WorkItem {
            idx: 1,
            role: Role::Lines,
        },
    ];
    let mut out = RowSet::default();
    c.apply(1, 1, b.get(), &items, NOW, &mut out);
    assert!(out.is_empty());
    assert_eq!(c.stats().misrouted, 4);
    // A SKU of another shard is not applied here.
    let mut other = core(1, 2);
    let sku = (0..100u64)
        .find(|&s| shard_of_sku(1, s, 2) == 0)
        .unwrap_or(0);
    let b = testkit::batch(1, vec![movement(NOW, 1, sku, 1)])?;
    other.apply(
        1,
        1,
        b.get(),
        &[WorkItem {
            idx: 0,
            role: Role::Stock,
        }],
        NOW,
        &mut out,
    );
    assert!(out.is_empty());
    Ok(())
}

#[test]
fn a_fast_till_cannot_make_honest_counts_too_late() -> R {
    let mut cores = vec![core(0, 1)];
    // A till two hours fast sells SKU 9: refused, so the SKU does not move
    // ahead of the shelf.
    let fast = testkit::batch(
        1,
        vec![sale(NOW + 2 * HOUR_US, 1, 4, vec![line(9, 1, 100)])],
    )?;
    let out = run(&mut cores, 1, &fast);
    assert_eq!(out.rejected.len(), 1);
    assert_eq!(out.rejected[0].code, RejectCode::FutureTimestamp.as_u16());
    assert!(out.sale_lines.is_empty());
    // The honest sensor's count now is applied, not refused as too late.
    let honest = testkit::batch(2, vec![count(NOW, 1, 9, 30)])?;
    let out = run(&mut cores, 2, &honest);
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    assert_eq!(cores[0].level(1, 9).map(|l| l.level), Some(30));
    // Within the bound, a few minutes fast is accepted as drift.
    let drift = testkit::batch(
        3,
        vec![sale(NOW + 4 * MINUTE_US, 1, 4, vec![line(9, 1, 100)])],
    )?;
    let out = run(&mut cores, 3, &drift);
    assert!(out.rejected.is_empty());
    assert_eq!(cores[0].level(1, 9).map(|l| l.level), Some(29));
    Ok(())
}

#[test]
fn the_read_ahead_finds_each_active_sku_for_the_apply() -> R {
    let mut cores = [core(0, 1)];
    let first = testkit::batch(
        1,
        vec![
            sale(
                NOW,
                1,
                4,
                vec![line(10, 1, 100), line(11, 1, 100), line(12, 1, 100)],
            ),
            movement(NOW, 1, 13, 5),
        ],
    )?;
    run(&mut cores, 9, &first);
    assert_eq!(cores[0].warm_slot_hits, 0, "no SKU was active yet");
    // SKUs of a store not active yet (2) and new SKUs (99) come between
    // the active ones: the slots must stay in step with the apply past
    // them, and a count (which the read-ahead does not ask for) too.
    let second = testkit::batch(
        2,
        vec![
            sale(NOW + 1, 2, 5, vec![line(10, 1, 100), line(50, 1, 100)]),
            sale(
                NOW + 2,
                1,
                4,
                vec![line(10, 2, 100), line(99, 1, 100), line(11, 1, 100)],
            ),
            count(NOW + 3, 1, 12, 40),
            movement(NOW + 4, 1, 13, -1),
            refund(NOW + 5, 1, 4, vec![line(12, 1, 100)]),
        ],
    )?;
    let out = run(&mut cores, 9, &second);
    assert_eq!(
        cores[0].warm_slot_hits, 4,
        "10, 11, 13 and 12 of store 1 were found where the read-ahead said"
    );
    let mut levels: Vec<(u32, u64, i64)> = out
        .stock_levels
        .iter()
        .map(|l| (l.store, l.sku, l.level))
        .collect();
    levels.sort_unstable();
    assert_eq!(
        levels,
        [
            (1, 10, -3),
            (1, 11, -2),
            (1, 12, 41),
            (1, 13, 4),
            (1, 99, -1),
            (2, 10, -1),
            (2, 50, -1)
        ]
    );
    Ok(())
}
