//! The one workload every system gets: the loadgen's seeded generator over a
//! fleet of tills, cut into per-device batches by the loadgen's `Batcher`
//! (so the frames are the very bytes `tillstream-loadgen` sends), plus each
//! batch's events as values, for the peers that store rows, not bytes.

use anyhow::{Context, bail};
use tillstream_loadgen::generator::{FleetSpec, Generator, clock_start_us};
use tillstream_loadgen::workload::{Batcher, Workload};
use tillstream_protocol::Event;

/// Most tills per store in the fleet (the loadgen's default shape).
const MAX_TILLS_PER_STORE: u32 = 8;
/// Products in the catalogue (the loadgen's default).
const SKUS: u32 = 5_000;
/// Simulated µs between events (the loadgen's default when flat out).
const STEP_US: i64 = 20;

/// How `devices` tills are spread over stores: (stores, tills per store),
/// with at most [`MAX_TILLS_PER_STORE`] tills in a store and exactly
/// `devices` tills in all.
pub(crate) fn fleet_shape(devices: u32) -> (u32, u32) {
    let devices = devices.max(1);
    let per_store = (1..=MAX_TILLS_PER_STORE.min(devices))
        .rev()
        .find(|t| devices.is_multiple_of(*t))
        .unwrap_or(1);
    (devices / per_store, per_store)
}

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) events: u64,
    pub(crate) devices: u32,
    pub(crate) batch_size: u32,
    pub(crate) seed: u64,
    /// The wall clock (UTC µs) the events lead up to: the last is stamped
    /// about then (`clock_start_us`).
    pub(crate) now_us: i64,
}

/// One device's batches, as frames and as events.
#[derive(Debug, Clone)]
pub(crate) struct DeviceBatches {
    pub(crate) device: u64,
    /// Events of batch `i` (seq `i + 1`), in the frame's order.
    pub(crate) events: Vec<Vec<Event>>,
}

/// Everything the systems are sent.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    /// The frames, per device, exactly as the loadgen builds them.
    pub(crate) work: Workload,
    /// The same batches as event values, indexed like `work.devices`.
    pub(crate) rows: Vec<DeviceBatches>,
}

impl Prepared {
    /// Devices that have at least one batch.
    pub(crate) fn active_devices(&self) -> usize {
        self.work
            .devices
            .iter()
            .filter(|d| !d.batches.is_empty())
            .count()
    }
}

/// Generates the fleet's events and prepares every batch (before any clock
/// starts).
pub(crate) fn prepare(shape: Shape) -> anyhow::Result<Prepared> {
    let (stores, tills) = fleet_shape(shape.devices);
    let spec = FleetSpec {
        stores,
        terminals_per_store: tills,
        sensors_per_store: 0,
        skus: SKUS,
        events: shape.events,
        seed: shape.seed,
        start_us: clock_start_us(shape.now_us, shape.events, STEP_US, 0.0),
        step_us: STEP_US,
    };
    let generator = Generator::new(spec).context("setting up the generator")?;
    // Tills only (no sensors in this shape): every device is a terminal.
    let ids: Vec<(u64, u32, tillstream_auth::Role)> = generator
        .devices()
        .iter()
        .map(|d| (d.device, d.store, tillstream_auth::Role::Terminal))
        .collect();
    let mut per_device: Vec<Vec<Event>> = vec![Vec::new(); ids.len()];
    let mut batcher = Batcher::new(ids.iter().copied(), shape.batch_size);
    for (d, ev) in generator {
        per_device[d].push(ev.clone());
        batcher.push(d, ev)?;
    }
    let work = batcher.finish()?;
    // The batcher cuts each device's events, in order, into consecutive
    // batches: cutting them by the batches' sizes gives each batch's events.
    let mut rows = Vec::with_capacity(work.devices.len());
    for (plan, events) in work.devices.iter().zip(per_device) {
        let mut rest = events.into_iter();
        let mut batches = Vec::with_capacity(plan.batches.len());
        for b in &plan.batches {
            let n = b.batch.events as usize;
            let chunk: Vec<Event> = rest.by_ref().take(n).collect();
            if chunk.len() != n {
                bail!(
                    "device {}: batch {} has fewer events than its frame",
                    plan.device,
                    b.batch.seq
                );
            }
            batches.push(chunk);
        }
        if rest.next().is_some() {
            bail!("device {}: events left over after its batches", plan.device);
        }
        rows.push(DeviceBatches {
            device: plan.device,
            events: batches,
        });
    }
    Ok(Prepared { work, rows })
}

#[cfg(test)]
mod tests {
    use tillstream_protocol::Batch;
    use tillstream_protocol::frame::{HEADER_LEN, aligned, decode};

    use super::*;

    #[test]
    fn fleet_shapes_have_exactly_the_devices_asked() {
        assert_eq!(fleet_shape(64), (8, 8));
        assert_eq!(fleet_shape(100), (20, 5));
        assert_eq!(fleet_shape(7), (1, 7));
        assert_eq!(fleet_shape(13), (13, 1));
        assert_eq!(fleet_shape(1), (1, 1));
        for n in 1..300 {
            let (s, t) = fleet_shape(n);
            assert_eq!(s * t, n);
            assert!(t <= MAX_TILLS_PER_STORE);
        }
    }

    #[test]
    fn frames_and_rows_are_the_same_batches() -> anyhow::Result<()> {
        let p = prepare(Shape {
            events: 2_000,
            devices: 6,
            batch_size: 32,
            seed: 3,
            now_us: 1_700_000_000_000_000,
        })?;
        assert_eq!(p.work.events, 2_000);
        assert_eq!(p.rows.len(), 6);
        let mut n = 0;
        for (plan, rows) in p.work.devices.iter().zip(&p.rows) {
            assert_eq!(plan.device, rows.device);
            assert_eq!(plan.batches.len(), rows.events.len());
            for (b, evs) in plan.batches.iter().zip(&rows.events) {
                // The rows are what the frame carries.
                let payload = aligned(&b.batch.frame[HEADER_LEN..]);
                let batch: Batch = decode(&payload)?;
                assert_eq!(batch.seq, b.batch.seq);
                assert_eq!(&batch.events, evs);
                n += evs.len();
            }
        }
        assert_eq!(n, 2_000);
        Ok(())
    }
}
