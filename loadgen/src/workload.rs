//! Events cut into per-device batches and encoded into frames, all before
//! the clock starts.

use anyhow::Context;
use tillstream_auth::Role;
use tillstream_client::{ClientError, PreparedBatch};
use tillstream_protocol::{Batch, Event, FrameError};

use crate::generator::{DeviceKind, FleetSpec, Generator};

/// A batch and when, in the global event order, it is due.
#[derive(Debug, Clone)]
pub struct ScheduledBatch {
    /// How many events of the whole run precede the batch's send, its own
    /// included: at a target rate R it is due `due_event / R` seconds in.
    pub due_event: u64,
    /// The encoded frame.
    pub batch: PreparedBatch,
}

/// Everything one device sends, in seq order.
#[derive(Debug, Clone)]
pub struct DevicePlan {
    /// The device id.
    pub device: u64,
    /// Its store.
    pub store: u32,
    /// What it is, as its credential says: a till or a shelf sensor.
    pub role: Role,
    /// Its batches, seqs 1, 2, 3, ...
    pub batches: Vec<ScheduledBatch>,
}

impl DevicePlan {
    /// Events in all its batches.
    pub fn events(&self) -> u64 {
        self.batches.iter().map(|b| u64::from(b.batch.events)).sum()
    }
}

/// A whole run, ready to send.
#[derive(Debug, Clone, Default)]
pub struct Workload {
    /// One plan per device (devices without events included).
    pub devices: Vec<DevicePlan>,
    /// Events in all.
    pub events: u64,
    /// Batches in all.
    pub batches: u64,
    /// Frame bytes in all.
    pub bytes: u64,
}

/// Cuts each device's events into batches of `size` and encodes them.
///
/// With a maximum wait, a batch also closes once that many events of the
/// whole run have gone by since its first event, as a till's flush timer
/// would: at a target rate the wait is a time. Without it, a device's
/// batch waits for its `size`-th event, which in a fleet of 10,000
/// devices is a million events later: every device's first batch came
/// due at the same moment, and its last at the end of the run. A device's
/// first batch waits a share of the wait of its own, so the fleet's
/// timers do not all fire in the same instant every period, as tills
/// switched on at different times would not.
#[derive(Debug)]
pub struct Batcher {
    size: usize,
    max_wait: Option<u64>,
    open: Vec<OpenBatch>,
    work: Workload,
    seen: u64,
}

/// A device's batch being filled.
#[derive(Debug, Clone, Default)]
struct OpenBatch {
    events: Vec<Event>,
    /// Position in the run (1-based) of its first event.
    opened_at: u64,
    /// How long its timer waits, in events of the run (none: no timer).
    wait: Option<u64>,
}

impl OpenBatch {
    /// When it is due if it is closed by its timer, not by its size.
    fn timer_due(&self) -> Option<u64> {
        self.wait.map(|w| self.opened_at.saturating_add(w))
    }
}

/// The wait of device index `d`'s first batch: between 1 and `wait`,
/// spread over the devices by a multiplicative hash of the index.
fn first_wait(d: usize, wait: u64) -> u64 {
    let spread = (d as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16;
    1 + spread % wait
}

impl Batcher {
    /// A batcher for `devices` (device id, store, role), indexed as given.
    pub fn new(devices: impl IntoIterator<Item = (u64, u32, Role)>, size: u32) -> Self {
        let plans: Vec<DevicePlan> = devices
            .into_iter()
            .map(|(device, store, role)| DevicePlan {
                device,
                store,
                role,
                batches: Vec::new(),
            })
            .collect();
        Self {
            size: size.max(1) as usize,
            max_wait: None,
            open: vec![OpenBatch::default(); plans.len()],
            work: Workload {
                devices: plans,
                ..Workload::default()
            },
            seen: 0,
        }
    }

    /// Closes a batch once `events` more events of the run have gone by
    /// since its first (none: only its size closes it).
    #[must_use]
    pub fn max_wait(mut self, events: Option<u64>) -> Self {
        self.max_wait = events.map(|e| e.max(1));
        self
    }

    /// Adds the next event of the run, from device index `d`.
    pub fn push(&mut self, d: usize, ev: Event) -> anyhow::Result<()> {
        self.seen += 1;
        let open = self
            .open
            .get_mut(d)
            .with_context(|| format!("no device with index {d}"))?;
        // Its timer fired before this event came: the batch went then.
        if let Some(due) = open.timer_due()
            && !open.events.is_empty()
            && self.seen > due
        {
            let events = std::mem::take(&mut open.events);
            self.close(d, events, due)?;
        }
        let open = &mut self.open[d];
        if open.events.is_empty() {
            open.opened_at = self.seen;
            open.wait = match self.max_wait {
                Some(w) if self.work.devices[d].batches.is_empty() => Some(first_wait(d, w)),
                w => w,
            };
        }
        open.events.push(ev);
        if open.events.len() >= self.size {
            let events = std::mem::take(&mut open.events);
            self.close(d, events, self.seen)?;
        }
        Ok(())
    }

    /// Closes the open batches and returns the workload.
    ///
    /// A batch with a timer goes when its timer fires, which may be after
    /// the run's last event: closed at the last event, the whole fleet's
    /// last batches came due in one instant, 10,000 datagrams at once,
    /// and the loss and recovery of that burst was the run's ack p99
    /// (565 ms, against 34 ms until then), which no fleet of tills on
    /// their own timers makes.
    pub fn finish(mut self) -> anyhow::Result<Workload> {
        for d in 0..self.open.len() {
            let open = &mut self.open[d];
            let due = open.timer_due().unwrap_or(self.seen);
            let events = std::mem::take(&mut open.events);
            if !events.is_empty() {
                self.close(d, events, due)?;
            }
        }
        Ok(self.work)
    }

    /// Encodes `events` as the device's next batch, due at event `due` of
    /// the run; one too large for a frame is split in two, recursively.
    fn close(&mut self, d: usize, mut events: Vec<Event>, due: u64) -> anyhow::Result<()> {
        let plan = &mut self.work.devices[d];
        let seq = plan.batches.len() as u64 + 1;
        let batch = Batch {
            seq,
            sent_at_us: events.iter().map(Event::ts_us).max().unwrap_or(0),
            events,
        };
        match PreparedBatch::encode(&batch) {
            Ok(p) => {
                self.work.events += u64::from(p.events);
                self.work.batches += 1;
                self.work.bytes += p.len() as u64;
                plan.batches.push(ScheduledBatch {
                    due_event: due,
                    batch: p,
                });
                Ok(())
            }
            Err(ClientError::Encode {
                source: FrameError::TooLarge { .. },
                ..
            }) if batch.events.len() > 1 => {
                events = batch.events;
                let tail = events.split_off(events.len() / 2);
                self.close(d, events, due)?;
                self.close(d, tail, due)
            }
            Err(e) => Err(e).with_context(|| format!("encoding batch {seq} of device index {d}")),
        }
    }
}

/// Generates the fleet's events and prepares every batch: batches of
/// `batch_size`, or fewer once `max_wait` events of the run went by since
/// their first ([`Batcher::max_wait`]).
pub fn build(spec: &FleetSpec, batch_size: u32, max_wait: Option<u64>) -> anyhow::Result<Workload> {
    let generator = Generator::new(spec.clone())?;
    let mut batcher = Batcher::new(
        generator.devices().iter().map(|d| {
            let role = match d.kind {
                DeviceKind::Till => Role::Terminal,
                DeviceKind::Sensor => Role::ShelfSensor,
            };
            (d.device, d.store, role)
        }),
        batch_size,
    )
    .max_wait(max_wait);
    for (d, ev) in generator {
        batcher.push(d, ev)?;
    }
    batcher.finish()
}
