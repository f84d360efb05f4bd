//! Simulated devices: tills (sales, refunds, health) and shelf sensors
//! (counts, movements, health) with skewed clocks, late events, the odd
//! bad event, gaps in their seqs, and an outbox of unacknowledged batches
//! they resend after a reconnect.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use rand::Rng;
use rand::rngs::StdRng;
use tillstream_engine_core::testkit;
use tillstream_protocol::{
    Batch, Event, MovementKind, RejectCode, SaleLine, StockMovement, Tender, TenderMethod,
    ValidatedBatch,
};
use tillstream_storage::time::{DAY_US, MINUTE_US};

use crate::model::Sent;

pub(crate) const STORES: u32 = 3;
pub(crate) const SKUS_PER_STORE: u64 = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Till { terminal: u32 },
    Sensor,
}

#[derive(Debug)]
pub(crate) struct Device {
    pub(crate) id: u64,
    pub(crate) kind: Kind,
    pub(crate) store: u32,
    skew_us: i64,
    next_seq: u64,
    /// Unacknowledged batches, in seq order.
    pub(crate) outbox: VecDeque<(u64, Rc<ValidatedBatch>)>,
    /// How many of the outbox were sent on this connection.
    pub(crate) sent: usize,
    /// Some acknowledged batches, to replay.
    pub(crate) acked: VecDeque<(u64, Rc<ValidatedBatch>)>,
    pub(crate) durable: u64,
}

/// What a device puts on the wire this step.
#[derive(Debug)]
pub(crate) struct Send {
    pub(crate) device: u64,
    pub(crate) seq: u64,
    pub(crate) batch: Rc<ValidatedBatch>,
}

impl Device {
    pub(crate) fn fleet(rng: &mut StdRng) -> Vec<Device> {
        let mut out = Vec::new();
        for store in 1..=STORES {
            for t in 0..3u32 {
                out.push(Device::new(
                    rng,
                    out.len(),
                    Kind::Till {
                        terminal: store * 100 + t,
                    },
                    store,
                ));
            }
            for _ in 0..2 {
                out.push(Device::new(rng, out.len(), Kind::Sensor, store));
            }
        }
        out
    }

    fn new(rng: &mut StdRng, n: usize, kind: Kind, store: u32) -> Self {
        Self {
            id: 0x1000 + n as u64 * 7919,
            kind,
            store,
            skew_us: rng.random_range(-MINUTE_US / 2..MINUTE_US / 2),
            next_seq: 1,
            outbox: VecDeque::new(),
            sent: 0,
            acked: VecDeque::new(),
            durable: 0,
        }
    }

    /// The next batch to send: an unsent one from the outbox, or a new one.
    pub(crate) fn next_send(
        &mut self,
        rng: &mut StdRng,
        now: i64,
        registry: &mut HashMap<(u64, u64), Sent>,
    ) -> Option<Send> {
        if self.sent >= self.outbox.len() {
            if self.outbox.len() >= 12 {
                return None; // window full: wait for acks
            }
            if rng.random_bool(0.03) {
                self.next_seq += 1; // a batch the device could not encode
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            let (batch, bad) = self.generate(rng, seq, now);
            let v = testkit::encode(&batch).unwrap_or_else(|e| panic!("encode: {e}"));
            registry.insert(
                (self.id, seq),
                Sent {
                    batch: Rc::new(batch),
                    bad,
                },
            );
            self.outbox.push_back((seq, Rc::new(v)));
        }
        let (seq, batch) = self.outbox.get(self.sent)?.clone();
        self.sent += 1;
        Some(Send {
            device: self.id,
            seq,
            batch,
        })
    }

    /// An acknowledged batch sent again.
    pub(crate) fn replay(&self, rng: &mut StdRng) -> Option<Send> {
        if self.acked.is_empty() {
            return None;
        }
        let (seq, batch) = self.acked[rng.random_range(0..self.acked.len())].clone();
        Some(Send {
            device: self.id,
            seq,
            batch,
        })
    }

    pub(crate) fn ack(&mut self, durable: u64) {
        self.durable = self.durable.max(durable);
        while self.outbox.front().is_some_and(|(s, _)| *s <= durable) {
            if let Some(b) = self.outbox.pop_front() {
                self.acked.push_back(b);
                if self.acked.len() > 6 {
                    self.acked.pop_front();
                }
            }
            self.sent = self.sent.saturating_sub(1);
        }
    }

    /// A new connection: everything unacknowledged goes again.
    pub(crate) fn reconnect(&mut self, welcome_durable: u64) {
        self.ack(welcome_durable);
        self.sent = 0;
    }

    pub(crate) fn all_acked(&self) -> bool {
        self.outbox.is_empty()
    }

    fn ts(&self, rng: &mut StdRng, now: i64) -> i64 {
        let base = now + self.skew_us + rng.random_range(-5_000_000..5_000_000);
        if rng.random_bool(0.12) {
            base - rng.random_range(0..40 * MINUTE_US) // late, from a buffer
        } else {
            base
        }
    }

    fn sku(&self, rng: &mut StdRng) -> u64 {
        // Two hot SKUs take half the traffic.
        let n = if rng.random_bool(0.5) {
            rng.random_range(0..2)
        } else {
            rng.random_range(0..SKUS_PER_STORE)
        };
        u64::from(self.store) * 1000 + n
    }

    fn generate(&self, rng: &mut StdRng, seq: u64, now: i64) -> (Batch, Vec<Option<RejectCode>>) {
        let n = rng.random_range(0..10);
        let mut events = Vec::with_capacity(n);
        let mut bad = Vec::with_capacity(n);
        for _ in 0..n {
            let ts = self.ts(rng, now);
            let (e, b) = if rng.random_bool(0.05) {
                self.bad_event(rng, ts)
            } else {
                (self.good_event(rng, ts), None)
            };
            events.push(e);
            bad.push(b);
        }
        (
            Batch {
                seq,
                sent_at_us: now,
                events,
            },
            bad,
        )
    }

    fn lines(&self, rng: &mut StdRng) -> Vec<SaleLine> {
        (0..rng.random_range(1..5))
            .map(|_| {
                testkit::line(
                    self.sku(rng),
                    rng.random_range(1..4),
                    rng.random_range(50..5000),
                )
            })
            .collect()
    }

    fn good_event(&self, rng: &mut StdRng, ts: i64) -> Event {
        let p: f64 = rng.random();
        match self.kind {
            Kind::Till { terminal } => {
                if p < 0.78 {
                    let mut e = testkit::sale(ts, self.store, terminal, self.lines(rng));
                    if let Event::Sale(s) = &mut e {
                        if rng.random_bool(0.3) {
                            // Split payment with a tip.
                            s.tenders.push(Tender {
                                method: TenderMethod::Cash,
                                amount: 100,
                                tip: 20,
                            });
                        }
                        s.customer = rng.random_bool(0.4).then(|| rng.random_range(1..1000));
                    }
                    e
                } else if p < 0.88 {
                    testkit::refund(ts, self.store, terminal, self.lines(rng))
                } else {
                    testkit::health(ts, self.store)
                }
            }
            Kind::Sensor => {
                if p < 0.25 {
                    testkit::count(ts, self.store, self.sku(rng), rng.random_range(0..200))
                } else if p < 0.92 {
                    let reason = [
                        MovementKind::Receipt,
                        MovementKind::Shrink,
                        MovementKind::TransferIn,
                        MovementKind::TransferOut,
                    ][rng.random_range(0..4)];
                    let delta = match reason {
                        MovementKind::Receipt | MovementKind::TransferIn => rng.random_range(1..40),
                        _ => -rng.random_range(1..5),
                    };
                    Event::Movement(StockMovement {
                        ts_us: ts,
                        store: self.store,
                        sku: self.sku(rng),
                        delta,
                        reason,
                    })
                } else {
                    testkit::health(ts, self.store)
                }
            }
        }
    }

    fn bad_event(&self, rng: &mut StdRng, ts: i64) -> (Event, Option<RejectCode>) {
        let terminal = match self.kind {
            Kind::Till { terminal } => terminal,
            Kind::Sensor => 0,
        };
        let sku = self.sku(rng);
        match rng.random_range(0..7) {
            0 => (
                testkit::sale(ts + 3 * DAY_US, self.store, terminal, self.lines(rng)),
                Some(RejectCode::FutureTimestamp),
            ),
            1 => (
                testkit::movement(915_148_800_000_000, self.store, sku, 1),
                Some(RejectCode::ImplausibleTimestamp),
            ),
            2 => (
                testkit::sale(ts, self.store, terminal, vec![testkit::line(sku, 0, 10)]),
                Some(RejectCode::NonPositiveQuantity),
            ),
            3 => (
                testkit::refund(ts, self.store, terminal, vec![]),
                Some(RejectCode::NoLines),
            ),
            4 => (
                testkit::sale(ts, self.store, terminal, vec![testkit::line(sku, 1, -10)]),
                Some(RejectCode::NegativeAmount),
            ),
            5 => (
                testkit::movement(ts, self.store, sku, 0),
                Some(RejectCode::ZeroDelta),
            ),
            _ => (
                testkit::count(ts, self.store, sku, -4),
                Some(RejectCode::NegativeLevel),
            ),
        }
    }
}
