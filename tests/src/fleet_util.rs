//! Helpers of the fleet-scale fault tests (reconnect storm, long offline
//! device): memory and CPU readings of processes, manifests of what
//! devices sent, scripts whose events are spread over a long span of time,
//! and small reporting aids.

use std::time::Duration;

use tillstream_protocol::Event;
use tillstream_storage::verify::ExpectedBatch;

use crate::DeviceScript;

/// Memory of this process from `/proc/self/status`, in KiB (0 where the
/// file or the field is missing, e.g. not on Linux).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mem {
    /// Resident set size now (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size since the process started (`VmHWM`).
    pub hwm_kib: u64,
}

impl Mem {
    /// Reads the current figures.
    pub fn now() -> Mem {
        let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Mem {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
        }
    }
}

/// CPU time (user + system) a process used so far, in seconds, from
/// `/proc/PID/stat` (`pid` "self" for this process); 0 where unreadable.
pub fn cpu_seconds(pid: &str) -> f64 {
    tillstream_engine::cpu_seconds_of(pid).unwrap_or(0.0)
}

/// A short label of an error message (its text up to the second `:`, or
/// a `(`), for counting reasons across a fleet.
pub fn reason_label(msg: &str) -> String {
    let mut cut = msg.find('(').unwrap_or(msg.len());
    if let Some((i, _)) = msg.match_indices(':').nth(1) {
        cut = cut.min(i);
    }
    msg[..cut].trim().chars().take(80).collect()
}

/// KiB as MiB, for reports.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Every batch of `scripts`, as the manifest `verify` checks against.
pub fn manifest(scripts: &[DeviceScript]) -> Vec<ExpectedBatch> {
    scripts
        .iter()
        .flat_map(|s| {
            s.batches.iter().map(|b| ExpectedBatch {
                device: s.device,
                seq: b.seq,
                events: u32::try_from(b.events.len()).unwrap_or(u32::MAX),
            })
        })
        .collect()
}

/// Events in `scripts`.
pub fn total_events(scripts: &[DeviceScript]) -> u64 {
    scripts
        .iter()
        .flat_map(|s| s.batches.iter())
        .map(|b| b.events.len() as u64)
        .sum()
}

/// Restamps a script so its batches are spread evenly over
/// `[start_us, start_us + span_us)`: batch `k` of `n` starts at
/// `start_us + k·span_us/n` and its events follow one `step_us` apart, as
/// a device buffering through a day would have stamped them. Batch seqs,
/// contents and `sent_at_us` (the moment of the original send) stay.
pub fn spread(script: &mut DeviceScript, start_us: i64, span_us: i64, step_us: i64) {
    let n = i64::try_from(script.batches.len())
        .unwrap_or(i64::MAX)
        .max(1);
    for (k, b) in script.batches.iter_mut().enumerate() {
        let k = i64::try_from(k).unwrap_or(0);
        let base = start_us + span_us / n * k;
        for (i, e) in b.events.iter_mut().enumerate() {
            let ts = base + step_us * i64::try_from(i).unwrap_or(0);
            match e {
                Event::Sale(x) => x.ts_us = ts,
                Event::Refund(x) => x.ts_us = ts,
                Event::Movement(x) => x.ts_us = ts,
                Event::Count(x) => x.ts_us = ts,
                Event::Health(x) => x.ts_us = ts,
            }
        }
        b.sent_at_us = base;
    }
}

/// The `p`-th percentile (0..=100) of `sorted` (ascending), nearest rank;
/// zero for an empty slice.
pub fn percentile(sorted: &[Duration], p: u32) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * p as usize).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// A positive whole number from the environment variable `name`, else
/// `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99), Duration::from_millis(99));
        assert_eq!(percentile(&v, 100), Duration::from_millis(100));
        assert_eq!(percentile(&v, 0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }

    #[test]
    fn reasons_and_cpu() {
        assert_eq!(
            reason_label("handshake failed: timed out"),
            "handshake failed: timed out"
        );
        assert_eq!(
            reason_label("no answer to Hello: lost: timed out"),
            "no answer to Hello: lost"
        );
        assert_eq!(
            reason_label("no answer to Hello in time"),
            "no answer to Hello in time"
        );
        assert!(cpu_seconds("self") >= 0.0);
        assert!(cpu_seconds("no-such-pid").abs() < f64::EPSILON);
    }

    #[test]
    fn spread_covers_the_span_in_order() {
        let mut s = crate::script(1, 1, true, 10, 4, 0);
        spread(&mut s, 1_000_000, 10_000_000, 10);
        let ts: Vec<i64> = s
            .batches
            .iter()
            .flat_map(|b| b.events.iter().map(Event::ts_us))
            .collect();
        assert_eq!(ts.first(), Some(&1_000_000));
        assert!(ts.windows(2).all(|w| w[0] < w[1]));
        assert!(ts.iter().all(|&t| t < 11_000_000));
    }
}
