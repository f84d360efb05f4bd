//! How late the tokio runtime runs a task: a probe asks for a timer every
//! [`PROBE_EVERY`] and measures how long after its deadline it ran.
//!
//! Why: every part of a session (quinn's endpoint and connection drivers,
//! the reader, the acker) is a task on this runtime, and a task that
//! holds a worker, or a runtime with more ready tasks than its workers
//! can run, delays all of them alike, before a batch counts as arrived:
//! the ack latency the server measures cannot show such a stall, though
//! the devices wait for it. The probe tells it from the other causes of
//! a devices' tail: with 10,000 devices on two cores (their p99 16-965
//! ms, the server's own 8-88 ms) it never ran 50 ms late, which put the
//! tail in the QUIC sockets' queues. `tillstream_runtime_lag_seconds`
//! shows it, and a lag past [`WARN_AFTER`] is logged with its time, to be
//! matched with what the server was doing then. The loadgen runs the
//! same probe on its devices' runtime.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// The probe's period: 100 samples a second, for the cost of a timer.
pub const PROBE_EVERY: Duration = Duration::from_millis(10);

/// A lag logged as a warning: ten times what a batch's ack usually takes.
pub const WARN_AFTER: Duration = Duration::from_millis(100);

/// Runs the probe on the current runtime until `stop` completes, giving
/// `record` how late each timer ran. Timers are due [`PROBE_EVERY`] after
/// the last one ran, not on a fixed grid: a stall is one late sample,
/// not a burst of catch-up ticks that were never late.
pub async fn probe(stop: impl Future<Output = ()>, mut record: impl FnMut(Duration)) {
    let mut stop = std::pin::pin!(stop);
    let mut due = Instant::now() + PROBE_EVERY;
    loop {
        tokio::select! {
            biased;
            () = &mut stop => return,
            () = tokio::time::sleep_until(due) => {}
        }
        let now = Instant::now();
        record(now.saturating_duration_since(due));
        due = now + PROBE_EVERY;
    }
}

/// The server's probe: into `tillstream_runtime_lag_seconds`, and a
/// warning for a lag past [`WARN_AFTER`].
pub(crate) async fn run(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let stop = async move {
        let _ = shutdown.wait_for(|down| *down).await;
    };
    probe(stop, |late| {
        crate::metrics::runtime_lag(late);
        if late >= WARN_AFTER {
            tracing::warn!(
                late_ms = late.as_millis(),
                "the runtime ran a timer late: every session's tasks waited as long"
            );
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_runtime_shows_as_one_late_timer() -> Result<(), Box<dyn std::error::Error>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let lags = rt.block_on(async {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let probing = tokio::spawn(async move {
                let mut lags = Vec::new();
                probe(
                    async move {
                        let _ = rx.await;
                    },
                    |late| lags.push(late),
                )
                .await;
                lags
            });
            // A few samples, then the only worker held for 80 ms.
            tokio::time::sleep(PROBE_EVERY * 5).await;
            std::thread::sleep(Duration::from_millis(80));
            tokio::time::sleep(PROBE_EVERY * 3).await;
            let _ = tx.send(());
            probing.await
        })?;
        assert!(lags.len() >= 4, "{lags:?}");
        let late = |l: &&Duration| **l >= Duration::from_millis(70);
        // The timer due during the block ran at least 70 ms late; the
        // ones after it were due from when it ran, so were not.
        assert_eq!(lags.iter().filter(late).count(), 1, "{lags:?}");
        Ok(())
    }
}
