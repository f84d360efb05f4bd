use super::*;
use proptest::prelude::*;

fn t(shard: u16, n: u64) -> PartTicket {
    PartTicket { shard, n }
}

fn release<T>(o: &mut CommitOrder<T>) -> Vec<T> {
    let mut out = Vec::new();
    o.release(&mut out);
    out
}

#[test]
fn in_order_units_release_at_once() {
    let mut o = CommitOrder::new();
    o.push("x", Some(1), &[t(0, 0), t(1, 0)]);
    o.push("y", Some(2), &[t(0, 1)]);
    assert_eq!(release(&mut o), ["x", "y"]);
    assert!(o.is_empty());
    o.push("z", Some(1), &[t(1, 1)]);
    assert_eq!(release(&mut o), ["z"]);
}

#[test]
fn a_later_part_waits_for_an_earlier_one() {
    let mut o = CommitOrder::new();
    // Shard 0 applied x (part 0) before y (part 1), but y's unit is
    // complete first because x also waits for shard 1.
    o.push("y", Some(2), &[t(0, 1)]);
    assert_eq!(release(&mut o), Vec::<&str>::new());
    o.push("x", Some(1), &[t(0, 0), t(1, 0)]);
    assert_eq!(
        release(&mut o),
        ["y", "x"],
        "released together, in arrival order"
    );
}

#[test]
fn a_cycle_is_released_together() {
    let mut o = CommitOrder::new();
    // Shard 0: y then x1. Shard 1: x2 then y. Device 1: x1 then x2.
    o.push("x1", Some(1), &[t(0, 1)]);
    o.push("x2", Some(1), &[t(1, 0)]);
    assert_eq!(release(&mut o), Vec::<&str>::new());
    o.push("y", Some(2), &[t(0, 0), t(1, 1)]);
    assert_eq!(release(&mut o), ["x1", "x2", "y"]);
}

#[test]
fn a_device_waits_for_its_earlier_batch() {
    let mut o = CommitOrder::new();
    o.push("x1", Some(1), &[t(0, 1)]); // shard 0 part 0 not arrived
    o.push("x2", Some(1), &[t(1, 0)]);
    o.push("free", None, &[]);
    o.push("other", Some(2), &[t(1, 1)]); // after x2 on shard 1
    assert_eq!(release(&mut o), ["free"]);
    o.push("first", Some(3), &[t(0, 0)]);
    assert_eq!(release(&mut o), ["x1", "x2", "other", "first"]);
}

#[test]
fn empty_batches_follow_their_device() {
    let mut o = CommitOrder::new();
    o.push("x1", Some(1), &[t(0, 1)]);
    o.push("x2-empty", Some(1), &[]);
    o.push("y-empty", Some(2), &[]);
    assert_eq!(release(&mut o), ["y-empty"]);
    o.push("z", Some(3), &[t(0, 0)]);
    assert_eq!(release(&mut o), ["x1", "x2-empty", "z"]);
}

#[test]
fn bogus_tickets_are_never_released() {
    let mut o = CommitOrder::new();
    o.push("a", Some(1), &[t(0, 0)]);
    o.push("dup", Some(2), &[t(0, 0)]);
    o.push("after-dup", Some(2), &[]);
    o.push("far", Some(3), &[t(1, MAX_GAP)]);
    assert_eq!(release(&mut o), ["a"]);
    assert_eq!(o.pending(), 3);
    // A ticket below the frontier waits for nothing.
    o.push("stale", Some(4), &[t(0, 0)]);
    assert_eq!(release(&mut o), ["stale"]);
}

/// A random run: devices send batches touching random shards; each shard
/// applies its parts in an order that keeps each device's batches in seq
/// order; a batch's unit arrives once all parts are applied and its
/// device's earlier units arrived; releases happen at random points.
fn run(batches: &[(u8, Vec<u8>)], shards: u8, picks: &[u16]) -> Result<(), TestCaseError> {
    let shards = usize::from(shards.max(1));
    // Per shard and device: queue of batch ids (parts), in seq order; a
    // shard takes the head of any device's queue (mailbox interleaving).
    let mut queues: Vec<Vec<VecDeque<usize>>> = vec![vec![VecDeque::new(); 4]; shards];
    let mut parts_left = Vec::new();
    for (b, (_, touched)) in batches.iter().enumerate() {
        let mut set: Vec<usize> = touched.iter().map(|s| usize::from(*s) % shards).collect();
        set.sort_unstable();
        set.dedup();
        for s in &set {
            queues[*s][usize::from(batches[b].0 % 4)].push_back(b);
        }
        parts_left.push(set.len());
    }
    let mut next_n = vec![0u64; shards];
    let mut tickets: Vec<Vec<PartTicket>> = vec![Vec::new(); batches.len()];
    let mut next_submit: HashMap<u8, usize> = HashMap::new(); // per device: index into its batches
    let by_device =
        |d: u8| -> Vec<usize> { (0..batches.len()).filter(|&b| batches[b].0 == d).collect() };
    let mut order = CommitOrder::new();
    let mut released_at: Vec<Option<usize>> = vec![None; batches.len()];
    let mut round = 0usize;
    let mut picks = picks.iter().cycle();
    loop {
        let busy: Vec<(usize, usize)> = (0..shards)
            .flat_map(|s| (0..4).map(move |d| (s, d)))
            .filter(|&(s, d)| !queues[s][d].is_empty())
            .collect();
        if busy.is_empty() {
            break;
        }
        let pick = usize::from(*picks.next().unwrap_or(&0));
        let (s, d) = busy[pick % busy.len()];
        if let Some(b) = queues[s][d].pop_front() {
            tickets[b].push(t(u16::try_from(s).unwrap_or(0), next_n[s]));
            next_n[s] += 1;
            parts_left[b] -= 1;
        }
        // Submit complete units in device order.
        for d in 0..4u8 {
            let list = by_device(d);
            let i = next_submit.entry(d).or_insert(0);
            while *i < list.len() && parts_left[list[*i]] == 0 {
                order.push(list[*i], Some(u64::from(d)), &tickets[list[*i]]);
                *i += 1;
            }
        }
        if pick % 3 == 0 {
            round += 1;
            for b in release(&mut order) {
                prop_assert!(released_at[b].is_none(), "released twice");
                released_at[b] = Some(round);
            }
        }
    }
    // Submit what is left (batches without parts) and drain.
    for d in 0..4u8 {
        let list = by_device(d);
        let i = next_submit.entry(d).or_insert(0);
        while *i < list.len() {
            order.push(list[*i], Some(u64::from(d)), &tickets[list[*i]]);
            *i += 1;
        }
    }
    round += 1;
    for b in release(&mut order) {
        prop_assert!(released_at[b].is_none(), "released twice");
        released_at[b] = Some(round);
    }
    prop_assert!(order.is_empty(), "everything is released once all arrived");
    // Closed under "before": shard order and device order.
    let when = |b: usize| released_at[b].unwrap_or(usize::MAX);
    for (b, mine) in tickets.iter().enumerate() {
        for tk in mine {
            for (c, theirs) in tickets.iter().enumerate() {
                if theirs.iter().any(|o| o.shard == tk.shard && o.n < tk.n) {
                    prop_assert!(when(c) <= when(b), "shard order broken");
                }
            }
        }
        for c in 0..b {
            if batches[c].0 == batches[b].0 {
                prop_assert!(when(c) <= when(b), "device order broken");
            }
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn releases_are_closed_and_complete(
        batches in proptest::collection::vec((0u8..4, proptest::collection::vec(0u8..8, 0..4)), 0..30),
        shards in 1u8..5,
        picks in proptest::collection::vec(any::<u16>(), 1..64),
    ) {
        run(&batches, shards, &picks)?;
    }
}

#[test]
fn drain_all_hands_back_blocked_units_too() {
    let mut order: CommitOrder<&str> = CommitOrder::new();
    // Part 0 of shard 0 never arrives: "b" (part 1) is blocked behind it.
    order.push("b", Some(2), &[PartTicket { shard: 0, n: 1 }]);
    order.push("dead letter", None, &[]);
    let mut out = Vec::new();
    order.release(&mut out);
    assert_eq!(out, vec!["dead letter"]);
    assert_eq!(order.pending(), 1);
    out.clear();
    order.drain_all(&mut out);
    assert_eq!(out, vec!["b"]);
    assert!(order.is_empty());
}
