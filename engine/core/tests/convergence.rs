//! The stock rule converges: counts and movements of one SKU from two
//! devices give the same final level in every arrival order, and that
//! level is the latest count plus the movements stamped after it.

use proptest::prelude::*;
use tillstream_engine_core::route::{BatchPlan, plan_batch};
use tillstream_engine_core::shard::{ShardConfig, ShardCore};
use tillstream_engine_core::testkit;
use tillstream_engine_core::validate::Rules;
use tillstream_protocol::{Event, ValidatedBatch};
use tillstream_storage::RowSet;
use tillstream_storage::time::MINUTE_US;

const NOW: i64 = 1_710_000_000_000_000;
/// The server's clock: after every generated event (they span 10 minutes
/// from NOW), so none is refused as stamped in the future.
const APPLIED_AT: i64 = NOW + 10 * MINUTE_US;
const STORE: u32 = 4;
const SKU: u64 = 77;

fn encode(sent: &[Sent]) -> Result<Vec<ValidatedBatch>, String> {
    sent.iter()
        .map(|s| testkit::batch(s.seq, vec![s.event.clone()]))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())
}

/// One event of one device, with its fixed batch seq.
#[derive(Debug, Clone)]
struct Sent {
    device: u64,
    seq: u64,
    event: Event,
}

/// Applies `order` (indices into `sent`), each event its own batch, over
/// `shards` shards; returns the SKU's final level.
fn final_level(
    sent: &[Sent],
    batches: &[ValidatedBatch],
    order: &[usize],
    shards: u16,
) -> Result<i64, String> {
    let mut cores: Vec<ShardCore> = (0..shards)
        .map(|id| {
            ShardCore::new(ShardConfig {
                id,
                shards,
                ..ShardConfig::default()
            })
        })
        .collect();
    let mut plan = BatchPlan::new(shards);
    let mut out = RowSet::default();
    let mut last = None;
    for (lsn, &i) in (1u64..).zip(order) {
        plan_batch(
            batches[i].get(),
            sent[i].device,
            &Rules::default(),
            APPLIED_AT,
            &mut plan,
        );
        for (s, items) in plan.touched() {
            out.clear();
            cores[usize::from(s)].apply(
                lsn,
                sent[i].device,
                batches[i].get(),
                items,
                APPLIED_AT,
                &mut out,
            );
            if let Some(l) = out.stock_levels.last() {
                match last.replace(l.version) {
                    Some(prev) if l.version <= prev => {
                        return Err(format!("version went from {prev} to {}", l.version));
                    }
                    _ => {}
                }
            }
            if !out.rejected.is_empty() {
                return Err(format!("rejected: {:?}", out.rejected));
            }
        }
    }
    let owner = usize::from(tillstream_engine_core::shard_of_sku(STORE, SKU, shards));
    cores[owner]
        .level(STORE, SKU)
        .map(|l| l.level)
        .ok_or_else(|| "SKU never applied".to_owned())
}

/// The stock rule, as ARCHITECTURE.md states it ("Stock converges").
fn oracle(sent: &[Sent]) -> i64 {
    let key = |s: &Sent, ts: i64| (ts, s.device, s.seq);
    let latest = sent
        .iter()
        .filter_map(|s| match &s.event {
            Event::Count(c) => Some((key(s, c.ts_us), c.level)),
            _ => None,
        })
        .max();
    let deltas = sent.iter().filter_map(|s| match &s.event {
        Event::Movement(m) => Some((m.ts_us, i64::from(m.delta))),
        Event::Sale(x) => Some((
            x.ts_us,
            -x.lines.iter().map(|l| i64::from(l.quantity)).sum::<i64>(),
        )),
        Event::Refund(x) => Some((
            x.ts_us,
            x.lines.iter().map(|l| i64::from(l.quantity)).sum::<i64>(),
        )),
        _ => None,
    });
    match latest {
        Some(((cts, _, _), level)) => {
            level
                + deltas
                    .filter(|(ts, _)| *ts > cts)
                    .map(|(_, d)| d)
                    .sum::<i64>()
        }
        None => deltas.map(|(_, d)| d).sum(),
    }
}

/// Heap's algorithm: calls `f` with every permutation of `0..n`.
fn permutations(n: usize, mut f: impl FnMut(&[usize])) {
    let mut a: Vec<usize> = (0..n).collect();
    let mut c = vec![0usize; n];
    f(&a);
    let mut i = 0;
    while i < n {
        if c[i] < i {
            if i % 2 == 0 {
                a.swap(0, i);
            } else {
                a.swap(c[i], i);
            }
            f(&a);
            c[i] += 1;
            i = 0;
        } else {
            c[i] = 0;
            i += 1;
        }
    }
}

fn two_devices() -> Vec<Sent> {
    let t = |m: i64| NOW - 30 * MINUTE_US + m * MINUTE_US;
    let a = 0xA;
    let b = 0xB;
    vec![
        Sent {
            device: a,
            seq: 1,
            event: testkit::count(t(10), STORE, SKU, 50),
        },
        Sent {
            device: a,
            seq: 2,
            event: testkit::movement(t(5), STORE, SKU, -3),
        },
        Sent {
            device: a,
            seq: 3,
            event: testkit::movement(t(15), STORE, SKU, 2),
        },
        Sent {
            device: b,
            seq: 1,
            event: testkit::count(t(12), STORE, SKU, 48),
        },
        Sent {
            device: b,
            seq: 2,
            event: testkit::movement(t(11), STORE, SKU, -1),
        },
        Sent {
            device: b,
            seq: 3,
            event: testkit::movement(t(20), STORE, SKU, 4),
        },
        // A till sells two at minute 13 and takes one back at minute 25.
        Sent {
            device: 0xC,
            seq: 1,
            event: testkit::sale(t(13), STORE, 1, vec![testkit::line(SKU, 2, 100)]),
        },
        Sent {
            device: 0xC,
            seq: 2,
            event: testkit::refund(t(25), STORE, 1, vec![testkit::line(SKU, 1, 100)]),
        },
    ]
}

#[test]
fn every_arrival_order_gives_the_same_level() -> Result<(), String> {
    let sent = two_devices();
    let batches = encode(&sent)?;
    let want = oracle(&sent);
    assert_eq!(
        want,
        48 + 2 - 2 + 4 + 1,
        "count of B at 12, then +2 -2 +4 +1"
    );
    for shards in [1u16, 2] {
        let mut orders = 0;
        let mut failure = None;
        permutations(sent.len(), |order| {
            orders += 1;
            if failure.is_none() {
                match final_level(&sent, &batches, order, shards) {
                    Ok(got) if got == want => {}
                    other => {
                        failure = Some(format!(
                            "order {order:?} over {shards} shards: {other:?}, want {want}"
                        ))
                    }
                }
            }
        });
        assert_eq!(orders, 40_320);
        if let Some(f) = failure {
            return Err(f);
        }
    }
    Ok(())
}

fn arb_sent() -> impl Strategy<Value = Vec<Sent>> {
    // Times within the late window, in seconds so that ties happen.
    let ev = prop_oneof![
        (0i64..600, 0i64..100).prop_map(|(s, l)| testkit::count(
            NOW + s * 1_000_000,
            STORE,
            SKU,
            l
        )),
        (0i64..600, -5i32..6)
            .prop_filter("a movement moves", |(_, d)| *d != 0)
            .prop_map(|(s, d)| testkit::movement(NOW + s * 1_000_000, STORE, SKU, d)),
        (0i64..600, 1i32..4).prop_map(|(s, q)| testkit::sale(
            NOW + s * 1_000_000,
            STORE,
            1,
            vec![testkit::line(SKU, q, 10)]
        )),
    ];
    proptest::collection::vec((0u64..3, ev), 1..9).prop_map(|v| {
        let mut seqs = [0u64; 3];
        v.into_iter()
            .map(|(d, event)| {
                seqs[d as usize] += 1;
                Sent {
                    device: d + 1,
                    seq: seqs[d as usize],
                    event,
                }
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn any_order_matches_the_rule(sent in arb_sent(), shuffle in proptest::collection::vec(any::<u32>(), 9), shards in 1u16..4) {
        let mut order: Vec<usize> = (0..sent.len()).collect();
        for (i, r) in shuffle.iter().enumerate().take(order.len()) {
            let j = (*r as usize) % order.len();
            order.swap(i, j);
        }
        let batches = encode(&sent).map_err(TestCaseError::fail)?;
        let got = final_level(&sent, &batches, &order, shards).map_err(TestCaseError::fail)?;
        prop_assert_eq!(got, oracle(&sent), "order {:?}", order);
    }
}
