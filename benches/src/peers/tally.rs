//! What a peer run measures: acknowledged events, per-batch ack latency
//! (from the send to the ack) in an HdrHistogram, the last ack's time.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;

/// A finished measurement.
#[derive(Debug, Clone)]
pub(crate) struct Measured {
    /// Events in acknowledged batches.
    pub(crate) events: u64,
    /// Acknowledged batches.
    pub(crate) batches: u64,
    /// From the clock's start to the last ack.
    pub(crate) elapsed: Duration,
    /// Per-batch ack latency, µs.
    pub(crate) latency_us: Histogram<u64>,
}

impl Measured {
    /// Acknowledged events per second.
    pub(crate) fn events_per_s(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.events as f64 / s } else { 0.0 }
    }

    /// A latency quantile in milliseconds (0 when nothing was recorded).
    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
        if self.latency_us.is_empty() {
            0.0
        } else {
            self.latency_us.value_at_quantile(q) as f64 / 1_000.0
        }
    }
}

#[derive(Debug)]
struct Inner {
    events: u64,
    batches: u64,
    last: Option<Instant>,
    latency_us: Histogram<u64>,
}

/// Collects acks from any number of tasks.
#[derive(Debug, Clone)]
pub(crate) struct Tally {
    start: Instant,
    inner: Arc<Mutex<Inner>>,
}

impl Tally {
    /// A tally whose clock starts now.
    pub(crate) fn start() -> anyhow::Result<Self> {
        Ok(Self {
            start: Instant::now(),
            inner: Arc::new(Mutex::new(Inner {
                events: 0,
                batches: 0,
                last: None,
                latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                    .context("latency histogram")?,
            })),
        })
    }

    /// Records a batch of `events` sent at `sent` and acknowledged at `at`.
    pub(crate) fn ack(&self, sent: Instant, at: Instant, events: u32) {
        let us = u64::try_from(at.saturating_duration_since(sent).as_micros()).unwrap_or(u64::MAX);
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.events += u64::from(events);
        g.batches += 1;
        g.last = Some(g.last.map_or(at, |l| l.max(at)));
        g.latency_us.saturating_record(us.max(1));
    }

    /// The measurement so far.
    pub(crate) fn finish(&self) -> Measured {
        let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        Measured {
            events: g.events,
            batches: g.batches,
            elapsed: g
                .last
                .map_or(Duration::ZERO, |l| l.saturating_duration_since(self.start)),
            latency_us: g.latency_us.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_counts_and_measures() -> anyhow::Result<()> {
        let t = Tally::start()?;
        let s = Instant::now();
        t.ack(s, s + Duration::from_millis(2), 100);
        t.ack(s, s + Duration::from_millis(4), 28);
        let m = t.finish();
        assert_eq!((m.events, m.batches), (128, 2));
        assert!((m.quantile_ms(0.5) - 2.0).abs() < 0.01);
        assert!((m.quantile_ms(0.99) - 4.0).abs() < 0.01);
        assert!(m.events_per_s() > 0.0);
        Ok(())
    }
}
