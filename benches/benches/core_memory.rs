//! Resident entity memory: the bytes one shard's core holds per SKU and
//! per terminal, counted by a wrapping global allocator (bytes requested:
//! the allocator's rounding to size classes comes on top, and RSS adds
//! what is in flight; the loadgen's runs show that).
//!
//! - SKUs: 10 stores × 100,000 SKUs (1 M entities), each moved `k` times
//!   within its late window, so its window holds `k` movements; `k` = 1,
//!   4 and 16.
//! - Terminals: 10 stores × 8 tills, each selling once a minute for 1 and
//!   for 12 hours of one day (a rollup minute each), with the server's
//!   sweep after every minute: what stays is the last minutes, not the
//!   day.
//!
//! Run with `cargo bench -p tillstream-benches --bench core_memory`. It
//! prints a table; no figure here is asserted (targets live in the issue
//! and the README, measured by this).

#![allow(unsafe_code)] // a counting global allocator

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use tillstream_engine_core::route::{BatchPlan, plan_batch};
use tillstream_engine_core::shard::{IdleBefore, ShardConfig, ShardCore};
use tillstream_engine_core::testkit;
use tillstream_engine_core::validate::Rules;
use tillstream_protocol::Event;
use tillstream_storage::RowSet;

/// Live bytes: allocated minus freed.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is forwarded to `System` unchanged; the counter only
// observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// 2024-03-09 16:00 UTC, a Saturday.
const NOW: i64 = 1_710_000_000_000_000;
const STORES: u32 = 10;
const DEVICE: u64 = 0x7111;
const BATCH: usize = 256;

/// Applies `events` in batches of 256 to a fresh single-shard core and
/// returns the bytes the core holds afterwards.
fn core_bytes(events: impl Iterator<Item = Event>) -> (ShardCore, isize) {
    let rules = Rules::default();
    let before = LIVE.load(Ordering::Relaxed);
    let mut core = ShardCore::new(ShardConfig::default());
    let mut plan = BatchPlan::new(1);
    let mut seq = 0;
    let mut pending = Vec::with_capacity(BATCH);
    let mut apply = |events: Vec<Event>, seq: u64, core: &mut ShardCore| {
        let b = testkit::batch(seq, events).expect("the bench batch encodes");
        let mut out = RowSet::default();
        plan_batch(b.get(), DEVICE, &rules, NOW, &mut plan);
        for (_, items) in plan.touched() {
            core.apply(seq, DEVICE, b.get(), items, NOW, &mut out);
        }
    };
    for e in events {
        pending.push(e);
        if pending.len() == BATCH {
            seq += 1;
            apply(
                std::mem::replace(&mut pending, Vec::with_capacity(BATCH)),
                seq,
                &mut core,
            );
        }
    }
    if !pending.is_empty() {
        apply(std::mem::take(&mut pending), seq + 1, &mut core);
    }
    drop(pending);
    drop(plan);
    (core, LIVE.load(Ordering::Relaxed) - before)
}

/// 10 stores × 8 tills selling once a minute for `hours`, one batch a
/// minute applied at its own time, each followed by the server's sweep:
/// minutes idle for a minute leave memory once the tables hold the rows
/// (here, those of every batch before the last). Returns the core and
/// the bytes it holds.
fn terminal_day(hours: u64) -> (ShardCore, isize) {
    let tills = 8u32;
    let rules = Rules::default();
    let before = LIVE.load(Ordering::Relaxed);
    // The one SKU every sale sells keeps a minute of late window, not an
    // hour: its movements would otherwise be counted as the tills'.
    let mut core = ShardCore::new(ShardConfig {
        late_window_us: 60_000_000,
        ..ShardConfig::default()
    });
    let mut plan = BatchPlan::new(1);
    let start = NOW - 8 * 3_600_000_000;
    for m in 0..hours * 60 {
        let now = start + (m as i64) * 60_000_000;
        let sales = (0..STORES * tills)
            .map(|t| {
                let ts = now + i64::from(t);
                testkit::sale(ts, 1 + t / tills, t % tills, vec![testkit::line(7, 1, 100)])
            })
            .collect();
        let seq = m + 1;
        let b = testkit::batch(seq, sales).expect("the bench batch encodes");
        let mut out = RowSet::default();
        plan_batch(b.get(), DEVICE, &rules, now, &mut plan);
        for (_, items) in plan.touched() {
            core.apply(seq, DEVICE, b.get(), items, now, &mut out);
        }
        drop(out);
        let idle = IdleBefore {
            entities_us: i64::MIN,
            minutes_us: now - 60_000_000,
        };
        core.passivate_idle(idle, seq - 1);
    }
    drop(plan);
    (core, LIVE.load(Ordering::Relaxed) - before)
}

fn main() {
    println!("| entities | state | bytes each (requested) |");
    println!("|---|---|---:|");
    let skus_per_store = 100_000u64;
    for k in [1u64, 4, 16] {
        // Round after round of one movement for every SKU, a microsecond
        // apart: all inside the one-hour late window.
        let per_round = u64::from(STORES) * skus_per_store;
        let events = (0..k).flat_map(move |round| {
            (0..per_round).map(move |n| {
                let ts = NOW + (round * per_round + n) as i64;
                let store = 1 + (n % u64::from(STORES)) as u32;
                testkit::movement(ts, store, n / u64::from(STORES), 1)
            })
        });
        let (core, bytes) = core_bytes(events);
        let s = core.stats();
        assert_eq!(s.skus_active, per_round, "every SKU is resident");
        println!(
            "| {} SKUs | {} movement(s) in each window | {} |",
            s.skus_active,
            s.window_movements / s.skus_active,
            bytes / s.skus_active as isize
        );
    }
    for hours in [1u64, 12] {
        let (core, bytes) = terminal_day(hours);
        let s = core.stats();
        let terminals = s.terminals_active as isize;
        println!(
            "| {terminals} terminals | sold every minute for {hours} h, swept every minute ({} rollup minutes resident) | {} |",
            s.rollup_minutes,
            bytes / terminals
        );
    }
}
