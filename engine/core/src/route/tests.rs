use super::*;
use crate::testkit::{self, count, health, line, movement, sale};
use proptest::prelude::*;
use tillstream_protocol::frame::FrameError;

const NOW: i64 = 1_700_000_000_000_000;

#[test]
fn hashes_are_pinned() {
    // Golden values: a change here moves every entity to another shard.
    let devices: Vec<u16> = (0..8).map(|d| shard_of_device(d, 7)).collect();
    let skus: Vec<u16> = (0..8).map(|s| shard_of_sku(1, s, 7)).collect();
    let terminals: Vec<u16> = (0..8).map(|t| shard_of_terminal(1, t, 7)).collect();
    assert_eq!(devices, GOLDEN_DEVICES);
    assert_eq!(skus, GOLDEN_SKUS);
    assert_eq!(terminals, GOLDEN_TERMINALS);
    assert_eq!(shard_of_terminal(1, 42, 0), 0);
    assert_eq!(shard_of_device(42, 0), 0);
    assert_eq!(shard_of_sku(1, 42, 1), 0);
}

const GOLDEN_DEVICES: [u16; 8] = [5, 1, 6, 4, 5, 6, 3, 2];
const GOLDEN_SKUS: [u16; 8] = [4, 2, 6, 5, 5, 3, 6, 0];
const GOLDEN_TERMINALS: [u16; 8] = [1, 3, 0, 5, 5, 4, 0, 3];

#[test]
fn hashes_spread_evenly() {
    let mut per = [0u32; 7];
    for sku in 0..70_000u64 {
        per[usize::from(shard_of_sku(3, sku, 7))] += 1;
    }
    for n in per {
        assert!((9_500..10_500).contains(&n), "uneven: {per:?}");
    }
    let mut per = [0u32; 3];
    for d in 0..30_000u64 {
        per[usize::from(shard_of_device(d * 1000, 3))] += 1;
    }
    for n in per {
        assert!((9_500..10_500).contains(&n), "uneven: {per:?}");
    }
    // Chains number tills 1..n in every store: small, dense keys.
    let mut per = [0u32; 3];
    for store in 0..3_000u32 {
        for terminal in 1..=10u32 {
            per[usize::from(shard_of_terminal(store, terminal, 3))] += 1;
        }
    }
    for n in per {
        assert!((9_500..10_500).contains(&n), "uneven: {per:?}");
    }
}

#[test]
fn a_till_reported_by_two_devices_has_one_terminal_shard() -> Result<(), FrameError> {
    // A replaced till, or a backup device, reports the same (store,
    // terminal): its rollups must have a single writer.
    let shards = 5;
    let mut seen = Vec::new();
    for device in [3u64, 1_000_003, 77, 91] {
        let b = testkit::batch(1, vec![sale(NOW, 4, 9, vec![line(1, 1, 100)])])?;
        let mut plan = BatchPlan::new(shards);
        plan_batch(b.get(), device, &Rules::default(), NOW, &mut plan);
        let at: Vec<u16> = plan
            .touched()
            .filter(|(_, items)| items.iter().any(|i| i.role == Role::Terminal))
            .map(|(s, _)| s)
            .collect();
        seen.push(at);
    }
    let want = vec![shard_of_terminal(4, 9, shards)];
    assert!(seen.iter().all(|s| *s == want), "{seen:?}");
    Ok(())
}

#[test]
fn a_sale_touches_its_terminal_and_each_line_shard_once() -> Result<(), FrameError> {
    let shards = 3;
    let skus: Vec<u64> = (0..12).collect();
    let lines = skus.iter().map(|&s| line(s, 1, 100)).collect();
    let b = testkit::batch(9, vec![sale(NOW, 1, 2, lines), health(NOW, 1)])?;
    let mut plan = BatchPlan::new(shards);
    plan_batch(b.get(), 77, &Rules::default(), NOW, &mut plan);
    let dev = shard_of_device(77, shards);
    let till = shard_of_terminal(1, 2, shards);
    let mut line_shards: Vec<u16> = skus.iter().map(|&s| shard_of_sku(1, s, shards)).collect();
    line_shards.sort_unstable();
    line_shards.dedup();
    for (s, items) in plan.touched() {
        let terminal = items.iter().filter(|i| i.role == Role::Terminal).count();
        let lines = items.iter().filter(|i| i.role == Role::Lines).count();
        let health = items.iter().filter(|i| i.role == Role::Health).count();
        assert_eq!(terminal, usize::from(s == till));
        assert_eq!(health, usize::from(s == dev));
        assert_eq!(lines, usize::from(line_shards.contains(&s)));
    }
    assert!(plan.rejected.is_empty());
    Ok(())
}

#[test]
fn bad_events_are_rejected_on_the_device_shard() -> Result<(), FrameError> {
    let b = testkit::batch(
        4,
        vec![
            movement(NOW, 1, 2, 0),
            count(NOW, 1, 2, 5),
            sale(NOW, 1, 2, vec![]),
            count(NOW, 2, 2, 5),
        ],
    )?;
    let mut plan = BatchPlan::new(2);
    let scope = Scope {
        store: Some(1),
        kinds: Kinds::All,
    };
    plan_batch_scoped(b.get(), 5, &scope, &Rules::default(), NOW, &mut plan);
    let codes: Vec<(u32, u16)> = plan.rejected.iter().map(|r| (r.idx, r.code)).collect();
    assert_eq!(
        codes,
        [
            (0, RejectCode::ZeroDelta.as_u16()),
            (2, RejectCode::NoLines.as_u16()),
            (3, RejectCode::WrongStore.as_u16()),
        ]
    );
    assert!(plan.rejected.iter().all(|r| r.seq == 4));
    let dev = usize::from(shard_of_device(5, 2));
    let rejected: Vec<u32> = plan.parts[dev]
        .iter()
        .filter(|i| matches!(i.role, Role::Rejected(_)))
        .map(|i| i.idx)
        .collect();
    assert_eq!(rejected, [0, 2, 3]);
    Ok(())
}

#[test]
fn a_reused_plan_does_not_grow() -> Result<(), FrameError> {
    let events = (0..64)
        .map(|i| sale(NOW, 1, 2, vec![line(i, 1, 5), line(i + 1, 1, 5)]))
        .collect();
    let b = testkit::batch(1, events)?;
    let mut plan = BatchPlan::new(4);
    plan_batch(b.get(), 1, &Rules::default(), NOW, &mut plan);
    let caps: Vec<usize> = plan.parts.iter().map(Vec::capacity).collect();
    for _ in 0..10 {
        plan_batch(b.get(), 1, &Rules::default(), NOW, &mut plan);
    }
    let again: Vec<usize> = plan.parts.iter().map(Vec::capacity).collect();
    assert_eq!(caps, again);
    Ok(())
}

fn arb_event() -> impl Strategy<Value = tillstream_protocol::Event> {
    let ts = prop_oneof![Just(NOW), Just(NOW + 48 * 3_600_000_000), Just(0i64)];
    prop_oneof![
        (
            ts.clone(),
            1u32..3,
            1u32..5,
            proptest::collection::vec((0u64..40, -1i32..4), 0..6)
        )
            .prop_map(|(ts, store, terminal, ls)| sale(
                ts,
                store,
                terminal,
                ls.into_iter().map(|(s, q)| line(s, q, 10)).collect()
            )),
        (ts.clone(), 1u32..3, 0u64..40, -2i32..3).prop_map(|(t, st, s, d)| movement(t, st, s, d)),
        (ts.clone(), 1u32..3, 0u64..40, -1i64..9).prop_map(|(t, st, s, l)| count(t, st, s, l)),
        (ts, 1u32..3).prop_map(|(t, st)| health(t, st)),
    ]
}

proptest! {
    #[test]
    fn routing_is_stable_and_in_range(store in any::<u32>(), sku in any::<u64>(), device in any::<u64>(), shards in 1u16..300) {
        let s = shard_of_sku(store, sku, shards);
        prop_assert!(s < shards);
        prop_assert_eq!(s, shard_of_sku(store, sku, shards));
        let d = shard_of_device(device, shards);
        prop_assert!(d < shards);
        prop_assert_eq!(d, shard_of_device(device, shards));
        let t = shard_of_terminal(store, sku as u32, shards);
        prop_assert!(t < shards);
        prop_assert_eq!(t, shard_of_terminal(store, sku as u32, shards));
        prop_assert_eq!(shard_of_sku(store, sku, 1), 0);
    }

    #[test]
    fn every_event_is_placed_once_per_role(
        events in proptest::collection::vec(arb_event(), 0..40),
        device in any::<u64>(),
        shards in 1u16..8,
    ) {
        let n = events.len();
        let b = testkit::batch(1, events).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut plan = BatchPlan::new(shards);
        plan_batch(b.get(), device, &Rules::default(), NOW, &mut plan);
        let archived = b.get();
        for idx in 0..n {
            let e = &archived.events[idx];
            let idx = u32::try_from(idx).unwrap_or(u32::MAX);
            let placed = |role: fn(&Role) -> bool| -> Vec<u16> {
                plan.touched()
                    .flat_map(|(s, items)| items.iter().filter(|i| i.idx == idx && role(&i.role)).map(move |_| s))
                    .collect()
            };
            let rejected = placed(|r| matches!(r, Role::Rejected(_)));
            let in_ack = plan.rejected.iter().filter(|r| r.idx == idx).count();
            match check_event(e, &Rules::default(), NOW) {
                Err(_) => {
                    prop_assert_eq!(rejected, vec![shard_of_device(device, shards)]);
                    prop_assert_eq!(in_ack, 1);
                    prop_assert_eq!(plan.touched().flat_map(|(_, i)| i).filter(|i| i.idx == idx).count(), 1);
                }
                Ok(()) => {
                    prop_assert!(rejected.is_empty());
                    prop_assert_eq!(in_ack, 0);
                    match e {
                        ArchivedEvent::Sale(s) => {
                            prop_assert_eq!(placed(|r| *r == Role::Terminal), vec![shard_of_terminal(s.store.to_native(), s.terminal.to_native(), shards)]);
                            let mut want: Vec<u16> = s.lines.iter().map(|l| shard_of_sku(s.store.to_native(), l.sku.to_native(), shards)).collect();
                            want.sort_unstable();
                            want.dedup();
                            prop_assert_eq!(placed(|r| *r == Role::Lines), want);
                        }
                        ArchivedEvent::Movement(m) => prop_assert_eq!(placed(|r| *r == Role::Stock), vec![shard_of_sku(m.store.to_native(), m.sku.to_native(), shards)]),
                        ArchivedEvent::Count(c) => prop_assert_eq!(placed(|r| *r == Role::Stock), vec![shard_of_sku(c.store.to_native(), c.sku.to_native(), shards)]),
                        ArchivedEvent::Health(_) => prop_assert_eq!(placed(|r| *r == Role::Health), vec![shard_of_device(device, shards)]),
                        ArchivedEvent::Refund(_) => {}
                    }
                }
            }
        }
        // Items of each part are in event order.
        for (_, items) in plan.touched() {
            prop_assert!(items.windows(2).all(|w| w[0].idx <= w[1].idx));
        }
    }
}

#[test]
fn a_scope_refuses_kinds_its_role_may_not_send() -> Result<(), FrameError> {
    let b = testkit::batch(
        9,
        vec![
            sale(NOW, 1, 2, vec![line(10, 1, 100)]),
            count(NOW, 1, 10, 5),
            movement(NOW, 1, 10, -1),
            health(NOW, 1),
        ],
    )?;
    let refused = |kinds| {
        let mut plan = BatchPlan::new(2);
        let scope = Scope {
            store: Some(1),
            kinds,
        };
        plan_batch_scoped(b.get(), 5, &scope, &Rules::default(), NOW, &mut plan);
        plan.rejected
            .iter()
            .map(|r| (r.idx, r.code))
            .collect::<Vec<_>>()
    };
    let no = RejectCode::NotPermitted.as_u16();
    assert_eq!(refused(Kinds::Stock), [(0, no)]);
    assert_eq!(refused(Kinds::Sales), [(1, no), (2, no)]);
    assert!(refused(Kinds::All).is_empty());
    Ok(())
}
