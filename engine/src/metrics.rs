//! Metrics, named `tillstream_<name>_<unit>[_total]`. Counted once per
//! batch or per commit on the hot path, never per event; labels have
//! bounded cardinality (codes, shard index), never a device or a SKU.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The process-wide Prometheus recorder (installed once, shared by every
/// server of the process).
pub(crate) fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ];
            PrometheusBuilder::new()
                .set_buckets(&buckets)
                .ok()?
                .install_recorder()
                .ok()
        })
        .as_ref()
}

pub(crate) fn batch_received(events: usize, bytes: usize) {
    counter!("tillstream_batches_received_total").increment(1);
    counter!("tillstream_events_received_total").increment(events as u64);
    counter!("tillstream_bytes_received_total").increment(bytes as u64);
}

/// A resent seq whose batch is not the one admitted under it.
pub(crate) fn batch_seq_conflict() {
    counter!("tillstream_batches_seq_conflict_total").increment(1);
}

/// A batch refused for naming more stores or terminals than a device may
/// (labelled with the code: `too_many_stores`, `too_many_terminals`).
pub(crate) fn too_many_keys(code: tillstream_protocol::ErrorCode) {
    counter!("tillstream_batches_over_device_limits_total", "code" => code.name()).increment(1);
}

/// A batch held back because its device was past its event rate.
pub(crate) fn rate_limited() {
    counter!("tillstream_rate_limited_batches_total").increment(1);
}

pub(crate) fn batch_duplicate() {
    counter!("tillstream_batches_duplicate_total").increment(1);
}

pub(crate) fn events_rejected(count: usize) {
    counter!("tillstream_events_rejected_total").increment(count as u64);
}

pub(crate) fn frame_refused(code: tillstream_protocol::ErrorCode) {
    counter!("tillstream_frames_refused_total", "code" => code.name()).increment(1);
}

pub(crate) fn connection_refused(reason: &'static str) {
    counter!("tillstream_connections_refused_total", "reason" => reason).increment(1);
}

/// A connection asked to prove its address first (QUIC Retry).
pub(crate) fn connection_retried() {
    counter!("tillstream_connections_retried_total").increment(1);
}

pub(crate) fn connection_waited(waited: Duration) {
    histogram!("tillstream_connection_queue_wait_seconds").record(waited.as_secs_f64());
}

pub(crate) fn acked(latency: Duration, batches: u64) {
    histogram!("tillstream_ack_latency_seconds").record(latency.as_secs_f64());
    counter!("tillstream_batches_acked_total").increment(batches);
}

/// One materialization of rows into the tables (off the ack path).
pub(crate) fn commit_done(elapsed: Duration, rows: usize, bytes: usize) {
    histogram!("tillstream_flush_duration_seconds").record(elapsed.as_secs_f64());
    counter!("tillstream_flush_total").increment(1);
    counter!("tillstream_flush_rows_total").increment(rows as u64);
    counter!("tillstream_flush_bytes_total").increment(bytes as u64);
}

/// One group commit of the journal: the write and fsync an ack waits for.
pub(crate) fn journal_append(elapsed: Duration, bytes: usize) {
    histogram!("tillstream_journal_append_duration_seconds").record(elapsed.as_secs_f64());
    counter!("tillstream_journal_appends_total").increment(1);
    counter!("tillstream_journal_bytes_total").increment(bytes as u64);
}

/// A session closed because its device did not read its acks in time.
pub(crate) fn ack_write_timed_out() {
    counter!("tillstream_ack_write_timeouts_total").increment(1);
}

pub(crate) fn commit_failed() {
    counter!("tillstream_flush_failures_total").increment(1);
}

pub(crate) fn connections(delta: f64) {
    gauge!("tillstream_connections_active").increment(delta);
}

pub(crate) fn sessions_refused(code: tillstream_protocol::ErrorCode) {
    counter!("tillstream_sessions_refused_total", "code" => code.name()).increment(1);
}

/// Per-shard gauges, registered once (their label is the shard index).
pub(crate) struct ShardGauges {
    inflight: metrics::Gauge,
    skus: metrics::Gauge,
    terminals: metrics::Gauge,
    window: metrics::Gauge,
}

impl ShardGauges {
    pub(crate) fn new(shard: u16) -> Self {
        let s = shard.to_string();
        Self {
            inflight: gauge!("tillstream_shard_inflight_bytes", "shard" => s.clone()),
            skus: gauge!("tillstream_active_skus", "shard" => s.clone()),
            terminals: gauge!("tillstream_active_terminals", "shard" => s.clone()),
            window: gauge!("tillstream_late_window_movements", "shard" => s),
        }
    }

    pub(crate) fn inflight(&self, bytes: usize) {
        self.inflight.set(bytes as f64);
    }

    pub(crate) fn entities(&self, stats: &tillstream_engine_core::shard::ShardStats) {
        self.skus.set(stats.skus_active as f64);
        self.terminals.set(stats.terminals_active as f64);
        self.window.set(stats.window_movements as f64);
    }
}

/// Entities a shard dropped from memory as idle.
pub(crate) fn passivated(gone: &tillstream_engine_core::shard::Passivated) {
    counter!("tillstream_passivated_stores_total").increment(gone.stores);
    counter!("tillstream_passivated_skus_total").increment(gone.skus);
    counter!("tillstream_passivated_rollup_days_total").increment(gone.days);
}

/// Device slots dropped from memory as idle.
pub(crate) fn passivated_devices(n: usize) {
    counter!("tillstream_passivated_devices_total").increment(n as u64);
}

/// How long no batch has been acknowledged although batches wait (0 when
/// none waits): the age of a stall, refreshed on every scrape.
pub(crate) fn ack_stall(stalled: Duration) {
    gauge!("tillstream_ack_stall_seconds").set(stalled.as_secs_f64());
}

pub(crate) fn dead_letter() {
    counter!("tillstream_dead_letters_total").increment(1);
}

/// 1 when devices and API callers must authenticate, 0 with `--auth none`.
pub(crate) fn auth_enabled(on: bool) {
    gauge!("tillstream_auth_enabled").set(if on { 1.0 } else { 0.0 });
}

/// A device's credential refused at `Hello`, or an API call refused.
pub(crate) fn auth_failed(surface: &'static str) {
    counter!("tillstream_auth_failures_total", "surface" => surface).increment(1);
}

/// A live connection closed because its credential was revoked or expired.
pub(crate) fn auth_closed(why: &'static str) {
    counter!("tillstream_auth_connections_closed_total", "reason" => why).increment(1);
}

/// Events refused because the device's credential does not allow them.
pub(crate) fn authz_refused(code: tillstream_protocol::RejectCode, events: u64) {
    counter!("tillstream_authz_refused_events_total", "code" => code.name()).increment(events);
}

/// Audit lines not written: `queue` (the writer fell behind), `write`
/// (the file failed), `rate` (unauthenticated peers past their share).
pub(crate) fn audit_dropped(reason: &'static str) {
    counter!("tillstream_audit_lines_dropped_total", "reason" => reason).increment(1);
}

/// Connections closed because a frame they started did not arrive in time.
pub(crate) fn frame_too_slow() {
    counter!("tillstream_frames_too_slow_total").increment(1);
}

/// The backend's own figures (the ScyllaDB driver's requests, errors,
/// retries, latency), refreshed when `/metrics` is read: counters end in
/// `_total`, the rest are gauges.
pub(crate) fn backend(figures: &[(&'static str, f64)]) {
    for &(name, value) in figures {
        if name.ends_with("_total") {
            counter!(name).absolute(value as u64);
        } else {
            gauge!(name).set(value);
        }
    }
}
