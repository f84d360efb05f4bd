use std::collections::HashMap;

use tillstream_protocol::frame::{FrameHeader, HEADER_LEN, aligned};
use tillstream_protocol::{Event, MsgType, ValidatedBatch};

use super::*;
use tillstream_auth::Role;

use crate::workload::{Workload, build};

const START: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

fn spec(seed: u64, events: u64) -> FleetSpec {
    FleetSpec {
        stores: 3,
        terminals_per_store: 4,
        sensors_per_store: 2,
        skus: 500,
        events,
        seed,
        start_us: START,
        step_us: 20,
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() -> anyhow::Result<()> {
    let frames = |seed| -> anyhow::Result<Vec<Vec<u8>>> {
        let w = build(&spec(seed, 5_000), 64, None)?;
        Ok(w.devices
            .iter()
            .flat_map(|d| d.batches.iter().map(|b| b.batch.frame.to_vec()))
            .collect())
    };
    let a = frames(1)?;
    assert_eq!(a, frames(1)?);
    assert_ne!(a, frames(2)?);
    Ok(())
}

#[test]
fn every_batch_is_a_valid_frame_with_contiguous_seqs() -> anyhow::Result<()> {
    let s = spec(7, 20_000);
    let w = build(&s, 100, None)?;
    assert_eq!(w.events, s.events);
    let mut events = 0u64;
    let mut last_due = 0;
    for d in &w.devices {
        for (i, b) in d.batches.iter().enumerate() {
            let frame = &b.batch.frame;
            let h = FrameHeader::parse(frame, u32::MAX)?;
            assert_eq!(h.msg_type, MsgType::Batch);
            let payload = &frame[HEADER_LEN..];
            h.check_payload(payload)?;
            let v = ValidatedBatch::new(aligned(payload), 4096)?;
            let got = v.get();
            assert_eq!(got.seq.to_native(), i as u64 + 1);
            assert_eq!(b.batch.seq, i as u64 + 1);
            assert_eq!(got.events.len(), b.batch.events as usize);
            assert!(b.batch.events <= 100);
            events += u64::from(b.batch.events);
            assert!(b.due_event >= 1 && b.due_event <= s.events);
            last_due = last_due.max(b.due_event);
        }
        // Batches of one device are due in seq order.
        assert!(
            d.batches
                .windows(2)
                .all(|w| w[0].due_event < w[1].due_event)
        );
    }
    assert_eq!(events, s.events);
    assert_eq!(last_due, s.events);
    Ok(())
}

#[test]
fn events_make_sense() -> anyhow::Result<()> {
    let s = spec(3, 30_000);
    let mut g = Generator::new(s.clone())?;
    let devices = g.devices().to_vec();
    let mut last_ts: HashMap<usize, i64> = HashMap::new();
    let (lo, hi) = (START - MAX_TILL_LAG_US, START + 30_000 * 20 + MAX_LEAD_US);
    let mut kinds: HashMap<&str, u64> = HashMap::new();
    for (d, ev) in g.by_ref() {
        let dev = devices[d];
        let ts = ev.ts_us();
        assert!((lo..=hi).contains(&ts), "timestamp {ts} out of range");
        if let Some(prev) = last_ts.insert(d, ts) {
            assert!(ts > prev, "a device's clock never goes back");
        }
        let (name, store) = match &ev {
            Event::Sale(x) => {
                assert_eq!(dev.kind, DeviceKind::Till);
                assert_eq!(x.terminal, dev.index);
                assert!((1..=8).contains(&x.lines.len()));
                check_lines(&x.lines);
                let total: i64 = x.lines.iter().map(|l| l.amount() + l.tax).sum();
                assert_eq!(x.tenders.iter().map(|t| t.amount).sum::<i64>(), total);
                assert!(x.tenders.iter().all(|t| t.amount >= 0 && t.tip >= 0));
                assert_eq!(x.currency, *b"GBP");
                ("sale", x.store)
            }
            Event::Refund(x) => {
                assert_eq!(dev.kind, DeviceKind::Till);
                assert!((1..=2).contains(&x.lines.len()));
                check_lines(&x.lines);
                ("refund", x.store)
            }
            Event::Movement(x) => {
                assert_eq!(dev.kind, DeviceKind::Sensor);
                assert_ne!(x.delta, 0);
                assert!(x.sku >= SKU_BASE && x.sku < SKU_BASE + u64::from(s.skus));
                ("movement", x.store)
            }
            Event::Count(x) => {
                assert_eq!(dev.kind, DeviceKind::Sensor);
                assert!(x.level >= 0);
                ("count", x.store)
            }
            Event::Health(x) => {
                assert!(x.battery_pct <= 100 || x.battery_pct == 255);
                ("health", x.store)
            }
        };
        assert_eq!(store, dev.store, "events name their device's store");
        *kinds.entry(name).or_default() += 1;
    }
    for k in ["sale", "refund", "movement", "count", "health"] {
        assert!(
            kinds.get(k).copied().unwrap_or(0) > 0,
            "no {k} in {kinds:?}"
        );
    }
    Ok(())
}

fn check_lines(lines: &[tillstream_protocol::SaleLine]) {
    for l in lines {
        assert!(l.quantity > 0);
        assert!(l.unit_price > 0);
        assert!(l.discount >= 0 && l.discount <= i64::from(l.quantity) * l.unit_price);
        assert!(l.tax >= 0);
    }
}

#[test]
fn refund_share_is_near_its_target() -> anyhow::Result<()> {
    let g = Generator::new(spec(11, 60_000))?;
    let (mut sales, mut refunds) = (0u64, 0u64);
    for (_, ev) in g {
        match ev {
            Event::Sale(_) => sales += 1,
            Event::Refund(_) => refunds += 1,
            _ => {}
        }
    }
    let share = refunds as f64 / (sales + refunds) as f64;
    assert!((share - REFUND_SHARE).abs() < 0.005, "refund share {share}");
    Ok(())
}

#[test]
fn popularity_has_a_heavy_head() -> anyhow::Result<()> {
    let mut g = Generator::new(spec(5, 40_000))?;
    let mut by_sku: HashMap<(u32, u64), u64> = HashMap::new();
    for (_, ev) in g.by_ref() {
        if let Event::Sale(x) = ev {
            for l in &x.lines {
                *by_sku.entry((x.store, l.sku)).or_default() += 1;
            }
        }
    }
    let shelves = g.shelves(1).ok_or_else(|| anyhow::anyhow!("store 1"))?;
    let n = g.catalogue().len();
    let (mut head, mut tail) = (0u64, 0u64);
    for ((store, sku), count) in by_sku {
        if store != 1 {
            continue;
        }
        let rank = shelves.rank_of((sku - SKU_BASE) as usize).unwrap_or(n);
        if rank < n / 100 {
            head += count;
        } else if rank >= n / 2 {
            tail += count;
        }
    }
    assert!(
        head > tail,
        "top 1% of SKUs ({head}) should outsell the bottom half ({tail})"
    );
    Ok(())
}

#[test]
fn devices_interleave_out_of_order_by_seconds_at_most() -> anyhow::Result<()> {
    let g = Generator::new(spec(9, 20_000))?;
    let mut max_seen = i64::MIN;
    let mut worst = 0i64;
    let mut out_of_order = 0u32;
    for (_, ev) in g {
        let ts = ev.ts_us();
        if ts < max_seen {
            out_of_order += 1;
            worst = worst.max(max_seen - ts);
        }
        max_seen = max_seen.max(ts);
    }
    assert!(out_of_order > 0, "devices should interleave out of order");
    assert!(worst <= MAX_TILL_LAG_US + MAX_LEAD_US, "lag {worst} µs");
    Ok(())
}

/// The server orders a shelf count only against the newest 1,024
/// movements of its SKU it holds: a count stamped behind movements
/// generated before it could arrive behind more than that and be refused
/// (`count_too_late`, issue 70). A sensor's clock is never behind a till's.
#[test]
fn a_count_is_never_stamped_before_a_till_event_generated_before_it() -> anyhow::Result<()> {
    for step_us in [20, 2, 1_000] {
        let g = Generator::new(FleetSpec {
            step_us,
            ..spec(3, 30_000)
        })?;
        let kinds: Vec<DeviceKind> = g.devices().iter().map(|d| d.kind).collect();
        let (mut newest_till, mut counts) = (i64::MIN, 0u32);
        for (d, ev) in g {
            match (kinds[d], &ev) {
                (DeviceKind::Till, _) => newest_till = newest_till.max(ev.ts_us()),
                (DeviceKind::Sensor, Event::Count(c)) => {
                    counts += 1;
                    assert!(
                        c.ts_us > newest_till,
                        "step {step_us}: a count at {} behind a till at {newest_till}",
                        c.ts_us
                    );
                }
                _ => {}
            }
        }
        assert!(counts > 100, "step {step_us}: {counts} counts");
    }
    Ok(())
}

#[test]
fn bad_specs_are_refused() {
    let mut s = spec(1, 10);
    s.stores = 0;
    assert!(Generator::new(s).is_err());
    let mut s = spec(1, 10);
    s.terminals_per_store = 0;
    s.sensors_per_store = 0;
    assert!(Generator::new(s).is_err());
}

#[test]
fn sensors_only_and_tills_only_fleets_work() -> anyhow::Result<()> {
    let mut s = spec(1, 500);
    s.terminals_per_store = 0;
    assert!(Generator::new(s.clone())?.all(|(_, e)| !matches!(e, Event::Sale(_))));
    s.terminals_per_store = 3;
    s.sensors_per_store = 0;
    assert!(Generator::new(s)?.all(|(_, e)| !matches!(e, Event::Count(_))));
    Ok(())
}

#[test]
fn device_ids_are_unique_and_carry_the_run_id() {
    let mut seen = std::collections::HashSet::new();
    for store in [1, 2, MAX_STORE] {
        for index in [0, 1, 0xffff] {
            let d = device_id(store, index);
            assert!(seen.insert(d));
            assert_eq!(with_run_id(d, 0), d);
            let r = with_run_id(d, 0xab_cdef);
            assert_eq!(r >> RUN_ID_SHIFT, 0xab_cdef);
            assert_eq!(with_run_id(r, 0), d, "the run id replaces, never mixes");
        }
    }
}

#[test]
fn a_batch_too_large_for_a_frame_is_split() -> anyhow::Result<()> {
    let mut s = spec(2, 12_000);
    s.stores = 1;
    s.terminals_per_store = 1;
    s.sensors_per_store = 0;
    let w = build(&s, 12_000, None)?;
    let d = &w.devices[0];
    assert!(
        d.batches.len() > 1,
        "12,000 sales do not fit one 1 MiB frame"
    );
    assert_eq!(w.events, 12_000);
    for (i, b) in d.batches.iter().enumerate() {
        assert_eq!(b.batch.seq, i as u64 + 1);
        assert!(b.batch.len() <= HEADER_LEN + (1 << 20));
    }
    Ok(())
}

/// A large fleet at a low rate: each device holds a few events when its
/// timer fires. Without the timer every device's first batch came due once
/// the fleet had made `batch size` events per device, all at once.
#[test]
fn a_batch_closes_when_its_first_event_has_waited_long_enough() -> anyhow::Result<()> {
    let (size, wait) = (50_usize, 400_u64);
    let s = spec(5, 30_000);
    let generator = Generator::new(s.clone())?;
    let ids = generator
        .devices()
        .iter()
        .map(|d| (d.device, d.store, Role::Terminal));
    let mut batcher = crate::workload::Batcher::new(ids, size as u32).max_wait(Some(wait));
    // Where (1-based, in the whole run) each device's events came.
    let mut at: Vec<Vec<u64>> = vec![Vec::new(); generator.devices().len()];
    for (i, (d, ev)) in generator.enumerate() {
        at[d].push(i as u64 + 1);
        batcher.push(d, ev)?;
    }
    let w = batcher.finish()?;
    assert_eq!(w.events, s.events);
    let (mut by_timer, mut by_size) = (0, 0);
    let mut last_dues = std::collections::BTreeSet::new();
    for (d, plan) in w.devices.iter().enumerate() {
        let mut next = 0;
        for b in &plan.batches {
            let n = b.batch.events as usize;
            let (first, last) = (at[d][next], at[d][next + n - 1]);
            next += n;
            // Not before its last event was made, never past its timer.
            assert!(b.due_event >= last && b.due_event <= first + wait);
            if n == size {
                by_size += 1;
            } else {
                // Closed by its timer: due when it fired (a first batch's
                // timer fires earlier, see below), and the device's next
                // event, if any, came after that. The last batch too,
                // though the run's events ended before its timer fired.
                if b.batch.seq > 1 {
                    assert_eq!(b.due_event, first + wait);
                }
                if let Some(&after) = at[d].get(next) {
                    assert!(after > b.due_event);
                } else {
                    last_dues.insert(b.due_event);
                }
                by_timer += 1;
            }
        }
        assert_eq!(next, at[d].len(), "every event of device {d} sent once");
        assert!(
            plan.batches
                .windows(2)
                .all(|p| p[0].due_event < p[1].due_event)
        );
    }
    assert!(
        by_timer > 0 && by_size > 0,
        "{by_timer} by timer, {by_size} by size"
    );
    // The devices' last batches go on their own timers, not all in the
    // instant the run's events end.
    assert!(
        last_dues.len() > w.devices.len() / 2,
        "{} distinct last-batch times for {} devices",
        last_dues.len(),
        w.devices.len()
    );
    // Without a wait, the same fleet's first batches come due far later.
    let by_size_only = build(&s, size as u32, None)?;
    let first_due = |w: &Workload| {
        w.devices
            .iter()
            .filter_map(|d| d.batches.first())
            .map(|b| b.due_event)
            .max()
    };
    assert!(first_due(&by_size_only) > first_due(&w));
    Ok(())
}

#[test]
fn an_unpaced_run_ends_its_clock_now_and_a_paced_one_starts_it_now() {
    const NOW: i64 = START + 86_400 * 1_000_000;
    // 20 M events at 20 µs: 400 simulated seconds, more than the server's
    // five minutes of allowed lead had they started now.
    assert_eq!(clock_start_us(NOW, 20_000_000, 20, 0.0), NOW - 400_000_000);
    let events = 20_000;
    let g = Generator::new(FleetSpec {
        start_us: clock_start_us(NOW, events, 20, 0.0),
        ..spec(1, events)
    })
    .expect("a valid spec");
    let newest = g.map(|(_, e)| e.ts_us()).max().unwrap_or(i64::MIN);
    // The last events are stamped now, give or take a device's offset.
    assert!(
        (NOW - MAX_LEAD_US..=NOW + MAX_LEAD_US).contains(&newest),
        "{newest}"
    );
    // Paced at real time (50 k events/s at 20 µs): the clocks keep step.
    assert_eq!(clock_start_us(NOW, 20_000_000, 20, 50_000.0), NOW);
    // Paced, but stepping faster than it sends: back again.
    assert_eq!(clock_start_us(NOW, 1_000, 20, 100_000.0), NOW - 20_000);
}
