//! The core's hot path: `plan_batch` and `ShardCore::apply` of one device
//! batch of 256 sales with 3 lines each, over 2 shards (warm entities: the
//! stores and day are already active). Each iteration gets a fresh batch a
//! quarter second later than the previous one (built outside the timing),
//! so SKUs fill their late windows as they would in a real run.
//! Throughput is in events.
//!
//! Two catalogues: one store of 5,000 SKUs, whose entities stay in the
//! cache, and the loadgen's default chain, 10 stores of 5,000 (each batch
//! from one of them, in turn), whose 50,000 entities and windows do not:
//! there the cost is cache misses, which the first one cannot show.
//!
//! Run with `cargo bench -p tillstream-benches --bench core_apply`.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tillstream_engine_core::route::{BatchPlan, plan_batch};
use tillstream_engine_core::shard::{ShardConfig, ShardCore};
use tillstream_engine_core::testkit;
use tillstream_engine_core::validate::Rules;
use tillstream_protocol::ValidatedBatch;
use tillstream_storage::RowSet;

const NOW: i64 = 1_710_000_000_000_000;
const EVENTS: u64 = 256;
const SHARDS: u16 = 2;
const DEVICE: u64 = 0x7111;
const STORE: u32 = 12;

/// Batch `seq`: 256 sales of 3 lines over a catalogue of 5,000 SKUs in
/// store `STORE + seq % stores`, one millisecond apart, starting `seq`
/// quarter seconds after `NOW`.
fn batch(seq: u64, stores: u64) -> ValidatedBatch {
    let store = STORE + (seq % stores) as u32;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut sku = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % 5_000
    };
    let start = NOW + seq as i64 * 256_000;
    let events = (0..EVENTS)
        .map(|i| {
            let lines = (0..3)
                .map(|_| testkit::line(sku(), 1 + (i % 3) as i32, 199 + (i % 7) as i64 * 100))
                .collect();
            testkit::sale(start + i as i64 * 1_000, store, 3, lines)
        })
        .collect();
    testkit::batch(seq, events).expect("the bench batch encodes")
}

fn core_apply(c: &mut Criterion) {
    let rules = Rules::default();
    let mut g = c.benchmark_group("core_apply");
    g.sample_size(10);
    g.throughput(Throughput::Elements(EVENTS));
    for stores in [1u64, 10] {
        let mut cores: Vec<ShardCore> = (0..SHARDS)
            .map(|id| {
                ShardCore::new(ShardConfig {
                    id,
                    shards: SHARDS,
                    ..ShardConfig::default()
                })
            })
            .collect();
        let mut plan = BatchPlan::new(SHARDS);
        let mut out = RowSet::default();
        let mut run = |b: &ValidatedBatch, plan: &mut BatchPlan, out: &mut RowSet| {
            out.clear();
            plan_batch(b.get(), DEVICE, &rules, NOW, plan);
            for (s, items) in plan.touched() {
                cores[usize::from(s)].apply(1, DEVICE, b.get(), items, NOW, out);
            }
            out.len()
        };
        // Warm up: the SKUs of every store and the rollup day become
        // active (each batch names about half of a store's catalogue).
        let mut seq = 0;
        for _ in 0..8 * stores {
            seq += 1;
            run(&batch(seq, stores), &mut plan, &mut out);
        }
        let name = if stores == 1 {
            "plan_and_apply/256_sales_x3_lines/2_shards".to_owned()
        } else {
            format!("plan_and_apply/256_sales_x3_lines/2_shards/{stores}_stores")
        };
        g.bench_function(name, |bench| {
            bench.iter_batched(
                || {
                    seq += 1;
                    batch(seq, stores)
                },
                |b| black_box(run(&b, &mut plan, &mut out)),
                BatchSize::SmallInput,
            )
        });
    }
    let b = batch(1, 1);
    let mut plan = BatchPlan::new(SHARDS);
    g.bench_function("plan_only/256_sales_x3_lines/2_shards", |bench| {
        bench.iter(|| {
            plan_batch(b.get(), DEVICE, &rules, NOW, &mut plan);
            black_box(plan.items())
        })
    });
    g.finish();
}

criterion_group!(benches, core_apply);
criterion_main!(benches);
