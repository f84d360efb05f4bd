//! What a run cost the server, read from the server itself: its CPU
//! time (`tillstream_process_cpu_seconds`), its own ack latency
//! (`tillstream_ack_latency_seconds`) and its journal appends
//! (`tillstream_journal_append_duration_seconds`), from `GET {http}/metrics` with
//! `--server`, from this process without (the in-process server; the CPU
//! time then counts the devices too).
//!
//! Why in the report: the server's CPU an event is one of the engine's
//! targets (1 µs at the peak), and measuring it had taken a script around
//! two processes. Read over the run, from before the first device dials
//! to the last acknowledgement, it counts what a fleet costs the server:
//! connection set-up, every batch, and the writes in the background. The
//! server's latency beside the devices' tells a slow server from a slow
//! loadgen or a path that backs up: with 10,000 devices on two cores, the
//! devices measured a p99 of 16-965 ms where the server's own was 8-88.

use serde::Serialize;
use tillstream_engine::scrape::{Scrape, quantile};

/// Whose CPU time a [`CpuUse`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuScope {
    /// The server's process alone (`--server`).
    Server,
    /// The loadgen's process: its in-process server and its devices.
    ServerAndDevices,
}

/// CPU time over the run.
#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    pub scope: CpuScope,
    /// User and system CPU seconds.
    pub seconds: f64,
    /// `seconds` per acknowledged event, in µs.
    pub us_per_event: f64,
}

/// Where the figures are read.
#[derive(Debug, Clone)]
pub enum ServerMeter {
    /// A server's `/metrics`, with an API token if it needs one.
    Remote {
        http: String,
        bearer: Option<String>,
    },
    /// This process.
    Own,
}

impl ServerMeter {
    fn scope(&self) -> CpuScope {
        match self {
            ServerMeter::Remote { .. } => CpuScope::Server,
            ServerMeter::Own => CpuScope::ServerAndDevices,
        }
    }

    /// The figures so far, or `None` (with a warning) where the CPU time
    /// cannot be read: a server whose `/metrics` refuses or does not
    /// answer, a system without `/proc`.
    pub async fn read(&self) -> Option<Reading> {
        match self {
            ServerMeter::Own => {
                let got = tillstream_engine::process_cpu_seconds().map(|seconds| Reading {
                    seconds,
                    started: None,
                    metrics: tillstream_engine::metrics_text()
                        .map(|text| Scrape::parse(&text))
                        .unwrap_or_default(),
                });
                if got.is_none() {
                    tracing::warn!("cannot read this process's CPU time from /proc/self/stat");
                }
                got
            }
            ServerMeter::Remote { http, bearer } => {
                let text =
                    crate::verify::get(http, "/metrics", bearer.as_deref(), |b| b.read_to_string())
                        .await;
                let got = text.and_then(|text| {
                    let metrics = Scrape::parse(&text);
                    Ok(Reading {
                        seconds: metrics
                            .get("tillstream_process_cpu_seconds")
                            .ok_or("no tillstream_process_cpu_seconds in /metrics")?,
                        started: metrics.get("process_start_time_seconds"),
                        metrics,
                    })
                });
                got.inspect_err(|why| tracing::warn!(%why, "cannot read the server's metrics"))
                    .ok()
            }
        }
    }

    /// The server's ack latency between two readings of one process,
    /// interpolated within its histogram's buckets as PromQL's
    /// `histogram_quantile` does (so only as fine as they are: 0.1, 0.25,
    /// 0.5, 1, 2.5, 5, 10, 25, 50 ms and up); `None` if either reading is
    /// missing, the server restarted, or it acknowledged nothing between.
    pub fn ack_latency_between(
        before: Option<&Reading>,
        after: Option<&Reading>,
    ) -> Option<ServerAckLatency> {
        let (before, after) = same_process(before, after)?;
        let acks = format!("{ACK_LATENCY}_count");
        let count = after.sum(&acks) - before.sum(&acks);
        let at = |q| quantile(before, after, ACK_LATENCY, q).map(ms);
        Some(ServerAckLatency {
            count: count.max(0.0).round() as u64,
            p50: at(0.50)?,
            p99: at(0.99)?,
        })
    }

    /// The server's journal appends between two readings of one process
    /// (each a write and an `fdatasync`, the step an ack waits for on
    /// the disk); `None` as for [`ServerMeter::ack_latency_between`].
    pub fn journal_appends_between(
        before: Option<&Reading>,
        after: Option<&Reading>,
    ) -> Option<ServerJournalAppends> {
        let (before, after) = same_process(before, after)?;
        let between = |series: &str| grew(before, after, series);
        let count = between(&format!("{JOURNAL_APPEND}_count"))?;
        let over = |le: &str| {
            let within = between(&format!("{JOURNAL_APPEND}_bucket{{le=\"{le}\"}}"))?;
            Some((count - within).max(0.0).round() as u64)
        };
        let at = |q| quantile(before, after, JOURNAL_APPEND, q).map(ms);
        Some(ServerJournalAppends {
            count: count.max(0.0).round() as u64,
            p50: at(0.50)?,
            p99: at(0.99)?,
            over_50ms: over("0.05")?,
            over_100ms: over("0.1")?,
        })
    }

    /// How long the server was under memory pressure between two
    /// readings of one process (RSS past its `--memory-soft-limit-mib`:
    /// its shards then hold half their in-flight budget), in whole
    /// seconds, and whether it still was at the second; `None` as for
    /// [`ServerMeter::ack_latency_between`], or for a server that does
    /// not count it.
    pub fn memory_pressure_between(
        before: Option<&Reading>,
        after: Option<&Reading>,
    ) -> Option<ServerMemoryPressure> {
        let (before, after) = same_process(before, after)?;
        let seconds = grew(before, after, PRESSURE_SECONDS)?;
        Some(ServerMemoryPressure {
            seconds: seconds.max(0.0).round() as u64,
            at_end: after.get(PRESSURE).is_some_and(|v| v > 0.0),
        })
    }

    /// The use between two readings, over `events` acknowledged events;
    /// `None` if either is missing, or the server restarted between them
    /// (its CPU time started again from zero).
    pub fn between(
        &self,
        before: Option<&Reading>,
        after: Option<&Reading>,
        events: u64,
    ) -> Option<CpuUse> {
        let (before, after) = (before?, after?);
        if before.started != after.started {
            tracing::warn!("the server restarted during the run: its CPU time is not reported");
            return None;
        }
        // To the tick (10 ms) and the ns an event: past that is float noise.
        let seconds = ((after.seconds - before.seconds) * 100.0).round() / 100.0;
        (seconds >= 0.0 && events > 0).then(|| CpuUse {
            scope: self.scope(),
            seconds,
            us_per_event: (seconds * 1e9 / events as f64).round() / 1e3,
        })
    }
}

/// The metrics of two readings, if both are there and of one process
/// (a server that restarted between them counts from zero again).
fn same_process<'a>(
    before: Option<&'a Reading>,
    after: Option<&'a Reading>,
) -> Option<(&'a Scrape, &'a Scrape)> {
    let (before, after) = (before?, after?);
    (before.started == after.started).then_some((&before.metrics, &after.metrics))
}

/// How much `series` grew between two readings of one process; `None`
/// where the second lacks it (a server that does not export it). Missing
/// from the first, it counts from 0: a histogram is exported from its
/// first sample on, so the server had recorded none yet.
fn grew(before: &Scrape, after: &Scrape, series: &str) -> Option<f64> {
    Some(after.get(series)? - before.get(series).unwrap_or(0.0))
}

/// One reading of a server's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// User and system CPU seconds since the process started.
    pub seconds: f64,
    /// When the process started (Unix seconds), where it says: two
    /// readings of one process have the same.
    pub started: Option<f64>,
    /// Its metrics, for the ack latency histogram (empty where there are
    /// none).
    pub metrics: Scrape,
}

/// The server's own ack latency over a run: per `Ack` it wrote, from the
/// arrival of the oldest batch that `Ack` covers to its write, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ServerAckLatency {
    /// `Ack`s written.
    pub count: u64,
    /// Median, interpolated within its histogram bucket.
    pub p50: f64,
    /// 99th percentile, interpolated within its histogram bucket.
    pub p99: f64,
}

/// The name of the server's ack latency histogram.
const ACK_LATENCY: &str = "tillstream_ack_latency_seconds";

/// The server's journal appends over a run, in ms. One slow append holds
/// back every batch that arrives while it lasts, so a few appends over
/// 50 ms, too few to move their own p99, can be a run's ack p99.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ServerJournalAppends {
    /// Appends (group commits).
    pub count: u64,
    /// Median, interpolated within its histogram bucket.
    pub p50: f64,
    /// 99th percentile, interpolated within its histogram bucket.
    pub p99: f64,
    /// Appends that took over 50 ms.
    pub over_50ms: u64,
    /// Appends that took over 100 ms.
    pub over_100ms: u64,
}

/// The server's memory pressure over a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ServerMemoryPressure {
    /// Whole seconds spent past its memory soft limit.
    pub seconds: u64,
    /// Still past it when the run ended.
    pub at_end: bool,
}

/// The names of the server's memory pressure gauge and its time counter.
const PRESSURE: &str = "tillstream_memory_pressure";
const PRESSURE_SECONDS: &str = "tillstream_memory_pressure_seconds_total";

/// The name of the server's journal append histogram.
const JOURNAL_APPEND: &str = "tillstream_journal_append_duration_seconds";

/// Seconds to ms, to the µs.
fn ms(seconds: f64) -> f64 {
    (seconds * 1e6).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_cpu_seconds_are_found_among_its_metrics() {
        let text = "# HELP tillstream_process_cpu_seconds CPU time\n\
                    # TYPE tillstream_process_cpu_seconds gauge\n\
                    process_cpu_seconds_total 12\n\
                    tillstream_process_cpu_seconds_extra 9\n\
                    tillstream_process_cpu_seconds 12.47\n\
                    tillstream_events_received_total{shard=\"0\"} 7\n";
        let metrics = Scrape::parse(text);
        assert_eq!(metrics.get("tillstream_process_cpu_seconds"), Some(12.47));
        assert_eq!(metrics.get("process_open_fds"), None);
    }

    fn reading(seconds: f64, started: Option<f64>) -> Reading {
        Reading {
            seconds,
            started,
            metrics: Scrape::default(),
        }
    }

    #[test]
    fn this_processs_cpu_time_reads_and_a_use_is_per_event() {
        let own = ServerMeter::Own;
        let now = read_now(&own);
        assert!(now.as_ref().is_some_and(|r| r.seconds >= 0.0), "{now:?}");
        let between = |a: f64, b: f64, events| {
            own.between(Some(&reading(a, None)), Some(&reading(b, None)), events)
        };
        let used = between(1.0, 3.5, 2_000_000).map(|u| (u.scope, u.seconds, u.us_per_event));
        assert_eq!(used, Some((CpuScope::ServerAndDevices, 2.5, 1.25)));
        let odd = between(0.1, 0.4000000001, 3);
        assert_eq!(
            odd.map(|u| (u.seconds, u.us_per_event)),
            Some((0.3, 100_000.0))
        );
        assert!(between(2.0, 1.0, 10).is_none(), "went back");
        assert!(own.between(None, Some(&reading(1.0, None)), 10).is_none());
        assert!(between(1.0, 2.0, 0).is_none());
    }

    #[test]
    fn a_server_that_restarted_during_the_run_has_no_cpu_figure() {
        let server = ServerMeter::Remote {
            http: "http://127.0.0.1:7401".into(),
            bearer: None,
        };
        let (before, after) = (reading(10.0, Some(100.0)), reading(12.0, Some(100.0)));
        let used = server.between(Some(&before), Some(&after), 1_000_000);
        assert_eq!(
            used.map(|u| (u.scope, u.seconds)),
            Some((CpuScope::Server, 2.0))
        );
        // Started again: 12 s of the new process are not 2 s of the run.
        let restarted = reading(12.0, Some(160.0));
        assert!(
            server
                .between(Some(&before), Some(&restarted), 1_000_000)
                .is_none()
        );
    }

    /// A histogram as the server exports it, with `counts` cumulative.
    fn exported(counts: [u64; 5]) -> String {
        let les = ["0.001", "0.0025", "0.005", "0.01", "+Inf"];
        let mut text = format!("# TYPE {ACK_LATENCY} histogram\n");
        for (le, n) in les.iter().zip(counts) {
            text.push_str(&format!("{ACK_LATENCY}_bucket{{le=\"{le}\"}} {n}\n"));
        }
        text.push_str(&format!("{ACK_LATENCY}_count {}\n", counts[4]));
        text
    }

    #[test]
    fn the_servers_ack_latency_is_that_of_the_run_alone() {
        let at = |counts, started| Reading {
            seconds: 1.0,
            started,
            metrics: Scrape::parse(&exported(counts)),
        };
        // Before the run: 1,000 fast acks. During it: 100 more, of which
        // 50 took 1-2.5 ms, 49 took 2.5-5 ms and one took over 10 ms.
        let before = at([1_000, 1_000, 1_000, 1_000, 1_000], Some(5.0));
        let after = at([1_000, 1_050, 1_099, 1_099, 1_100], Some(5.0));
        let got = ServerMeter::ack_latency_between(Some(&before), Some(&after));
        let got = got.expect("acks during the run");
        assert_eq!(got.count, 100);
        // The 50th of 100 is the last of the 1-2.5 ms bucket.
        assert!((got.p50 - 2.5).abs() < 1e-9, "{got:?}");
        // The 99th is the last of the 2.5-5 ms bucket.
        assert!((got.p99 - 5.0).abs() < 1e-9, "{got:?}");
        // A tail past the last finite bound reads as that bound.
        let tail = at([1_000, 1_000, 1_000, 1_000, 1_100], Some(5.0));
        let got = ServerMeter::ack_latency_between(Some(&before), Some(&tail));
        assert_eq!(got.map(|l| l.p99), Some(10.0));
        // Nothing acknowledged, or another process: no figure.
        assert!(ServerMeter::ack_latency_between(Some(&before), Some(&before)).is_none());
        let other = at([0, 50, 99, 99, 100], Some(9.0));
        assert!(ServerMeter::ack_latency_between(Some(&before), Some(&other)).is_none());
        // A server without the histogram has none either.
        let bare = reading(2.0, Some(5.0));
        assert!(ServerMeter::ack_latency_between(Some(&bare), Some(&bare)).is_none());
    }

    #[test]
    fn the_servers_slow_journal_appends_are_counted_over_the_run() {
        let text = |counts: [u64; 5]| {
            let les = ["0.005", "0.05", "0.1", "0.25", "+Inf"];
            let mut text = format!("# TYPE {JOURNAL_APPEND} histogram\n");
            for (le, n) in les.iter().zip(counts) {
                text.push_str(&format!("{JOURNAL_APPEND}_bucket{{le=\"{le}\"}} {n}\n"));
            }
            text + &format!("{JOURNAL_APPEND}_count {}\n", counts[4])
        };
        let at = |counts| Reading {
            seconds: 1.0,
            started: Some(5.0),
            metrics: Scrape::parse(&text(counts)),
        };
        // 2,000 appends in the run: 1,990 under 5 ms, 6 of 5-50 ms, 3 of
        // 100-250 ms and one past 250 ms; before it, one slow append.
        let before = at([100, 100, 100, 100, 101]);
        let after = at([2_090, 2_096, 2_096, 2_099, 2_101]);
        let got = ServerMeter::journal_appends_between(Some(&before), Some(&after));
        let got = got.expect("appends during the run");
        assert_eq!((got.count, got.over_50ms, got.over_100ms), (2_000, 4, 4));
        assert!(got.p50 < 5.0 && got.p99 <= 50.0, "{got:?}");
        // A server whose histogram lacks the 50 ms bound has no figure,
        // though it appended.
        let coarse = |n: u64| Reading {
            seconds: 1.0,
            started: Some(5.0),
            metrics: Scrape::parse(&text([n, n, n, n, n]).replace("le=\"0.05\"", "le=\"0.04\"")),
        };
        let got = ServerMeter::journal_appends_between(Some(&coarse(10)), Some(&coarse(20)));
        assert!(got.is_none(), "{got:?}");
        let restarted = Reading {
            started: Some(6.0),
            ..after.clone()
        };
        assert!(ServerMeter::journal_appends_between(Some(&before), Some(&restarted)).is_none());
        // A fresh server exports the histogram from its first append on.
        let fresh = Reading {
            seconds: 1.0,
            started: Some(5.0),
            metrics: Scrape::default(),
        };
        let got = ServerMeter::journal_appends_between(Some(&fresh), Some(&after));
        assert_eq!(got.map(|j| (j.count, j.over_50ms)), Some((2_101, 5)));
    }

    #[test]
    fn the_servers_time_under_memory_pressure_is_that_of_the_run() {
        let at = |seconds: u64, on: u8, started| Reading {
            seconds: 1.0,
            started,
            metrics: Scrape::parse(&format!("{PRESSURE} {on}\n{PRESSURE_SECONDS} {seconds}\n")),
        };
        let got = ServerMeter::memory_pressure_between(
            Some(&at(3, 0, Some(5.0))),
            Some(&at(17, 1, Some(5.0))),
        );
        let want = ServerMemoryPressure {
            seconds: 14,
            at_end: true,
        };
        assert_eq!(got, Some(want));
        let calm = ServerMeter::memory_pressure_between(
            Some(&at(3, 0, Some(5.0))),
            Some(&at(3, 0, Some(5.0))),
        );
        assert_eq!(calm.map(|p| (p.seconds, p.at_end)), Some((0, false)));
        // Another process, or a server that does not count it: no figure.
        let other = at(17, 1, Some(9.0));
        assert!(
            ServerMeter::memory_pressure_between(Some(&at(3, 0, Some(5.0))), Some(&other))
                .is_none()
        );
        let bare = reading(2.0, Some(5.0));
        assert!(ServerMeter::memory_pressure_between(Some(&bare), Some(&bare)).is_none());
    }

    fn read_now(m: &ServerMeter) -> Option<Reading> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .ok()?
            .block_on(m.read())
    }
}
