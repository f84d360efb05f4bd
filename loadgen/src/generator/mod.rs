//! A seeded, realistic fleet: stores with tills and shelf sensors, and the
//! events they emit. The same [`FleetSpec`] (seed and start time included)
//! always yields the same events.
//!
//! - Each store stocks the chain's catalogue with its own Zipf popularity
//!   order; a sale takes 1–8 lines, mostly single units, sometimes
//!   discounted, taxed by band, paid by one tender or (rarely) split, with
//!   rare tips and a loyalty customer a third of the time; about 2% of till
//!   transactions are refunds.
//! - Shelf sensors report absolute counts and stock movements (receipts,
//!   shrink, transfers) of popular products more often, following a
//!   simulated shelf level that sales and refunds move too.
//! - Every device sends an occasional health ping.
//! - Event times follow a simulated clock from `start_us`, `step_us` per
//!   event, plus a little jitter; a till's clock runs behind it by a fixed
//!   offset of up to 4 s, so tills interleave out of order by a few
//!   seconds, and a shelf sensor's runs a jitter ahead of every till's, so
//!   that no count is stamped before a till's event generated before it;
//!   each device's own clock never goes back. The server orders a count
//!   only against the newest 1,024 movements of its SKU, which for the
//!   busiest SKUs at this simulation's pace are less than a second of
//!   their time: sensors up to 4 s behind the tills had counts of those
//!   refused as `count_too_late` (issue 70).
//! - Busier stores get more traffic (weight 1/√rank); within a store a
//!   till is twice as busy as a sensor.

mod catalogue;
mod sensor;
mod till;

use std::collections::VecDeque;

use anyhow::{Context, bail};
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tillstream_protocol::Event;

pub use catalogue::{Catalogue, Product, SKU_BASE, Shelves, ZIPF_EXPONENT};
pub use till::CURRENCY;

/// Share of till transactions that are refunds.
pub const REFUND_SHARE: f64 = 0.02;
/// Share of a till's events that are health pings.
const TILL_HEALTH_SHARE: f64 = 0.005;
/// Share of a sensor's events that are health pings.
const SENSOR_HEALTH_SHARE: f64 = 0.03;
/// Share of a sensor's events that are counts (the rest are movements).
const SENSOR_COUNT_SHARE: f64 = 0.55;
/// A sensor's traffic relative to a till's.
const SENSOR_WEIGHT: f64 = 0.5;
/// Furthest a till's clock runs behind the simulated clock, µs (a fixed
/// offset per till).
pub const MAX_TILL_LAG_US: i64 = 4_000_000;
/// Largest jitter of one event's time, µs.
const MAX_JITTER_US: i64 = 200_000;
/// How far a sensor's clock runs ahead of the simulated clock, µs: by a
/// till's largest jitter, so a count is stamped after every till event
/// generated before it (module docs).
const SENSOR_LEAD_US: i64 = MAX_JITTER_US;
/// Furthest an event is stamped past the simulated clock, µs: a sensor's
/// lead and its jitter.
pub const MAX_LEAD_US: i64 = SENSOR_LEAD_US + MAX_JITTER_US;
/// Most devices of one kind and another in a store (device ids keep 16
/// bits for the index).
pub const MAX_DEVICES_PER_STORE: u32 = 1 << 16;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FleetSpec {
    /// Stores, numbered from 1.
    pub stores: u32,
    /// Tills per store.
    pub terminals_per_store: u32,
    /// Shelf sensors per store.
    pub sensors_per_store: u32,
    /// Products in the catalogue.
    pub skus: u32,
    /// Events in all.
    pub events: u64,
    /// Seed of every random draw.
    pub seed: u64,
    /// Time of the first event (UTC µs).
    pub start_us: i64,
    /// Simulated time between consecutive events, µs.
    pub step_us: i64,
}

/// Where a run's simulated clock starts, given the wall clock `now_us`.
///
/// A run paced at `rate` events a second whose simulated clock does not
/// outrun the wall clock (`step_us × rate ≤ 1 s`) starts now. Any other run
/// (unpaced, or stepping faster than it sends) starts far enough back that
/// its last event is stamped now: an unpaced run at 1 M events/s moves the
/// default 20 µs step's clock 20 s a second, and the tail of a long run
/// would otherwise be stamped minutes ahead, past the server's bound on
/// future timestamps, and refused (`future_timestamp`).
pub fn clock_start_us(now_us: i64, events: u64, step_us: i64, rate: f64) -> i64 {
    let keeps_pace = rate > 0.0 && step_us as f64 * rate <= 1e6;
    if keeps_pace {
        return now_us;
    }
    let span = i64::try_from(events)
        .unwrap_or(i64::MAX)
        .saturating_mul(step_us.max(0));
    now_us.saturating_sub(span)
}

/// Kinds of device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// A till: sales, refunds, health.
    Till,
    /// A shelf sensor: counts, movements, health.
    Sensor,
}

/// One simulated device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Its id on the wire.
    pub device: u64,
    /// Its store.
    pub store: u32,
    /// Its index in the store (the terminal number of a till).
    pub index: u32,
    /// What it is.
    pub kind: DeviceKind,
}

/// Bits of a device id below the run id: 24 for the store, 16 for the
/// index in the store.
pub const RUN_ID_SHIFT: u32 = 40;
/// Largest store number that fits a device id.
pub const MAX_STORE: u32 = (1 << 24) - 1;

/// The device id of device `index` of `store`: unique per (store, index).
/// A run id goes above [`RUN_ID_SHIFT`] (see [`with_run_id`]).
pub fn device_id(store: u32, index: u32) -> u64 {
    (u64::from(store & MAX_STORE) << 16) | u64::from(index & 0xffff)
}

/// Puts `run_id` into the high bits of a device id, so that repeated runs
/// against one server use fresh devices: a server that already holds seqs
/// of a device would take a new run's batches for resends of old ones.
pub fn with_run_id(device: u64, run_id: u32) -> u64 {
    (device & ((1 << RUN_ID_SHIFT) - 1)) | (u64::from(run_id & 0xff_ffff) << RUN_ID_SHIFT)
}

/// What a device remembers between its events.
#[derive(Debug, Clone)]
pub(crate) struct DeviceState {
    offset_us: i64,
    last_ts: i64,
    boot_ts: i64,
    battery: u8,
    operator: u32,
    rssi_dbm: i16,
    recent_txns: VecDeque<[u8; 16]>,
}

impl DeviceState {
    fn uptime_s(&self, ts_us: i64) -> u32 {
        u32::try_from((ts_us - self.boot_ts).max(0) / 1_000_000).unwrap_or(u32::MAX)
    }
}

/// Index drawn from integer weights (all weights here are constants > 0).
pub(crate) fn weighted(rng: &mut StdRng, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    if total == 0 {
        return 0;
    }
    let mut x = rng.random_range(0..total);
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

struct Store {
    shelves: Shelves,
    /// Indices into `Generator::devices`: tills first, then sensors.
    tills: std::ops::Range<usize>,
    sensors: std::ops::Range<usize>,
}

/// The event stream of a fleet: yields `(device index, event)` pairs, in
/// the order of the simulated clock, `spec.events` of them.
pub struct Generator {
    spec: FleetSpec,
    rng: StdRng,
    catalogue: Catalogue,
    stores: Vec<Store>,
    store_pick: WeightedIndex<f64>,
    devices: Vec<DeviceSpec>,
    states: Vec<DeviceState>,
    next: u64,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("spec", &self.spec)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Generator {
    /// Builds the fleet: catalogue, shelves, devices.
    pub fn new(spec: FleetSpec) -> anyhow::Result<Self> {
        if spec.stores == 0 || spec.stores > MAX_STORE {
            bail!("--stores must be between 1 and {MAX_STORE}");
        }
        let per_store = spec.terminals_per_store + spec.sensors_per_store;
        if per_store == 0 {
            bail!("a store needs at least one till or sensor");
        }
        if per_store > MAX_DEVICES_PER_STORE {
            bail!("at most {MAX_DEVICES_PER_STORE} devices per store");
        }
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let catalogue = Catalogue::new(spec.skus, &mut rng)?;
        let mut devices = Vec::new();
        let mut states = Vec::new();
        let mut stores = Vec::new();
        for s in 1..=spec.stores {
            let shelves = Shelves::new(&catalogue, &mut rng)?;
            let first = devices.len();
            for index in 0..per_store {
                let kind = if index < spec.terminals_per_store {
                    DeviceKind::Till
                } else {
                    DeviceKind::Sensor
                };
                devices.push(DeviceSpec {
                    device: device_id(s, index),
                    store: s,
                    index,
                    kind,
                });
                states.push(DeviceState {
                    offset_us: match kind {
                        DeviceKind::Till => rng.random_range(-MAX_TILL_LAG_US..=0),
                        DeviceKind::Sensor => SENSOR_LEAD_US,
                    },
                    last_ts: i64::MIN,
                    boot_ts: spec.start_us - rng.random_range(3_600..30 * 86_400) * 1_000_000,
                    battery: rng.random_range(60..=100),
                    operator: s * 100 + rng.random_range(0..12),
                    rssi_dbm: match kind {
                        DeviceKind::Till => rng.random_range(-55..=-35),
                        DeviceKind::Sensor => rng.random_range(-85..=-55),
                    },
                    recent_txns: VecDeque::with_capacity(till::RECENT_TXNS),
                });
            }
            let split = first + spec.terminals_per_store as usize;
            stores.push(Store {
                shelves,
                tills: first..split,
                sensors: split..devices.len(),
            });
        }
        let store_pick = WeightedIndex::new((1..=spec.stores).map(|r| 1.0 / f64::from(r).sqrt()))
            .context("store weights")?;
        Ok(Self {
            spec,
            rng,
            catalogue,
            stores,
            store_pick,
            devices,
            states,
            next: 0,
        })
    }

    /// The devices, indexed as in the stream.
    pub fn devices(&self) -> &[DeviceSpec] {
        &self.devices
    }

    /// The catalogue.
    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// The shelves of store `store` (from 1).
    pub fn shelves(&self, store: u32) -> Option<&Shelves> {
        self.stores
            .get(store.checked_sub(1)? as usize)
            .map(|s| &s.shelves)
    }

    fn pick_device(&mut self) -> usize {
        let s = &self.stores[self.store_pick.sample(&mut self.rng)];
        let (t, n) = (s.tills.len() as f64, s.sensors.len() as f64 * SENSOR_WEIGHT);
        let range = if s.sensors.is_empty() || self.rng.random_bool(t / (t + n)) {
            s.tills.clone()
        } else {
            s.sensors.clone()
        };
        let range = if range.is_empty() {
            s.sensors.clone()
        } else {
            range
        };
        self.rng.random_range(range)
    }
}

impl Iterator for Generator {
    type Item = (usize, Event);

    fn next(&mut self) -> Option<(usize, Event)> {
        if self.next >= self.spec.events {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let d = self.pick_device();
        let dev = self.devices[d];
        let st = &mut self.states[d];
        let step = i64::try_from(i)
            .unwrap_or(i64::MAX)
            .saturating_mul(self.spec.step_us);
        let jitter = self.rng.random_range(0..MAX_JITTER_US);
        let ts = (self.spec.start_us + step + st.offset_us + jitter).max(st.last_ts + 1);
        st.last_ts = ts;
        let shelves = &mut self.stores[dev.store as usize - 1].shelves;
        let (rng, cat) = (&mut self.rng, &self.catalogue);
        let r: f64 = rng.random();
        let ev = match dev.kind {
            DeviceKind::Till if r < TILL_HEALTH_SHARE => till::health(rng, &dev, st, ts),
            DeviceKind::Till => {
                if rng.random_bool(REFUND_SHARE) {
                    till::refund(rng, cat, shelves, &dev, st, ts)
                } else {
                    till::sale(rng, cat, shelves, &dev, st, ts)
                }
            }
            DeviceKind::Sensor if r < SENSOR_HEALTH_SHARE => sensor::health(rng, &dev, st, ts),
            DeviceKind::Sensor if r < SENSOR_HEALTH_SHARE + SENSOR_COUNT_SHARE => {
                sensor::count(rng, cat, shelves, &dev, ts)
            }
            DeviceKind::Sensor => sensor::movement(rng, cat, shelves, &dev, ts),
        };
        Some((d, ev))
    }
}

#[cfg(test)]
mod tests;
