//! The driver's request counters and the store's retries, for
//! `/metrics` beside the engine's (`tillstream_scylla_*`).

use std::sync::atomic::Ordering;

use super::ScyllaStore;

impl ScyllaStore {
    /// The driver's request counters, for `/metrics` beside the engine's.
    pub fn driver_metrics(&self) -> Vec<(&'static str, f64)> {
        let m = self.session.get_metrics();
        let mut out = vec![
            (
                "tillstream_scylla_requests_total",
                (m.get_requests_unpaged_num()
                    + m.get_requests_manually_paged_num()
                    + m.get_requests_automatically_paged_num()) as f64,
            ),
            (
                "tillstream_scylla_errors_total",
                (m.get_errors_unpaged_num()
                    + m.get_errors_manually_paged_num()
                    + m.get_errors_automatically_paged_num()) as f64,
            ),
            (
                "tillstream_scylla_retries_total",
                m.get_retries_num() as f64,
            ),
            (
                "tillstream_scylla_request_timeouts_total",
                m.get_request_timeouts() as f64,
            ),
            (
                "tillstream_scylla_connections",
                m.get_total_connections() as f64,
            ),
            (
                "tillstream_scylla_write_retries_total",
                self.write_retries.load(Ordering::Relaxed) as f64,
            ),
        ];
        if let Ok(avg) = m.get_latency_avg_ms() {
            out.push(("tillstream_scylla_latency_avg_seconds", avg as f64 / 1000.0));
        }
        if let Ok(p99) = m.get_latency_percentile_ms(99.0) {
            out.push(("tillstream_scylla_latency_p99_seconds", p99 as f64 / 1000.0));
        }
        out
    }
}
