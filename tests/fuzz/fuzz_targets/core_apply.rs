//! Arbitrary bytes as a Batch payload, and when it validates, the engine
//! core's whole decision path over two shards: `check_event` on every
//! event, `plan_batch` with the default rules, then per touched shard
//! `needs`, activation of what it asks for (from an empty store), and
//! `apply`. The batch is applied a second time as a later LSN so the
//! paths that update live entities (rollups, SKU windows, levels) run
//! too, then everything idle is passivated.
//!
//! Properties besides "no panic": the plan refuses exactly the events
//! `check_event` refuses, and each `apply` emits at most one level row
//! per SKU.

#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use tillstream_engine_core::route::{BatchPlan, plan_batch};
use tillstream_engine_core::shard::{IdleBefore, Need, ShardConfig, ShardCore};
use tillstream_engine_core::validate::{Rules, check_event};
use tillstream_protocol::ValidatedBatch;
use tillstream_protocol::frame::aligned;
use tillstream_storage::{RowSet, StoreSnapshot};

const MAX_EVENTS: u32 = 4096;
const SHARDS: u16 = 2;
/// A fixed server clock (2023-11-14): the run is deterministic.
const NOW_US: i64 = 1_700_000_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = ValidatedBatch::try_new(aligned(data), MAX_EVENTS) else {
        return;
    };
    let b = batch.get();
    let rules = Rules::default();

    let refused = b
        .events
        .iter()
        .filter(|e| check_event(e, &rules, NOW_US).is_err())
        .count();

    // The device id comes from the input too, so the fuzzer can steer
    // device-routed items (health, refusals) to either shard.
    let device = b.sent_at_us.to_native() as u64;
    let mut plan = BatchPlan::new(SHARDS);
    plan_batch(b, device, &rules, NOW_US, &mut plan);
    assert_eq!(plan.rejected.len(), refused, "plan and check_event disagree");
    assert_eq!(plan.shards(), SHARDS);

    let mut cores: Vec<ShardCore> = (0..SHARDS)
        .map(|id| {
            ShardCore::new(ShardConfig {
                id,
                shards: SHARDS,
                ..ShardConfig::default()
            })
        })
        .collect();

    let mut needs = Vec::new();
    for lsn in 1..=2u64 {
        for (s, items) in plan.touched() {
            let core = &mut cores[usize::from(s)];
            needs.clear();
            core.needs(b, items, &mut needs);
            for need in &needs {
                match *need {
                    Need::Store(store) => {
                        let _ = core.movement_windows(&[]);
                        core.activate_store(store, &StoreSnapshot::default());
                    }
                    Need::RollupDay { store, day } => {
                        core.activate_rollup_day(store, day, &[]);
                    }
                }
            }
            let mut out = RowSet::default();
            core.apply(lsn, device, b, items, NOW_US + lsn as i64, &mut out);
            let mut skus = HashSet::new();
            for row in &out.stock_levels {
                assert!(
                    skus.insert((row.store, row.sku)),
                    "two level rows for one SKU in one apply: {row:?}"
                );
            }
        }
    }
    for core in &mut cores {
        let _ = core.stats();
        let _ = core.passivate_idle(IdleBefore::all(i64::MAX), u64::MAX);
        let _ = core.stats();
    }
});
