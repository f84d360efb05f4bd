//! The report: JSON for machines, a markdown table for people.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tillstream_loadgen::report::thousands;

use crate::tally::Measured;

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// Events generated (and sent to each system).
    pub(crate) events: u64,
    /// Devices of the fleet.
    pub(crate) devices: u32,
    /// Events per batch.
    pub(crate) batch_size: u32,
    /// Seed of the generator.
    pub(crate) seed: u64,
    /// Batches each device may have unacknowledged.
    pub(crate) inflight: usize,
    /// When the run started (UTC, ISO 8601).
    pub(crate) measured_at: String,
    /// One entry per system, in the order run.
    pub(crate) systems: Vec<SystemEntry>,
}

/// One system's figures, or why there are none.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct SystemEntry {
    /// `tillstream`, `nats`, `nats-sync-always`, `mosquitto` or `postgres`.
    pub(crate) name: String,
    /// Acknowledged events per second (null on error).
    pub(crate) events_per_s: Option<f64>,
    /// Median ack latency of a batch, ms (null on error).
    pub(crate) p50_ms: Option<f64>,
    /// 99th percentile ack latency of a batch, ms (null on error).
    pub(crate) p99_ms: Option<f64>,
    /// What a returned ack promises.
    pub(crate) durability: String,
    /// The server and its version, as far as known.
    pub(crate) server: Option<String>,
    /// Events acknowledged.
    pub(crate) events_acked: Option<u64>,
    /// From the first send to the last ack, s.
    pub(crate) seconds: Option<f64>,
    /// Why there are no figures.
    pub(crate) error: Option<String>,
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

impl SystemEntry {
    /// The figures of a completed run.
    pub(crate) fn measured(
        name: &str,
        durability: &str,
        server: Option<String>,
        m: &Measured,
    ) -> Self {
        Self {
            name: name.to_owned(),
            events_per_s: Some(m.events_per_s().round()),
            p50_ms: Some(round(m.quantile_ms(0.50), 3)),
            p99_ms: Some(round(m.quantile_ms(0.99), 3)),
            durability: durability.to_owned(),
            server,
            events_acked: Some(m.events),
            seconds: Some(round(m.elapsed.as_secs_f64(), 3)),
            error: None,
        }
    }

    /// A system that could not be installed, started or run.
    pub(crate) fn failed(
        name: &str,
        durability: &str,
        server: Option<String>,
        error: String,
    ) -> Self {
        Self {
            name: name.to_owned(),
            events_per_s: None,
            p50_ms: None,
            p99_ms: None,
            durability: durability.to_owned(),
            server,
            events_acked: None,
            seconds: None,
            error: Some(error),
        }
    }
}

/// Text safe inside a markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

impl Report {
    /// The markdown table: system | events/s | p50 ms | p99 ms | ack means.
    pub(crate) fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} events, {} devices, batches of {}, {} in flight per device, seed {}, measured {}",
            self.events, self.devices, self.batch_size, self.inflight, self.seed, self.measured_at
        );
        out.push('\n');
        out.push_str("| system | events/s | p50 ms | p99 ms | ack means |\n");
        out.push_str("|---|---:|---:|---:|---|\n");
        for s in &self.systems {
            let fig = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), |v| format!("{v:.2}"));
            let means = match &s.error {
                Some(e) => format!("**failed**: {}", cell(e)),
                None => cell(&s.durability),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                cell(&s.name),
                s.events_per_s.map_or_else(|| "–".to_owned(), thousands),
                fig(s.p50_ms),
                fig(s.p99_ms),
                means
            );
        }
        out
    }
}

/// Now, UTC, as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    iso8601(secs)
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
fn iso8601(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hdrhistogram::Histogram;

    use super::*;

    fn sample() -> anyhow::Result<Report> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
        h.record(1_500)?;
        h.record(2_000)?; // exact: below 2048 at 3 significant digits
        let m = Measured {
            events: 500_000,
            batches: 3_907,
            elapsed: Duration::from_millis(2_000),
            latency_us: h,
        };
        Ok(Report {
            events: 500_000,
            devices: 64,
            batch_size: 128,
            seed: 1,
            inflight: 4,
            measured_at: "2026-11-22T21:00:00Z".into(),
            systems: vec![
                SystemEntry::measured("nats", "written | not fsynced", None, &m),
                SystemEntry::failed("postgres", "WAL fsynced", None, "initdb failed".into()),
            ],
        })
    }

    #[test]
    fn json_has_the_documented_shape() -> anyhow::Result<()> {
        let v = serde_json::to_value(sample()?)?;
        for k in ["events", "devices", "batch_size", "seed", "systems"] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["events"], 500_000);
        let ok = &v["systems"][0];
        assert_eq!(ok["name"], "nats");
        assert_eq!(ok["events_per_s"], 250_000.0);
        assert_eq!(ok["p50_ms"], 1.5);
        assert_eq!(ok["p99_ms"], 2.0);
        assert!(ok["error"].is_null());
        assert!(ok["durability"].is_string());
        let bad = &v["systems"][1];
        assert!(bad["events_per_s"].is_null());
        assert!(bad["p50_ms"].is_null() && bad["p99_ms"].is_null());
        assert_eq!(bad["error"], "initdb failed");
        Ok(())
    }

    #[test]
    fn markdown_table_has_a_row_per_system() -> anyhow::Result<()> {
        let md = sample()?.markdown();
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(rows.len(), 4, "{md}");
        assert_eq!(
            rows[0],
            "| system | events/s | p50 ms | p99 ms | ack means |"
        );
        assert_eq!(
            rows[2],
            "| nats | 250,000 | 1.50 | 2.00 | written \\| not fsynced |"
        );
        assert_eq!(
            rows[3],
            "| postgres | – | – | – | **failed**: initdb failed |"
        );
        Ok(())
    }

    #[test]
    fn formats() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(233_104.0), "233,104");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_795_381_200), "2026-11-22T21:00:00Z");
    }
}
