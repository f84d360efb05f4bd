//! The hot path does not allocate per event: once the plan, the output
//! rows and the entities are warm (and the SKUs' late windows have reached
//! their steady size, which here takes a few batches of a short window),
//! planning and applying a batch of the same shape allocates nothing.

#![allow(unsafe_code)] // a counting global allocator

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use tillstream_engine_core::route::{BatchPlan, plan_batch};
use tillstream_engine_core::shard::{ShardConfig, ShardCore};
use tillstream_engine_core::testkit;
use tillstream_engine_core::validate::Rules;
use tillstream_protocol::ValidatedBatch;
use tillstream_storage::RowSet;

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note() {
    if COUNTING.with(Cell::get) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const NOW: i64 = 1_710_000_000_000_000;
const DEVICE: u64 = 99;

fn batch(seq: u64, offset_us: i64, reject: bool) -> ValidatedBatch {
    let mut events = Vec::new();
    for i in 0..64u64 {
        let ts = NOW + offset_us + i as i64;
        let lines = vec![
            testkit::line(i, 1, 100),
            testkit::line(i + 64, 2, 50),
            testkit::line(i % 7, 1, 10),
        ];
        events.push(testkit::sale(ts, 1, 5, lines));
        events.push(testkit::movement(ts, 1, i, 3));
        events.push(testkit::count(ts, 1, i + 200, 10));
        events.push(testkit::health(ts, 1));
    }
    if reject {
        events.push(testkit::movement(NOW, 1, 1, 0)); // the rare path may allocate
    }
    testkit::batch(seq, events).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn planning_and_applying_a_warm_batch_does_not_allocate() {
    let shards = 3;
    let mut cores: Vec<ShardCore> = (0..shards)
        .map(|id| {
            ShardCore::new(ShardConfig {
                id,
                shards,
                late_window_us: 2_500,
                ..ShardConfig::default()
            })
        })
        .collect();
    let mut plan = BatchPlan::new(shards);
    let mut out = RowSet::default();
    let rules = Rules::default();
    let mut run = |b: &ValidatedBatch, count: bool| {
        out.clear();
        COUNTING.with(|c| c.set(count));
        plan_batch(b.get(), DEVICE, &rules, NOW, &mut plan);
        for (s, items) in plan.touched() {
            cores[usize::from(s)].apply(1, DEVICE, b.get(), items, NOW, &mut out);
        }
        COUNTING.with(|c| c.set(false));
        out.len()
    };
    // Warm: entities, windows, rollup minute, plan and row capacity.
    for seq in 1..=8 {
        run(&batch(seq, seq as i64 * 1_000, true), false);
    }
    let mut allocs = |b: &ValidatedBatch| {
        ALLOCS.store(0, Ordering::Relaxed);
        let rows = run(b, true);
        let n = ALLOCS.load(Ordering::Relaxed);
        if std::env::var_os("ALLOC_VERBOSE").is_some() {
            eprintln!("{n} allocations, {rows} rows");
        }
        assert!(rows > 500, "{rows} rows");
        n
    };
    for seq in 9..=12 {
        assert_eq!(
            allocs(&batch(seq, seq as i64 * 1_000, false)),
            0,
            "batch {seq}"
        );
    }
    // The rejected event's row copies the event (deserialize, archive,
    // copy): a handful, whatever the batch size.
    let n = allocs(&batch(13, 13_000, true));
    assert!(
        n <= 8,
        "{n} allocations for a warm batch with one rejection"
    );
}
