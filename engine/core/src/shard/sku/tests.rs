use super::*;
use proptest::prelude::*;

const LW: i64 = 1_000;

fn key(idx: u32) -> EventKey {
    EventKey {
        device: 1,
        seq: 1,
        idx,
    }
}

/// The window's entries at or above the floor once settled, oldest first.
fn live(s: &SkuState, lw: i64) -> Vec<(i64, i64)> {
    let s = s.settled(lw);
    let floor = s.floor(lw);
    let mut live: Vec<_> = s.held().filter(|&(t, _)| t >= floor).collect();
    live.sort_unstable();
    live
}

#[test]
fn activation_does_not_depend_on_the_order_of_stored_movements() {
    let row = StockLevelRow {
        store: 1,
        sku: 2,
        level: 10,
        count_ts_us: None,
        count_key: None,
        updated_ts_us: 1_000_000,
        version: 3,
    };
    const LW: i64 = 10_000;
    // More than a full window, in a scrambled order with equal times.
    let ts: Vec<i64> = (0..3 * MAX_WINDOW as i64)
        .map(|i| 1_000_000 - (i * 7_919) % 5_000)
        .collect();
    let mut sorted = ts.clone();
    sorted.sort_unstable();
    let (mut a, mut b) = (SkuState::from_row(&row), SkuState::from_row(&row));
    for &t in &sorted {
        a.load_movement(t, t % 3, LW);
    }
    for &t in &ts {
        b.load_movement(t, t % 3, LW);
    }
    let (a, b) = (a.settled(LW), b.settled(LW));
    // Cut at the newest movement past the newest MAX_WINDOW, whatever the
    // order, with every movement after the cut held.
    let cut = sorted[sorted.len() - MAX_WINDOW - 1];
    assert_eq!((a.cut_ts(), b.cut_ts()), (cut, cut));
    let after: Vec<_> = sorted
        .iter()
        .filter(|&&t| t > cut)
        .map(|&t| (t, t % 3))
        .collect();
    for s in [&a, &b] {
        let held: Vec<_> = live(s, LW).into_iter().filter(|&(t, _)| t > cut).collect();
        assert_eq!(held, after);
    }
}

#[test]
fn a_hot_sku_refuses_the_same_counts_live_and_activated_again() {
    // One movement a microsecond for 20,000 µs, a late window of 1,800:
    // the window holds more than MAX_WINDOW above its floor, so the
    // newest MAX_WINDOW decide the floor, and the SKU activated again
    // from its stored movements (in any order) must agree.
    const LW: i64 = 1_800;
    let mut live = SkuState::empty();
    for t in 0..20_000 {
        live.movement(t, 1, LW);
    }
    let row = live.row(1, 2);
    let mut again = SkuState::from_row(&row);
    for i in 0..20_000i64 {
        let t = (i * 7_919) % 20_000;
        again.load_movement(t, 1, LW);
    }
    let expected_floor = 20_000 - MAX_WINDOW as i64 - 1;
    assert_eq!(live.settled(LW).floor(LW), expected_floor);
    assert_eq!(again.settled(LW).floor(LW), expected_floor);
    for t in [expected_floor - 1, expected_floor, 19_990] {
        let (mut a, mut b) = (live.clone(), again.clone());
        assert_eq!(
            a.count(t, key(1), 5, LW),
            b.count(t, key(1), 5, LW),
            "count at {t}"
        );
        assert_eq!(a.row(1, 2), b.row(1, 2));
    }
}

#[test]
fn movements_without_a_count_sum_up() {
    let mut s = SkuState::empty();
    assert_eq!(s.movement(100, 5, LW), (true, 5));
    assert_eq!(
        s.movement(50, -2, LW),
        (true, 3),
        "late but no count: applies"
    );
    assert_eq!((s.version, s.updated_ts, s.window_len(LW)), (2, 100, 2));
}

#[test]
fn a_count_sets_the_level_and_sees_what_came_before() {
    let mut s = SkuState::empty();
    s.movement(100, 5, LW);
    s.movement(300, 7, LW);
    // Counted at 200: the movement at 100 is in the count, the one at
    // 300 applies on top.
    assert_eq!(
        s.count(200, key(1), 40, LW),
        CountOutcome::Applied { delta: 35 }
    );
    assert_eq!(s.level, 47);
    assert_eq!(
        s.window_len(LW),
        1,
        "movements before the count are dropped"
    );
    // A movement stamped at or before the count arrives late.
    assert_eq!(s.movement(200, -3, LW), (false, 47));
    assert_eq!(s.movement(150, -3, LW), (false, 47));
    assert_eq!(s.version, 3);
    // An older count changes nothing; a newer one recomputes.
    assert_eq!(s.count(190, key(2), 1, LW), CountOutcome::Stale);
    assert_eq!(
        s.count(200, key(0), 1, LW),
        CountOutcome::Stale,
        "ties break on the key"
    );
    assert_eq!(
        s.count(200, key(3), 10, LW),
        CountOutcome::Applied { delta: -30 }
    );
    assert_eq!(s.level, 17);
    assert_eq!(
        s.count(400, key(4), 10, LW),
        CountOutcome::Applied { delta: -7 }
    );
    assert_eq!((s.level, s.window_len(LW), s.version), (10, 0, 5));
}

#[test]
fn counts_older_than_the_window_are_refused() {
    let mut s = SkuState::empty();
    assert_eq!(
        s.count(5_000, key(1), 3, LW),
        CountOutcome::Applied { delta: 3 }
    );
    s.movement(10_000, 1, LW);
    assert_eq!(s.count(8_999, key(2), 3, LW), CountOutcome::TooLate);
    // Counted 3 at 9000, plus the movement at 10000 on top.
    assert_eq!(
        s.count(9_000, key(2), 3, LW),
        CountOutcome::Applied { delta: 0 }
    );
    assert_eq!(s.level, 4);
}

#[test]
fn the_window_is_pruned_as_time_advances() {
    let mut s = SkuState::empty();
    for t in 0..10 {
        s.movement(t * 400, 1, LW);
    }
    // Newest 3600: the window keeps ts >= 2600.
    assert_eq!(s.window_len(LW), 3);
    s.movement(3000, 1, LW);
    assert_eq!(s.window_len(LW), 4, "an out-of-order movement is held");
    assert_eq!(
        s.count(2700, key(1), 0, LW),
        CountOutcome::Applied { delta: -7 }
    );
    assert_eq!(s.level, 4);
}

#[test]
fn a_hot_sku_keeps_a_bounded_window() {
    let mut s = SkuState::empty();
    let n = MAX_WINDOW as i64 + 10;
    for t in 0..n {
        s.movement(t, 1, i64::MAX / 4);
    }
    assert_eq!(s.window_len(i64::MAX / 4), MAX_WINDOW);
    assert_eq!(s.count(8, key(1), 0, i64::MAX / 4), CountOutcome::TooLate);
    // At the cut: every movement after it is still there.
    assert_eq!(
        s.count(9, key(1), 0, i64::MAX / 4),
        CountOutcome::Applied { delta: -10 }
    );
    assert_eq!(s.level, n - 10);
    // Past MAX_SLOTS the window cuts itself, with the same result.
    let mut s = SkuState::empty();
    let n = 3 * MAX_SLOTS as i64;
    for t in 0..n {
        s.movement(t, 1, i64::MAX / 4);
    }
    assert!(s.held_len() <= MAX_SLOTS);
    let cut = n - MAX_WINDOW as i64 - 1;
    assert_eq!(
        s.count(cut - 1, key(1), 0, i64::MAX / 4),
        CountOutcome::TooLate
    );
    assert_eq!(
        s.count(cut, key(1), 0, i64::MAX / 4),
        CountOutcome::Applied {
            delta: MAX_WINDOW as i64 - n
        }
    );
}

#[test]
fn the_entity_and_its_sku_are_one_cache_line() {
    // The shard's hot path is a cache miss per entity touched: a
    // field added here is paid on every movement, and at 1 M SKUs the
    // map's buckets are most of the heap.
    assert_eq!(size_of::<SkuState>() + size_of::<u64>(), 64);
}

#[test]
fn a_long_lived_window_drops_without_growing() {
    // Time advances by 100 per movement and the window spans 1000: it
    // keeps the newest 11, and what fell below the floor is dropped when
    // the slots are full, so they stay within twice that.
    let mut s = SkuState::empty();
    for t in 0..100_000i64 {
        s.movement(t * 100, 1, LW);
        assert_eq!(s.window_len(LW), (t as usize + 1).min(11));
        assert!(s.slots.len() <= 16, "{}", s.slots.len());
    }
    assert_eq!(s.level, 100_000);
    // A count at the window's oldest time sees the 10 movements after it.
    let floor = s.floor(LW);
    let oldest = s
        .held()
        .map(|(t, _)| t)
        .filter(|&t| t >= floor)
        .min()
        .unwrap_or(0);
    assert_eq!(
        s.count(oldest, key(1), 0, LW),
        CountOutcome::Applied {
            delta: 10 - 100_000
        }
    );
    assert_eq!((s.level, s.window_len(LW)), (10, 10));
}

#[test]
fn a_row_round_trips() {
    let mut s = SkuState::empty();
    s.count(10, key(1), 8, LW);
    s.movement(20, -1, LW);
    let r = s.row(3, 4);
    let mut t = SkuState::from_row(&r);
    t.load_movement(5, 100, LW); // before the count: ignored
    t.load_movement(20, -1, LW);
    assert_eq!(t.row(3, 4), r);
    assert_eq!(t.count(15, key(2), 8, LW), s.count(15, key(2), 8, LW));
    assert_eq!(t.row(3, 4), s.row(3, 4));
}

/// The stock rule as a plain sorted vector, pruned to the floor and cut
/// to [`MAX_WINDOW`] after every movement. The entity, settled, must
/// agree with it on every outcome, row and floor, and on the movements
/// after the floor.
#[derive(Debug, Default)]
struct Model {
    level: i64,
    version: u64,
    updated_ts: i64,
    count: Option<(i64, EventKey)>,
    cut_ts: i64,
    window: Vec<(i64, i64)>,
}

impl Model {
    fn new() -> Self {
        Self {
            updated_ts: i64::MIN,
            cut_ts: i64::MIN,
            ..Self::default()
        }
    }

    /// A late window past [`MAX_LATE_WINDOW_US`] acts as that one.
    fn floor(&self, lw: i64) -> i64 {
        self.updated_ts
            .saturating_sub(lw.min(MAX_LATE_WINDOW_US))
            .max(self.cut_ts)
    }

    fn prune(&mut self, keep_after: i64, lw: i64) {
        let floor = self.floor(lw);
        let below = self
            .window
            .partition_point(|(t, _)| *t < floor || *t <= keep_after);
        self.window.drain(..below);
    }

    fn movement(&mut self, ts: i64, delta: i64, lw: i64) -> (bool, i64) {
        if self.count.is_some_and(|c| ts <= c.0) {
            return (false, self.level);
        }
        self.level = self.level.saturating_add(delta);
        self.version += 1;
        self.updated_ts = self.updated_ts.max(ts);
        if ts >= self.floor(lw) {
            let at = self.window.partition_point(|(t, _)| *t <= ts);
            self.window.insert(at, (ts, delta));
            if self.window.len() > MAX_WINDOW {
                self.cut_ts = self.cut_ts.max(self.window.remove(0).0);
            }
        }
        self.prune(i64::MIN, lw);
        (true, self.level)
    }

    fn count(&mut self, ts: i64, key: EventKey, counted: i64, lw: i64) -> CountOutcome {
        if self.updated_ts != i64::MIN && ts < self.floor(lw) {
            return CountOutcome::TooLate;
        }
        if self.count.is_some_and(|c| (ts, key) <= c) {
            return CountOutcome::Stale;
        }
        let after: i64 = self
            .window
            .iter()
            .filter(|(t, _)| *t > ts)
            .fold(0i64, |acc, (_, d)| acc.saturating_add(*d));
        let before = self.level;
        self.level = counted.saturating_add(after);
        self.count = Some((ts, key));
        self.version += 1;
        self.updated_ts = self.updated_ts.max(ts);
        self.prune(ts, lw);
        CountOutcome::Applied {
            delta: self.level.saturating_sub(before),
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Movement(i64, i64),
    Count(i64, i64),
}

/// `n` ops at most, one count per `per_count` movements.
fn ops(n: usize, spread: i64, per_count: u32) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        per_count => (0..spread, -5i64..6).prop_map(|(t, d)| Op::Movement(t, d)),
        1 => (0..spread, 0i64..50).prop_map(|(t, c)| Op::Count(t, c)),
    ];
    proptest::collection::vec(op, 0..n)
}

/// Runs `ops` on the entity and the model, checking after each; returns
/// the entity.
fn check_against_model(ops: &[Op], lw: i64, drift: i64) -> SkuState {
    let (mut s, mut m) = (SkuState::empty(), Model::new());
    for (i, op) in ops.iter().enumerate() {
        // Time drifts forward with jitter, as a fleet's clocks do.
        let base = i as i64 * drift;
        match *op {
            Op::Movement(t, d) => {
                assert_eq!(s.movement(base + t, d, lw), m.movement(base + t, d, lw));
            }
            Op::Count(t, c) => {
                let k = key(i as u32);
                assert_eq!(s.count(base + t, k, c, lw), m.count(base + t, k, c, lw));
            }
        }
        assert_eq!(s.row(1, 2).count_ts_us, m.count.map(|c| c.0), "op {i}");
        assert_eq!(
            (s.level, s.version, s.updated_ts),
            (m.level, m.version, m.updated_ts)
        );
        assert!(s.held_len() <= MAX_SLOTS);
        if i % 16 == 0 || i + 1 == ops.len() {
            assert_eq!(s.settled(lw).floor(lw), m.floor(lw), "op {i}");
            // Entries at the cut's very time are not compared: a count
            // at or after it sums none of them, and the model and the
            // entity may drop different ones of several with that time.
            let cut = s.settled(lw).cut_ts();
            let after_cut = |w: Vec<(i64, i64)>| -> Vec<(i64, i64)> {
                let mut w: Vec<_> = w.into_iter().filter(|&(t, _)| t > cut).collect();
                w.sort_unstable();
                w
            };
            assert_eq!(
                after_cut(live(&s, lw)),
                after_cut(m.window.clone()),
                "op {i}"
            );
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_entity_follows_the_stock_rule_of_a_plain_window(
        ops in ops(400, 1_000, 6),
        lw in prop_oneof![Just(50i64), Just(400), Just(1_000_000)],
        drift in 0i64..20,
    ) {
        check_against_model(&ops, lw, drift);
    }

    #[test]
    fn the_entity_follows_the_plain_window_over_hours_of_event_time(
        ops in ops(400, 2 * HOUR, 6),
        lw in prop_oneof![Just(HOUR), Just(MAX_LATE_WINDOW_US)],
        drift in 0i64..(20 * 60_000_000),
    ) {
        check_against_model(&ops, lw, drift);
    }

}

proptest! {
    // Each case is thousands of movements, enough to fill and cut a window.
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn a_hot_entity_cuts_its_window_as_the_plain_one_does(
        ops in ops(5_000, 40, 2_000),
        drift in 1i64..3,
    ) {
        check_against_model(&ops, i64::MAX / 4, drift);
    }
}

#[test]
fn a_hot_entity_cuts_its_window_out_of_order_as_the_plain_one_does() {
    // Movements up to 40 µs out of order, a count now and then: the
    // window fills MAX_SLOTS between counts and is cut more than once.
    let ops: Vec<Op> = (0..3 * MAX_SLOTS as i64)
        .map(|i| match i % 2_500 {
            2_499 => Op::Count((i * 7_919) % 40, 3),
            _ => Op::Movement((i * 7_919) % 40, 1 - (i % 3)),
        })
        .collect();
    assert!(check_against_model(&ops, LW * LW, 1).cut);
}

#[test]
fn a_window_entry_keeps_wire_deltas_and_holds_others_at_the_bound() {
    for d in [i64::from(i32::MIN), -1, 1, i64::from(i32::MAX)] {
        assert_eq!(Entry::new(7, d).delta(), d);
    }
    assert_eq!(Entry::new(7, i64::MAX).delta(), i64::from(i32::MAX));
    assert_eq!(Entry::new(7, i64::MIN).delta(), i64::from(i32::MIN));
    for base in [i64::MIN, -1, 0, 1, 1_710_000_000_000_000, i64::MAX] {
        assert_eq!(Entry::base_slot(base).as_base(), base);
    }
}

#[test]
fn a_window_grows_through_the_allocators_size_classes() {
    let mut s = SkuState::empty();
    let mut sizes = Vec::new();
    for t in 0..100 {
        s.movement(t, 1, HOUR);
        if sizes.last() != Some(&size_of_val(&*s.slots)) {
            sizes.push(size_of_val(&*s.slots));
        }
    }
    assert_eq!(
        sizes,
        [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
    );
    assert_eq!(s.held_len(), 100);
}

const HOUR: i64 = 3_600_000_000;

#[test]
fn a_window_follows_its_floor_across_days_of_event_time() {
    // Movements every 7 minutes for a week, a count now and then, with
    // the default hour: the window's base moves up many times, and the
    // times it holds are exact.
    let mut ops = Vec::new();
    let step = 7 * 60_000_000;
    for i in 0..1_440i64 {
        ops.push(if i % 50 == 49 {
            Op::Count(-HOUR / 2 + i * 977 % HOUR, 40)
        } else {
            Op::Movement(-(i * 7_919 % (2 * step)), 1 - i % 3)
        });
    }
    let s = check_against_model(&ops, HOUR, step);
    assert!(s.held_len() > 0);
    assert!(s.base() > 6 * 24 * HOUR, "the base followed the floor");
}

#[test]
fn times_at_the_ends_of_the_range_neither_panic_nor_lose_a_movement() {
    let mut s = SkuState::empty();
    let mut m = Model::new();
    for ts in [
        i64::MIN,
        i64::MIN + 1,
        -1,
        0,
        HOUR,
        i64::MAX - HOUR,
        i64::MAX,
    ] {
        assert_eq!(s.movement(ts, 2, HOUR), m.movement(ts, 2, HOUR));
    }
    let k = key(1);
    assert_eq!(
        s.count(i64::MAX - 1, k, 5, HOUR),
        m.count(i64::MAX - 1, k, 5, HOUR)
    );
    assert_eq!(s.level, 7);
    assert_eq!(live(&s, HOUR), m.window);
}

#[test]
fn a_late_window_past_71_minutes_acts_as_71_minutes() {
    let mut s = SkuState::empty();
    let day = 24 * HOUR;
    s.movement(day, 1, i64::MAX);
    s.movement(day - MAX_LATE_WINDOW_US, 1, i64::MAX);
    assert_eq!(
        live(&s, i64::MAX),
        [(day - MAX_LATE_WINDOW_US, 1), (day, 1)]
    );
    assert_eq!(
        s.count(day - MAX_LATE_WINDOW_US - 1, key(1), 0, i64::MAX),
        CountOutcome::TooLate
    );
    assert_eq!(
        s.count(day - MAX_LATE_WINDOW_US, key(2), 10, i64::MAX),
        CountOutcome::Applied { delta: 9 }
    );
}
