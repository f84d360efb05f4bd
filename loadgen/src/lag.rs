//! How late the devices' runtime runs: the probe the server runs on its
//! own (a timer every [`PROBE_EVERY`], and how long after its deadline it
//! ran), its samples in a histogram for the report.
//!
//! Why: an ack latency is measured by the loadgen, so it includes the
//! time the loadgen took to read the ack, and a loadgen on the server's
//! cores competes with it. A report that shows this lag beside the ack
//! latency (and the server's own) says which process a p99 belongs to.
//! (The server's runtime has its `tillstream_runtime_lag_seconds`.)

use hdrhistogram::Histogram;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use tillstream_engine::runtime_lag::PROBE_EVERY;

/// A running probe; [`LagProbe::finish`] stops it and gives its samples.
#[derive(Debug)]
pub struct LagProbe {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Histogram<u64>>,
}

impl LagProbe {
    /// Starts the probe on the current runtime (the devices' one): the
    /// server's probe (`tillstream_engine::runtime_lag`), into a histogram.
    pub fn start() -> Result<Self, hdrhistogram::CreationError> {
        // 1 µs to an hour, 3 significant digits, as the ack latencies.
        let mut lag_us = Histogram::new_with_bounds(1, 3_600_000_000, 3)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let stopped = async move {
                let _ = stopped.await;
            };
            tillstream_engine::runtime_lag::probe(stopped, |late| {
                let us = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
                let _ = lag_us.record(us.max(1));
            })
            .await;
            lag_us
        });
        Ok(Self { stop, task })
    }

    /// Stops the probe: how late each of its timers ran, in µs (`None`
    /// if its task did not finish: the runtime is shutting down).
    pub async fn finish(self) -> Option<Histogram<u64>> {
        let _ = self.stop.send(());
        self.task.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_blocked_runtime_shows_as_lag() -> Result<(), Box<dyn std::error::Error>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let lag = rt
            .block_on(async {
                let probe = LagProbe::start()?;
                // Let it take a few samples, then hold the only thread.
                tokio::time::sleep(PROBE_EVERY * 5).await;
                std::thread::sleep(Duration::from_millis(80));
                tokio::time::sleep(PROBE_EVERY * 3).await;
                Ok::<_, Box<dyn std::error::Error>>(probe.finish().await)
            })?
            .ok_or("the probe did not finish")?;
        assert!(lag.len() >= 4, "{} samples", lag.len());
        // The timer due during the block ran at least 70 ms late.
        assert!(lag.max() >= 70_000, "max {} us", lag.max());
        // The others ran about on time (timers are rounded to 1 ms).
        assert!(lag.value_at_quantile(0.5) < 70_000);
        Ok(())
    }
}
