//! What `tillstream top` shows, as lines of text: a pure function of two
//! scrapes, so it is tested without a terminal.

use tillstream_engine::scrape::{Scrape, quantile, rate};

/// The lines of one frame. `budget` is a shard's in-flight byte budget
/// (from `/v1/settings`), when known.
pub(crate) fn frame(
    source: &str,
    before: &Scrape,
    now: &Scrape,
    secs: f64,
    budget: Option<f64>,
) -> Vec<String> {
    let r = |name: &str| rate(before, now, name, secs);
    let ms = |name: &str, q: f64| {
        quantile(before, now, name, q)
            .map_or_else(|| "-".to_string(), |s| format!("{:.1} ms", s * 1e3))
    };
    let yes = |v: f64| if v > 0.5 { "yes" } else { "NO" };
    let mut out = vec![
        format!("tillstream top — {source} — every {secs:.1} s — q to quit"),
        String::new(),
        format!(
            "ingest       {:>12} events/s {:>10} batches/s {:>10} acked/s",
            count(r("tillstream_events_received_total")),
            count(r("tillstream_batches_received_total")),
            count(r("tillstream_batches_acked_total")),
        ),
        format!(
            "ack latency  p50 {:>9}   p90 {:>9}   p99 {:>9}",
            ms("tillstream_ack_latency_seconds", 0.5),
            ms("tillstream_ack_latency_seconds", 0.9),
            ms("tillstream_ack_latency_seconds", 0.99),
        ),
        // Tasks waiting for a CPU delay batches before they count as
        // arrived: the line above cannot show it, this one does.
        format!(
            "runtime lag  p99 {:>9}   p99.9 {:>9}",
            ms("tillstream_runtime_lag_seconds", 0.99),
            ms("tillstream_runtime_lag_seconds", 0.999),
        ),
        format!(
            "journal      {:>8} appends/s {:>9} MiB/s   p99 {:>9}",
            count(r("tillstream_journal_appends_total")),
            format!(
                "{:.1}",
                r("tillstream_journal_bytes_total") / f64::from(1 << 20)
            ),
            ms("tillstream_journal_append_duration_seconds", 0.99),
        ),
        format!(
            "flush        {:>8} flushes/s {:>9} rows/s   p50 {:>9}   p99 {:>9}",
            count(r("tillstream_flushes_total")),
            count(r("tillstream_flush_rows_total")),
            ms("tillstream_flush_duration_seconds", 0.5),
            ms("tillstream_flush_duration_seconds", 0.99),
        ),
        format!(
            "connections  {:>8} active   {:>8} refused/s",
            count(now.sum("tillstream_connections_active")),
            count(r("tillstream_connections_refused_total")),
        ),
        format!(
            "rejects      {:>8} events/s {:>8} frames/s {:>8} dead letters/s",
            count(r("tillstream_events_rejected_total")),
            count(r("tillstream_frames_refused_total")),
            count(r("tillstream_dead_letters_total")),
        ),
        format!(
            "state        ready {}   store {}   ack stall {:.1} s",
            yes(now.sum("tillstream_ready")),
            if now.sum("tillstream_store_poisoned") > 0.5 {
                "POISONED"
            } else {
                "ok"
            },
            now.sum("tillstream_ack_stall_seconds"),
        ),
        String::new(),
        format!(
            "{:<6} {:>12} {:>6} {:>12} {:>10}",
            "shard", "in flight", "use", "SKUs", "terminals"
        ),
    ];
    let skus = now.by_label("tillstream_active_skus", "shard");
    let terminals = now.by_label("tillstream_active_terminals", "shard");
    for (shard, bytes) in now.by_label("tillstream_shard_inflight_bytes", "shard") {
        let of = |series: &[(String, f64)]| {
            series
                .iter()
                .find(|(s, _)| *s == shard)
                .map_or(0.0, |(_, v)| *v)
        };
        let used = budget
            .filter(|b| *b > 0.0)
            .map_or_else(|| "-".to_string(), |b| format!("{:.0}%", 100.0 * bytes / b));
        out.push(format!(
            "{:<6} {:>12} {:>6} {:>12} {:>10}",
            shard,
            format!("{:.1} MiB", bytes / f64::from(1 << 20)),
            used,
            count(of(&skus)),
            count(of(&terminals)),
        ));
    }
    out
}

/// A count with thousands separators.
fn count(v: f64) -> String {
    crate::output::grouped(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_shows_rates_latency_and_each_shard() {
        let before = Scrape::parse(
            "tillstream_events_received_total 1000\n\
             tillstream_ack_latency_seconds_bucket{le=\"0.005\"} 0\n\
             tillstream_ack_latency_seconds_bucket{le=\"+Inf\"} 0\n",
        );
        let now = Scrape::parse(
            "tillstream_events_received_total 251000\n\
             tillstream_ack_latency_seconds_bucket{le=\"0.005\"} 100\n\
             tillstream_ack_latency_seconds_bucket{le=\"+Inf\"} 100\n\
             tillstream_runtime_lag_seconds_bucket{le=\"0.01\"} 100\n\
             tillstream_runtime_lag_seconds_bucket{le=\"+Inf\"} 100\n\
             tillstream_ready 1\n\
             tillstream_shard_inflight_bytes{shard=\"0\"} 8388608\n\
             tillstream_shard_inflight_bytes{shard=\"1\"} 0\n\
             tillstream_active_skus{shard=\"0\"} 1234\n",
        );
        let lines = frame("http://x", &before, &now, 1.0, Some(33_554_432.0));
        let text = lines.join("\n");
        assert!(text.contains("250,000 events/s"), "{text}");
        assert!(text.contains("p50    2.5 ms"), "{text}");
        assert!(text.contains("ready yes"), "{text}");
        assert!(text.contains("ack stall 0.0 s"), "{text}");
        assert!(text.contains("runtime lag  p99    9.9 ms"), "{text}");
        let shard0 = lines
            .iter()
            .find(|l| l.starts_with("0 "))
            .cloned()
            .unwrap_or_default();
        assert!(
            shard0.contains("8.0 MiB") && shard0.contains("25%") && shard0.contains("1,234"),
            "{shard0}"
        );
        assert!(lines.iter().any(|l| l.starts_with("1 ")), "{text}");
    }

    #[test]
    fn counts_get_separators() {
        assert_eq!(count(0.0), "0");
        assert_eq!(count(999.4), "999");
        assert_eq!(count(1_234_567.0), "1,234,567");
    }
}
