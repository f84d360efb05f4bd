//! The CPU time a run cost, for the report: the server's own with
//! `--server` (its `tillstream_process_cpu_seconds`, from
//! `GET {http}/metrics`), this process's without (the in-process server
//! and the devices together).
//!
//! Why in the report: the server's CPU an event is one of the engine's
//! targets (1 µs at the peak), and measuring it had taken a script around
//! two processes. Read over the run, from before the first device dials
//! to the last acknowledgement, it counts what a fleet costs the server:
//! connection set-up, every batch, and the writes in the background.

use serde::Serialize;

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

/// Where the CPU time is read.
#[derive(Debug, Clone)]
pub enum CpuMeter {
    /// A server's `/metrics`, with an API token if it needs one.
    Remote {
        http: String,
        bearer: Option<String>,
    },
    /// This process.
    Own,
}

impl CpuMeter {
    fn scope(&self) -> CpuScope {
        match self {
            CpuMeter::Remote { .. } => CpuScope::Server,
            CpuMeter::Own => CpuScope::ServerAndDevices,
        }
    }

    /// CPU seconds so far, or `None` (with a warning) where they cannot
    /// be read: a server whose `/metrics` refuses or does not answer, a
    /// system without `/proc`.
    pub async fn read(&self) -> Option<CpuReading> {
        match self {
            CpuMeter::Own => {
                let got = tillstream_engine::process_cpu_seconds().map(|seconds| CpuReading {
                    seconds,
                    started: None,
                });
                if got.is_none() {
                    tracing::warn!("cannot read this process's CPU time from /proc/self/stat");
                }
                got
            }
            CpuMeter::Remote { http, bearer } => {
                let text =
                    crate::verify::get(http, "/metrics", bearer.as_deref(), |b| b.read_to_string())
                        .await;
                let got = text.and_then(|text| {
                    Ok(CpuReading {
                        seconds: metric_value(&text, "tillstream_process_cpu_seconds")
                            .ok_or("no tillstream_process_cpu_seconds in /metrics")?,
                        started: metric_value(&text, "process_start_time_seconds"),
                    })
                });
                got.inspect_err(|why| tracing::warn!(%why, "cannot read the server's CPU time"))
                    .ok()
            }
        }
    }

    /// The use between two readings, over `events` acknowledged events;
    /// `None` if either is missing, or the server restarted between them
    /// (its CPU time started again from zero).
    pub fn between(
        &self,
        before: Option<CpuReading>,
        after: Option<CpuReading>,
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

/// One reading of a process's CPU time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuReading {
    /// User and system CPU seconds since the process started.
    pub seconds: f64,
    /// When the process started (Unix seconds), where it says: two
    /// readings of one process have the same.
    pub started: Option<f64>,
}

/// The value of an unlabelled sample `name` in Prometheus text.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
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
        assert_eq!(
            metric_value(text, "tillstream_process_cpu_seconds"),
            Some(12.47)
        );
        assert_eq!(metric_value(text, "process_open_fds"), None);
    }

    #[test]
    fn this_processs_cpu_time_reads_and_a_use_is_per_event() {
        let own = CpuMeter::Own;
        let now = read_now(&own);
        assert!(now.is_some_and(|r| r.seconds >= 0.0), "{now:?}");
        let at = |seconds, started| Some(CpuReading { seconds, started });
        let used = own.between(at(1.0, None), at(3.5, None), 2_000_000);
        let used = used.map(|u| (u.scope, u.seconds, u.us_per_event));
        assert_eq!(used, Some((CpuScope::ServerAndDevices, 2.5, 1.25)));
        let odd = own.between(at(0.1, None), at(0.4000000001, None), 3);
        assert_eq!(
            odd.map(|u| (u.seconds, u.us_per_event)),
            Some((0.3, 100_000.0))
        );
        assert!(
            own.between(at(2.0, None), at(1.0, None), 10).is_none(),
            "went back"
        );
        assert!(own.between(None, at(1.0, None), 10).is_none());
        assert!(own.between(at(1.0, None), at(2.0, None), 0).is_none());
    }

    #[test]
    fn a_server_that_restarted_during_the_run_has_no_cpu_figure() {
        let server = CpuMeter::Remote {
            http: "http://127.0.0.1:7401".into(),
            bearer: None,
        };
        let at = |seconds, started| Some(CpuReading { seconds, started });
        let used = server.between(at(10.0, Some(100.0)), at(12.0, Some(100.0)), 1_000_000);
        assert_eq!(
            used.map(|u| (u.scope, u.seconds)),
            Some((CpuScope::Server, 2.0))
        );
        // Started again: 12 s of the new process are not 2 s of the run.
        assert!(
            server
                .between(at(10.0, Some(100.0)), at(12.0, Some(160.0)), 1_000_000)
                .is_none()
        );
    }

    fn read_now(m: &CpuMeter) -> Option<CpuReading> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .ok()?
            .block_on(m.read())
    }
}
