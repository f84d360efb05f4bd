//! The run report: JSON for machines, a short summary for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;
use tillstream_protocol::ErrorCode;

use crate::fleet::RunOutcome;
use crate::meter::{
    CpuScope, CpuUse, ServerAckLatency, ServerJournalAppends, ServerMemoryPressure,
};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// Microseconds to milliseconds, rounded to the microsecond.
fn ms(us: u64) -> f64 {
    us as f64 / 1_000.0
}

impl Percentiles {
    /// From a histogram of microseconds (all zero when it is empty).
    pub fn from_us(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean().round() / 1_000.0,
        }
    }
}

/// CSV replay figures.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct CsvInfo {
    /// The file replayed.
    pub file: String,
    /// Data rows read.
    pub rows: u64,
    /// Rows turned into sale or refund lines.
    pub used_rows: u64,
    /// Rows that could not be parsed, by reason.
    pub bad_rows: BTreeMap<String, u64>,
    /// Invoices (one sale or refund each).
    pub invoices: u64,
    /// Countries (one store each).
    pub stores: u64,
    /// Names of the replayed products (StockCode, Description) and stores
    /// (countries), written to the server's catalogue after the run; not
    /// in the report.
    #[serde(skip)]
    pub catalog: tillstream_storage::catalog::Catalog,
}

/// What was generated.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GeneratorInfo {
    /// `fleet` (simulated) or `csv` (replay).
    pub mode: &'static str,
    /// Stores.
    pub stores: u32,
    /// Tills per store.
    pub terminals_per_store: u32,
    /// Sensors per store.
    pub sensors_per_store: u32,
    /// Catalogue size.
    pub skus: u32,
    /// Events per batch.
    pub batch_size: u32,
    /// How long a batch waits for its events at --rate (none: flat out,
    /// or only its size closes it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_max_wait_ms: Option<u64>,
    /// Target events per second (0: flat out).
    pub rate: f64,
    /// Simulated µs between events.
    pub step_us: i64,
    /// Replay figures, in CSV mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csv: Option<CsvInfo>,
}

/// The run report (the JSON document).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every event acknowledged, and verified when asked.
    pub ok: bool,
    /// Events handed to the device clients.
    pub events_sent: u64,
    /// Events in acknowledged batches.
    pub events_acked: u64,
    /// Events in batches the server refused for good.
    pub events_refused: u64,
    /// Acknowledged events the server refused on semantic grounds.
    pub events_rejected: u64,
    /// Those by the code the server gave each (`RejectCode` names; the
    /// summary says what each code means): issue 70's refusals, blamed on
    /// the clocks, were `count_too_late`. Events acknowledged by a
    /// reconnect's `Welcome` come without their refusals, so after
    /// reconnects these may count fewer than the server's
    /// `tillstream_events_rejected_total`.
    pub rejected_by_code: BTreeMap<String, u64>,
    /// Events generated.
    pub events_total: u64,
    /// Batches generated.
    pub batches: u64,
    /// Frame bytes generated.
    pub bytes: u64,
    /// Devices that sent something.
    pub devices: usize,
    /// First send to the last acknowledgement of a timed batch: at
    /// `--rate`, a device's last batch waits for its timer, up to
    /// `--batch-max-wait-ms` past the run's last event, and that wait
    /// is the device's, so those batches are counted but not timed.
    pub seconds: f64,
    /// Acknowledged events of the timed batches per second.
    pub events_per_s: f64,
    /// Per-batch latency from first write to acknowledgement.
    pub ack_latency_ms: Percentiles,
    /// The server's own measure of it, from its histogram: per `Ack`,
    /// from the arrival of the oldest batch it covers to its write (null
    /// where the server's metrics could not be read). Well under
    /// `ack_latency_ms`, the difference is in the network stack or the
    /// loadgen; see `device_runtime_lag_ms`.
    pub server_ack_latency_ms: Option<ServerAckLatency>,
    /// The server's journal appends over the run (each a write and an
    /// `fdatasync`; null where its metrics could not be read, it
    /// restarted during the run, or it appended nothing). A batch
    /// that arrives during a slow append waits for it, so appends over
    /// 50 ms can set an ack p99 while their own p99 stays low;
    /// `tillstream check-disk` measures the disk alone.
    pub server_journal_appends_ms: Option<ServerJournalAppends>,
    /// The server's time past its memory soft limit over the run (null
    /// where its metrics could not be read or it restarted). Under
    /// pressure its shards hold half their in-flight budget, so a run
    /// that measures the peak should have none.
    pub server_memory_pressure: Option<ServerMemoryPressure>,
    /// How late the devices' runtime ran a timer due every 10 ms
    /// (`lag` module). An ack read late by the loadgen counts that lag
    /// into its latency, so a lag p99 near the ack p99 means the loadgen,
    /// not the server, set that p99: give the loadgen more cores, or
    /// fewer devices per process.
    pub device_runtime_lag_ms: Option<Percentiles>,
    /// Sessions re-established after a loss.
    pub reconnects: u64,
    /// `Redirect`s the devices got: a node of a cluster (`--server` with
    /// several addresses) sent a device to the node that serves its store.
    pub redirects: u64,
    /// Batch frames written again after reconnects.
    pub resent_batches: u64,
    /// The largest UDP payload the devices' paths to the server carried,
    /// as QUIC's path MTU discovery found it: the server's limit (65,507
    /// bytes by default) on loopback, 8,952 with jumbo frames, 1,472
    /// on a 1,500-byte Ethernet path. A 128-event batch takes 1, 3 and 18
    /// packets at these.
    pub path_mtu: u16,
    /// Path MTU probes the devices sent. A connection that starts at the
    /// MTU an earlier one over the same socket found sends none.
    pub mtu_probes: u64,
    /// QUIC packets the devices sent, and how many of them QUIC declared
    /// lost and sent again. On loopback a loss is a datagram the kernel
    /// dropped at a full socket buffer (the server's or the loadgen's
    /// own), and each costs its batch a resend timeout: a run with many
    /// has an ack p99 that says more about the sockets than the server.
    pub quic_sent_packets: u64,
    /// See [`Report::quic_sent_packets`].
    pub quic_lost_packets: u64,
    /// Error frames by code name.
    pub errors_by_code: BTreeMap<String, u64>,
    /// Times the server announced a durable seq below one it had announced
    /// before: it lost acknowledged batches (the clients had dropped them,
    /// so they were never resent). Any is a failure of the run.
    pub watermark_regressions: u64,
    /// The server's verification report, if asked.
    pub verify: Option<serde_json::Value>,
    /// The server's settings (null when unknown).
    pub server: serde_json::Value,
    /// Seed of the generator.
    pub seed: u64,
    /// Run id in the high bits of the device ids.
    pub run_id: u32,
    /// How the devices authenticated: `token`, `certificate` or `none`.
    pub auth: String,
    /// `--device-threads` (null: the devices shared the loadgen's runtime).
    pub device_threads: Option<u16>,
    /// The scheduling policy the device threads ran under
    /// (`--device-sched`): `batch` or `normal`.
    pub device_sched: crate::sched::DeviceSched,
    /// CPU time from before the first device dialled to the last
    /// acknowledgement: `scope` `server` (its process, with `--server`)
    /// or `server_and_devices` (this process, without); null where it
    /// could not be read.
    pub cpu: Option<CpuUse>,
    /// What was generated.
    pub generator: GeneratorInfo,
    /// Why the run is not ok.
    pub failures: Vec<String>,
}

/// A count with thousands separators (`1,234,567`), for tables people read.
pub fn thousands(x: f64) -> String {
    let n = x.round().max(0.0) as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The `Error` frames' codes (`ErrorCode`) of a by-code count under
/// their names.
pub fn by_code_name(counts: &BTreeMap<u16, u64>) -> BTreeMap<String, u64> {
    counts
        .iter()
        .map(|(c, n)| {
            let name = ErrorCode::from_u16(*c)
                .map_or_else(|| format!("code_{c}"), |e| e.name().to_owned());
            (name, *n)
        })
        .collect()
}

impl Report {
    /// Builds the report of a run; `ok` and `failures` still need the
    /// verification (see [`Report::finish`]).
    pub fn new(
        out: &RunOutcome,
        totals: (u64, u64, u64),
        devices: usize,
        seed: u64,
        generator: GeneratorInfo,
        server: serde_json::Value,
    ) -> Self {
        let (events_total, batches, bytes) = totals;
        let seconds = out.elapsed.as_secs_f64();
        Self {
            ok: false,
            events_sent: out.events_sent,
            events_acked: out.events_acked,
            events_refused: out.events_refused,
            events_rejected: out.events_rejected,
            rejected_by_code: rejected::by_name(&out.stats.rejected_by_code),
            events_total,
            batches,
            bytes,
            devices,
            seconds: (seconds * 1_000.0).round() / 1_000.0,
            events_per_s: if seconds > 0.0 {
                (out.events_timed as f64 / seconds).round()
            } else {
                0.0
            },
            ack_latency_ms: Percentiles::from_us(&out.latency_us),
            server_ack_latency_ms: None,
            server_journal_appends_ms: None,
            server_memory_pressure: None,
            device_runtime_lag_ms: out.runtime_lag_us.as_ref().map(Percentiles::from_us),
            reconnects: out.stats.reconnects,
            redirects: out.stats.redirects,
            resent_batches: out.stats.resent_batches,
            path_mtu: out.stats.path_mtu,
            mtu_probes: out.stats.mtu_probes,
            quic_sent_packets: out.stats.quic_sent_packets,
            quic_lost_packets: out.stats.quic_lost_packets,
            errors_by_code: by_code_name(&out.stats.errors_by_code),
            watermark_regressions: out.stats.watermark_regressions,
            verify: None,
            server,
            seed,
            run_id: 0,
            auth: String::new(),
            device_threads: None,
            device_sched: crate::sched::DeviceSched::Normal,
            cpu: None,
            generator,
            failures: out.failures.clone(),
        }
    }

    /// Sets the verification and decides `ok`: every event acknowledged,
    /// no durable seq announced below one announced before, and the
    /// verification (when given) ok.
    pub fn finish(&mut self, verify: Option<serde_json::Value>) {
        if self.watermark_regressions > 0 {
            self.failures.push(format!(
                "the server lost acknowledged batches: {} time(s) it announced a durable seq \
                 below one it had acknowledged before (a server that lost data, or another \
                 server); those batches were dropped by the devices and never resent",
                self.watermark_regressions
            ));
        }
        if self.events_acked != self.events_total {
            self.failures.push(format!(
                "{} of {} events acknowledged ({} refused)",
                self.events_acked, self.events_total, self.events_refused
            ));
        }
        let verify_failed = verify
            .as_ref()
            .filter(|v| v.get("ok").and_then(serde_json::Value::as_bool) != Some(true));
        if let Some(v) = verify_failed {
            self.failures.push(format!("verification failed: {v}"));
        }
        self.verify = verify;
        self.ok = self.failures.is_empty();
    }

    /// Why the ack p99 is more the loadgen's than the server's, if it
    /// is: its runtime lagged by half that p99 or more.
    pub fn loadgen_bound(&self) -> Option<String> {
        let lag = self.device_runtime_lag_ms.as_ref()?;
        let p99 = self.ack_latency_ms.p99;
        (p99 > 0.0 && lag.p99 * 2.0 >= p99).then(|| {
            format!(
                "the devices' runtime ran {:.1} ms late at p99, against an ack p99 of {:.1} ms: \
                 the loadgen, not the server, set much of that p99 (give it more cores, or \
                 fewer devices per process)",
                lag.p99, p99
            )
        })
    }

    /// What each code the server refused events under says of them, one
    /// note a code (`rejected` module): no cause the code does not name.
    pub fn rejected_notes(&self) -> Vec<String> {
        rejected::notes(&self.rejected_by_code, self.generator.mode == "fleet")
    }

    /// That the server ran part of the run under memory pressure, if it
    /// did: its figures are then those of half its in-flight budget.
    pub fn memory_pressure_note(&self) -> Option<String> {
        let p = self.server_memory_pressure.as_ref()?;
        (p.seconds > 0 || p.at_end).then(|| {
            format!(
                "the server was past its memory soft limit for {} s of the run{}: its shards held \
                 half their in-flight budget and its allocator returned freed pages sooner, so \
                 these are its figures under memory pressure; to measure it without, give \
                 `serve --memory-soft-limit-mib` a limit above its peak RSS (0 turns it off)",
                p.seconds,
                if p.at_end {
                    ", and still was at its end"
                } else {
                    ""
                }
            )
        })
    }

    /// Why the ack p99 may be more the disk's than the server's: it is
    /// 50 ms or more, and the server's journal had appends that slow.
    pub fn disk_bound(&self) -> Option<String> {
        let journal = self.server_journal_appends_ms.as_ref()?;
        let p99 = self.ack_latency_ms.p99;
        (p99 >= 50.0 && journal.over_50ms > 0).then(|| {
            format!(
                "{} of the server's journal appends took over 50 ms ({} over 100 ms), against \
                 an ack p99 of {:.1} ms: every batch that arrives during such an append waits \
                 for it, so the disk may have set this p99 (`tillstream check-disk` measures \
                 the disk alone)",
                journal.over_50ms, journal.over_100ms, p99
            )
        })
    }

    /// A few lines for a person.
    pub fn summary(&self) -> String {
        let l = &self.ack_latency_ms;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} of {} events acknowledged in {:.3} s: {:.0} events/s from {} devices ({} batches, {:.1} MiB)",
            self.events_acked,
            self.events_total,
            self.seconds,
            self.events_per_s,
            self.devices,
            self.batches,
            self.bytes as f64 / (1u64 << 20) as f64
        );
        let _ = writeln!(
            s,
            "ack latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        if let Some(server) = &self.server_ack_latency_ms {
            let _ = writeln!(
                s,
                "the server's own ack latency ms (arrival to Ack, from its histogram): p50 {:.3}  p99 {:.3}",
                server.p50, server.p99
            );
        }
        if let Some(j) = &self.server_journal_appends_ms {
            let _ = writeln!(
                s,
                "the server's journal appends ms: p50 {:.3}  p99 {:.3}; over 50 ms: {}, over 100 ms: {} (of {})",
                j.p50, j.p99, j.over_50ms, j.over_100ms, j.count
            );
            if let Some(why) = self.disk_bound() {
                let _ = writeln!(s, "note: {why}");
            }
        }
        if let Some(lag) = &self.device_runtime_lag_ms {
            let _ = writeln!(
                s,
                "devices' runtime lag ms: p50 {:.3}  p99 {:.3}  max {:.3}",
                lag.p50, lag.p99, lag.max
            );
            if let Some(why) = self.loadgen_bound() {
                let _ = writeln!(s, "note: {why}");
            }
        }
        let _ = writeln!(
            s,
            "reconnects {}, resent batches {}, refused events {}, rejected events {}",
            self.reconnects, self.resent_batches, self.events_refused, self.events_rejected
        );
        if self.redirects > 0 {
            let _ = writeln!(
                s,
                "redirects {} (a node sent a device to the node that serves its store)",
                self.redirects
            );
        }
        if !self.rejected_by_code.is_empty() {
            let codes: Vec<String> = self
                .rejected_by_code
                .iter()
                .map(|(name, n)| format!("{name} {n}"))
                .collect();
            let _ = writeln!(
                s,
                "rejected events by the server's code: {} (each kept in the server's rejected_events table)",
                codes.join(", ")
            );
            for why in self.rejected_notes() {
                let _ = writeln!(s, "note: {why}");
            }
        }
        let _ = writeln!(
            s,
            "path MTU {} bytes ({} discovery probes); QUIC packets sent {}, lost {}",
            self.path_mtu, self.mtu_probes, self.quic_sent_packets, self.quic_lost_packets
        );
        if let Some(c) = &self.cpu {
            let whose = match c.scope {
                CpuScope::Server => "server",
                CpuScope::ServerAndDevices => "server and devices",
            };
            let _ = writeln!(
                s,
                "CPU ({whose}): {:.2} s, {:.3} us an event",
                c.seconds, c.us_per_event
            );
        }
        if let Some(why) = self.memory_pressure_note() {
            let _ = writeln!(s, "note: {why}");
        }
        if let Some(v) = &self.verify {
            let get = |k: &str| v.get(k).map_or_else(|| "?".to_owned(), ToString::to_string);
            let _ = writeln!(
                s,
                "verify: ok {}, missing {}, duplicates {}",
                get("ok"),
                get("missing"),
                get("duplicates")
            );
        }
        if self.ok {
            s.push_str("OK\n");
        } else {
            for f in &self.failures {
                let _ = writeln!(s, "FAILED: {f}");
            }
        }
        s
    }
}

mod rejected;

#[cfg(test)]
mod tests;
